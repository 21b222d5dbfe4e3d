/* Test hooks for the op tests (tests/test_vulkan.c): raw access to the
 * weight, activation and integer pools, single dispatches of one shader,
 * and device-loss injection.  Not used by sessions. */
#include "vk-internal.h"

static Pool *
test_pool (VmoeVulkan *vk, VmoeVkBuffer buffer)
{
  return buffer == VMOE_VK_WEIGHTS ? &vk->weights
      : buffer == VMOE_VK_ACTIVATIONS ? &vk->act : &vk->ints;
}

gboolean
vmoe_vulkan_test_reserve (VmoeVulkan *vk, size_t weights, size_t elements,
    GError **error)
{
  vk->reserved = 0;           /* the model's workspace is gone */
  if (!vmoe_vk_pool_new (vk, &vk->weights, weights * 4, FALSE, "weights", error)
      || !vmoe_vk_pool_new (vk, &vk->act, elements * 4, FALSE, "activations", error)
      || !vmoe_vk_pool_new (vk, &vk->ints, elements * 4, FALSE, "integers", error))
    return FALSE;
  vmoe_vk_bind_pools (vk);
  return TRUE;
}

gboolean
vmoe_vulkan_test_write (VmoeVulkan *vk, VmoeVkBuffer buffer, size_t offset,
    const void *data, size_t count, GError **error)
{
  return vmoe_vk_transfer (vk, test_pool (vk, buffer), offset * 4, (void *) data, count * 4,
      TRUE, error);
}

gboolean
vmoe_vulkan_test_read (VmoeVulkan *vk, VmoeVkBuffer buffer, size_t offset,
    void *data, size_t count, GError **error)
{
  return vmoe_vk_transfer (vk, test_pool (vk, buffer), offset * 4, data, count * 4, FALSE, error);
}

gboolean
vmoe_vulkan_test_dispatch (VmoeVulkan *vk, VmoeShader shader, const void *push,
    size_t push_size, uint32_t gx, uint32_t gy, uint32_t gz, GError **error)
{
  if (!vk->pipelines[shader]) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "vulkan: shader %d is not built for this session", shader);
    return FALSE;
  }
  VkCommandBuffer cb = vmoe_vk_new_command_buffer (vk, error);
  if (!cb)
    return FALSE;
  gboolean ok = vmoe_vk_begin (vk, cb, TRUE, error);
  if (ok) {
    vmoe_vk_dispatch (vk, cb, shader, push, push_size, gx, gy, gz);
    vmoe_vk_full_barrier (vk, cb);
    ok = vmoe_vk_check (vk->fn.vkEndCommandBuffer (cb), "recording commands", error)
        && vmoe_vk_submit_and_wait (vk, &cb, 1, error);
  }
  vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &cb);
  return ok;
}

void
vmoe_vulkan_test_lose_device_after (VmoeVulkan *vk, gint64 submissions)
{
  vk->submits_before_loss = submissions;
}
