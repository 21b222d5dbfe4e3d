/* What the parts of the Vulkan backend share: the loaded Vulkan functions,
 * the session state (VmoeVulkan), and each part's entry points.  A session
 * owns one device, a compute queue, and a few large buffers ("pools"): the
 * weights (uploaded once), the activations (floats), the integers (routing
 * decisions, expert lists, results), the raw frames, and two host-visible
 * staging pools, one up, one down.  Every shader sees those pools through
 * the one descriptor set and finds its tensors by element offsets in push
 * constants.  Nothing outside src/vulkan/ includes this header. */
#ifndef VMOE_VK_INTERNAL_H
#define VMOE_VK_INTERNAL_H

#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

#include "vk-backend.h"

/* A hung or lost GPU ends a call with an error after this long. */
#define VMOE_VK_FENCE_TIMEOUT_NS (120ull * 1000 * 1000 * 1000)
/* Timestamp pairs the profiler records per recorded forward pass. */
#define VMOE_VK_MAX_PROFILED 4096

/* Every Vulkan function the backend calls, loaded through the instance. */
#define VMOE_VK_INSTANCE_FUNCS(X) \
  X (vkEnumeratePhysicalDevices) \
  X (vkGetPhysicalDeviceProperties) X (vkGetPhysicalDeviceProperties2) \
  X (vkGetPhysicalDeviceFeatures2) \
  X (vkGetPhysicalDeviceQueueFamilyProperties) \
  X (vkGetPhysicalDeviceMemoryProperties) X (vkCreateDevice) \
  X (vkDestroyDevice) X (vkGetDeviceQueue) X (vkCreateBuffer) \
  X (vkDestroyBuffer) X (vkGetBufferMemoryRequirements) X (vkAllocateMemory) \
  X (vkFreeMemory) X (vkBindBufferMemory) X (vkMapMemory) \
  X (vkCreateShaderModule) X (vkDestroyShaderModule) \
  X (vkCreateDescriptorSetLayout) X (vkDestroyDescriptorSetLayout) \
  X (vkCreatePipelineLayout) X (vkDestroyPipelineLayout) \
  X (vkCreateComputePipelines) X (vkDestroyPipeline) \
  X (vkCreateDescriptorPool) X (vkDestroyDescriptorPool) \
  X (vkAllocateDescriptorSets) X (vkUpdateDescriptorSets) \
  X (vkCreateCommandPool) X (vkDestroyCommandPool) \
  X (vkAllocateCommandBuffers) X (vkFreeCommandBuffers) \
  X (vkBeginCommandBuffer) X (vkEndCommandBuffer) X (vkResetCommandBuffer) \
  X (vkCmdBindPipeline) X (vkCmdBindDescriptorSets) X (vkCmdPushConstants) \
  X (vkCmdDispatch) X (vkCmdPipelineBarrier) X (vkCmdCopyBuffer) \
  X (vkCmdFillBuffer) X (vkQueueSubmit) X (vkCreateFence) X (vkDestroyFence) \
  X (vkWaitForFences) X (vkResetFences) X (vkDeviceWaitIdle) \
  X (vkCreateQueryPool) X (vkDestroyQueryPool) X (vkCmdResetQueryPool) \
  X (vkCmdWriteTimestamp) X (vkGetQueryPoolResults)

typedef struct {
#define DECLARE(name) PFN_##name name;
  VMOE_VK_INSTANCE_FUNCS (DECLARE)
#undef DECLARE
} VkFuncs;

typedef struct {
  VkBuffer buffer;
  VkDeviceMemory memory;
  VkDeviceSize size;
  void *mapped;               /* host-visible pools only */
} Pool;

typedef struct {
  uint32_t w, b;              /* b: VMOE_VK_NONE when absent */
} LinearOffsets;

typedef struct {
  LinearOffsets fc1, fc2;
} MlpOffsets;

typedef struct {
  uint32_t norm1_w, norm1_b, norm2_w, norm2_b;
  LinearOffsets qkv, proj, router;
  MlpOffsets mlp, shared;
  MlpOffsets experts;         /* expert 0's; the others follow at strides */
  uint32_t fc1_w_stride, fc1_b_stride, fc2_w_stride, fc2_b_stride;
} BlockOffsets;

/* The forward pass of one batch shape, recorded once and replayed. */
typedef struct {
  int n;
  gboolean frames;
  VkCommandBuffer cb;
} Recorded;

struct VmoeVulkan {
  VmoeModel *model;
  VmoeRoutingParams routing;
  int k;                       /* top_k, at least 1 for sizing */
  gboolean fp16;
  VkFuncs fn;
  VkInstance instance;
  VkPhysicalDevice physical;
  VkPhysicalDeviceProperties props;
  VkDeviceSize max_allocation; /* maxMemoryAllocationSize */
  VkDevice device;
  VkQueue queue;
  uint32_t queue_family;
  VkPhysicalDeviceMemoryProperties memory_props;

  VkDescriptorSetLayout set_layout;
  VkPipelineLayout pipeline_layout;
  VkPipeline pipelines[VMOE_N_SHADERS];
  VkDescriptorPool descriptor_pool;
  VkDescriptorSet set;
  VkCommandPool command_pool;
  VkCommandBuffer upload_cb;
  VkFence fence;
  gboolean lost;
  /* $VMOE_VULKAN_LOSE_DEVICE_AFTER: submissions left before the device
   * reports itself lost (fault injection for tests); -1: never */
  gint64 submits_before_loss;
  uint32_t attention_block;    /* query rows per attention workgroup */
  /* attention_online.comp where the head size fits it, unless
   * $VMOE_VULKAN_ATTENTION=blocks asks for attention.comp */
  gboolean attention_online;
  int forced_tile;             /* $VMOE_VULKAN_GEMM_TILE: 0, or a variant + 1 */
  /* $VMOE_VULKAN_PROFILE: GPU time per shader, printed after each call */
  VkQueryPool queries;
  uint32_t n_queries;
  VmoeShader *query_shader;    /* shader of timestamp pair q */
  double profile_ms[VMOE_N_SHADERS];
  int profile_calls;
  /* GEMM pipelines by weight type (fp32, fp16) and tile size */
  VkPipeline gemm_tiles[2][3];

  Pool weights, weights16, act, ints, frames, upload, download;

  /* weights, element offsets */
  LinearOffsets patch, router, head;
  uint32_t cls, pos, norm_w, norm_b;
  BlockOffsets *blocks;

  /* activations and integers for `reserved` images, element offsets */
  int reserved;
  struct {
    uint32_t input, x, z, qkv, attn, hidden, expert_out, patches, probs,
        entry_gate, pooled, logits, gates, end;
  } a;
  struct {
    uint32_t params, entry_expert, counts, lists, order, experts,
        tokens_per_expert, dropped, end;
  } i;
  uint32_t list_cap;
  GArray *recorded;            /* Recorded */
};

/* loader.c */
PFN_vkGetInstanceProcAddr vmoe_vk_loader (GError **error);
VkInstance vmoe_vk_shared_instance (PFN_vkGetInstanceProcAddr get_proc,
    GError **error);
gboolean vmoe_vk_load_functions (VmoeVulkan *vk, PFN_vkGetInstanceProcAddr get_proc,
    GError **error);
const char *vmoe_vk_result_text (VkResult r);
/* TRUE on VK_SUCCESS; else a GError naming `what` failed and why. */
gboolean vmoe_vk_check (VkResult r, const char *what, GError **error);

/* device.c */
gboolean vmoe_vk_choose_device (VmoeVulkan *vk, const char *request,
    gboolean gpu_only, GError **error);
gboolean vmoe_vk_create_device (VmoeVulkan *vk, GError **error);

/* pipelines.c */
/* Output tiles of the GEMM variants, square. */
extern const uint32_t vmoe_vk_gemm_tile_sizes[3];
gboolean vmoe_vk_create_pipelines (VmoeVulkan *vk, GError **error);
/* Bytes of shared memory each attention kernel declares. */
guint64 vmoe_vk_attention_shared_bytes (uint32_t query_block, uint32_t tokens,
    uint32_t head_dim);
guint64 vmoe_vk_attention_online_shared_bytes (uint32_t head_dim);

/* weights.c */
gboolean vmoe_vk_upload_weights (VmoeVulkan *vk, GError **error);

/* workspace.c */
gboolean vmoe_vk_pool_new (VmoeVulkan *vk, Pool *pool, guint64 bytes,
    gboolean host, const char *what, GError **error);
void vmoe_vk_pool_free (VmoeVulkan *vk, Pool *pool);
/* Points the descriptor set at the current pools (re-records forward passes). */
void vmoe_vk_bind_pools (VmoeVulkan *vk);
/* Grows the activation, integer and staging pools to n images. */
gboolean vmoe_vk_reserve (VmoeVulkan *vk, int n, GError **error);

/* commands.c */
void vmoe_vk_full_barrier (VmoeVulkan *vk, VkCommandBuffer cb);
void vmoe_vk_dispatch_pipeline (VmoeVulkan *vk, VkCommandBuffer cb,
    VmoeShader shader, VkPipeline pipeline, const void *push, size_t size,
    uint32_t gx, uint32_t gy, uint32_t gz);
void vmoe_vk_dispatch (VmoeVulkan *vk, VkCommandBuffer cb, VmoeShader shader,
    const void *push, size_t size, uint32_t gx, uint32_t gy, uint32_t gz);
void vmoe_vk_dispatch_flat (VmoeVulkan *vk, VkCommandBuffer cb, VmoeShader shader,
    const void *push, size_t size, guint64 items, uint32_t per_group);
gboolean vmoe_vk_begin (VmoeVulkan *vk, VkCommandBuffer cb, gboolean once,
    GError **error);
gboolean vmoe_vk_submit_and_wait (VmoeVulkan *vk, const VkCommandBuffer *cbs,
    uint32_t count, GError **error);
VkCommandBuffer vmoe_vk_new_command_buffer (VmoeVulkan *vk, GError **error);
void vmoe_vk_forget_recorded (VmoeVulkan *vk);
gboolean vmoe_vk_transfer (VmoeVulkan *vk, Pool *pool, VkDeviceSize offset,
    void *data, VkDeviceSize bytes, gboolean to_device, GError **error);

/* forward.c */
VkCommandBuffer vmoe_vk_forward_commands (VmoeVulkan *vk, int n, gboolean frames,
    GError **error);

/* profiler.c */
/* Starts timing dispatches when $VMOE_VULKAN_PROFILE is set and the device
 * has timestamps. */
void vmoe_vk_profiler_start (VmoeVulkan *vk);
void vmoe_vk_profile_report (VmoeVulkan *vk, int n);

#endif
