/* The Vulkan backend: the forward pass of docs/design.md in compute shaders. */
#ifndef VMOE_VK_BACKEND_H
#define VMOE_VK_BACKEND_H

#include "../backend.h"
#include "vk-push.h"

typedef struct VmoeVulkan VmoeVulkan;

/* device: NULL or "auto" (discrete, then integrated GPU), a device index,
 * "cpu" (the first CPU device, e.g. lavapipe), or part of a device name.
 * A CPU device is taken only when named; with gpu_only it is refused even
 * then (the `auto` backend).  fp16 stores the GEMM weights as half floats. */
VmoeVulkan *vmoe_vulkan_new (VmoeModel *model, VmoeRoutingParams routing,
    const char *device, gboolean gpu_only, gboolean fp16, GError **error);
void vmoe_vulkan_free (VmoeVulkan *vk);
const char *vmoe_vulkan_device_name (VmoeVulkan *vk);

gboolean vmoe_vulkan_forward_f32 (VmoeVulkan *vk, const float *input, int n,
    VmoeRawOutput *out, GError **error);
gboolean vmoe_vulkan_forward_u8 (VmoeVulkan *vk, const VmoeImage *images,
    int n, VmoeRawOutput *out, GError **error);

/* Single ops, for the op tests: write host data into a buffer (0 weights,
 * 1 activations, 2 integers) at an element offset, run one shader, read
 * back.  The activation and integer buffers hold at least `elements`. */
typedef enum { VMOE_VK_WEIGHTS, VMOE_VK_ACTIVATIONS, VMOE_VK_INTEGERS } VmoeVkBuffer;
gboolean vmoe_vulkan_test_reserve (VmoeVulkan *vk, size_t weights,
    size_t elements, GError **error);
gboolean vmoe_vulkan_test_write (VmoeVulkan *vk, VmoeVkBuffer buffer,
    size_t offset, const void *data, size_t count, GError **error);
gboolean vmoe_vulkan_test_read (VmoeVulkan *vk, VmoeVkBuffer buffer,
    size_t offset, void *data, size_t count, GError **error);
gboolean vmoe_vulkan_test_dispatch (VmoeVulkan *vk, VmoeShader shader,
    const void *push, size_t push_size, uint32_t gx, uint32_t gy, uint32_t gz,
    GError **error);
/* From now on, the device reports itself lost after `submissions` more
 * queue submissions, as a real loss would (what
 * $VMOE_VULKAN_LOSE_DEVICE_AFTER does for a new session). */
void vmoe_vulkan_test_lose_device_after (VmoeVulkan *vk, gint64 submissions);

#endif
