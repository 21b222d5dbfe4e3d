/* Internal types shared by the loader, the backends and the writer. */
#ifndef VMOE_PRIVATE_H
#define VMOE_PRIVATE_H

#include "vmoe/vmoe.h"

typedef struct VmoePackedLinear VmoePackedLinear;

/* y = x W^T + b, W is [out, in] row-major as in PyTorch; b may be NULL. */
typedef struct {
  const float *weight;
  const float *bias;
  int in, out;
  /* W in the CPU GEMM path's layout, or NULL (src/cpu/linear.h): made by
   * the model's first CPU session, freed with the model. */
  const VmoePackedLinear *packed;
} VmoeLinear;

typedef struct {
  VmoeLinear fc1, fc2;
} VmoeMlp;

typedef struct {
  const float *norm1_weight, *norm1_bias;
  const float *norm2_weight, *norm2_bias;
  VmoeLinear qkv, proj;
  gboolean is_moe;
  VmoeMlp mlp;               /* dense block */
  VmoeMlp *experts;          /* MoE block: num_experts */
  gboolean has_shared;
  VmoeMlp shared;
  VmoeLinear router;         /* token routing only */
} VmoeBlock;

struct VmoeModel {
  gint refcount;
  char *name;                /* the file's name without .safetensors */
  GBytes *bytes;              /* the file's mapping, or the caller's bytes */
  gboolean file_mapped;      /* bytes map a file (vmoe_model_load) */
  VmoeConfig config;
  GPtrArray *owned;          /* float copies of F16/BF16/unaligned tensors */

  VmoeLinear patch_embed;    /* weight viewed as [D, C*P*P] */
  const float *cls_token;    /* [D] or NULL */
  const float *pos_embed;    /* [T, D] */
  VmoeBlock *blocks;         /* depth */
  VmoeLinear router;         /* image routing only */
  const float *norm_weight, *norm_bias;
  VmoeLinear head;
  guint64 n_params;
};

/* Gives back the resident pages of the page-aligned interior of `data`
 * where it lies in the model's file mapping: a copy (the CPU's packed
 * weights) replaces it, and any later reader faults the bytes in again from
 * the file.  Does nothing for a model made from the caller's bytes or for
 * the float copies the model owns: there the pages are the only copy. */
void vmoe_model_release_stored (const VmoeModel *model, const void *data,
    size_t bytes);

/* Arrays and objects nest at most this deep in the safetensors header and in
 * "vmoe.config" (the root counts as 1). */
#define VMOE_JSON_MAX_DEPTH 64

/* What json-glib would build from a text: its deepest nesting of arrays and
 * objects, and an upper bound on its values (a container counts itself and
 * each comma one more; strings are skipped). */
typedef struct {
  int depth;
  guint64 values;
} VmoeJsonSize;

/* Measures `text` (NUL-terminated if length < 0) in one pass, without
 * recursion: call it before handing untrusted text to json-glib. */
void vmoe_json_measure (const char *text, gssize length, VmoeJsonSize *size);

/* Parses and validates the JSON text of "vmoe.config" into `config`. */
gboolean vmoe_config_parse (const char *json_text, gssize length,
    VmoeConfig *config, GError **error);
void vmoe_config_clear (VmoeConfig *config);
/* Patches per image (without the class token). */
int vmoe_config_patches (const VmoeConfig *config);
int vmoe_config_tokens (const VmoeConfig *config);
/* Floats of one pre-processed input image (in_channels x image_h x image_w). */
size_t vmoe_config_input_floats (const VmoeConfig *config);
gboolean vmoe_config_block_is_moe (const VmoeConfig *config, int block);

/* One tensor the configuration requires. */
typedef struct {
  char *name;
  int ndim;
  gint64 shape[4];
  gboolean optional;
} VmoeTensorSpec;

/* Every tensor a configuration requires, in file order; optional ones (a
 * router bias) are flagged.  Free with g_ptr_array_unref. */
GPtrArray *vmoe_config_tensor_specs (const VmoeConfig *config,
    gboolean include_optional);
/* The same, or NULL with a VMOE_ERROR_TENSOR error as soon as the required
 * tensors outnumber `max_tensors` or hold more than `max_elements` values:
 * the work a config can cause stays bounded by what its file can hold. */
GPtrArray *vmoe_config_tensor_specs_within (const VmoeConfig *config,
    gboolean include_optional, guint64 max_tensors, guint64 max_elements,
    GError **error);

/* Capacity of each expert per image (per member copy with E3) for token
 * routing (docs/design.md). */
int vmoe_token_capacity (int top_k, int tokens, double capacity_ratio,
    int num_experts, int members);

/* Where the model's Ht x Wt input lies in the virtual resized frame, for a
 * frame (or region) of w0 x h0 (docs/design.md step 1 and Aspect handling);
 * shared by the CPU pre-processing and the Vulkan shader's parameters. */
typedef struct {
  int top, left;
  float scale_y, scale_x;     /* source pixels per resized pixel */
  gboolean identity;          /* the resize is the identity */
} VmoeResizeGeometry;

/* Valid for a frame that vmoe_frame_check accepts. */
void vmoe_resize_geometry (const VmoeConfig *c, int w0, int h0,
    VmoeResizeGeometry *geometry);
/* The byte layout of a pixel format (pixel-format.c). */
typedef enum {
  VMOE_PIXEL_KIND_GRAY,       /* one luma byte per pixel */
  VMOE_PIXEL_KIND_RGB,        /* packed R, G, B (and ignored x/A) bytes */
  VMOE_PIXEL_KIND_YUV,        /* a luma plane and 2x2-subsampled chroma */
} VmoePixelKind;

typedef struct {
  VmoePixelKind kind;
  int planes;
  int bytes_per_pixel;        /* in plane 0 */
  int red, green, blue;       /* RGB: byte offsets within a pixel */
  /* YUV: bytes per chroma position in a chroma row, and where U and V lie:
   * their plane and their byte offset within a position. */
  int chroma_bytes;
  int u_plane, u_offset, v_plane, v_offset;
} VmoePixelLayout;

/* NULL for a value outside VmoePixelFormat. */
const VmoePixelLayout *vmoe_pixel_layout (VmoePixelFormat format);

/* YUV to RGB on 0..255 (yuv-encoding.c): with Y' = y_scale * (Y - y_offset),
 * U' = U - 128 and V' = V - 128, R = Y' + r_v V', G = Y' - g_u U' - g_v V'
 * and B = Y' + b_u U' (each then rounded and clamped to 8 bits). */
typedef struct {
  float y_offset, y_scale;
  float r_v, g_u, g_v, b_u;
} VmoeYuvCoefficients;

/* FALSE, `out` untouched, for a matrix or range outside the enums. */
gboolean vmoe_yuv_coefficients (VmoeYuvMatrix matrix, VmoeYuvRange range,
    VmoeYuvCoefficients *out);

gboolean vmoe_image_check (const VmoeImage *image, GError **error);

/* The pixels one image classifies: its region clamped to the frame, or the
 * whole frame without one (docs/design.md, Regions of interest). */
typedef struct {
  int x, y, width, height;
} VmoeCrop;

/* Checks image `index` of a batch (its frame and its region) and gives its
 * crop; an error names the index. */
gboolean vmoe_image_crop (const VmoeImage *image, int index, VmoeCrop *crop,
    GError **error);
/* vmoe_preprocess for image `index` of a batch. */
gboolean vmoe_preprocess_image (const VmoeConfig *config, const VmoeImage *image,
    int index, float *out, GError **error);
/* vmoe_image_crop, and the crop's resize for the model fits the int
 * geometry and the float source coordinates. */
gboolean vmoe_frame_check (const VmoeConfig *c, const VmoeImage *image, int index,
    VmoeCrop *crop, GError **error);
/* Bytes of plane `plane` from its first byte to its last used one (0 for a
 * plane the format does not have); valid for a checked image. */
size_t vmoe_image_plane_bytes (const VmoeImage *image, int plane);

#endif
