/* The workspace: device memory pools, and the plan of where each
 * activation and integer tensor of a batch lies in them.  Pools grow to the
 * largest batch seen; growing them re-binds the descriptor set, which drops
 * the recorded forward passes. */
#include "vk-internal.h"

#include <string.h>

static int
memory_type (VmoeVulkan *vk, uint32_t bits, VkMemoryPropertyFlags want)
{
  for (uint32_t t = 0; t < vk->memory_props.memoryTypeCount; t++)
    if ((bits & (1u << t))
        && (vk->memory_props.memoryTypes[t].propertyFlags & want) == want)
      return (int) t;
  return -1;
}

void
vmoe_vk_pool_free (VmoeVulkan *vk, Pool *pool)
{
  if (pool->buffer)
    vk->fn.vkDestroyBuffer (vk->device, pool->buffer, NULL);
  if (pool->memory)
    vk->fn.vkFreeMemory (vk->device, pool->memory, NULL);
  memset (pool, 0, sizeof *pool);
}

gboolean
vmoe_vk_pool_new (VmoeVulkan *vk, Pool *pool, guint64 bytes, gboolean host,
    const char *what, GError **error)
{
  vmoe_vk_pool_free (vk, pool);
  bytes = MAX ((bytes + 15) & ~(guint64) 15, 16);
  if (!host && bytes > vk->props.limits.maxStorageBufferRange) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: the %s need %" G_GUINT64_FORMAT " bytes, more than this "
        "device's maxStorageBufferRange (%u); use a smaller batch or backend cpu",
        what, bytes, vk->props.limits.maxStorageBufferRange);
    return FALSE;
  }
  if (vk->max_allocation && bytes > vk->max_allocation) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: the %s need %" G_GUINT64_FORMAT " bytes, more than this "
        "device's maxMemoryAllocationSize (%" G_GUINT64_FORMAT "); use a smaller "
        "batch or backend cpu", what, bytes, (guint64) vk->max_allocation);
    return FALSE;
  }
  VkBufferCreateInfo info = { .sType = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO,
    .size = bytes, .sharingMode = VK_SHARING_MODE_EXCLUSIVE,
    .usage = VK_BUFFER_USAGE_TRANSFER_SRC_BIT | VK_BUFFER_USAGE_TRANSFER_DST_BIT
        | (host ? 0 : VK_BUFFER_USAGE_STORAGE_BUFFER_BIT) };
  if (!vmoe_vk_check (vk->fn.vkCreateBuffer (vk->device, &info, NULL, &pool->buffer),
          "creating a buffer", error))
    return FALSE;
  VkMemoryRequirements req;
  vk->fn.vkGetBufferMemoryRequirements (vk->device, pool->buffer, &req);
  int type = host ? memory_type (vk, req.memoryTypeBits,
      VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT)
      : memory_type (vk, req.memoryTypeBits, VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT);
  if (type < 0)
    type = memory_type (vk, req.memoryTypeBits, 0);
  VkMemoryAllocateInfo alloc = { .sType = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO,
    .allocationSize = req.size, .memoryTypeIndex = (uint32_t) type };
  VkResult r = vk->fn.vkAllocateMemory (vk->device, &alloc, NULL, &pool->memory);
  if (r != VK_SUCCESS) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: allocating %" G_GUINT64_FORMAT " bytes for the %s failed: %s",
        (guint64) req.size, what, vmoe_vk_result_text (r));
    return FALSE;
  }
  if (!vmoe_vk_check (vk->fn.vkBindBufferMemory (vk->device, pool->buffer, pool->memory, 0),
          "binding buffer memory", error))
    return FALSE;
  if (host && !vmoe_vk_check (vk->fn.vkMapMemory (vk->device, pool->memory, 0,
              VK_WHOLE_SIZE, 0, &pool->mapped), "mapping memory", error))
    return FALSE;
  pool->size = bytes;
  return TRUE;
}

void
vmoe_vk_bind_pools (VmoeVulkan *vk)
{
  Pool *pools[5] = { &vk->weights, &vk->act, &vk->ints, &vk->frames,
    vk->weights16.buffer ? &vk->weights16 : &vk->weights };
  VkDescriptorBufferInfo infos[5];
  VkWriteDescriptorSet writes[5];
  for (int b = 0; b < 5; b++) {
    infos[b] = (VkDescriptorBufferInfo) { pools[b]->buffer, 0, VK_WHOLE_SIZE };
    writes[b] = (VkWriteDescriptorSet) { .sType = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET,
      .dstSet = vk->set, .dstBinding = (uint32_t) b, .descriptorCount = 1,
      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .pBufferInfo = &infos[b] };
  }
  /* Recorded command buffers refer to the set: re-record after an update. */
  vmoe_vk_forget_recorded (vk);
  vk->fn.vkUpdateDescriptorSets (vk->device, 5, writes, 0, NULL);
}

/* Element offsets of every activation and integer tensor for n images;
 * FALSE when they do not fit 32-bit offsets. */
static gboolean
plan_workspace (VmoeVulkan *vk, int n, GError **error)
{
  const VmoeConfig *c = &vk->model->config;
  guint64 t = vmoe_config_tokens (c), d = c->embed_dim, k = vk->k;
  /* Activations hold the E3 member copies (n*M images); the input, the
   * patches and the frame parameters the n images. */
  guint64 copies = (guint64) n * c->ensemble_members;
  guint64 rows = copies * t, entries = rows * k;
  guint64 patches = (guint64) n * vmoe_config_patches (c);
  guint64 patch_len = (guint64) c->in_channels * c->patch_size * c->patch_size;
  guint64 experts = MAX (c->num_experts, 1), layers = MAX (c->n_moe_layers, 1);
  guint64 hidden = MAX (rows * c->mlp_dim,
      c->routing != VMOE_ROUTING_NONE ? entries * c->expert_mlp_dim : 0);
  guint64 at = 0;
#define PLACE(field, count) (vk->a.field = (uint32_t) at, at += (count))
  PLACE (input, (guint64) n * vmoe_config_input_floats (c));
  PLACE (x, rows * d);
  PLACE (z, MAX (rows, patches) * d);
  PLACE (qkv, rows * 3 * d);
  PLACE (attn, rows * d);
  PLACE (hidden, hidden);
  PLACE (expert_out, entries * d);
  PLACE (patches, patches * patch_len);
  PLACE (probs, rows * experts);
  PLACE (entry_gate, entries);
  PLACE (pooled, copies * d);
  PLACE (logits, copies * c->num_classes);
  PLACE (gates, copies * k);
  PLACE (end, 0);
#undef PLACE
  guint64 floats = at;
  at = 0;
#define PLACE(field, count) (vk->i.field = (uint32_t) at, at += (count))
  PLACE (params, (guint64) n * VMOE_FRAME_PARAMS);
  PLACE (entry_expert, entries);
  PLACE (counts, experts);
  PLACE (lists, experts * entries);
  PLACE (order, rows);
  PLACE (experts, copies * k);
  PLACE (tokens_per_expert, (guint64) n * layers * experts);
  PLACE (dropped, copies * layers);
  PLACE (end, 0);
#undef PLACE
  if (floats >= G_MAXUINT32 || at >= G_MAXUINT32) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: a batch of %d images is too large for this model on the "
        "vulkan backend", n);
    return FALSE;
  }
  vk->list_cap = (uint32_t) entries;
  return TRUE;
}

gboolean
vmoe_vk_reserve (VmoeVulkan *vk, int n, GError **error)
{
  if (n <= vk->reserved)
    return TRUE;
  if (!plan_workspace (vk, n, error))
    return FALSE;
  const VmoeConfig *c = &vk->model->config;
  guint64 down = (guint64) (vk->a.end - vk->a.logits) * 4 + (guint64) (vk->i.end - vk->i.experts) * 4;
  guint64 input = (guint64) n * vmoe_config_input_floats (c) * 4;
  guint64 up = MAX (input, vk->upload.size);
  if (!vmoe_vk_pool_new (vk, &vk->act, (guint64) vk->a.end * 4, FALSE, "activations", error)
      || !vmoe_vk_pool_new (vk, &vk->ints, (guint64) vk->i.end * 4, FALSE, "routing buffers", error)
      || !vmoe_vk_pool_new (vk, &vk->download, down, TRUE, "result buffer", error)
      || !vmoe_vk_pool_new (vk, &vk->upload, up, TRUE, "upload buffer", error)
      || (!vk->frames.buffer && !vmoe_vk_pool_new (vk, &vk->frames, 16, FALSE, "frames", error))) {
    vk->reserved = 0;
    return FALSE;
  }
  vmoe_vk_bind_pools (vk);
  vk->reserved = n;
  return TRUE;
}
