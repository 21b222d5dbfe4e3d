/* libvmoe: sparse Vision-Transformer Mixture-of-Experts inference.
 *
 * A VmoeModel is a validated, immutable, reference-counted model file
 * (safetensors + the "vmoe.config" metadata of DESIGN.md).  A VmoeSession runs
 * batches through one backend and owns every buffer the forward pass needs, so
 * one model can serve any number of sessions on any number of threads (one
 * session per thread).  This header never exposes GStreamer types.
 */
#ifndef VMOE_VMOE_H
#define VMOE_VMOE_H

#include <glib.h>
#include <stdint.h>

G_BEGIN_DECLS

#define VMOE_ERROR (vmoe_error_quark ())
GQuark vmoe_error_quark (void);

typedef enum {
  VMOE_ERROR_IO,              /* file missing or unreadable */
  VMOE_ERROR_FORMAT,          /* not a valid safetensors file */
  VMOE_ERROR_CONFIG,          /* vmoe.config missing, malformed or out of range */
  VMOE_ERROR_TENSOR,          /* a tensor missing, of the wrong shape, or non-finite */
  VMOE_ERROR_INVALID_ARGUMENT,/* a call's arguments do not fit the model */
  VMOE_ERROR_BACKEND,         /* the backend cannot run (no device, no memory) */
} VmoeErrorCode;

typedef enum { VMOE_ACT_GELU, VMOE_ACT_GELU_TANH } VmoeActivation;
typedef enum { VMOE_POOL_TOKEN, VMOE_POOL_AVG } VmoePool;
typedef enum { VMOE_ROUTING_NONE, VMOE_ROUTING_IMAGE, VMOE_ROUTING_TOKEN } VmoeRouting;
typedef enum { VMOE_ROUTER_INPUT_CLS, VMOE_ROUTER_INPUT_MEAN } VmoeRouterInput;

typedef struct {
  char *name;
  int n_classes;
  int *classes;
} VmoeSuperclass;

/* The parsed "vmoe.config"; field names follow the JSON keys. */
typedef struct {
  int image_h, image_w;
  int patch_size;
  int in_channels;            /* 1 or 3 */
  int embed_dim, depth, num_heads, mlp_dim;
  gboolean qkv_bias;
  double norm_eps;
  VmoeActivation act;
  gboolean class_token;
  VmoePool pool;
  int num_classes;
  char **labels;              /* num_classes strings */
  float mean[3], std[3];      /* in_channels used */
  double crop_pct;

  /* Mixture of experts; routing == VMOE_ROUTING_NONE means a dense ViT. */
  VmoeRouting routing;
  int n_moe_layers;
  int *moe_layers;            /* ascending block indices */
  int num_experts, top_k;
  VmoeRouterInput router_input;
  gboolean normalize_gates;
  int expert_mlp_dim;
  gboolean shared_expert;
  double capacity_ratio;
  gboolean bpr;
  int n_superclasses;         /* 0, or num_experts: superclass e belongs to expert e */
  VmoeSuperclass *superclasses;
} VmoeConfig;

typedef struct VmoeModel VmoeModel;

VmoeModel *vmoe_model_load (const char *path, GError **error);
/* The same from a whole model file in memory (a resource, a download): the
 * model keeps a reference to `bytes` and reads its weights in place, so the
 * bytes must not change while the model lives. */
VmoeModel *vmoe_model_new_from_bytes (GBytes *bytes, GError **error);
VmoeModel *vmoe_model_ref (VmoeModel *model);
void vmoe_model_unref (VmoeModel *model);
const VmoeConfig *vmoe_model_get_config (const VmoeModel *model);
/* Tokens per image, including the class token. */
int vmoe_model_tokens (const VmoeModel *model);
guint64 vmoe_model_parameter_count (const VmoeModel *model);
/* Multiply-adds x 2 per image for the linear layers and attention.
 * `routed`: the experts actually evaluated (k per image or token, one shared
 * expert); otherwise every expert on every token, the dense upper bound. */
double vmoe_model_flops (const VmoeModel *model, gboolean routed);
/* Bytes the weights take as the CPU backend computes them (float32). */
guint64 vmoe_model_weight_bytes (const VmoeModel *model);

/* Writes a model with random weights (seeded, deterministic) for any valid
 * configuration, given as the JSON text of "vmoe.config". */
gboolean vmoe_random_model_write (const char *config_json, guint64 seed,
    const char *path, GError **error);

typedef enum {
  VMOE_BACKEND_AUTO,
  VMOE_BACKEND_CPU,
  VMOE_BACKEND_VULKAN,
} VmoeBackend;

const char *vmoe_backend_name (VmoeBackend backend);
gboolean vmoe_backend_from_string (const char *name, VmoeBackend *backend);

typedef struct {
  VmoeBackend backend;
  int threads;                /* 0: the library's default (all cores) */
  int top_k;                  /* classes reported per image; 0 means 5 */
  int experts_k;              /* 0: the model's top_k; else overrides it */
  double capacity_ratio;      /* <= 0: the model's; else overrides it */
  /* Vulkan device: NULL for $VMOE_VULKAN_DEVICE, else "auto" (discrete,
   * then integrated GPU), an index, "cpu" (a CPU device such as lavapipe,
   * never chosen otherwise) or part of the device's name. */
  const char *device;
  gboolean fp16;              /* Vulkan: GEMM weights stored as fp16 */
} VmoeSessionOptions;

void vmoe_session_options_init (VmoeSessionOptions *options);

/* Per token-routing MoE layer of one image. */
typedef struct {
  int block;
  const int *tokens_per_expert;  /* num_experts entries */
  int dropped;                   /* assignments over capacity */
} VmoeLayerStats;

/* One image's result; the arrays live in the session and stay valid until
 * the session's next run. */
typedef struct {
  const float *logits;          /* num_classes */
  int n_top;
  const int *top_classes;
  const float *top_scores;      /* softmax probabilities */
  const char *const *top_labels;
  /* image routing */
  int n_experts;                /* chosen experts (k), 0 without image routing */
  const int *experts;
  const float *gates;
  const char *const *superclasses; /* name per chosen expert, NULL if unnamed */
  /* token routing */
  int n_layers;
  const VmoeLayerStats *layers;
} VmoeImageResult;

/* Pixel layouts of 8-bit frames, named as GStreamer names them.  Padding
 * and alpha bytes (x, A) are ignored.  I420 and NV12 are converted to RGB
 * with BT.601 limited range, rounded to 8 bits, before anything else. */
typedef enum {
  VMOE_PIXEL_GRAY8,
  VMOE_PIXEL_RGB, VMOE_PIXEL_BGR,
  VMOE_PIXEL_RGBA, VMOE_PIXEL_BGRA, VMOE_PIXEL_ARGB, VMOE_PIXEL_ABGR,
  VMOE_PIXEL_I420, VMOE_PIXEL_NV12,
} VmoePixelFormat;

/* An 8-bit frame.  Packed formats use plane 0 only; I420 has Y, U, V planes
 * and NV12 Y and interleaved UV, each with its own stride in bytes. */
typedef struct {
  VmoePixelFormat format;
  int width, height;
  const uint8_t *planes[3];
  size_t strides[3];
} VmoeImage;

/* A packed frame of 1 (gray), 3 (RGB) or 4 (RGBA) channels. */
void vmoe_image_init_packed (VmoeImage *image, const uint8_t *data, int width,
    int height, int channels, size_t stride);

typedef struct VmoeSession VmoeSession;

VmoeSession *vmoe_session_new (VmoeModel *model,
    const VmoeSessionOptions *options, GError **error);
void vmoe_session_free (VmoeSession *session);
VmoeModel *vmoe_session_get_model (VmoeSession *session);
VmoeBackend vmoe_session_get_backend (VmoeSession *session);
/* The device a session runs on: "cpu", or the Vulkan device's name. */
const char *vmoe_session_get_device (VmoeSession *session);

/* Classes reported per image from the next run on (0 means 5; at most the
 * model's class count).  Post-processing only: the backend is untouched, so
 * this is cheap on any backend.  Results of earlier runs become invalid. */
gboolean vmoe_session_set_top_k (VmoeSession *session, int top_k, GError **error);

/* Classifies n images already pre-processed: float32 [n, C, H, W]. */
gboolean vmoe_session_run_f32 (VmoeSession *session, const float *input,
    int n, GError **error);
/* Classifies n 8-bit frames of any size through the pre-processing of
 * DESIGN.md (resize, centre crop, normalise). */
gboolean vmoe_session_run_u8 (VmoeSession *session, const VmoeImage *images,
    int n, GError **error);
/* Result i of the last run. */
const VmoeImageResult *vmoe_session_get_result (VmoeSession *session, int i);

/* Pre-processing alone, for tests and other backends: writes C*H*W floats. */
gboolean vmoe_preprocess (const VmoeConfig *config, const VmoeImage *image,
    float *out, GError **error);

G_END_DECLS

#endif /* VMOE_VMOE_H */
