/* Weights: every tensor of the model laid into one array (the experts of
 * a block stacked, so that a GEMM reaches expert e's weights at e times a
 * stride), uploaded once at session creation, and the fp16 copy the fp16
 * GEMM reads, packed with round-to-nearest-even. */
#include "vk-internal.h"

#include <math.h>

static uint32_t
append (GArray *host, const float *data, size_t count)
{
  uint32_t at = host->len;
  g_array_append_vals (host, data, (guint) count);
  return at;
}

static LinearOffsets
append_linear (GArray *host, const VmoeLinear *lin)
{
  LinearOffsets o;
  o.w = append (host, lin->weight, (size_t) lin->in * lin->out);
  o.b = lin->bias ? append (host, lin->bias, lin->out) : VMOE_VK_NONE;
  return o;
}

static MlpOffsets
append_mlp (GArray *host, const VmoeMlp *mlp)
{
  return (MlpOffsets) { append_linear (host, &mlp->fc1), append_linear (host, &mlp->fc2) };
}

/* One tensor of every expert, one after another; returns expert 0's offset
 * (expert e's is that plus e times the tensor's size). */
static uint32_t
append_stacked (GArray *host, const VmoeMlp *experts, int count, gboolean fc2,
    gboolean bias)
{
  uint32_t first = host->len;
  for (int e = 0; e < count; e++) {
    const VmoeLinear *lin = fc2 ? &experts[e].fc2 : &experts[e].fc1;
    if (bias)
      append (host, lin->bias, lin->out);
    else
      append (host, lin->weight, (size_t) lin->in * lin->out);
  }
  return first;
}

static uint16_t
half_from_float (float f)
{
  /* Round to nearest even; the weights are finite (the loader checks). */
  union { float f; uint32_t u; } v = { f };
  uint32_t sign = (v.u >> 16) & 0x8000u, abs = v.u & 0x7fffffffu;
  if (abs >= 0x477ff000u)                 /* rounds beyond 65504 */
    return (uint16_t) (sign | 0x7c00u);
  if (abs < 0x38800000u) {                /* subnormal half or zero */
    float scaled = fabsf (f) * 16777216.0f;   /* 2^24: half subnormal units */
    return (uint16_t) (sign | (uint32_t) lrintf (scaled));
  }
  uint32_t rounded = abs + 0xfffu + ((abs >> 13) & 1u);
  return (uint16_t) (sign | ((rounded - 0x38000000u) >> 13));
}

/* Lays every tensor into one array (experts of a block stacked, so a GEMM
 * reaches expert e's weights at e times a stride) and uploads it. */
gboolean
vmoe_vk_upload_weights (VmoeVulkan *vk, GError **error)
{
  const VmoeModel *m = vk->model;
  const VmoeConfig *c = &m->config;
  GArray *host = g_array_new (FALSE, FALSE, sizeof (float));
  int d = c->embed_dim;
  vk->patch = append_linear (host, &m->patch_embed);
  vk->cls = c->class_token ? append (host, m->cls_token, d) : VMOE_VK_NONE;
  vk->pos = append (host, m->pos_embed, (size_t) vmoe_config_tokens (c) * d);
  vk->router = c->routing == VMOE_ROUTING_IMAGE ? append_linear (host, &m->router)
      : (LinearOffsets) { VMOE_VK_NONE, VMOE_VK_NONE };
  vk->norm_w = append (host, m->norm_weight, d);
  vk->norm_b = append (host, m->norm_bias, d);
  vk->head = append_linear (host, &m->head);
  vk->blocks = g_new0 (BlockOffsets, c->depth);
  for (int b = 0; b < c->depth; b++) {
    const VmoeBlock *blk = &m->blocks[b];
    BlockOffsets *o = &vk->blocks[b];
    o->norm1_w = append (host, blk->norm1_weight, d);
    o->norm1_b = append (host, blk->norm1_bias, d);
    o->norm2_w = append (host, blk->norm2_weight, d);
    o->norm2_b = append (host, blk->norm2_bias, d);
    o->qkv = append_linear (host, &blk->qkv);
    o->proj = append_linear (host, &blk->proj);
    if (!blk->is_moe) {
      o->mlp = append_mlp (host, &blk->mlp);
      continue;
    }
    if (blk->has_shared)
      o->shared = append_mlp (host, &blk->shared);
    if (c->routing == VMOE_ROUTING_TOKEN)
      o->router = append_linear (host, &blk->router);
    /* Stacked: all fc1 weights, all fc1 biases, all fc2 weights, all fc2
     * biases (the biases are required for experts). */
    int me = c->expert_mlp_dim;
    o->experts.fc1.w = append_stacked (host, blk->experts, c->num_experts, FALSE, FALSE);
    o->experts.fc1.b = append_stacked (host, blk->experts, c->num_experts, FALSE, TRUE);
    o->experts.fc2.w = append_stacked (host, blk->experts, c->num_experts, TRUE, FALSE);
    o->experts.fc2.b = append_stacked (host, blk->experts, c->num_experts, TRUE, TRUE);
    o->fc1_w_stride = (uint32_t) me * d;
    o->fc1_b_stride = (uint32_t) me;
    o->fc2_w_stride = (uint32_t) d * me;
    o->fc2_b_stride = (uint32_t) d;
  }
  guint64 bytes = (guint64) host->len * sizeof (float);
  gboolean ok = vmoe_vk_pool_new (vk, &vk->weights, bytes, FALSE, "weights", error)
      && vmoe_vk_transfer (vk, &vk->weights, 0, host->data, bytes, TRUE, error);
  if (ok && vk->fp16) {
    uint16_t *halves = g_new (uint16_t, MAX (host->len, 1));
    for (guint j = 0; j < host->len; j++)
      halves[j] = half_from_float (g_array_index (host, float, j));
    ok = vmoe_vk_pool_new (vk, &vk->weights16, (guint64) host->len * 2, FALSE, "fp16 weights", error)
        && vmoe_vk_transfer (vk, &vk->weights16, 0, halves, (guint64) host->len * 2, TRUE, error);
    g_free (halves);
  }
  g_array_free (host, TRUE);
  return ok;
}
