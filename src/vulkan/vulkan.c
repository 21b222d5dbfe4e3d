/* The Vulkan backend.
 *
 * The loader is opened at run time, so a machine without libvulkan gets a
 * GError instead of a library that fails to load.  A session owns one
 * device, a compute queue, and a few large buffers: the weights (uploaded
 * once), the activations (floats), the integers (routing decisions, expert
 * lists, results), the raw frames, and two host-visible staging buffers, one
 * up, one down.  Every shader sees those buffers through the one descriptor
 * set and finds its tensors by offsets in push constants.  The forward pass
 * of a batch size is recorded once into a command buffer and replayed; a
 * call records only the small upload, submits both, and waits on one fence.
 * Routing happens on the GPU: the expert GEMMs read their rows from lists
 * the routing shaders wrote, so nothing is read back mid-pass. */
#define VK_NO_PROTOTYPES
#include <vulkan/vulkan.h>

#include "vk-backend.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>

#define FENCE_TIMEOUT_NS (120ull * 1000 * 1000 * 1000)
/* Limits of the shaders' fixed-size arrays (route.comp). */
#define MAX_EXPERTS 256
#define MAX_TOP_K 16

/* ------------------------------------------------------------ shaders */

static const uint32_t gemm_spv[] =
#include "gemm.spv.h"
    ;
static const uint32_t gemm_f16_spv[] =
#include "gemm_f16.spv.h"
    ;
static const uint32_t layernorm_spv[] =
#include "layernorm.spv.h"
    ;
static const uint32_t attention_spv[] =
#include "attention.spv.h"
    ;
static const uint32_t attention_online_spv[] =
#include "attention_online.spv.h"
    ;
static const uint32_t embed_spv[] =
#include "embed.spv.h"
    ;
static const uint32_t pool_spv[] =
#include "pool.spv.h"
    ;
static const uint32_t route_spv[] =
#include "route.spv.h"
    ;
static const uint32_t experts_spv[] =
#include "experts.spv.h"
    ;
static const uint32_t preprocess_spv[] =
#include "preprocess.spv.h"
    ;

static const struct {
  const uint32_t *code;
  size_t size;
} shader_code[VMOE_N_SHADERS] = {
  [VMOE_SHADER_GEMM] = { gemm_spv, sizeof gemm_spv },
  [VMOE_SHADER_GEMM_F16] = { gemm_f16_spv, sizeof gemm_f16_spv },
  [VMOE_SHADER_LAYERNORM] = { layernorm_spv, sizeof layernorm_spv },
  [VMOE_SHADER_ATTENTION] = { attention_spv, sizeof attention_spv },
  [VMOE_SHADER_ATTENTION_ONLINE] = { attention_online_spv, sizeof attention_online_spv },
  [VMOE_SHADER_EMBED] = { embed_spv, sizeof embed_spv },
  [VMOE_SHADER_POOL] = { pool_spv, sizeof pool_spv },
  [VMOE_SHADER_ROUTE] = { route_spv, sizeof route_spv },
  [VMOE_SHADER_EXPERTS] = { experts_spv, sizeof experts_spv },
  [VMOE_SHADER_PREPROCESS] = { preprocess_spv, sizeof preprocess_spv },
};

/* ------------------------------------------------------------ loader */

#define INSTANCE_FUNCS(X) \
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
  INSTANCE_FUNCS (DECLARE)
#undef DECLARE
} VkFuncs;

static PFN_vkGetInstanceProcAddr
loader (GError **error)
{
  static gsize once = 0;
  static PFN_vkGetInstanceProcAddr get_proc;
  static char *why;
  if (g_once_init_enter (&once)) {
    /* VMOE_VULKAN_LOADER names another loader (tests use a missing one). */
    const char *path = g_getenv ("VMOE_VULKAN_LOADER");
    void *lib = dlopen (path ? path : "libvulkan.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib)
      get_proc = (PFN_vkGetInstanceProcAddr) dlsym (lib, "vkGetInstanceProcAddr");
    else
      why = g_strdup (dlerror ());
    g_once_init_leave (&once, 1);
  }
  if (!get_proc)
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: no Vulkan loader (libvulkan.so.1): %s; install libvulkan1 "
        "and a driver, or use backend cpu", why ? why : "no vkGetInstanceProcAddr");
  return get_proc;
}

static const char *
result_text (VkResult r)
{
  switch (r) {
    case VK_ERROR_OUT_OF_HOST_MEMORY: return "out of host memory";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY: return "out of device memory";
    case VK_ERROR_DEVICE_LOST: return "the device was lost";
    case VK_ERROR_INITIALIZATION_FAILED: return "initialization failed";
    case VK_ERROR_INCOMPATIBLE_DRIVER: return "incompatible driver";
    case VK_ERROR_FEATURE_NOT_PRESENT: return "a feature is not present";
    case VK_ERROR_EXTENSION_NOT_PRESENT: return "an extension is not present";
    case VK_ERROR_TOO_MANY_OBJECTS: return "too many objects";
    case VK_TIMEOUT: return "timed out";
    default: return "error";
  }
}

static gboolean
vk_check (VkResult r, const char *what, GError **error)
{
  if (r == VK_SUCCESS)
    return TRUE;
  g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, "vulkan: %s failed: %s (%d)",
      what, result_text (r), (int) r);
  return FALSE;
}

/* ------------------------------------------------------------ state */

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

/* ------------------------------------------------------------ pools */

static int
memory_type (VmoeVulkan *vk, uint32_t bits, VkMemoryPropertyFlags want)
{
  for (uint32_t t = 0; t < vk->memory_props.memoryTypeCount; t++)
    if ((bits & (1u << t))
        && (vk->memory_props.memoryTypes[t].propertyFlags & want) == want)
      return (int) t;
  return -1;
}

static void
pool_free (VmoeVulkan *vk, Pool *pool)
{
  if (pool->buffer)
    vk->fn.vkDestroyBuffer (vk->device, pool->buffer, NULL);
  if (pool->memory)
    vk->fn.vkFreeMemory (vk->device, pool->memory, NULL);
  memset (pool, 0, sizeof *pool);
}

static gboolean
pool_new (VmoeVulkan *vk, Pool *pool, guint64 bytes, gboolean host,
    const char *what, GError **error)
{
  pool_free (vk, pool);
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
  if (!vk_check (vk->fn.vkCreateBuffer (vk->device, &info, NULL, &pool->buffer),
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
        (guint64) req.size, what, result_text (r));
    return FALSE;
  }
  if (!vk_check (vk->fn.vkBindBufferMemory (vk->device, pool->buffer, pool->memory, 0),
          "binding buffer memory", error))
    return FALSE;
  if (host && !vk_check (vk->fn.vkMapMemory (vk->device, pool->memory, 0,
              VK_WHOLE_SIZE, 0, &pool->mapped), "mapping memory", error))
    return FALSE;
  pool->size = bytes;
  return TRUE;
}

/* ------------------------------------------------------------ commands */

static void
full_barrier (VmoeVulkan *vk, VkCommandBuffer cb)
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

#define MAX_PROFILED 4096

static void
dispatch_pipeline (VmoeVulkan *vk, VkCommandBuffer cb, VmoeShader shader,
    VkPipeline pipeline, const void *push, size_t size, uint32_t gx, uint32_t gy,
    uint32_t gz)
{
  gboolean timed = vk->queries && vk->n_queries < MAX_PROFILED;
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

static void
dispatch (VmoeVulkan *vk, VkCommandBuffer cb, VmoeShader shader,
    const void *push, size_t size, uint32_t gx, uint32_t gy, uint32_t gz)
{
  dispatch_pipeline (vk, cb, shader, vk->pipelines[shader], push, size, gx, gy, gz);
}

/* Adds the last call's GPU time per shader (profiling only) and prints the
 * running means to stderr. */
static void
profile_report (VmoeVulkan *vk, int n)
{
  if (!vk->queries || !vk->n_queries)
    return;
  guint64 *stamps = g_new (guint64, 2 * vk->n_queries);
  if (vk->fn.vkGetQueryPoolResults (vk->device, vk->queries, 0, 2 * vk->n_queries,
          2 * vk->n_queries * sizeof (guint64), stamps, sizeof (guint64),
          VK_QUERY_RESULT_64_BIT | VK_QUERY_RESULT_WAIT_BIT) == VK_SUCCESS) {
    static const char *names[VMOE_N_SHADERS] = { "gemm", "gemm", "layernorm",
      "attention", "attention-online", "embed", "pool", "route", "experts",
      "preprocess" };
    double total = 0;
    vk->profile_calls++;
    for (uint32_t q = 0; q < vk->n_queries; q++)
      vk->profile_ms[vk->query_shader[q]] += (stamps[2 * q + 1] - stamps[2 * q])
          * (double) vk->props.limits.timestampPeriod / 1e6;
    for (int s = 0; s < VMOE_N_SHADERS; s++)
      total += vk->profile_ms[s];
    GString *line = g_string_new (NULL);
    for (int s = 0; s < VMOE_N_SHADERS; s++)
      if (vk->profile_ms[s] > 0)
        g_string_append_printf (line, " %s %.3f ms (%.0f%%)", names[s],
            vk->profile_ms[s] / vk->profile_calls, 100 * vk->profile_ms[s] / total);
    g_printerr ("vmoe vulkan profile, batch %d, mean of %d calls: dispatches %.3f ms:%s\n",
        n, vk->profile_calls, total / vk->profile_calls, line->str);
    g_string_free (line, TRUE);
  }
  g_free (stamps);
}


/* Dispatches `items` over workgroups of `per_group`, spilling past 65535
 * workgroups into y (the shaders' flat_group_id). */
static void
dispatch_flat (VmoeVulkan *vk, VkCommandBuffer cb, VmoeShader shader,
    const void *push, size_t size, guint64 items, uint32_t per_group)
{
  guint64 groups = MAX ((items + per_group - 1) / per_group, 1);
  uint32_t gx = (uint32_t) MIN (groups, 65535), gy = (uint32_t) ((groups + gx - 1) / gx);
  dispatch (vk, cb, shader, push, size, gx, gy, 1);
}

static gboolean
begin (VmoeVulkan *vk, VkCommandBuffer cb, gboolean once, GError **error)
{
  VkCommandBufferBeginInfo info = { .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO,
    .flags = once ? VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT : 0 };
  if (!vk_check (vk->fn.vkBeginCommandBuffer (cb, &info), "recording commands", error))
    return FALSE;
  vk->fn.vkCmdBindDescriptorSets (cb, VK_PIPELINE_BIND_POINT_COMPUTE,
      vk->pipeline_layout, 0, 1, &vk->set, 0, NULL);
  return TRUE;
}

/* Submits the command buffers and waits: the one fence wait of a call. */
static gboolean
submit_and_wait (VmoeVulkan *vk, const VkCommandBuffer *cbs, uint32_t count,
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
    r = vk->fn.vkWaitForFences (vk->device, 1, &vk->fence, VK_TRUE, FENCE_TIMEOUT_NS);
  if (r == VK_SUCCESS)
    r = vk->fn.vkResetFences (vk->device, 1, &vk->fence);
  if (r == VK_ERROR_DEVICE_LOST || r == VK_TIMEOUT)
    vk->lost = TRUE;
  return vk_check (r, "running the forward pass", error);
}

static VkCommandBuffer
new_command_buffer (VmoeVulkan *vk, GError **error)
{
  VkCommandBufferAllocateInfo info = {
    .sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO,
    .commandPool = vk->command_pool, .level = VK_COMMAND_BUFFER_LEVEL_PRIMARY,
    .commandBufferCount = 1 };
  VkCommandBuffer cb = VK_NULL_HANDLE;
  if (!vk_check (vk->fn.vkAllocateCommandBuffers (vk->device, &info, &cb),
          "allocating a command buffer", error))
    return VK_NULL_HANDLE;
  return cb;
}

static void
forget_recorded (VmoeVulkan *vk)
{
  for (guint j = 0; vk->recorded && j < vk->recorded->len; j++) {
    Recorded *rec = &g_array_index (vk->recorded, Recorded, j);
    vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &rec->cb);
  }
  if (vk->recorded)
    g_array_set_size (vk->recorded, 0);
}

static void
bind_pools (VmoeVulkan *vk)
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
  forget_recorded (vk);
  vk->fn.vkUpdateDescriptorSets (vk->device, 5, writes, 0, NULL);
}

/* Copies host data into (or out of) a device pool through a temporary
 * staging pool: weight upload at creation and the op tests. */
static gboolean
transfer (VmoeVulkan *vk, Pool *pool, VkDeviceSize offset, void *data,
    VkDeviceSize bytes, gboolean to_device, GError **error)
{
  if (offset + bytes > pool->size) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "vulkan: transfer outside the buffer");
    return FALSE;
  }
  Pool staging = { 0 };
  VkCommandBuffer cb = VK_NULL_HANDLE;
  gboolean ok = pool_new (vk, &staging, bytes, TRUE, "staging buffer", error)
      && (cb = new_command_buffer (vk, error)) != VK_NULL_HANDLE
      && begin (vk, cb, TRUE, error);
  if (ok) {
    if (to_device)
      memcpy (staging.mapped, data, bytes);
    VkBufferCopy region = { to_device ? 0 : offset, to_device ? offset : 0, bytes };
    if (to_device)
      vk->fn.vkCmdCopyBuffer (cb, staging.buffer, pool->buffer, 1, &region);
    else
      vk->fn.vkCmdCopyBuffer (cb, pool->buffer, staging.buffer, 1, &region);
    full_barrier (vk, cb);
    ok = vk_check (vk->fn.vkEndCommandBuffer (cb), "recording commands", error)
        && submit_and_wait (vk, &cb, 1, error);
    if (ok && !to_device)
      memcpy (data, staging.mapped, bytes);
  }
  if (cb)
    vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &cb);
  pool_free (vk, &staging);
  return ok;
}

/* ------------------------------------------------------------ device */

static gboolean
is_cpu_device (const VkPhysicalDeviceProperties *p)
{
  return p->deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
}

static int
type_rank (VkPhysicalDeviceType type)
{
  switch (type) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU: return 0;
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return 1;
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU: return 2;
    case VK_PHYSICAL_DEVICE_TYPE_OTHER: return 3;
    default: return 4;        /* CPU: only when named */
  }
}

static gboolean
choose_device (VmoeVulkan *vk, const char *request, gboolean gpu_only, GError **error)
{
  uint32_t count = 0;
  VkResult r = vk->fn.vkEnumeratePhysicalDevices (vk->instance, &count, NULL);
  if (!vk_check (r, "listing devices", error))
    return FALSE;
  VkPhysicalDevice *devices = g_new0 (VkPhysicalDevice, MAX (count, 1));
  r = vk->fn.vkEnumeratePhysicalDevices (vk->instance, &count, devices);
  if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
    g_free (devices);
    return vk_check (r, "listing devices", error);
  }
  gboolean by_index = request && *request && strspn (request, "0123456789") == strlen (request);
  gboolean want_cpu = request && g_ascii_strcasecmp (request, "cpu") == 0;
  gboolean automatic = !request || !*request || g_ascii_strcasecmp (request, "auto") == 0;
  int best = -1, best_rank = 5;
  GString *seen = g_string_new (NULL);
  for (uint32_t d = 0; d < count; d++) {
    VkPhysicalDeviceProperties p;
    vk->fn.vkGetPhysicalDeviceProperties (devices[d], &p);
    g_string_append_printf (seen, "%s%u: %s%s", d ? ", " : "", d, p.deviceName,
        is_cpu_device (&p) ? " (CPU)" : "");
    int rank = type_rank (p.deviceType);
    gboolean match;
    if (automatic)
      match = !is_cpu_device (&p);
    else if (by_index)
      match = d == (uint32_t) atoi (request);
    else if (want_cpu)
      match = is_cpu_device (&p);
    else {
      char *name = g_ascii_strdown (p.deviceName, -1), *part = g_ascii_strdown (request, -1);
      match = strstr (name, part) != NULL;
      g_free (name);
      g_free (part);
    }
    if (match && (best < 0 || (automatic && rank < best_rank))) {
      best = (int) d;
      best_rank = rank;
    }
  }
  if (best >= 0) {
    vk->physical = devices[best];
    VkPhysicalDeviceMaintenance3Properties maintenance3 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES };
    VkPhysicalDeviceProperties2 props2 = {
      .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2, .pNext = &maintenance3 };
    vk->fn.vkGetPhysicalDeviceProperties2 (vk->physical, &props2);
    vk->props = props2.properties;
    vk->max_allocation = maintenance3.maxMemoryAllocationSize;
    if (gpu_only && is_cpu_device (&vk->props))
      best = -1;
  }
  if (best < 0)
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: no %s device%s%s (devices: %s)%s",
        automatic || gpu_only ? "GPU" : "matching", automatic ? "" : " for ",
        automatic ? "" : request, count ? seen->str : "none",
        automatic ? "; set VMOE_VULKAN_DEVICE=cpu to run on a CPU device" : "");
  g_string_free (seen, TRUE);
  g_free (devices);
  return best >= 0;
}

static gboolean
create_device (VmoeVulkan *vk, GError **error)
{
  uint32_t n_families = 0;
  vk->fn.vkGetPhysicalDeviceQueueFamilyProperties (vk->physical, &n_families, NULL);
  VkQueueFamilyProperties *families = g_new0 (VkQueueFamilyProperties, MAX (n_families, 1));
  vk->fn.vkGetPhysicalDeviceQueueFamilyProperties (vk->physical, &n_families, families);
  int family = -1;
  /* A compute queue without graphics first: it does not share time with
   * rendering on GPUs that have one. */
  for (uint32_t f = 0; f < n_families; f++) {
    gboolean compute = (families[f].queueFlags & VK_QUEUE_COMPUTE_BIT) != 0;
    gboolean graphics = (families[f].queueFlags & VK_QUEUE_GRAPHICS_BIT) != 0;
    if (compute && (family < 0 || !graphics))
      family = (int) f;
    if (compute && !graphics)
      break;
  }
  g_free (families);
  if (family < 0) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: device %s has no compute queue", vk->props.deviceName);
    return FALSE;
  }
  vk->queue_family = (uint32_t) family;

  VkPhysicalDevice16BitStorageFeatures storage16 = {
    .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES };
  VkPhysicalDeviceFeatures2 features = {
    .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_FEATURES_2, .pNext = &storage16 };
  vk->fn.vkGetPhysicalDeviceFeatures2 (vk->physical, &features);
  if (vk->fp16 && !storage16.storageBuffer16BitAccess) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: device %s lacks storageBuffer16BitAccess; fp16 weights need it",
        vk->props.deviceName);
    return FALSE;
  }
  VkPhysicalDevice16BitStorageFeatures enable16 = {
    .sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_16BIT_STORAGE_FEATURES,
    .storageBuffer16BitAccess = vk->fp16 };
  float priority = 1.0f;
  VkDeviceQueueCreateInfo queue = { .sType = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO,
    .queueFamilyIndex = vk->queue_family, .queueCount = 1, .pQueuePriorities = &priority };
  VkDeviceCreateInfo info = { .sType = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO,
    .pNext = &enable16, .queueCreateInfoCount = 1, .pQueueCreateInfos = &queue };
  if (!vk_check (vk->fn.vkCreateDevice (vk->physical, &info, NULL, &vk->device),
          "creating the device", error))
    return FALSE;
  vk->fn.vkGetDeviceQueue (vk->device, vk->queue_family, 0, &vk->queue);
  vk->fn.vkGetPhysicalDeviceMemoryProperties (vk->physical, &vk->memory_props);
  return TRUE;
}

/* Output tiles of the GEMM: 32, 64 and 128 square (per thread 2x2, 4x4,
 * 8x8 outputs): small layers need many workgroups to fill a GPU, large ones
 * more work per loaded element. */
static const uint32_t gemm_tile_sizes[3] = { 32, 64, 128 };

static gboolean
create_gemm_variants (VmoeVulkan *vk, VkShaderModule module, gboolean fp16,
    GError **error)
{
  for (int v = 0; v < 3; v++) {
    uint32_t tiles[3] = { gemm_tile_sizes[v], gemm_tile_sizes[v], 16 };
    VkSpecializationMapEntry entries[3] = { { 0, 0, 4 }, { 1, 4, 4 }, { 2, 8, 4 } };
    VkSpecializationInfo spec = { 3, entries, sizeof tiles, tiles };
    VkComputePipelineCreateInfo info = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage = { .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
        .stage = VK_SHADER_STAGE_COMPUTE_BIT, .module = module, .pName = "main",
        .pSpecializationInfo = &spec },
      .layout = vk->pipeline_layout };
    if (!vk_check (vk->fn.vkCreateComputePipelines (vk->device, VK_NULL_HANDLE, 1,
                &info, NULL, &vk->gemm_tiles[fp16][v]), "creating a GEMM pipeline", error))
      return FALSE;
  }
  return TRUE;
}

static gboolean
create_pipelines (VmoeVulkan *vk, GError **error)
{
  const VmoeConfig *c = &vk->model->config;
  VkDescriptorSetLayoutBinding bindings[5];
  for (int b = 0; b < 5; b++)
    bindings[b] = (VkDescriptorSetLayoutBinding) { .binding = (uint32_t) b,
      .descriptorType = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, .descriptorCount = 1,
      .stageFlags = VK_SHADER_STAGE_COMPUTE_BIT };
  VkDescriptorSetLayoutCreateInfo set_info = {
    .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO,
    .bindingCount = 5, .pBindings = bindings };
  VkPushConstantRange range = { VK_SHADER_STAGE_COMPUTE_BIT, 0, 128 };
  if (!vk_check (vk->fn.vkCreateDescriptorSetLayout (vk->device, &set_info, NULL,
              &vk->set_layout), "creating the descriptor layout", error))
    return FALSE;
  VkPipelineLayoutCreateInfo layout_info = {
    .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1,
    .pSetLayouts = &vk->set_layout, .pushConstantRangeCount = 1,
    .pPushConstantRanges = &range };
  if (!vk_check (vk->fn.vkCreatePipelineLayout (vk->device, &layout_info, NULL,
              &vk->pipeline_layout), "creating the pipeline layout", error))
    return FALSE;

  /* Specialization: the attention holds a block of query rows of scores
   * and a chunk of keys in shared memory, as many rows as fit; the routing
   * arrays hold the model's experts and choices. */
  uint32_t tokens = (uint32_t) vmoe_config_tokens (c);
  uint32_t head_dim = (uint32_t) (c->embed_dim / c->num_heads);
  uint32_t shared_limit = vk->props.limits.maxComputeSharedMemorySize;
  /* VMOE_VULKAN_ATTENTION_BLOCK (1 to 16, a power of two) overrides the
   * query rows per workgroup, for tuning. */
  const char *forced_block = g_getenv ("VMOE_VULKAN_ATTENTION_BLOCK");
  uint32_t block = forced_block ? (uint32_t) CLAMP (atoi (forced_block), 1, 16) : 16;
  while (block & (block - 1))
    block &= block - 1;
  const uint32_t chunk = VMOE_ATTENTION_KEY_CHUNK;
  while (block > 1 && 4 * (block * head_dim + chunk * (head_dim + 1) + block * tokens
          + 128 + block) > shared_limit)
    block /= 2;
  if (4 * (block * head_dim + chunk * (head_dim + 1) + block * tokens + 128 + block)
      > shared_limit) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: attention over %u tokens of head size %u needs more shared "
        "memory than device %s has (%u bytes); use backend cpu", tokens, head_dim,
        vk->props.deviceName, shared_limit);
    return FALSE;
  }
  vk->attention_block = block;
  VkSpecializationMapEntry entries[3] = { { 0, 0, 4 }, { 1, 4, 4 }, { 2, 8, 4 } };
  uint32_t attention_const[3] = { MAX (tokens, 1), block, head_dim };
  /* The online kernel holds a query row and an output row per thread in
   * vec4 registers: head sizes that are multiples of 4, up to 64. */
  gboolean online_fits = head_dim % 4 == 0 && head_dim <= 64
      && 2 * chunk * head_dim * 4 <= shared_limit;    /* keys and values of a chunk */
  const char *attention_kind = g_getenv ("VMOE_VULKAN_ATTENTION");
  vk->attention_online = online_fits && g_strcmp0 (attention_kind, "blocks") != 0;
  uint32_t online_const[2] = { VMOE_ATTENTION_ONLINE_ROWS, head_dim };
  VkSpecializationInfo online_spec = { 2, entries, sizeof online_const, online_const };
  uint32_t route_const[2] = { (uint32_t) MAX (c->num_experts, 1), (uint32_t) vk->k };
  VkSpecializationInfo attention_spec = { 3, entries, sizeof attention_const, attention_const };
  VkSpecializationInfo route_spec = { 2, entries, sizeof route_const, route_const };

  for (int s = 0; s < VMOE_N_SHADERS; s++) {
    if ((s == VMOE_SHADER_GEMM_F16 && !vk->fp16)
        || (s == VMOE_SHADER_ATTENTION_ONLINE && !online_fits))
      continue;
    VkShaderModuleCreateInfo module_info = {
      .sType = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO,
      .codeSize = shader_code[s].size, .pCode = shader_code[s].code };
    VkShaderModule module;
    if (!vk_check (vk->fn.vkCreateShaderModule (vk->device, &module_info, NULL, &module),
            "loading a shader", error))
      return FALSE;
    if (s == VMOE_SHADER_GEMM || s == VMOE_SHADER_GEMM_F16) {
      gboolean ok = create_gemm_variants (vk, module, s == VMOE_SHADER_GEMM_F16, error);
      vk->fn.vkDestroyShaderModule (vk->device, module, NULL);
      if (!ok)
        return FALSE;
      vk->pipelines[s] = vk->gemm_tiles[s == VMOE_SHADER_GEMM_F16][1];
      continue;
    }
    VkComputePipelineCreateInfo info = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage = { .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
        .stage = VK_SHADER_STAGE_COMPUTE_BIT, .module = module, .pName = "main",
        .pSpecializationInfo = s == VMOE_SHADER_ATTENTION ? &attention_spec
            : s == VMOE_SHADER_ATTENTION_ONLINE ? &online_spec
            : s == VMOE_SHADER_ROUTE ? &route_spec : NULL },
      .layout = vk->pipeline_layout };
    VkResult r = vk->fn.vkCreateComputePipelines (vk->device, VK_NULL_HANDLE, 1, &info,
        NULL, &vk->pipelines[s]);
    vk->fn.vkDestroyShaderModule (vk->device, module, NULL);
    if (!vk_check (r, "creating a compute pipeline", error))
      return FALSE;
  }

  VkDescriptorPoolSize size = { VK_DESCRIPTOR_TYPE_STORAGE_BUFFER, 5 };
  VkDescriptorPoolCreateInfo pool_info = {
    .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO, .maxSets = 1,
    .poolSizeCount = 1, .pPoolSizes = &size };
  VkDescriptorSetAllocateInfo alloc = {
    .sType = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO, .descriptorSetCount = 1,
    .pSetLayouts = &vk->set_layout };
  VkCommandPoolCreateInfo cmd_info = { .sType = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO,
    .flags = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT,
    .queueFamilyIndex = vk->queue_family };
  VkFenceCreateInfo fence_info = { .sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO };
  return vk_check (vk->fn.vkCreateDescriptorPool (vk->device, &pool_info, NULL,
          &vk->descriptor_pool), "creating the descriptor pool", error)
      && (alloc.descriptorPool = vk->descriptor_pool,
          vk_check (vk->fn.vkAllocateDescriptorSets (vk->device, &alloc, &vk->set),
              "allocating the descriptor set", error))
      && vk_check (vk->fn.vkCreateCommandPool (vk->device, &cmd_info, NULL,
              &vk->command_pool), "creating the command pool", error)
      && vk_check (vk->fn.vkCreateFence (vk->device, &fence_info, NULL, &vk->fence),
          "creating the fence", error)
      && (vk->upload_cb = new_command_buffer (vk, error)) != VK_NULL_HANDLE;
}

/* ------------------------------------------------------------ weights */

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
static gboolean
upload_weights (VmoeVulkan *vk, GError **error)
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
  gboolean ok = pool_new (vk, &vk->weights, bytes, FALSE, "weights", error)
      && transfer (vk, &vk->weights, 0, host->data, bytes, TRUE, error);
  if (ok && vk->fp16) {
    uint16_t *halves = g_new (uint16_t, MAX (host->len, 1));
    for (guint j = 0; j < host->len; j++)
      halves[j] = half_from_float (g_array_index (host, float, j));
    ok = pool_new (vk, &vk->weights16, (guint64) host->len * 2, FALSE, "fp16 weights", error)
        && transfer (vk, &vk->weights16, 0, halves, (guint64) host->len * 2, TRUE, error);
    g_free (halves);
  }
  g_array_free (host, TRUE);
  return ok;
}

/* ------------------------------------------------------------ workspace */

/* Element offsets of every activation and integer tensor for n images;
 * FALSE when they do not fit 32-bit offsets. */
static gboolean
plan_workspace (VmoeVulkan *vk, int n, GError **error)
{
  const VmoeConfig *c = &vk->model->config;
  guint64 t = vmoe_config_tokens (c), d = c->embed_dim, k = vk->k;
  guint64 rows = (guint64) n * t, entries = rows * k;
  guint64 patches = (guint64) n * vmoe_config_patches (c);
  guint64 patch_len = (guint64) c->in_channels * c->patch_size * c->patch_size;
  guint64 experts = MAX (c->num_experts, 1), layers = MAX (c->n_moe_layers, 1);
  guint64 hidden = MAX (rows * c->mlp_dim,
      c->routing != VMOE_ROUTING_NONE ? entries * c->expert_mlp_dim : 0);
  guint64 at = 0;
#define PLACE(field, count) (vk->a.field = (uint32_t) at, at += (count))
  PLACE (input, (guint64) n * c->in_channels * c->image_h * c->image_w);
  PLACE (x, rows * d);
  PLACE (z, MAX (rows, patches) * d);
  PLACE (qkv, rows * 3 * d);
  PLACE (attn, rows * d);
  PLACE (hidden, hidden);
  PLACE (expert_out, entries * d);
  PLACE (patches, patches * patch_len);
  PLACE (probs, rows * experts);
  PLACE (entry_gate, entries);
  PLACE (pooled, (guint64) n * d);
  PLACE (logits, (guint64) n * c->num_classes);
  PLACE (gates, (guint64) n * k);
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
  PLACE (experts, (guint64) n * k);
  PLACE (tokens_per_expert, (guint64) n * layers * experts);
  PLACE (dropped, (guint64) n * layers);
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

static gboolean
reserve (VmoeVulkan *vk, int n, GError **error)
{
  if (n <= vk->reserved)
    return TRUE;
  if (!plan_workspace (vk, n, error))
    return FALSE;
  const VmoeConfig *c = &vk->model->config;
  guint64 down = (guint64) (vk->a.end - vk->a.logits) * 4 + (guint64) (vk->i.end - vk->i.experts) * 4;
  guint64 input = (guint64) n * c->in_channels * c->image_h * c->image_w * 4;
  guint64 up = MAX (input, vk->upload.size);
  if (!pool_new (vk, &vk->act, (guint64) vk->a.end * 4, FALSE, "activations", error)
      || !pool_new (vk, &vk->ints, (guint64) vk->i.end * 4, FALSE, "routing buffers", error)
      || !pool_new (vk, &vk->download, down, TRUE, "result buffer", error)
      || !pool_new (vk, &vk->upload, up, TRUE, "upload buffer", error)
      || (!vk->frames.buffer && !pool_new (vk, &vk->frames, 16, FALSE, "frames", error))) {
    vk->reserved = 0;
    return FALSE;
  }
  bind_pools (vk);
  vk->reserved = n;
  return TRUE;
}

/* ------------------------------------------------------------ forward */

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
  uint32_t tile = gemm_tile_sizes[v];
  dispatch_pipeline (vk, cb, VMOE_SHADER_GEMM, vk->gemm_tiles[vk->fp16][v], &p, sizeof p,
      (p.n + tile - 1) / tile, (p.m + tile - 1) / tile, (uint32_t) experts);
  full_barrier (vk, cb);
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
  VmoeLayerNormPush p = { rows, (uint32_t) c->embed_dim, in_off, in_stride, out_off,
    (uint32_t) c->embed_dim, w, b, (float) c->norm_eps };
  dispatch_flat (vk, cb, VMOE_SHADER_LAYERNORM, &p, sizeof p, rows, 1);
  full_barrier (vk, cb);
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
  full_barrier (vk, cb);
  VmoeExpertsPush lists = { VMOE_EXPERTS_LISTS, rows, k, d, vk->i.entry_expert,
    vk->a.entry_gate, vk->i.counts, vk->i.lists, vk->list_cap, 0, 0 };
  dispatch_flat (vk, cb, VMOE_SHADER_EXPERTS, &lists, sizeof lists, (guint64) rows * k, 256);
  full_barrier (vk, cb);
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
  VmoeExpertsPush combine = { VMOE_EXPERTS_COMBINE, rows, k, d, vk->i.entry_expert,
    vk->a.entry_gate, 0, 0, 0, vk->a.expert_out, vk->a.x };
  dispatch_flat (vk, cb, VMOE_SHADER_EXPERTS, &combine, sizeof combine, (guint64) rows * d, 256);
  full_barrier (vk, cb);
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
        vmoe_config_tokens (c), vk->routing.capacity_ratio, c->num_experts),
    .bpr = c->bpr };
}

static void
record_forward (VmoeVulkan *vk, VkCommandBuffer cb, int n, gboolean frames)
{
  const VmoeConfig *c = &vk->model->config;
  uint32_t t = (uint32_t) vmoe_config_tokens (c), d = (uint32_t) c->embed_dim;
  uint32_t rows = (uint32_t) n * t, np = (uint32_t) vmoe_config_patches (c);
  uint32_t patch_len = (uint32_t) (c->in_channels * c->patch_size * c->patch_size);

  if (frames) {
    VmoePreprocessPush p = { vk->i.params, vk->a.input, (uint32_t) c->image_h,
      (uint32_t) c->image_w, (uint32_t) c->in_channels,
      { c->mean[0], c->mean[1], c->mean[2] }, { c->std[0], c->std[1], c->std[2] } };
    dispatch (vk, cb, VMOE_SHADER_PREPROCESS, &p, sizeof p, (p.width + 15) / 16,
        (p.height + 15) / 16, (uint32_t) n);
    full_barrier (vk, cb);
  }
  VmoeEmbedPush e = { VMOE_EMBED_IM2COL, (uint32_t) n, (uint32_t) c->in_channels,
    (uint32_t) c->image_h, (uint32_t) c->image_w, (uint32_t) c->patch_size, d, t,
    c->class_token ? 1 : 0, vk->a.input, vk->a.patches, vk->cls, vk->pos };
  dispatch_flat (vk, cb, VMOE_SHADER_EMBED, &e, sizeof e, (guint64) n * np * patch_len, 256);
  full_barrier (vk, cb);
  linear (vk, cb, vk->patch, (uint32_t) n * np, patch_len, d, vk->a.patches, vk->a.z, 0);
  e.mode = VMOE_EMBED_ASSEMBLE;
  e.src_off = vk->a.z;
  e.dst_off = vk->a.x;
  dispatch_flat (vk, cb, VMOE_SHADER_EMBED, &e, sizeof e, (guint64) rows * d, 256);
  full_barrier (vk, cb);

  int layer = 0;
  for (int b = 0; b < c->depth; b++) {
    const VmoeBlock *blk = &vk->model->blocks[b];
    const BlockOffsets *o = &vk->blocks[b];
    layernorm (vk, cb, rows, vk->a.x, d, vk->a.z, o->norm1_w, o->norm1_b);
    linear (vk, cb, o->qkv, rows, d, 3 * d, vk->a.z, vk->a.qkv, 0);
    VmoeAttentionPush at = { t, d, (uint32_t) c->num_heads, vk->a.qkv, vk->a.attn };
    if (vk->attention_online)
      dispatch (vk, cb, VMOE_SHADER_ATTENTION_ONLINE, &at, sizeof at,
          (t + VMOE_ATTENTION_ONLINE_ROWS - 1) / VMOE_ATTENTION_ONLINE_ROWS,
          (uint32_t) c->num_heads, (uint32_t) n);
    else
      dispatch (vk, cb, VMOE_SHADER_ATTENTION, &at, sizeof at,
          (t + vk->attention_block - 1) / vk->attention_block, (uint32_t) c->num_heads,
          (uint32_t) n);
    full_barrier (vk, cb);
    linear (vk, cb, o->proj, rows, d, d, vk->a.attn, vk->a.x, VMOE_GEMM_ACCUMULATE);
    if (blk->is_moe && c->routing == VMOE_ROUTING_IMAGE && layer == 0) {
      /* Read by the expert lists after LN2, whose barrier orders it. */
      VmoeRoutePush r = route_push (vk, n, VMOE_ROUTE_IMAGE);
      dispatch_flat (vk, cb, VMOE_SHADER_ROUTE, &r, sizeof r, (guint64) n, 64);
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
      VmoeRoutePush r = route_push (vk, n, VMOE_ROUTE_TOKEN);
      r.layer = (uint32_t) layer;
      dispatch_flat (vk, cb, VMOE_SHADER_ROUTE, &r, sizeof r, (guint64) n, 64);
      full_barrier (vk, cb);
    }
    experts (vk, cb, o, rows);
    layer++;
  }

  if (c->pool == VMOE_POOL_TOKEN) {
    layernorm (vk, cb, (uint32_t) n, vk->a.x, t * d, vk->a.pooled, vk->norm_w, vk->norm_b);
  } else {
    layernorm (vk, cb, rows, vk->a.x, d, vk->a.z, vk->norm_w, vk->norm_b);
    uint32_t first = c->class_token ? 1 : 0;
    VmoePoolPush p = { (uint32_t) n, t, first, t - first, d, vk->a.z, vk->a.pooled };
    dispatch_flat (vk, cb, VMOE_SHADER_POOL, &p, sizeof p, (guint64) n * d, 64);
    full_barrier (vk, cb);
  }
  linear (vk, cb, vk->head, (uint32_t) n, d, (uint32_t) c->num_classes, vk->a.pooled,
      vk->a.logits, 0);

  VkDeviceSize float_bytes = (VkDeviceSize) (vk->a.end - vk->a.logits) * 4;
  VkBufferCopy floats = { (VkDeviceSize) vk->a.logits * 4, 0, float_bytes };
  VkBufferCopy ints = { (VkDeviceSize) vk->i.experts * 4, float_bytes,
    (VkDeviceSize) (vk->i.end - vk->i.experts) * 4 };
  vk->fn.vkCmdCopyBuffer (cb, vk->act.buffer, vk->download.buffer, 1, &floats);
  vk->fn.vkCmdCopyBuffer (cb, vk->ints.buffer, vk->download.buffer, 1, &ints);
  full_barrier (vk, cb);
}

/* The recorded forward pass for n images, recorded on first use. */
static VkCommandBuffer
forward_commands (VmoeVulkan *vk, int n, gboolean frames, GError **error)
{
  for (guint j = 0; j < vk->recorded->len; j++) {
    Recorded *rec = &g_array_index (vk->recorded, Recorded, j);
    if (rec->n == n && rec->frames == frames)
      return rec->cb;
  }
  VkCommandBuffer cb = new_command_buffer (vk, error);
  if (!cb)
    return VK_NULL_HANDLE;
  if (!begin (vk, cb, FALSE, error)) {
    vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &cb);
    return VK_NULL_HANDLE;
  }
  if (vk->queries) {
    /* Profiling times the latest recorded batch shape only. */
    vk->n_queries = 0;
    memset (vk->profile_ms, 0, sizeof vk->profile_ms);
    vk->profile_calls = 0;
    vk->fn.vkCmdResetQueryPool (cb, vk->queries, 0, 2 * MAX_PROFILED);
  }
  record_forward (vk, cb, n, frames);
  if (!vk_check (vk->fn.vkEndCommandBuffer (cb), "recording the forward pass", error)) {
    vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &cb);
    return VK_NULL_HANDLE;
  }
  Recorded rec = { n, frames, cb };
  g_array_append_val (vk->recorded, rec);
  return cb;
}

/* Records the call's upload (a copy from the staging buffer per region)
 * and runs it with the recorded forward pass; then unpacks the results. */
static gboolean
run (VmoeVulkan *vk, int n, gboolean frames, const VkBufferCopy *copies,
    const Pool *const *targets, int n_copies, VmoeRawOutput *out, GError **error)
{
  VkCommandBuffer forward = forward_commands (vk, n, frames, error);
  if (!forward)
    return FALSE;
  VkCommandBuffer cb = vk->upload_cb;
  if (!vk_check (vk->fn.vkResetCommandBuffer (cb, 0), "resetting commands", error)
      || !begin (vk, cb, TRUE, error))
    return FALSE;
  for (int j = 0; j < n_copies; j++)
    vk->fn.vkCmdCopyBuffer (cb, vk->upload.buffer, targets[j]->buffer, 1, &copies[j]);
  full_barrier (vk, cb);
  VkCommandBuffer cbs[2] = { cb, forward };
  if (!vk_check (vk->fn.vkEndCommandBuffer (cb), "recording the upload", error)
      || !submit_and_wait (vk, cbs, 2, error))
    return FALSE;
  profile_report (vk, n);

  const VmoeConfig *c = &vk->model->config;
  const float *floats = vk->download.mapped;
  const int *ints = (const int *) (floats + (vk->a.end - vk->a.logits));
  int k = vk->routing.top_k, layers = c->n_moe_layers, e = c->num_experts;
  memcpy (out->logits, floats, (size_t) n * c->num_classes * sizeof (float));
  if (c->routing == VMOE_ROUTING_IMAGE) {
    memcpy (out->gates, floats + (vk->a.gates - vk->a.logits), (size_t) n * k * sizeof (float));
    memcpy (out->experts, ints, (size_t) n * k * sizeof (int));
  } else if (c->routing == VMOE_ROUTING_TOKEN) {
    /* The integer block was laid out for `reserved` images. */
    memcpy (out->tokens_per_expert, ints + (vk->i.tokens_per_expert - vk->i.experts),
        (size_t) n * layers * e * sizeof (int));
    memcpy (out->dropped, ints + (vk->i.dropped - vk->i.experts),
        (size_t) n * layers * sizeof (int));
  }
  return TRUE;
}

gboolean
vmoe_vulkan_forward_f32 (VmoeVulkan *vk, const float *input, int n,
    VmoeRawOutput *out, GError **error)
{
  if (!reserve (vk, n, error))
    return FALSE;
  const VmoeConfig *c = &vk->model->config;
  VkDeviceSize bytes = (VkDeviceSize) n * c->in_channels * c->image_h * c->image_w * 4;
  memcpy (vk->upload.mapped, input, bytes);
  VkBufferCopy copy = { 0, (VkDeviceSize) vk->a.input * 4, bytes };
  const Pool *target = &vk->act;
  return run (vk, n, FALSE, &copy, &target, 1, out, error);
}

gboolean
vmoe_vulkan_forward_u8 (VmoeVulkan *vk, const VmoeImage *images, int n,
    VmoeRawOutput *out, GError **error)
{
  if (!reserve (vk, n, error))
    return FALSE;
  const VmoeConfig *c = &vk->model->config;
  guint64 params_bytes = (guint64) n * VMOE_FRAME_PARAMS * 4, frame_bytes = 0;
  for (int j = 0; j < n; j++) {
    if (!vmoe_frame_check (c, &images[j], error))
      return FALSE;
    for (int p = 0; p < 3; p++)
      frame_bytes += (vmoe_image_plane_bytes (&images[j], p) + 3) & ~(guint64) 3;
  }
  if (frame_bytes >= G_MAXINT32) {      /* plane offsets are int32 in the shader */
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "vulkan: %d frames of %" G_GUINT64_FORMAT " bytes are too large for one call",
        n, frame_bytes);
    return FALSE;
  }
  /* A larger frame than any before (a resolution change) grows the frame
   * and upload buffers. */
  if (frame_bytes > vk->frames.size || params_bytes + frame_bytes > vk->upload.size) {
    guint64 grow = frame_bytes + frame_bytes / 2;
    if (!pool_new (vk, &vk->frames, MAX (grow, vk->frames.size), FALSE, "frames", error)
        || !pool_new (vk, &vk->upload, MAX (params_bytes + grow, vk->upload.size), TRUE,
            "upload buffer", error)) {
      vk->reserved = 0;       /* pools are gone: rebuild on the next call */
      pool_free (vk, &vk->act);
      return FALSE;
    }
    bind_pools (vk);
  }
  uint8_t *staging = vk->upload.mapped;
  int32_t *params = (int32_t *) staging;
  guint64 at = 0;
  for (int j = 0; j < n; j++) {
    const VmoeImage *img = &images[j];
    int32_t *p = params + j * VMOE_FRAME_PARAMS;
    VmoeResizeGeometry g;
    vmoe_resize_geometry (c, img->width, img->height, &g);
    memset (p, 0, VMOE_FRAME_PARAMS * sizeof *p);
    p[VMOE_FRAME_FORMAT] = img->format;
    p[VMOE_FRAME_WIDTH] = img->width;
    p[VMOE_FRAME_HEIGHT] = img->height;
    p[VMOE_FRAME_TOP] = g.top;
    p[VMOE_FRAME_LEFT] = g.left;
    memcpy (&p[VMOE_FRAME_SCALE_Y], &g.scale_y, 4);
    memcpy (&p[VMOE_FRAME_SCALE_X], &g.scale_x, 4);
    p[VMOE_FRAME_IDENTITY] = g.identity;
    for (int q = 0; q < 3; q++) {
      size_t bytes = vmoe_image_plane_bytes (img, q);
      if (!bytes)
        continue;
      p[VMOE_FRAME_PLANE + q] = (int32_t) at;
      p[VMOE_FRAME_STRIDE + q] = (int32_t) img->strides[q];
      memcpy (staging + params_bytes + at, img->planes[q], bytes);
      at += (bytes + 3) & ~(guint64) 3;
    }
  }
  VkBufferCopy copies[2] = {
    { 0, (VkDeviceSize) vk->i.params * 4, params_bytes },
    { params_bytes, 0, MAX (at, 4) } };
  const Pool *targets[2] = { &vk->ints, &vk->frames };
  return run (vk, n, TRUE, copies, targets, 2, out, error);
}

/* ------------------------------------------------------------ life */

void
vmoe_vulkan_free (VmoeVulkan *vk)
{
  if (!vk)
    return;
  if (vk->device) {
    vk->fn.vkDeviceWaitIdle (vk->device);
    forget_recorded (vk);
    Pool *pools[] = { &vk->weights, &vk->weights16, &vk->act, &vk->ints, &vk->frames,
      &vk->upload, &vk->download };
    for (guint j = 0; j < G_N_ELEMENTS (pools); j++)
      pool_free (vk, pools[j]);
    if (vk->fence)
      vk->fn.vkDestroyFence (vk->device, vk->fence, NULL);
    if (vk->queries)
      vk->fn.vkDestroyQueryPool (vk->device, vk->queries, NULL);
    if (vk->command_pool)
      vk->fn.vkDestroyCommandPool (vk->device, vk->command_pool, NULL);
    if (vk->descriptor_pool)
      vk->fn.vkDestroyDescriptorPool (vk->device, vk->descriptor_pool, NULL);
    for (int s = 0; s < VMOE_N_SHADERS; s++)
      if (vk->pipelines[s] && s != VMOE_SHADER_GEMM && s != VMOE_SHADER_GEMM_F16)
        vk->fn.vkDestroyPipeline (vk->device, vk->pipelines[s], NULL);
    for (int w = 0; w < 2; w++)
      for (int v = 0; v < 3; v++)
        if (vk->gemm_tiles[w][v])
          vk->fn.vkDestroyPipeline (vk->device, vk->gemm_tiles[w][v], NULL);
    if (vk->pipeline_layout)
      vk->fn.vkDestroyPipelineLayout (vk->device, vk->pipeline_layout, NULL);
    if (vk->set_layout)
      vk->fn.vkDestroyDescriptorSetLayout (vk->device, vk->set_layout, NULL);
    vk->fn.vkDestroyDevice (vk->device, NULL);
  }
  if (vk->recorded)
    g_array_free (vk->recorded, TRUE);
  g_free (vk->blocks);
  g_free (vk->query_shader);
  vmoe_model_unref (vk->model);
  g_free (vk);
}

/* One Vulkan instance for the process, made on first use and kept: each
 * session makes its own device from it.  Keeping it keeps the drivers
 * loaded, so that probing for a GPU (backend auto) costs one instance per
 * process, and so that LeakSanitizer can still name a driver's one-time
 * allocations at exit (tests/lsan.supp). */
static volatile gboolean forked_after_init;

static void
mark_forked_child (void)
{
  forked_after_init = TRUE;
}

static VkInstance
shared_instance (PFN_vkGetInstanceProcAddr get_proc, GError **error)
{
  static gsize once = 0;
  static VkInstance instance = VK_NULL_HANDLE;
  static VkResult result = VK_ERROR_INITIALIZATION_FAILED;
  if (forked_after_init) {
    /* The driver's threads and device state did not come along. */
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: this process was forked after Vulkan was set up in its "
        "parent; Vulkan sessions must be made before forking or in a fresh process");
    return VK_NULL_HANDLE;
  }
  if (g_once_init_enter (&once)) {
    pthread_atfork (NULL, NULL, mark_forked_child);
    PFN_vkCreateInstance create_instance =
        (PFN_vkCreateInstance) get_proc (NULL, "vkCreateInstance");
    VkApplicationInfo app = { .sType = VK_STRUCTURE_TYPE_APPLICATION_INFO,
      .pApplicationName = "vmoe", .pEngineName = "libvmoe",
      .apiVersion = VK_API_VERSION_1_1 };
    VkInstanceCreateInfo info = { .sType = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO,
      .pApplicationInfo = &app };
    if (create_instance)
      result = create_instance (&info, NULL, &instance);
    g_once_init_leave (&once, 1);
  }
  if (!vk_check (result, "creating a Vulkan 1.1 instance", error))
    return VK_NULL_HANDLE;
  return instance;
}

static gboolean
check_model (const VmoeConfig *c, int k, GError **error)
{
  if (c->num_experts > MAX_EXPERTS || k > MAX_TOP_K) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND,
        "vulkan: %d experts with k = %d exceed the vulkan backend's limits "
        "(%d experts, k <= %d); use backend cpu", c->num_experts, k, MAX_EXPERTS,
        MAX_TOP_K);
    return FALSE;
  }
  return TRUE;
}

VmoeVulkan *
vmoe_vulkan_new (VmoeModel *model, VmoeRoutingParams routing, const char *device,
    gboolean gpu_only, gboolean fp16, GError **error)
{
  PFN_vkGetInstanceProcAddr get_proc = loader (error);
  if (!get_proc || !check_model (&model->config, routing.top_k, error))
    return NULL;
  VmoeVulkan *vk = g_new0 (VmoeVulkan, 1);
  vk->model = vmoe_model_ref (model);
  vk->routing = routing;
  vk->k = MAX (routing.top_k, 1);
  vk->fp16 = fp16;
  vk->recorded = g_array_new (FALSE, FALSE, sizeof (Recorded));
  vk->submits_before_loss = -1;

  vk->instance = shared_instance (get_proc, error);
  if (!vk->instance)
    goto fail;
#define LOAD(name) \
  vk->fn.name = (PFN_##name) get_proc (vk->instance, #name); \
  if (!vk->fn.name) { \
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, \
        "vulkan: the loader lacks %s", #name); \
    goto fail; \
  }
  INSTANCE_FUNCS (LOAD)
#undef LOAD
  if (!device || !*device)
    device = g_getenv ("VMOE_VULKAN_DEVICE");
  if (!choose_device (vk, device, gpu_only, error) || !create_device (vk, error)
      || !create_pipelines (vk, error) || !upload_weights (vk, error)
      || !reserve (vk, 1, error))
    goto fail;
  /* Tuning, diagnosis and fault-injection knobs, off by default. */
  const char *lose_after = g_getenv ("VMOE_VULKAN_LOSE_DEVICE_AFTER");
  if (lose_after && *lose_after)
    vk->submits_before_loss = MAX (g_ascii_strtoll (lose_after, NULL, 10), 0);
  const char *tile = g_getenv ("VMOE_VULKAN_GEMM_TILE");
  for (int v = 0; tile && v < 3; v++)
    if ((uint32_t) atoi (tile) == gemm_tile_sizes[v])
      vk->forced_tile = v + 1;
  if (g_getenv ("VMOE_VULKAN_PROFILE") && vk->props.limits.timestampComputeAndGraphics) {
    VkQueryPoolCreateInfo qinfo = { .sType = VK_STRUCTURE_TYPE_QUERY_POOL_CREATE_INFO,
      .queryType = VK_QUERY_TYPE_TIMESTAMP, .queryCount = 2 * MAX_PROFILED };
    if (vk->fn.vkCreateQueryPool (vk->device, &qinfo, NULL, &vk->queries) == VK_SUCCESS)
      vk->query_shader = g_new0 (VmoeShader, MAX_PROFILED);
    else
      vk->queries = VK_NULL_HANDLE;
  }
  return vk;


fail:
  vmoe_vulkan_free (vk);
  return NULL;
}

const char *
vmoe_vulkan_device_name (VmoeVulkan *vk)
{
  return vk->props.deviceName;
}

/* ------------------------------------------------------------ op tests */

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
  if (!pool_new (vk, &vk->weights, weights * 4, FALSE, "weights", error)
      || !pool_new (vk, &vk->act, elements * 4, FALSE, "activations", error)
      || !pool_new (vk, &vk->ints, elements * 4, FALSE, "integers", error))
    return FALSE;
  bind_pools (vk);
  return TRUE;
}

gboolean
vmoe_vulkan_test_write (VmoeVulkan *vk, VmoeVkBuffer buffer, size_t offset,
    const void *data, size_t count, GError **error)
{
  return transfer (vk, test_pool (vk, buffer), offset * 4, (void *) data, count * 4,
      TRUE, error);
}

gboolean
vmoe_vulkan_test_read (VmoeVulkan *vk, VmoeVkBuffer buffer, size_t offset,
    void *data, size_t count, GError **error)
{
  return transfer (vk, test_pool (vk, buffer), offset * 4, data, count * 4, FALSE, error);
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
  VkCommandBuffer cb = new_command_buffer (vk, error);
  if (!cb)
    return FALSE;
  gboolean ok = begin (vk, cb, TRUE, error);
  if (ok) {
    dispatch (vk, cb, shader, push, push_size, gx, gy, gz);
    full_barrier (vk, cb);
    ok = vk_check (vk->fn.vkEndCommandBuffer (cb), "recording commands", error)
        && submit_and_wait (vk, &cb, 1, error);
  }
  vk->fn.vkFreeCommandBuffers (vk->device, vk->command_pool, 1, &cb);
  return ok;
}

void
vmoe_vulkan_test_lose_device_after (VmoeVulkan *vk, gint64 submissions)
{
  vk->submits_before_loss = submissions;
}
