/* Commands: recording dispatches and barriers, submitting and waiting on
 * the one fence (where a lost device is noticed, or injected for tests),
 * and one-off copies between host memory and a pool through a staging
 * buffer. */
#include "vk-internal.h"

#include <string.h>

void
vmoe_vk_full_barrier (VmoeVulkan *vk, VkCommandBuffer cb)
{
  /* Every dispatch of the forward pass reads what the one before wrote, so
   * this is placed between dependent steps only, not after every command. */
  VkMemoryBarrier b = { .sType = VK_STRUCTURE_TYPE_MEMORY_BARRIER,
    .srcAccessMask = VK_ACCESS_SHADER_WRITE_BIT | VK_ACCESS_TRANSFER_WRITE_BIT,
    .dstAccessMask = VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT
        | VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_HOST_READ_BIT };
  vk->fn.vkCmdPipelineBarrier (cb,
      VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT,
      VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT | VK_PIPELINE_STAGE_TRANSFER_BIT
          | VK_PIPELINE_STAGE_HOST_BIT, 0, 1, &b, 0, NULL, 0, NULL);
}

void
vmoe_vk_dispatch_pipeline (VmoeVulkan *vk, VkCommandBuffer cb, VmoeShader shader,
    VkPipeline pipeline, const void *push, size_t size, uint32_t gx, uint32_t gy,
    uint32_t gz)
{
  gboolean timed = vk->queries && vk->n_queries < VMOE_VK_MAX_PROFILED;
  if (timed) {
    vk->query_shader[vk->n_queries] = shader;
    vk->fn.vkCmdWriteTimestamp (cb, VK_PIPELINE_STAGE_TOP_OF_PIPE_BIT, vk->queries,
        2 * vk->n_queries);
  }
  vk->fn.vkCmdBindPipeline (cb, VK_PIPELINE_BIND_POINT_COMPUTE, pipeline);
  vk->fn.vkCmdPushConstants (cb, vk->pipeline_layout, VK_SHADER_STAGE_COMPUTE_BIT,
      0, (uint32_t) size, push);
  vk->fn.vkCmdDispatch (cb, gx, gy, gz);
  if (timed)
    vk->fn.vkCmdWriteTimestamp (cb, VK_PIPELINE_STAGE_BOTTOM_OF_PIPE_BIT, vk->queries,
        2 * vk->n_queries++ + 1);
}

void
vmoe_vk_dispatch (VmoeVulkan *vk, VkCommandBuffer cb, VmoeShader shader,
    const void *push, size_t size, uint32_t gx, uint32_t gy, uint32_t gz)
{
  vmoe_vk_dispatch_pipeline (vk, cb, shader, vk->pipelines[shader], push, size, gx, gy, gz);
}


/* Dispatches `items` over workgroups of `per_group`, spilling past 65535
 * workgroups into y (the shaders' flat_group_id). */
void
vmoe_vk_dispatch_flat (VmoeVulkan *vk, VkCommandBuffer cb, VmoeShader shader,
    const void *push, size_t size, guint64 items, uint32_t per_group)
{
  guint64 groups = MAX ((items + per_group - 1) / per_group, 1);
  uint32_t gx = (uint32_t) MIN (groups, 65535), gy = (uint32_t) ((groups + gx - 1) / gx);
  vmoe_vk_dispatch (vk, cb, shader, push, size, gx, gy, 1);
}

gboolean
vmoe_vk_begin (VmoeVulkan *vk, VkCommandBuffer cb, gboolean once, GError **error)
{
  VkCommandBufferBeginInfo info = { .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
    .flags = once ? VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT : 0 };
  if (!vmoe_vk_check (vk->fn.vkBeginCommandBuffer (cb, &info), "recording commands", error))
    return FALSE;
  vk->fn.vkCmdBindDescriptorSets (cb, VK_PIPELINE_BIND_POINT_COMPUTE,
      vk->pipeline_layout, 0, 1, &vk->set, 0, NULL);
  return TRUE;
}

/* Submits the command buffers and waits: the one fence wait of a call. */
gboolean
vmoe_vk_submit_and_wait (VmoeVulkan *vk, const VkCommandBuffer *cbs, uint32_t count,
    GError **error)
{
  if (vk->lost) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: the device was lost earlier; create a new session");
    return FALSE;
  }
  VkSubmitInfo info = { .sType = VK_STRUCTURE_TYPE_SUBMIT_INFO,
    .commandBufferCount = count, .pCommandBuffers = cbs };
  VkResult r = VK_ERROR_DEVICE_LOST;
  if (vk->submits_before_loss != 0) {
    if (vk->submits_before_loss > 0)
      vk->submits_before_loss--;
    r = vk->fn.vkQueueSubmit (vk->queue, 1, &info, vk->fence);
  }
  if (r == VK_SUCCESS)
    r = vk->fn.vkWaitForFences (vk->device, 1, &vk->fence, VK_TRUE, VMOE_VK_FENCE_TIMEOUT_NS);
  if (r == VK_SUCCESS)
    r = vk->fn.vkResetFences (vk->device, 1, &vk->fence);
  if (r == VK_ERROR_DEVICE_LOST || r == VK_TIMEOUT)
    vk->lost = TRUE;
  return vmoe_vk_check (r, "running the forward pass", error);
}

VkCommandBuffer
vmoe_vk_new_command_buffer (VmoeVulkan *vk, GError **error)
{
  VkCommandBufferAllocateInfo info = {
    .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
    .commandPool = vk->command_pool, .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
    .commandBufferCount = 1 };
  VkCommandBuffer cb = VK_NULL_HANDLE;
  if (!vmoe_vk_check (vk->fn.vkAllocateCommandBuffers (vk->device, &info, &cb),
          "allocating a command buffer", error))
    return VK_NULL_HANDLE;
  return cb;
}

void
vmoe_vk_forget_recorded (VmoeVulkan *vk)
{
  for (guint j = 0; vk->recorded && j < vk->recorded->len; j++) {
    Recorded *rec = &g_array_index (vk->recorded, Recorded, j);
    vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &rec->cb);
  }
  if (vk->recorded)
    g_array_set_size (vk->recorded, 0);
}

/* Copies host data into (or out of) a device pool through a temporary
 * staging pool: weight upload at creation and the op tests. */
gboolean
vmoe_vk_transfer (VmoeVulkan *vk, Pool *pool, VkDeviceSize offset, void *data,
    VkDeviceSize bytes, gboolean to_device, GError **error)
{
  if (offset + bytes > pool->size) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "vulkan: transfer outside the buffer");
    return FALSE;
  }
  Pool staging = { 0 };
  VkCommandBuffer cb = VK_NULL_HANDLE;
  gboolean ok = vmoe_vk_pool_new (vk, &staging, bytes, TRUE, "staging buffer", error)
      && (cb = vmoe_vk_new_command_buffer (vk, error)) != VK_NULL_HANDLE
      && vmoe_vk_begin (vk, cb, TRUE, error);
  if (ok) {
    if (to_device)
      memcpy (staging.mapped, data, bytes);
    VkBufferCopy region = { to_device ? 0 : offset, to_device ? offset : 0, bytes };
    if (to_device)
      vk->fn.vkCmdCopyBuffer (cb, staging.buffer, pool->buffer, 1, &region);
    else
      vk->fn.vkCmdCopyBuffer (cb, pool->buffer, staging.buffer, 1, &region);
    vmoe_vk_full_barrier (vk, cb);
    ok = vmoe_vk_check (vk->fn.vkEndCommandBuffer (cb), "recording commands", error)
        && vmoe_vk_submit_and_wait (vk, &cb, 1, error);
    if (ok && !to_device)
      memcpy (data, staging.mapped, bytes);
  }
  if (cb)
    vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &cb);
  vmoe_vk_pool_free (vk, &staging);
  return ok;
}
