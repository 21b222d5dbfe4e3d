/* The MoE layers of the CPU backend.  Each expert gathers the rows routed to
 * it so that it runs one GEMM per slice per call, and adds its gate-weighted
 * result back into those rows of the residual stream. */
#include "moe.h"
#include "linear.h"
#include "ops.h"

#include <string.h>

/* Puts the docs/design.md token-routing assignment of one image in
 * assigned_expert [T*k] (-1: dropped) and counts per expert; returns the
 * number of dropped assignments. choice/choice_p are [T, k], best first. */
int
vmoe_assign_tokens (const int *choice, const float *choice_p, int tokens,
    int top_k, int num_experts, int capacity, gboolean bpr, int *order,
    int *assigned_expert, int *tokens_per_expert)
{
  for (int t = 0; t < tokens; t++)
    order[t] = t;
  if (bpr) {
    /* Insertion sort by descending top-1 probability: stable, so ties keep
     * the lower token index first. */
    for (int a = 1; a < tokens; a++) {
      int t = order[a];
      float p = choice_p[t * top_k];
      int b = a;
      for (; b > 0 && choice_p[order[b - 1] * top_k] < p; b--)
        order[b] = order[b - 1];
      order[b] = t;
    }
  }
  memset (tokens_per_expert, 0, num_experts * sizeof (int));
  int dropped = 0;
  for (int j = 0; j < top_k; j++) {
    for (int a = 0; a < tokens; a++) {
      int t = order[a];
      int e = choice[t * top_k + j];
      if (tokens_per_expert[e] < capacity) {
        tokens_per_expert[e]++;
        assigned_expert[t * top_k + j] = e;
      } else {
        assigned_expert[t * top_k + j] = -1;
        dropped++;
      }
    }
  }
  return dropped;
}

/* Rows [first, first + count) of one expert's list: gathers the rows of z
 * listed in cpu->rows, runs the expert on them and adds weight x result
 * into the same rows of x.  An expert's list holds a row at most once, so
 * slices never write the same row. */
static void
expert_rows (VmoeCpu *cpu, const void *arg, int first, int count,
    VmoeGemmScratch *gemm)
{
  const VmoeMlp *mlp = arg;
  size_t d = cpu->dim;
  float *in = cpu->gather_in + first * d, *out = cpu->gather_out + first * d;
  for (int r = 0; r < count; r++)
    memcpy (in + r * d, cpu->z + (size_t) cpu->rows[first + r] * d,
        d * sizeof (float));
  vmoe_mlp_forward (gemm, out, in, mlp, count,
      cpu->hidden + (size_t) first * cpu->hidden_dim, cpu->model->config.act, FALSE);
  for (int r = 0; r < count; r++) {
    float *x = cpu->x + (size_t) cpu->rows[first + r] * d;
    const float *y = out + r * d;
    float w = cpu->row_weights[first + r];
    for (size_t i = 0; i < d; i++)
      x[i] += w * y[i];
  }
}

void
vmoe_cpu_route_images (VmoeCpu *cpu, int n, VmoeRawOutput *out)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int t_count = cpu->tokens, d = cpu->dim, e_count = c->num_experts;
  int k = cpu->routing.top_k;
  for (int i = 0; i < n; i++) {
    float *r = cpu->router_input + (size_t) i * d;
    const float *x = cpu->x + (size_t) i * t_count * d;
    if (c->router_input == VMOE_ROUTER_INPUT_CLS) {
      memcpy (r, x, d * sizeof (float));
    } else {
      for (int j = 0; j < d; j++) {
        double s = 0;
        for (int t = 0; t < t_count; t++)
          s += x[(size_t) t * d + j];
        r[j] = (float) (s / t_count);
      }
    }
  }
  vmoe_linear_forward_fp32 (cpu->gemm[0], cpu->router_probs, cpu->router_input,
      &m->router, n, VMOE_EPILOGUE_STORE);
  vmoe_softmax_rows (cpu->router_probs, n, e_count);
  for (int i = 0; i < n; i++) {
    int *experts = out->experts + (size_t) i * k;
    float *gates = out->gates + (size_t) i * k;
    vmoe_topk (cpu->router_probs + (size_t) i * e_count, e_count, k, experts, gates);
    if (c->normalize_gates) {
      float sum = 0;
      for (int j = 0; j < k; j++)
        sum += gates[j];
      for (int j = 0; j < k; j++)
        gates[j] /= sum;
    }
  }
}

static void
moe_image_routed (VmoeCpu *cpu, const VmoeBlock *block, int n,
    const VmoeRawOutput *out)
{
  int k = cpu->routing.top_k;
  for (int e = 0; e < cpu->model->config.num_experts; e++) {
    int n_rows = 0;
    for (int i = 0; i < n; i++) {
      for (int j = 0; j < k; j++) {
        if (out->experts[i * k + j] != e)
          continue;
        for (int t = 0; t < cpu->tokens; t++) {
          cpu->rows[n_rows] = i * cpu->tokens + t;
          cpu->row_weights[n_rows++] = out->gates[i * k + j];
        }
      }
    }
    vmoe_cpu_run_on_rows (cpu, n_rows, vmoe_mlp_fmas_per_row (&block->experts[e]),
        expert_rows, &block->experts[e]);
  }
}

/* V-MoE: a router per token in each MoE block, with per-image capacity. */
static void
moe_token_routed (VmoeCpu *cpu, const VmoeBlock *block, int layer, int n,
    VmoeRawOutput *out)
{
  const VmoeConfig *c = &cpu->model->config;
  int t_count = cpu->tokens, e_count = c->num_experts, k = cpu->routing.top_k;
  int rows = n * t_count;
  int capacity = vmoe_token_capacity (k, t_count, cpu->routing.capacity_ratio, e_count);
  vmoe_linear_forward_fp32 (cpu->gemm[0], cpu->router_probs, cpu->z, &block->router,
      rows, VMOE_EPILOGUE_STORE);
  vmoe_softmax_rows (cpu->router_probs, rows, e_count);
  for (int r = 0; r < rows; r++)
    vmoe_topk (cpu->router_probs + (size_t) r * e_count, e_count, k,
        cpu->choice + (size_t) r * k, cpu->choice_p + (size_t) r * k);
  for (int i = 0; i < n; i++) {
    size_t first = (size_t) i * t_count * k;
    int *counts = out->tokens_per_expert + ((size_t) i * c->n_moe_layers + layer) * e_count;
    out->dropped[i * c->n_moe_layers + layer] = vmoe_assign_tokens (
        cpu->choice + first, cpu->choice_p + first, t_count, k, e_count,
        capacity, c->bpr, cpu->order, cpu->assigned + first, counts);
  }
  for (int e = 0; e < e_count; e++) {
    int n_rows = 0;
    for (int a = 0; a < rows * k; a++) {
      if (cpu->assigned[a] != e)
        continue;
      cpu->rows[n_rows] = a / k;
      cpu->row_weights[n_rows++] = cpu->choice_p[a];
    }
    vmoe_cpu_run_on_rows (cpu, n_rows, vmoe_mlp_fmas_per_row (&block->experts[e]),
        expert_rows, &block->experts[e]);
  }
}

void
vmoe_cpu_moe_forward (VmoeCpu *cpu, const VmoeBlock *block, int layer, int n,
    VmoeRawOutput *out)
{
  if (cpu->model->config.routing == VMOE_ROUTING_IMAGE)
    moe_image_routed (cpu, block, n, out);
  else
    moe_token_routed (cpu, block, layer, n, out);
}
