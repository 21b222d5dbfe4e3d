/* Push constants of the shaders in shaders/, field for field; the backend
 * and the op tests fill these.  All offsets count elements (floats or ints)
 * from the start of the buffer the shader reads them from. */
#ifndef VMOE_VK_PUSH_H
#define VMOE_VK_PUSH_H

#include <glib.h>
#include <stddef.h>
#include <stdint.h>

#define VMOE_VK_NONE 0xffffffffu

/* The push-constant range of the one pipeline layout; Vulkan guarantees
 * 128 bytes on every device. */
#define VMOE_VK_PUSH_BYTES 128

/* Every shader's push block is a run of 4-byte scalars (std430 packs them
 * without padding), so a struct mirrors its block when it has the block's
 * field count, `field` sits at 4 bytes per field before it (`index`), and
 * all of it fits the push range. */
#define VMOE_VK_PUSH_LAYOUT(type, n_fields, field, index) \
  G_STATIC_ASSERT (sizeof (type) == 4 * (n_fields)); \
  G_STATIC_ASSERT (offsetof (type, field) == 4 * (index)); \
  G_STATIC_ASSERT (sizeof (type) <= VMOE_VK_PUSH_BYTES)

typedef enum {
  VMOE_SHADER_GEMM,
  VMOE_SHADER_GEMM_F16,
  VMOE_SHADER_LAYERNORM,
  VMOE_SHADER_ATTENTION,
  VMOE_SHADER_ATTENTION_ONLINE,
  VMOE_SHADER_EMBED,
  VMOE_SHADER_POOL,
  VMOE_SHADER_ROUTE,
  VMOE_SHADER_EXPERTS,
  VMOE_SHADER_PREPROCESS,
  VMOE_N_SHADERS
} VmoeShader;

/* gemm.comp */
enum { VMOE_GEMM_GELU = 1, VMOE_GEMM_GELU_TANH = 2, VMOE_GEMM_ACCUMULATE = 4,
  VMOE_GEMM_EXPERT_LISTS = 8 };
/* The op tests' dispatch of VMOE_SHADER_GEMM uses 64 x 64 output tiles. */
#define VMOE_GEMM_TILE 64
typedef struct {
  uint32_t m, n, k;
  uint32_t a_off, a_stride;
  uint32_t w_off, b_off;
  uint32_t c_off, c_stride;
  uint32_t flags;
  uint32_t w_expert_stride, b_expert_stride;
  uint32_t list_off, count_off, list_cap, a_row_div;
} VmoeGemmPush;
VMOE_VK_PUSH_LAYOUT (VmoeGemmPush, 16, a_row_div, 15);

/* layernorm.comp: one workgroup per row */
typedef struct {
  uint32_t rows, dim;
  uint32_t in_off, in_stride, out_off, out_stride;
  uint32_t w_off, b_off;
  float eps;
} VmoeLayerNormPush;
VMOE_VK_PUSH_LAYOUT (VmoeLayerNormPush, 9, eps, 8);

/* attention.comp (a block of queries per workgroup) and
 * attention_online.comp (VMOE_ATTENTION_ONLINE_ROWS queries per workgroup
 * in the op tests) */
#define VMOE_ATTENTION_ONLINE_ROWS 64
/* Keys staged in shared memory at a time: KC in both attention shaders. */
#define VMOE_ATTENTION_KEY_CHUNK 32
/* attention.comp's workgroup size (local_size_x, and its partial[] array). */
#define VMOE_ATTENTION_THREADS 128
typedef struct {
  uint32_t tokens, dim, heads;
  uint32_t qkv_off, out_off;
} VmoeAttentionPush;
VMOE_VK_PUSH_LAYOUT (VmoeAttentionPush, 5, out_off, 4);

/* embed.comp: 256 elements per workgroup */
enum { VMOE_EMBED_IM2COL = 0, VMOE_EMBED_ASSEMBLE = 1 };
typedef struct {
  uint32_t mode, images, channels, height, width, patch_size, dim, tokens, class_token;
  uint32_t src_off, dst_off, cls_off, pos_off;
} VmoeEmbedPush;
VMOE_VK_PUSH_LAYOUT (VmoeEmbedPush, 13, pos_off, 12);

/* pool.comp: 64 outputs per workgroup */
typedef struct {
  uint32_t images, tokens, first, count, dim, in_off, out_off;
} VmoePoolPush;
VMOE_VK_PUSH_LAYOUT (VmoePoolPush, 7, out_off, 6);

/* route.comp: 64 images per workgroup */
enum { VMOE_ROUTE_IMAGE = 0, VMOE_ROUTE_TOKEN = 1 };
typedef struct {
  uint32_t mode, images, tokens, dim, experts, k;
  uint32_t x_off, w_off, b_off, router_mean, normalize_gates;
  uint32_t probs_off, entry_expert_off, entry_gate_off;
  uint32_t out_experts_off, out_gates_off, order_off;
  uint32_t out_counts_off, out_dropped_off;
  uint32_t layer, layers, capacity, bpr;
  uint32_t members;            /* E3: member copy i*M + m routes in P_m */
} VmoeRoutePush;
VMOE_VK_PUSH_LAYOUT (VmoeRoutePush, 24, members, 23);

/* experts.comp: 256 elements per workgroup */
enum { VMOE_EXPERTS_LISTS = 0, VMOE_EXPERTS_COMBINE = 1 };
typedef struct {
  uint32_t mode, rows, k, dim;
  uint32_t entry_expert_off, entry_gate_off;
  uint32_t count_off, list_off, list_cap;
  uint32_t y_off, x_off;
} VmoeExpertsPush;
VMOE_VK_PUSH_LAYOUT (VmoeExpertsPush, 11, x_off, 10);

/* preprocess.comp: 16x16 pixels per workgroup, z = image; per-image
 * parameters, VMOE_FRAME_PARAMS ints each, in the integer buffer.  The
 * frame's pixel layout (VmoePixelLayout) travels with each image, since a
 * batch may mix formats.  WIDTH and HEIGHT are the crop's (the region
 * clamped to the frame, or the frame), ORIGIN_X/Y its top-left pixel in
 * the frame, which the planes and strides describe.  YUV_* are the
 * frame's VmoeYuvCoefficients, as float bits. */
enum { VMOE_FRAME_KIND = 0, VMOE_FRAME_WIDTH = 1, VMOE_FRAME_HEIGHT = 2,
  VMOE_FRAME_PLANE = 3, VMOE_FRAME_STRIDE = 6, VMOE_FRAME_TOP = 9,
  VMOE_FRAME_LEFT = 10, VMOE_FRAME_SCALE_Y = 11, VMOE_FRAME_SCALE_X = 12,
  VMOE_FRAME_IDENTITY = 13, VMOE_FRAME_BYTES_PER_PIXEL = 14, VMOE_FRAME_RED = 15,
  VMOE_FRAME_GREEN = 16, VMOE_FRAME_BLUE = 17, VMOE_FRAME_CHROMA_BYTES = 18,
  VMOE_FRAME_U_PLANE = 19, VMOE_FRAME_U_OFFSET = 20, VMOE_FRAME_V_PLANE = 21,
  VMOE_FRAME_V_OFFSET = 22, VMOE_FRAME_ORIGIN_X = 23, VMOE_FRAME_ORIGIN_Y = 24,
  VMOE_FRAME_YUV_Y_OFFSET = 25, VMOE_FRAME_YUV_Y_SCALE = 26, VMOE_FRAME_YUV_R_V = 27,
  VMOE_FRAME_YUV_G_U = 28, VMOE_FRAME_YUV_G_V = 29, VMOE_FRAME_YUV_B_U = 30,
  VMOE_FRAME_PARAMS = 31 };
typedef struct {
  uint32_t params_off, out_off, height, width, channels;
  float mean[3], std[3];          /* the shader's mean0..2, std0..2 */
} VmoePreprocessPush;
VMOE_VK_PUSH_LAYOUT (VmoePreprocessPush, 11, mean, 5);

#endif
