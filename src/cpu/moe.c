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
    int thread)
{
  VmoeGemmScratch *gemm = cpu->gemm[thread];
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

/* Mobile V-MoE: one router on the residual stream entering the first MoE
 * block decides k experts and gates per image, and with E3 per member
 * among its partition's experts: the router's [E] logits are [M, E/M], one
 * softmax and top-k per member, so out's [n, M, k] fill row by row. */
void
vmoe_cpu_route_images (VmoeCpu *cpu, int n, VmoeRawOutput *out)
{
  const VmoeModel *m = cpu->model;
  const VmoeConfig *c = &m->config;
  int t_count = cpu->tokens, d = cpu->dim, members = c->ensemble_members;
  int e_count = c->num_experts / members, k = cpu->routing.top_k;
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
  vmoe_softmax_rows (cpu->router_probs, n * members, e_count);
  for (int i = 0; i < n * members; i++) {
    int *experts = out->experts + (size_t) i * k;
    float *gates = out->gates + (size_t) i * k;
    vmoe_topk (cpu->router_probs + (size_t) i * e_count, e_count, k, experts, gates);
    for (int j = 0; j < k; j++)
      experts[j] += i % members * e_count;
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

/* The router logits [n*T, E/M] of n member copies (copy i*M + m): each
 * copy's T rows against its member's E/M rows of the router, so that no
 * copy computes (or stores) the logits of experts it cannot choose.  Plain
 * sums, because the packed GEMM holds the router whole; at T x d x E/M per
 * copy it is a small part of the block.  Summed in double in a fixed order,
 * so a copy's logits do not depend on its batch either. */
static void
member_router_logits (VmoeCpu *cpu, const VmoeLinear *router, int n)
{
  int members = cpu->model->config.ensemble_members, t_count = cpu->tokens;
  int e_count = router->out / members, d = router->in;
  for (int i = 0; i < n; i++) {
    int first_expert = i % members * e_count;
    for (int t = 0; t < t_count; t++) {
      const float *z = cpu->z + ((size_t) i * t_count + t) * d;
      float *logits = cpu->router_probs + ((size_t) i * t_count + t) * e_count;
      for (int e = 0; e < e_count; e++) {
        const float *w = router->weight + (size_t) (first_expert + e) * d;
        double s = router->bias ? router->bias[first_expert + e] : 0;
        for (int j = 0; j < d; j++)
          s += (double) z[j] * w[j];
        logits[e] = (float) s;
      }
    }
  }
}

gboolean
vmoe_cpu_moe_reads_stored (const VmoeModel *model, const VmoeLinear *lin)
{
  const VmoeConfig *c = &model->config;
  if (c->routing != VMOE_ROUTING_TOKEN || c->ensemble_members == 1)
    return FALSE;
  for (int b = 0; b < c->depth; b++)
    if (lin == &model->blocks[b].router)
      return TRUE;
  return FALSE;
}

/* V-MoE: a router per token in each MoE block, with per-image capacity.
 * With E3, n counts member copies (copy i*M + m) and copy m routes among
 * its partition's E/M experts; choices are first local to the partition. */
static void
moe_token_routed (VmoeCpu *cpu, const VmoeBlock *block, int layer, int n,
    VmoeRawOutput *out)
{
  const VmoeConfig *c = &cpu->model->config;
  int t_count = cpu->tokens, members = c->ensemble_members, k = cpu->routing.top_k;
  int e_all = c->num_experts, e_count = e_all / members;
  int rows = n * t_count;
  int capacity = vmoe_token_capacity (k, t_count, cpu->routing.capacity_ratio,
      e_all, members);
  if (members == 1)
    vmoe_linear_forward_fp32 (cpu->gemm[0], cpu->router_probs, cpu->z, &block->router,
        rows, VMOE_EPILOGUE_STORE);
  else
    member_router_logits (cpu, &block->router, n);
  vmoe_softmax_rows (cpu->router_probs, rows, e_count);
  for (int r = 0; r < rows; r++)
    vmoe_topk (cpu->router_probs + (size_t) r * e_count, e_count, k,
        cpu->choice + (size_t) r * k, cpu->choice_p + (size_t) r * k);
  for (int i = 0; i < n; i++) {
    size_t first = (size_t) i * t_count * k;
    /* Copy i is member i % M of image i / M; out is [image, layer, M]. */
    size_t at = ((size_t) i / members * c->n_moe_layers + layer) * members + i % members;
    out->dropped[at] = vmoe_assign_tokens (cpu->choice + first, cpu->choice_p + first,
        t_count, k, e_count, capacity, c->bpr, cpu->order, cpu->assigned + first,
        out->tokens_per_expert + at * e_count);
    for (int a = 0; a < t_count * k; a++)
      if (cpu->assigned[first + a] >= 0)
        cpu->assigned[first + a] += i % members * e_count;
  }
  for (int e = 0; e < e_all; e++) {
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
