/* Pipelines: the compiled shaders, their specialization constants, and
 * the shared memory each kernel declares, which decides how many query rows
 * an attention workgroup takes and whether the online attention kernel
 * fits the device.  Also the descriptor set, command pool and fence, made
 * with the pipelines' layout. */
#include "vk-internal.h"

#include <stdlib.h>

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

/* Output tiles of the GEMM: 32, 64 and 128 square (per thread 2x2, 4x4,
 * 8x8 outputs): small layers need many workgroups to fill a GPU, large ones
 * more work per loaded element. */
const uint32_t vmoe_vk_gemm_tile_sizes[3] = { 32, 64, 128 };

static gboolean
create_gemm_variants (VmoeVulkan *vk, VkShaderModule module, gboolean fp16,
    GError **error)
{
  for (int v = 0; v < 3; v++) {
    uint32_t tiles[3] = { vmoe_vk_gemm_tile_sizes[v], vmoe_vk_gemm_tile_sizes[v], 16 };
    VkSpecializationMapEntry entries[3] = { { 0, 0, 4 }, { 1, 4, 4 }, { 2, 8, 4 } };
    VkSpecializationInfo spec = { 3, entries, sizeof tiles, tiles };
    VkComputePipelineCreateInfo info = {
      .sType = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO,
      .stage = { .sType = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO,
        .stage = VK_SHADER_STAGE_COMPUTE_BIT, .module = module, .pName = "main",
        .pSpecializationInfo = &spec },
      .layout = vk->pipeline_layout };
    if (!vmoe_vk_check (vk->fn.vkCreateComputePipelines (vk->device, VK_NULL_HANDLE, 1,
                &info, NULL, &vk->gemm_tiles[fp16][v]), "creating a GEMM pipeline", error))
      return FALSE;
  }
  return TRUE;
}

/* The shared arrays of attention.comp, in its order; every element a float.
 * query_block is its QB, tokens its MAX_TOKENS. */
guint64
vmoe_vk_attention_shared_bytes (uint32_t query_block, uint32_t tokens,
    uint32_t head_dim)
{
  guint64 qs = (guint64) query_block * head_dim;
  guint64 kv = (guint64) VMOE_ATTENTION_KEY_CHUNK * (head_dim + 1);
  guint64 scores = (guint64) query_block * tokens;
  guint64 partial = VMOE_ATTENTION_THREADS;
  guint64 row_inv = query_block;
  return 4 * (qs + kv + scores + partial + row_inv);
}

/* The shared arrays of attention_online.comp: ks and vs, a chunk of keys
 * and of values, head_dim floats each (as vec4s). */
guint64
vmoe_vk_attention_online_shared_bytes (uint32_t head_dim)
{
  guint64 ks = (guint64) VMOE_ATTENTION_KEY_CHUNK * head_dim;
  guint64 vs = (guint64) VMOE_ATTENTION_KEY_CHUNK * head_dim;
  return 4 * (ks + vs);
}

gboolean
vmoe_vk_create_pipelines (VmoeVulkan *vk, GError **error)
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
  VkPushConstantRange range = { VK_SHADER_STAGE_COMPUTE_BIT, 0, VMOE_VK_PUSH_BYTES };
  if (!vmoe_vk_check (vk->fn.vkCreateDescriptorSetLayout (vk->device, &set_info, NULL,
              &vk->set_layout), "creating the descriptor layout", error))
    return FALSE;
  VkPipelineLayoutCreateInfo layout_info = {
    .sType = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO, .setLayoutCount = 1,
    .pSetLayouts = &vk->set_layout, .pushConstantRangeCount = 1,
    .pPushConstantRanges = &range };
  if (!vmoe_vk_check (vk->fn.vkCreatePipelineLayout (vk->device, &layout_info, NULL,
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
  while (block > 1 && vmoe_vk_attention_shared_bytes (block, tokens, head_dim) > shared_limit)
    block /= 2;
  if (vmoe_vk_attention_shared_bytes (block, tokens, head_dim) > shared_limit) {
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
      && vmoe_vk_attention_online_shared_bytes (head_dim) <= shared_limit;
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
    if (!vmoe_vk_check (vk->fn.vkCreateShaderModule (vk->device, &module_info, NULL, &module),
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
    if (!vmoe_vk_check (r, "creating a compute pipeline", error))
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
  return vmoe_vk_check (vk->fn.vkCreateDescriptorPool (vk->device, &pool_info, NULL,
          &vk->descriptor_pool), "creating the descriptor pool", error)
      && (alloc.descriptorPool = vk->descriptor_pool,
          vmoe_vk_check (vk->fn.vkAllocateDescriptorSets (vk->device, &alloc, &vk->set),
              "allocating the descriptor set", error))
      && vmoe_vk_check (vk->fn.vkCreateCommandPool (vk->device, &cmd_info, NULL,
              &vk->command_pool), "creating the command pool", error)
      && vmoe_vk_check (vk->fn.vkCreateFence (vk->device, &fence_info, NULL, &vk->fence),
          "creating the fence", error)
      && (vk->upload_cb = vmoe_vk_new_command_buffer (vk, error)) != VK_NULL_HANDLE;
}
