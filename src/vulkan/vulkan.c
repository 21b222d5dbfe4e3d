/* The Vulkan backend's entry points: a session's life (new, free), the
 * forward calls (float input, or raw 8-bit frames that a shader
 * pre-processes), and the backend ops the session calls them through.  A
 * call records only the small upload, submits it with the recorded forward
 * pass, waits on one fence and unpacks the results.  The other parts are
 * described in vk-internal.h. */
#include "vk-internal.h"

#include <stdlib.h>
#include <string.h>

/* Limits of the shaders' fixed-size arrays (route.comp). */
#define MAX_EXPERTS 256
#define MAX_TOP_K 16

/* Records the call's upload (a copy from the staging buffer per region)
 * and runs it with the recorded forward pass; then unpacks the results. */
static gboolean
run (VmoeVulkan *vk, int n, gboolean frames, const VkBufferCopy *copies,
    const Pool *const *targets, int n_copies, VmoeRawOutput *out, GError **error)
{
  VkCommandBuffer forward = vmoe_vk_forward_commands (vk, n, frames, error);
  if (!forward)
    return FALSE;
  VkCommandBuffer cb = vk->upload_cb;
  if (!vmoe_vk_check (vk->fn.vkResetCommandBuffer (cb, 0), "resetting commands", error)
      || !vmoe_vk_begin (vk, cb, TRUE, error))
    return FALSE;
  for (int j = 0; j < n_copies; j++)
    vk->fn.vkCmdCopyBuffer (cb, vk->upload.buffer, targets[j]->buffer, 1, &copies[j]);
  vmoe_vk_full_barrier (vk, cb);
  VkCommandBuffer cbs[2] = { cb, forward };
  if (!vmoe_vk_check (vk->fn.vkEndCommandBuffer (cb), "recording the upload", error)
      || !vmoe_vk_submit_and_wait (vk, cbs, 2, error))
    return FALSE;
  vmoe_vk_profile_report (vk, n);

  const VmoeConfig *c = &vk->model->config;
  const float *floats = vk->download.mapped;
  const int *ints = (const int *) (floats + (vk->a.end - vk->a.logits));
  int k = vk->routing.top_k, layers = c->n_moe_layers, e = c->num_experts;
  int member_outputs = n * c->ensemble_members;
  memcpy (out->logits, floats, (size_t) member_outputs * c->num_classes * sizeof (float));
  if (c->routing == VMOE_ROUTING_IMAGE) {
    memcpy (out->gates, floats + (vk->a.gates - vk->a.logits), (size_t) member_outputs * k * sizeof (float));
    memcpy (out->experts, ints, (size_t) member_outputs * k * sizeof (int));
  } else if (c->routing == VMOE_ROUTING_TOKEN) {
    /* The integer block was laid out for `reserved` images. */
    memcpy (out->tokens_per_expert, ints + (vk->i.tokens_per_expert - vk->i.experts),
        (size_t) n * layers * e * sizeof (int));
    memcpy (out->dropped, ints + (vk->i.dropped - vk->i.experts),
        (size_t) member_outputs * layers * sizeof (int));
  }
  return TRUE;
}

gboolean
vmoe_vulkan_forward_f32 (VmoeVulkan *vk, const float *input, int n,
    VmoeRawOutput *out, GError **error)
{
  if (!vmoe_vk_reserve (vk, n, error))
    return FALSE;
  const VmoeConfig *c = &vk->model->config;
  VkDeviceSize bytes = (VkDeviceSize) n * vmoe_config_input_floats (c) * 4;
  memcpy (vk->upload.mapped, input, bytes);
  VkBufferCopy copy = { 0, (VkDeviceSize) vk->a.input * 4, bytes };
  const Pool *target = &vk->act;
  return run (vk, n, FALSE, &copy, &target, 1, out, error);
}

/* Whether two images describe the same frame bytes (regions aside). */
static gboolean
same_frame (const VmoeImage *a, const VmoeImage *b)
{
  if (a->format != b->format || a->width != b->width || a->height != b->height)
    return FALSE;
  for (int q = 0; q < 3; q++)
    if (a->planes[q] != b->planes[q] || a->strides[q] != b->strides[q])
      return FALSE;
  return TRUE;
}

/* For each image, the first image of the batch with the same frame (itself
 * if none), so that a frame whose regions fill a batch is uploaded once:
 * the upload then costs the distinct frames' bytes, not regions x frame. */
static int *
first_with_same_frame (const VmoeImage *images, int n)
{
  int *first = g_new (int, n);
  GHashTable *by_plane = g_hash_table_new (g_direct_hash, g_direct_equal);
  for (int j = 0; j < n; j++) {
    gpointer found = g_hash_table_lookup (by_plane, images[j].planes[0]);
    int k = found ? GPOINTER_TO_INT (found) - 1 : j;
    first[j] = same_frame (&images[k], &images[j]) ? k : j;
    if (!found)
      g_hash_table_insert (by_plane, (gpointer) images[j].planes[0], GINT_TO_POINTER (j + 1));
  }
  g_hash_table_destroy (by_plane);
  return first;
}

/* Writes image j's parameters: its crop's geometry, its pixel layout and,
 * unless an earlier image's frame is the same, its planes into the staging
 * area at `*at` (advanced past them). */
static void
write_frame (const VmoeConfig *c, const VmoeImage *img, const VmoeCrop *crop,
    int32_t *p, const int32_t *same_frame_params, uint8_t *frames, guint64 *at)
{
  VmoeResizeGeometry g;
  vmoe_resize_geometry (c, crop->width, crop->height, &g);
  memset (p, 0, VMOE_FRAME_PARAMS * sizeof *p);
  const VmoePixelLayout *layout = vmoe_pixel_layout (img->format);
  p[VMOE_FRAME_KIND] = layout->kind;
  p[VMOE_FRAME_BYTES_PER_PIXEL] = layout->bytes_per_pixel;
  p[VMOE_FRAME_RED] = layout->red;
  p[VMOE_FRAME_GREEN] = layout->green;
  p[VMOE_FRAME_BLUE] = layout->blue;
  p[VMOE_FRAME_CHROMA_BYTES] = layout->chroma_bytes;
  p[VMOE_FRAME_U_PLANE] = layout->u_plane;
  p[VMOE_FRAME_U_OFFSET] = layout->u_offset;
  p[VMOE_FRAME_V_PLANE] = layout->v_plane;
  p[VMOE_FRAME_V_OFFSET] = layout->v_offset;
  p[VMOE_FRAME_WIDTH] = crop->width;
  p[VMOE_FRAME_HEIGHT] = crop->height;
  p[VMOE_FRAME_ORIGIN_X] = crop->x;
  p[VMOE_FRAME_ORIGIN_Y] = crop->y;
  p[VMOE_FRAME_TOP] = g.top;
  p[VMOE_FRAME_LEFT] = g.left;
  memcpy (&p[VMOE_FRAME_SCALE_Y], &g.scale_y, 4);
  memcpy (&p[VMOE_FRAME_SCALE_X], &g.scale_x, 4);
  p[VMOE_FRAME_IDENTITY] = g.identity;
  VmoeYuvCoefficients yuv;
  vmoe_yuv_coefficients (img->yuv_matrix, img->yuv_range, &yuv);
  const float yuv_params[] = { yuv.y_offset, yuv.y_scale, yuv.r_v, yuv.g_u, yuv.g_v, yuv.b_u };
  G_STATIC_ASSERT (VMOE_FRAME_YUV_B_U - VMOE_FRAME_YUV_Y_OFFSET + 1 == G_N_ELEMENTS (yuv_params));
  memcpy (&p[VMOE_FRAME_YUV_Y_OFFSET], yuv_params, sizeof yuv_params);
  for (int q = 0; q < 3; q++) {
    size_t bytes = vmoe_image_plane_bytes (img, q);
    if (!bytes)
      continue;
    p[VMOE_FRAME_STRIDE + q] = (int32_t) img->strides[q];
    if (same_frame_params) {
      p[VMOE_FRAME_PLANE + q] = same_frame_params[VMOE_FRAME_PLANE + q];
      continue;
    }
    p[VMOE_FRAME_PLANE + q] = (int32_t) *at;
    memcpy (frames + *at, img->planes[q], bytes);
    *at += (bytes + 3) & ~(guint64) 3;
  }
}

gboolean
vmoe_vulkan_forward_u8 (VmoeVulkan *vk, const VmoeImage *images, int n,
    VmoeRawOutput *out, GError **error)
{
  if (!vmoe_vk_reserve (vk, n, error))
    return FALSE;
  const VmoeConfig *c = &vk->model->config;
  g_autofree VmoeCrop *crops = g_new (VmoeCrop, n);
  guint64 params_bytes = (guint64) n * VMOE_FRAME_PARAMS * 4, frame_bytes = 0;
  for (int j = 0; j < n; j++)
    if (!vmoe_frame_check (c, &images[j], j, &crops[j], error))
      return FALSE;
  g_autofree int *first = first_with_same_frame (images, n);
  for (int j = 0; j < n; j++)
    for (int p = 0; p < 3 && first[j] == j; p++)
      frame_bytes += (vmoe_image_plane_bytes (&images[j], p) + 3) & ~(guint64) 3;
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
    if (!vmoe_vk_pool_new (vk, &vk->frames, MAX (grow, vk->frames.size), FALSE, "frames", error)
        || !vmoe_vk_pool_new (vk, &vk->upload, MAX (params_bytes + grow, vk->upload.size), TRUE,
            "upload buffer", error)) {
      vk->reserved = 0;       /* pools are gone: rebuild on the next call */
      vmoe_vk_pool_free (vk, &vk->act);
      return FALSE;
    }
    vmoe_vk_bind_pools (vk);
  }
  uint8_t *staging = vk->upload.mapped;
  int32_t *params = (int32_t *) staging;
  guint64 at = 0;
  for (int j = 0; j < n; j++)
    write_frame (c, &images[j], &crops[j], params + j * VMOE_FRAME_PARAMS,
        first[j] == j ? NULL : params + first[j] * VMOE_FRAME_PARAMS,
        staging + params_bytes, &at);
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
    vmoe_vk_forget_recorded (vk);
    Pool *pools[] = { &vk->weights, &vk->weights16, &vk->act, &vk->ints, &vk->frames,
      &vk->upload, &vk->download };
    for (guint j = 0; j < G_N_ELEMENTS (pools); j++)
      vmoe_vk_pool_free (vk, pools[j]);
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
  PFN_vkGetInstanceProcAddr get_proc = vmoe_vk_loader (error);
  if (!get_proc || !check_model (&model->config, routing.top_k, error))
    return NULL;
  VmoeVulkan *vk = g_new0 (VmoeVulkan, 1);
  vk->model = vmoe_model_ref (model);
  vk->routing = routing;
  vk->k = MAX (routing.top_k, 1);
  vk->fp16 = fp16;
  vk->recorded = g_array_new (FALSE, FALSE, sizeof (Recorded));
  vk->submits_before_loss = -1;

  vk->instance = vmoe_vk_shared_instance (get_proc, error);
  if (!vk->instance)
    goto fail;
  if (!vmoe_vk_load_functions (vk, get_proc, error))
    goto fail;
  if (!device || !*device)
    device = g_getenv ("VMOE_VULKAN_DEVICE");
  if (!vmoe_vk_choose_device (vk, device, gpu_only, error) || !vmoe_vk_create_device (vk, error)
      || !vmoe_vk_create_pipelines (vk, error) || !vmoe_vk_upload_weights (vk, error)
      || !vmoe_vk_reserve (vk, 1, error))
    goto fail;
  /* Tuning, diagnosis and fault-injection knobs, off by default. */
  const char *lose_after = g_getenv ("VMOE_VULKAN_LOSE_DEVICE_AFTER");
  if (lose_after && *lose_after)
    vk->submits_before_loss = MAX (g_ascii_strtoll (lose_after, NULL, 10), 0);
  const char *tile = g_getenv ("VMOE_VULKAN_GEMM_TILE");
  for (int v = 0; tile && v < 3; v++)
    if ((uint32_t) atoi (tile) == vmoe_vk_gemm_tile_sizes[v])
      vk->forced_tile = v + 1;
  vmoe_vk_profiler_start (vk);
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

/* ------------------------------------------------------------ backend ops */

void *
vmoe_vulkan_backend_open (VmoeModel *model, VmoeRoutingParams routing,
    const VmoeSessionOptions *options, gboolean automatic, GError **error)
{
  /* bf16 is the CPU backend's; auto then passes over to it. */
  if (options->precision != VMOE_PRECISION_FP32) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_BACKEND, "the vulkan backend has no "
        "precision %s; its reduced precision is fp16 weights (option fp16)",
        vmoe_precision_name (options->precision));
    return NULL;
  }
  /* auto takes Vulkan only on a GPU. */
  return vmoe_vulkan_new (model, routing, options->device, automatic,
      options->fp16, error);
}

static gboolean
backend_forward_f32 (void *impl, const float *input, int n, VmoeRawOutput *out,
    GError **error)
{
  return vmoe_vulkan_forward_f32 (impl, input, n, out, error);
}

static gboolean
backend_forward_u8 (void *impl, const VmoeImage *images, int n, VmoeRawOutput *out,
    GError **error)
{
  return vmoe_vulkan_forward_u8 (impl, images, n, out, error);
}

static const char *
backend_device_name (void *impl)
{
  return vmoe_vulkan_device_name (impl);
}

static void
backend_free (void *impl)
{
  vmoe_vulkan_free (impl);
}

const VmoeBackendOps vmoe_vulkan_backend_ops = {
  .kind = VMOE_BACKEND_VULKAN,
  .forward_f32 = backend_forward_f32,
  .forward_u8 = backend_forward_u8,
  .device_name = backend_device_name,
  .free = backend_free,
};
