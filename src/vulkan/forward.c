/* Forward recording: the forward pass of docs/design.md for one batch size as
 * a command buffer, recorded once and replayed.  Routing happens on the
 * GPU: the expert GEMMs read their rows from lists the routing shaders
 * wrote, so nothing is read back mid-pass.  The push constants are filled
 * here, field by field (vk-push.h mirrors the shaders' blocks). */
#include "vk-internal.h"

#include <string.h>

static void
gemm (VmoeVulkan *vk, VkCommandBuffer cb, VmoeGemmPush p, int experts)
{
  /* 64 x 64 tiles, or 32 x 32 when that leaves too few workgroups to fill
   * a GPU: measured on an H100 (bench/RESULTS.md), 64 beat 32 by 1.5x and
   * 128 by 11x at batch 64 (the 8x8 register tile spills); 128 stays for
   * other devices, through VMOE_VULKAN_GEMM_TILE. */
  guint64 rows = MAX (p.m / (uint32_t) experts, 1);   /* mean rows per expert */
  int v = ((rows + 63) / 64) * ((p.n + 63) / 64) < 128 ? 0 : 1;
  if (vk->forced_tile)
    v = vk->forced_tile - 1;
  uint32_t tile = vmoe_vk_gemm_tile_sizes[v];
  vmoe_vk_dispatch_pipeline (vk, cb, VMOE_SHADER_GEMM, vk->gemm_tiles[vk->fp16][v], &p, sizeof p,
      (p.n + tile - 1) / tile, (p.m + tile - 1) / tile, (uint32_t) experts);
  vmoe_vk_full_barrier (vk, cb);
}

/* out rows = act(in rows . W^T + b), rows contiguous of width `lin.in`. */
static void
linear (VmoeVulkan *vk, VkCommandBuffer cb, LinearOffsets lin, uint32_t rows,
    uint32_t in_dim, uint32_t out_dim, uint32_t in_off, uint32_t out_off, uint32_t flags)
{
  VmoeGemmPush p = { .m = rows, .n = out_dim, .k = in_dim, .a_off = in_off,
    .a_stride = in_dim, .w_off = lin.w, .b_off = lin.b, .c_off = out_off,
    .c_stride = out_dim, .flags = flags };
  gemm (vk, cb, p, 1);
}

static uint32_t
activation_flag (const VmoeConfig *c)
{
  return c->act == VMOE_ACT_GELU ? VMOE_GEMM_GELU : VMOE_GEMM_GELU_TANH;
}

/* x += fc2(act(fc1(z))) over all rows (dense MLP and shared expert). */
static void
mlp (VmoeVulkan *vk, VkCommandBuffer cb, MlpOffsets o, uint32_t rows, uint32_t hidden_dim)
{
  const VmoeConfig *c = &vk->model->config;
  uint32_t d = (uint32_t) c->embed_dim;
  linear (vk, cb, o.fc1, rows, d, hidden_dim, vk->a.z, vk->a.hidden, activation_flag (c));
  linear (vk, cb, o.fc2, rows, hidden_dim, d, vk->a.hidden, vk->a.x, VMOE_GEMM_ACCUMULATE);
}

static void
layernorm (VmoeVulkan *vk, VkCommandBuffer cb, uint32_t rows, uint32_t in_off,
    uint32_t in_stride, uint32_t out_off, uint32_t w, uint32_t b)
{
  const VmoeConfig *c = &vk->model->config;
  VmoeLayerNormPush p = { .rows = rows, .dim = (uint32_t) c->embed_dim,
    .in_off = in_off, .in_stride = in_stride, .out_off = out_off,
    .out_stride = (uint32_t) c->embed_dim, .w_off = w, .b_off = b,
    .eps = (float) c->norm_eps };
  vmoe_vk_dispatch_flat (vk, cb, VMOE_SHADER_LAYERNORM, &p, sizeof p, rows, 1);
  vmoe_vk_full_barrier (vk, cb);
}

/* The experts of one MoE block on the entries routing decided: lists, two
 * expert-indexed GEMMs, and the gated sum into the residual stream. */
static void
experts (VmoeVulkan *vk, VkCommandBuffer cb, const BlockOffsets *o, uint32_t rows)
{
  const VmoeConfig *c = &vk->model->config;
  uint32_t d = (uint32_t) c->embed_dim, me = (uint32_t) c->expert_mlp_dim;
  uint32_t k = (uint32_t) vk->routing.top_k, e_count = (uint32_t) c->num_experts;
  vk->fn.vkCmdFillBuffer (cb, vk->ints.buffer, (VkDeviceSize) vk->i.counts * 4,
      (VkDeviceSize) e_count * 4, 0);
  vmoe_vk_full_barrier (vk, cb);
  VmoeExpertsPush lists = { .mode = VMOE_EXPERTS_LISTS, .rows = rows, .k = k, .dim = d,
    .entry_expert_off = vk->i.entry_expert, .entry_gate_off = vk->a.entry_gate,
    .count_off = vk->i.counts, .list_off = vk->i.lists, .list_cap = vk->list_cap };
  vmoe_vk_dispatch_flat (vk, cb, VMOE_SHADER_EXPERTS, &lists, sizeof lists, (guint64) rows * k, 256);
  vmoe_vk_full_barrier (vk, cb);
  VmoeGemmPush fc1 = { .m = rows * k, .n = me, .k = d, .a_off = vk->a.z, .a_stride = d,
    .w_off = o->experts.fc1.w, .b_off = o->experts.fc1.b, .c_off = vk->a.hidden,
    .c_stride = me, .flags = activation_flag (c) | VMOE_GEMM_EXPERT_LISTS,
    .w_expert_stride = o->fc1_w_stride, .b_expert_stride = o->fc1_b_stride,
    .list_off = vk->i.lists, .count_off = vk->i.counts, .list_cap = vk->list_cap,
    .a_row_div = k };
  gemm (vk, cb, fc1, (int) e_count);
  VmoeGemmPush fc2 = { .m = rows * k, .n = d, .k = me, .a_off = vk->a.hidden, .a_stride = me,
    .w_off = o->experts.fc2.w, .b_off = o->experts.fc2.b, .c_off = vk->a.expert_out,
    .c_stride = d, .flags = VMOE_GEMM_EXPERT_LISTS,
    .w_expert_stride = o->fc2_w_stride, .b_expert_stride = o->fc2_b_stride,
    .list_off = vk->i.lists, .count_off = vk->i.counts, .list_cap = vk->list_cap,
    .a_row_div = 1 };
  gemm (vk, cb, fc2, (int) e_count);
  VmoeExpertsPush combine = { .mode = VMOE_EXPERTS_COMBINE, .rows = rows, .k = k,
    .dim = d, .entry_expert_off = vk->i.entry_expert, .entry_gate_off = vk->a.entry_gate,
    .y_off = vk->a.expert_out, .x_off = vk->a.x };
  vmoe_vk_dispatch_flat (vk, cb, VMOE_SHADER_EXPERTS, &combine, sizeof combine, (guint64) rows * d, 256);
  vmoe_vk_full_barrier (vk, cb);
}

static VmoeRoutePush
route_push (VmoeVulkan *vk, int n, uint32_t mode)
{
  const VmoeConfig *c = &vk->model->config;
  return (VmoeRoutePush) { .mode = mode, .images = (uint32_t) n,
    .tokens = (uint32_t) vmoe_config_tokens (c), .dim = (uint32_t) c->embed_dim,
    .experts = (uint32_t) c->num_experts, .k = (uint32_t) vk->routing.top_k,
    .x_off = vk->a.x, .w_off = vk->router.w, .b_off = vk->router.b,
    .router_mean = c->router_input == VMOE_ROUTER_INPUT_MEAN,
    .normalize_gates = c->normalize_gates, .probs_off = vk->a.probs,
    .entry_expert_off = vk->i.entry_expert, .entry_gate_off = vk->a.entry_gate,
    .out_experts_off = vk->i.experts, .out_gates_off = vk->a.gates,
    .order_off = vk->i.order, .out_counts_off = vk->i.tokens_per_expert,
    .out_dropped_off = vk->i.dropped, .layers = (uint32_t) c->n_moe_layers,
    .capacity = (uint32_t) vmoe_token_capacity (vk->routing.top_k,
        vmoe_config_tokens (c), vk->routing.capacity_ratio, c->num_experts,
        c->ensemble_members),
    .bpr = c->bpr, .members = (uint32_t) c->ensemble_members };
}

/* E3: the residual stream of images [0, n) becomes n*M member copies, copy
 * i*M + m being image i's, through a scratch copy (a buffer copy's source
 * and destination must not overlap).  `scratch` holds n images. */
static void
copy_members (VmoeVulkan *vk, VkCommandBuffer cb, int n, uint32_t scratch)
{
  const VmoeConfig *c = &vk->model->config;
  VkDeviceSize image = (VkDeviceSize) vmoe_config_tokens (c) * c->embed_dim * 4;
  int members = c->ensemble_members;
  VkBufferCopy whole = { (VkDeviceSize) vk->a.x * 4, (VkDeviceSize) scratch * 4, image * n };
  vk->fn.vkCmdCopyBuffer (cb, vk->act.buffer, vk->act.buffer, 1, &whole);
  vmoe_vk_full_barrier (vk, cb);
  VkBufferCopy *regions = g_new (VkBufferCopy, (gsize) n * members);
  for (int i = 0; i < n; i++)
    for (int m = 0; m < members; m++)
      regions[i * members + m] = (VkBufferCopy) { (VkDeviceSize) scratch * 4 + image * i,
        (VkDeviceSize) vk->a.x * 4 + image * ((VkDeviceSize) i * members + m), image };
  vk->fn.vkCmdCopyBuffer (cb, vk->act.buffer, vk->act.buffer, (uint32_t) (n * members),
      regions);
  g_free (regions);
  vmoe_vk_full_barrier (vk, cb);
}

static void
record_forward (VmoeVulkan *vk, VkCommandBuffer cb, int n, gboolean frames)
{
  const VmoeConfig *c = &vk->model->config;
  uint32_t t = (uint32_t) vmoe_config_tokens (c), d = (uint32_t) c->embed_dim;
  uint32_t rows = (uint32_t) n * t, np = (uint32_t) vmoe_config_patches (c);
  uint32_t patch_len = (uint32_t) (c->in_channels * c->patch_size * c->patch_size);

  if (frames) {
    VmoePreprocessPush p = { .params_off = vk->i.params, .out_off = vk->a.input,
      .height = (uint32_t) c->image_h, .width = (uint32_t) c->image_w,
      .channels = (uint32_t) c->in_channels,
      .mean = { c->mean[0], c->mean[1], c->mean[2] },
      .std = { c->std[0], c->std[1], c->std[2] } };
    vmoe_vk_dispatch (vk, cb, VMOE_SHADER_PREPROCESS, &p, sizeof p, (p.width + 15) / 16,
        (p.height + 15) / 16, (uint32_t) n);
    vmoe_vk_full_barrier (vk, cb);
  }
  VmoeEmbedPush e = { .mode = VMOE_EMBED_IM2COL, .images = (uint32_t) n,
    .channels = (uint32_t) c->in_channels, .height = (uint32_t) c->image_h,
    .width = (uint32_t) c->image_w, .patch_size = (uint32_t) c->patch_size, .dim = d,
    .tokens = t, .class_token = c->class_token ? 1 : 0, .src_off = vk->a.input,
    .dst_off = vk->a.patches, .cls_off = vk->cls, .pos_off = vk->pos };
  vmoe_vk_dispatch_flat (vk, cb, VMOE_SHADER_EMBED, &e, sizeof e, (guint64) n * np * patch_len, 256);
  vmoe_vk_full_barrier (vk, cb);
  linear (vk, cb, vk->patch, (uint32_t) n * np, patch_len, d, vk->a.patches, vk->a.z, 0);
  e.mode = VMOE_EMBED_ASSEMBLE;
  e.src_off = vk->a.z;
  e.dst_off = vk->a.x;
  vmoe_vk_dispatch_flat (vk, cb, VMOE_SHADER_EMBED, &e, sizeof e, (guint64) rows * d, 256);
  vmoe_vk_full_barrier (vk, cb);

  /* Images of the pass: n, and from the first MoE block's FFN on the E3
   * member copies, rows of the same GEMMs (copied after that block's
   * attention, as the CPU backend does). */
  uint32_t images = (uint32_t) n;
  int layer = 0;
  for (int b = 0; b < c->depth; b++) {
    const VmoeBlock *blk = &vk->model->blocks[b];
    const BlockOffsets *o = &vk->blocks[b];
    rows = images * t;
    layernorm (vk, cb, rows, vk->a.x, d, vk->a.z, o->norm1_w, o->norm1_b);
    linear (vk, cb, o->qkv, rows, d, 3 * d, vk->a.z, vk->a.qkv, 0);
    VmoeAttentionPush at = { .tokens = t, .dim = d, .heads = (uint32_t) c->num_heads,
      .qkv_off = vk->a.qkv, .out_off = vk->a.attn };
    if (vk->attention_online)
      vmoe_vk_dispatch (vk, cb, VMOE_SHADER_ATTENTION_ONLINE, &at, sizeof at,
          (t + VMOE_ATTENTION_ONLINE_ROWS - 1) / VMOE_ATTENTION_ONLINE_ROWS,
          (uint32_t) c->num_heads, images);
    else
      vmoe_vk_dispatch (vk, cb, VMOE_SHADER_ATTENTION, &at, sizeof at,
          (t + vk->attention_block - 1) / vk->attention_block, (uint32_t) c->num_heads,
          images);
    vmoe_vk_full_barrier (vk, cb);
    linear (vk, cb, o->proj, rows, d, d, vk->a.attn, vk->a.x, VMOE_GEMM_ACCUMULATE);
    if (blk->is_moe && c->routing == VMOE_ROUTING_IMAGE && layer == 0) {
      /* Read by the expert lists after LN2, whose barrier orders it. */
      VmoeRoutePush r = route_push (vk, n, VMOE_ROUTE_IMAGE);
      vmoe_vk_dispatch_flat (vk, cb, VMOE_SHADER_ROUTE, &r, sizeof r, (guint64) n, 64);
    }
    if (blk->is_moe && layer == 0 && c->ensemble_members > 1) {
      vmoe_vk_full_barrier (vk, cb);     /* the router has read x */
      copy_members (vk, cb, n, vk->a.qkv);
      images = (uint32_t) (n * c->ensemble_members);
      rows = images * t;
    }
    layernorm (vk, cb, rows, vk->a.x, d, vk->a.z, o->norm2_w, o->norm2_b);
    if (!blk->is_moe) {
      mlp (vk, cb, o->mlp, rows, (uint32_t) c->mlp_dim);
      continue;
    }
    if (blk->has_shared)
      mlp (vk, cb, o->shared, rows, (uint32_t) c->mlp_dim);
    if (c->routing == VMOE_ROUTING_TOKEN) {
      linear (vk, cb, o->router, rows, d, (uint32_t) c->num_experts, vk->a.z,
          vk->a.probs, 0);
      VmoeRoutePush r = route_push (vk, (int) images, VMOE_ROUTE_TOKEN);
      r.layer = (uint32_t) layer;
      vmoe_vk_dispatch_flat (vk, cb, VMOE_SHADER_ROUTE, &r, sizeof r, (guint64) images, 64);
      vmoe_vk_full_barrier (vk, cb);
    }
    experts (vk, cb, o, rows);
    layer++;
  }

  if (c->pool == VMOE_POOL_TOKEN) {
    layernorm (vk, cb, images, vk->a.x, t * d, vk->a.pooled, vk->norm_w, vk->norm_b);
  } else {
    layernorm (vk, cb, rows, vk->a.x, d, vk->a.z, vk->norm_w, vk->norm_b);
    uint32_t first = c->class_token ? 1 : 0;
    VmoePoolPush p = { .images = images, .tokens = t, .first = first,
      .count = t - first, .dim = d, .in_off = vk->a.z, .out_off = vk->a.pooled };
    vmoe_vk_dispatch_flat (vk, cb, VMOE_SHADER_POOL, &p, sizeof p, (guint64) images * d, 64);
    vmoe_vk_full_barrier (vk, cb);
  }
  linear (vk, cb, vk->head, images, d, (uint32_t) c->num_classes, vk->a.pooled,
      vk->a.logits, 0);

  VkDeviceSize float_bytes = (VkDeviceSize) (vk->a.end - vk->a.logits) * 4;
  VkBufferCopy floats = { (VkDeviceSize) vk->a.logits * 4, 0, float_bytes };
  VkBufferCopy ints = { (VkDeviceSize) vk->i.experts * 4, float_bytes,
    (VkDeviceSize) (vk->i.end - vk->i.experts) * 4 };
  vk->fn.vkCmdCopyBuffer (cb, vk->act.buffer, vk->download.buffer, 1, &floats);
  vk->fn.vkCmdCopyBuffer (cb, vk->ints.buffer, vk->download.buffer, 1, &ints);
  vmoe_vk_full_barrier (vk, cb);
}

/* The recorded forward pass for n images, recorded on first use. */
VkCommandBuffer
vmoe_vk_forward_commands (VmoeVulkan *vk, int n, gboolean frames, GError **error)
{
  for (guint j = 0; j < vk->recorded->len; j++) {
    Recorded *rec = &g_array_index (vk->recorded, Recorded, j);
    if (rec->n == n && rec->frames == frames)
      return rec->cb;
  }
  VkCommandBuffer cb = vmoe_vk_new_command_buffer (vk, error);
  if (!cb)
    return VK_NULL_HANDLE;
  if (!vmoe_vk_begin (vk, cb, FALSE, error)) {
    vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &cb);
    return VK_NULL_HANDLE;
  }
  if (vk->queries) {
    /* Profiling times the latest recorded batch shape only. */
    vk->n_queries = 0;
    memset (vk->profile_ms, 0, sizeof vk->profile_ms);
    vk->profile_calls = 0;
    vk->fn.vkCmdResetQueryPool (cb, vk->queries, 0, 2 * VMOE_VK_MAX_PROFILED);
  }
  record_forward (vk, cb, n, frames);
  if (!vmoe_vk_check (vk->fn.vkEndCommandBuffer (cb), "recording the forward pass", error)) {
    vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &cb);
    return VK_NULL_HANDLE;
  }
  Recorded rec = { n, frames, cb };
  g_array_append_val (vk->recorded, rec);
  return cb;
}
