/* libvmoe: sparse Vision-Transformer Mixture-of-Experts inference.
 *
 * A VmoeModel is a validated, immutable, reference-counted model file
 * (safetensors + the "vmoe.config" metadata of docs/design.md).  A
 * VmoeSession runs batches through one backend and owns every buffer the
 * forward pass needs, so one model can serve any number of sessions on any
 * number of threads (one session per thread).  This header never exposes
 * GStreamer types.
 *
 * Ownership: a function that returns a pointer says (transfer full) when the
 * caller owns it (free it with the function named there) and (transfer
 * none) when the library keeps it; strings and arrays passed in are copied
 * or only read during the call unless a comment says otherwise.
 *
 * Thread safety: a VmoeModel may be used from any number of threads at once
 * (it is never written after loading; its reference count is atomic).  A
 * VmoeSession is used by one thread at a time: calls on one session must
 * not overlap, but different sessions run in parallel, on the same model or
 * not.  The functions that take neither are safe from any thread.
 *
 * ABI: VmoeSessionOptions and VmoeImage, which callers allocate, end in a
 * reserved tail that later fields take, so their size never changes within
 * a soversion; zero-fill them (vmoe_session_options_init,
 * vmoe_image_init_packed, or a designated initialiser, which zeroes the
 * members it does not name).  VmoeConfig, VmoeImageResult and
 * VmoeLayerStats are only ever handed out by the library: callers read
 * them and never allocate them, so fields may be appended.
 */
#ifndef VMOE_VMOE_H
#define VMOE_VMOE_H

#include <glib.h>
#include <stdint.h>

#include <vmoe/vmoe-version.h>

/* Marks the public API: libvmoe is built with hidden symbol visibility
 * (-fvisibility=hidden), so only what carries this is exported.  Write it on
 * the line that names the function: src/meson.build makes the linker's
 * export list from those lines. */
#if defined(__GNUC__)
#define VMOE_API __attribute__ ((visibility ("default"))) extern
#else
#define VMOE_API extern
#endif

G_BEGIN_DECLS

/**
 * VMOE_ERROR:
 *
 * The error domain of every GError libvmoe sets; codes are VmoeErrorCode.
 */
#define VMOE_ERROR (vmoe_error_quark ())
VMOE_API GQuark vmoe_error_quark (void);

typedef enum {
  VMOE_ERROR_IO,              /* file missing or unreadable */
  VMOE_ERROR_FORMAT,          /* not a valid safetensors file */
  VMOE_ERROR_CONFIG,          /* vmoe.config missing, malformed or out of range */
  VMOE_ERROR_TENSOR,          /* a tensor missing, of the wrong shape, or non-finite */
  VMOE_ERROR_INVALID_ARGUMENT,/* a call's arguments do not fit the model */
  VMOE_ERROR_BACKEND,         /* the backend cannot run (no device, no memory) */
  VMOE_ERROR_NUMERIC,         /* the forward pass produced non-finite logits */
} VmoeErrorCode;

/* Images one run takes at most (vmoe_session_run_f32 and _u8). */
#define VMOE_MAX_BATCH 65536
/* CPU threads a session may ask for (VmoeSessionOptions.threads). */
#define VMOE_MAX_THREADS 256

typedef enum { VMOE_ACT_GELU, VMOE_ACT_GELU_TANH } VmoeActivation;
typedef enum { VMOE_POOL_TOKEN, VMOE_POOL_AVG } VmoePool;
typedef enum { VMOE_ROUTING_NONE, VMOE_ROUTING_IMAGE, VMOE_ROUTING_TOKEN } VmoeRouting;
typedef enum { VMOE_ROUTER_INPUT_CLS, VMOE_ROUTER_INPUT_MEAN } VmoeRouterInput;
/* How a frame (or region) of another shape reaches the model's size
 * (docs/design.md, Aspect handling): keep the aspect ratio and centre-crop,
 * or resize straight to the model's size. */
typedef enum { VMOE_ASPECT_CROP, VMOE_ASPECT_STRETCH } VmoeAspect;

typedef struct {
  char *name;
  int n_classes;
  int *classes;
} VmoeSuperclass;

/**
 * VmoeConfig:
 *
 * The parsed "vmoe.config"; field names follow the JSON keys.  Only a
 * model hands one out (vmoe_model_get_config), and it belongs to the model:
 * never allocate, copy or free one.  Later versions append fields, which a
 * caller-made VmoeConfig would lack.
 */
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

  /* Appended after 0.1's fields (callers never allocate a VmoeConfig). */
  VmoeAspect aspect;
  /* E3: members M (1 without an ensemble, and for a dense model); member m
   * routes among experts [m*E/M, (m+1)*E/M) (docs/design.md). */
  int ensemble_members;
} VmoeConfig;

/**
 * VmoeModel:
 *
 * A loaded model: immutable and reference-counted, safe to share between
 * threads.  Sessions hold a reference of their own.
 */
typedef struct VmoeModel VmoeModel;

/**
 * vmoe_model_load:
 * @path: a safetensors file with "vmoe.config" in its metadata
 * @error: return location for a VMOE_ERROR, or NULL
 *
 * Maps the file and validates the configuration and every tensor.
 *
 * Returns: (transfer full) (nullable): the model, to release with
 * vmoe_model_unref, or NULL with @error set.
 */
VMOE_API VmoeModel *vmoe_model_load (const char *path, GError **error);
/**
 * vmoe_model_new_from_bytes:
 * @bytes: (transfer none): a whole model file in memory (a resource, a download)
 * @error: return location for a VMOE_ERROR, or NULL
 *
 * As vmoe_model_load, from memory.  The model keeps a reference to @bytes
 * and reads its weights in place, so the bytes must not change while the
 * model lives.  The model's name is "".
 *
 * Returns: (transfer full) (nullable): the model, or NULL with @error set.
 */
VMOE_API VmoeModel *vmoe_model_new_from_bytes (GBytes *bytes, GError **error);
/**
 * vmoe_model_ref:
 * @model: a model
 *
 * Returns: (transfer full): @model, with one more reference.
 */
VMOE_API VmoeModel *vmoe_model_ref (VmoeModel *model);
/**
 * vmoe_model_unref:
 * @model: (nullable) (transfer full): a model
 *
 * Drops one reference; the last one unmaps the file.
 */
VMOE_API void vmoe_model_unref (VmoeModel *model);
/**
 * vmoe_model_get_name:
 * @model: a model
 *
 * What results are labelled with: the model file's name without its
 * ".safetensors" ("fashion-vmoe"), or "" for a model that has no file.
 *
 * Returns: (transfer none): the name, valid as long as @model.
 */
VMOE_API const char *vmoe_model_get_name (const VmoeModel *model);
/**
 * vmoe_model_get_config:
 * @model: a model
 *
 * Returns: (transfer none): the model's configuration, valid as long as
 * the model.
 */
VMOE_API const VmoeConfig *vmoe_model_get_config (const VmoeModel *model);
/* Tokens per image, including the class token. */
VMOE_API int vmoe_model_tokens (const VmoeModel *model);
VMOE_API guint64 vmoe_model_parameter_count (const VmoeModel *model);
/* Multiply-adds x 2 per image for the linear layers and attention.
 * `routed`: the experts actually evaluated (k per image or token, one shared
 * expert); otherwise every expert on every token, the dense upper bound. */
VMOE_API double vmoe_model_flops (const VmoeModel *model, gboolean routed);
/* Bytes the weights take as the CPU backend computes them (float32). */
VMOE_API guint64 vmoe_model_weight_bytes (const VmoeModel *model);

/**
 * vmoe_random_model_write:
 * @config_json: the JSON text of "vmoe.config"
 * @seed: the random weights' seed; the same seed writes the same file
 * @path: where to write the model
 * @error: return location for a VMOE_ERROR, or NULL
 *
 * Writes a model with random weights for any valid configuration.
 *
 * Returns: TRUE on success.
 */
VMOE_API gboolean vmoe_random_model_write (const char *config_json, guint64 seed,
    const char *path, GError **error);

typedef enum {
  VMOE_BACKEND_AUTO,
  VMOE_BACKEND_CPU,
  VMOE_BACKEND_VULKAN,
} VmoeBackend;

/* Returns: (transfer none): "auto", "cpu" or "vulkan"; a static string. */
VMOE_API const char *vmoe_backend_name (VmoeBackend backend);
VMOE_API gboolean vmoe_backend_from_string (const char *name, VmoeBackend *backend);

/* What the CPU backend's linear layers compute in (docs/cpu.md): fp32, or
 * bf16 weights and activations with fp32 sums (oneDNN builds on CPUs with
 * avx512_bf16; elsewhere a session asking for it fails). */
typedef enum {
  VMOE_PRECISION_FP32,
  VMOE_PRECISION_BF16,
} VmoePrecision;

/* Returns: (transfer none): "fp32" or "bf16"; a static string. */
VMOE_API const char *vmoe_precision_name (VmoePrecision precision);
VMOE_API gboolean vmoe_precision_from_string (const char *name, VmoePrecision *precision);
/**
 * vmoe_cpu_gemm_describe:
 * @precision: the precision a session would ask for
 * @error: return location for a VMOE_ERROR, or NULL
 *
 * Returns: (transfer none): the GEMM path and instruction set a CPU session
 * at @precision would run its linear layers on in this process (e.g.
 * "oneDNN 2.6.3 brg:avx512_core"), or NULL with a VMOE_ERROR_BACKEND error
 * saying why such a session would be refused.
 */
VMOE_API const char *vmoe_cpu_gemm_describe (VmoePrecision precision, GError **error);

/**
 * VmoeSessionOptions:
 *
 * How vmoe_session_new makes a session.  The caller allocates it (on the
 * stack, typically) and must fill it with vmoe_session_options_init before
 * setting fields: the reserved tail holds the fields of later versions,
 * whose zero means "the default".  The session copies what it needs;
 * `device` is only read during vmoe_session_new.
 */
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
  VmoePrecision precision;    /* CPU: fp32 (the default) or bf16; Vulkan
                                 refuses bf16 (its own is `fp16`) */
  /*< private >*/
  gpointer _vmoe_reserved[11];
} VmoeSessionOptions;

/**
 * vmoe_session_options_init:
 * @options: (out caller-allocates): the options to fill
 *
 * Sets every option to its default: backend auto, the model's routing,
 * top-5 classes, all cores, and zeroes the reserved tail.
 */
VMOE_API void vmoe_session_options_init (VmoeSessionOptions *options);

/* Per token-routing MoE layer of one image (of one ensemble member). */
typedef struct {
  int block;
  const int *tokens_per_expert;  /* num_experts / ensemble_members entries:
                                    the member's experts, in order */
  int dropped;                   /* assignments over capacity */
  /* Appended after 0.1's fields (only the library makes one). */
  int member;                    /* E3 member; 0 without an ensemble */
} VmoeLayerStats;

/**
 * VmoeImageResult:
 *
 * One image's result.  It and its arrays belong to the session and stay
 * valid until the session's next run, vmoe_session_set_top_k or
 * vmoe_session_free.
 */
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
  /* Appended after 0.1's fields (only the library makes a result).
   *
   * E3 ensembles (docs/design.md, Ensembles of expert paths) of M members:
   * `logits` are log(probs), probs being the mean of the members' softmax,
   * and the top classes are ranked by probs; `experts`, `gates` and
   * `superclasses` hold M runs of k (member 0's first; n_experts = M*k,
   * global expert indices); `layers` holds, per MoE block in order, one
   * entry per member (n_layers = MoE blocks x M). */
  int n_members;                /* M; 1 without an ensemble */
  const int *member_classes;    /* n_members: each member's top-1 class */
  /* Of the reported probabilities, for every model: the predictive entropy
   * -sum p log p in nats, and the fraction of members whose top-1 is not
   * top_classes[0] (0 with one member). */
  float entropy;
  float disagreement;
} VmoeImageResult;

/**
 * VMOE_IMAGE_MAX_SIDE:
 *
 * The largest frame side, in pixels, that pre-processing takes.
 */
#define VMOE_IMAGE_MAX_SIDE 65536

/* Pixel layouts of 8-bit frames, named as GStreamer names them.  Padding
 * and alpha bytes (x, A) are ignored.  I420 and NV12 are converted to RGB
 * with the frame's VmoeYuvMatrix and VmoeYuvRange (BT.601 limited range
 * unless set), rounded to 8 bits, before anything else. */
typedef enum {
  VMOE_PIXEL_GRAY8,
  VMOE_PIXEL_RGB, VMOE_PIXEL_BGR,
  VMOE_PIXEL_RGBA, VMOE_PIXEL_BGRA, VMOE_PIXEL_ARGB, VMOE_PIXEL_ABGR,
  VMOE_PIXEL_I420, VMOE_PIXEL_NV12,
} VmoePixelFormat;

/* The YUV encoding of an I420 or NV12 frame (ignored for other formats):
 * the matrix, named by its standard and defined by its luma weights Kr and
 * Kb (docs/design.md step 1), and the range of the 8-bit codes. */
typedef enum {
  VMOE_YUV_MATRIX_BT601,        /* Kr 0.299, Kb 0.114: SD video, JPEG */
  VMOE_YUV_MATRIX_BT709,        /* Kr 0.2126, Kb 0.0722: HD video */
  VMOE_YUV_MATRIX_BT2020,       /* Kr 0.2627, Kb 0.0593: UHD (non-constant luminance) */
} VmoeYuvMatrix;

typedef enum {
  VMOE_YUV_RANGE_LIMITED,       /* Y 16-235, U and V 16-240 ("studio swing") */
  VMOE_YUV_RANGE_FULL,          /* Y, U and V 0-255 (JPEG) */
} VmoeYuvRange;

/**
 * vmoe_pixel_format_bytes_per_pixel:
 * @format: a pixel format
 *
 * Returns: the bytes of one pixel in plane 0 (the luma plane of I420 and
 *   NV12); 0 for a value outside #VmoePixelFormat
 */
VMOE_API int vmoe_pixel_format_bytes_per_pixel (VmoePixelFormat format);

/**
 * vmoe_pixel_format_rgb_offsets:
 * @format: a pixel format
 * @offsets: (out caller-allocates) (array fixed-size=3): the byte offsets of
 *   R, G and B within one pixel
 *
 * Returns: TRUE for a packed RGB format; FALSE, @offsets untouched, for
 *   gray, YUV and unknown formats
 */
VMOE_API gboolean vmoe_pixel_format_rgb_offsets (VmoePixelFormat format,
    int offsets[3]);

/**
 * VmoeImage:
 *
 * An 8-bit frame.  Packed formats use plane 0 only; I420 has Y, U, V planes
 * and NV12 Y and interleaved UV, each with its own stride in bytes.  The
 * caller allocates it and owns the pixels, which are only read during the
 * run.  Fill it with vmoe_image_init_packed or a designated initialiser
 * (`VmoeImage img = { .format = ..., ... }`), which zeroes the reserved tail
 * that the fields of later versions take; never member by member.
 */
typedef struct {
  VmoePixelFormat format;
  int width, height;
  const uint8_t *planes[3];
  size_t strides[3];
  /* The part of the frame to classify, in frame pixels; a width or height
   * of 0 means the whole frame.  It is clamped to the frame and then
   * treated exactly as a frame of its own size (docs/design.md, Regions of
   * interest); a region empty after clamping is an error. */
  struct { int x, y, width, height; } region;
  /* Appended after 0.1's fields, in the reserved tail: the encoding of an
   * I420 or NV12 frame; zero is BT.601 limited range. */
  VmoeYuvMatrix yuv_matrix;
  VmoeYuvRange yuv_range;
  /*< private >*/
  gpointer _vmoe_reserved[6 - 8 / GLIB_SIZEOF_VOID_P];
} VmoeImage;

/**
 * vmoe_image_init_packed:
 * @image: (out caller-allocates): the frame to fill
 * @data: (transfer none): the first pixel
 * @width: @height: the frame's size in pixels
 * @channels: 1 (gray), 3 (RGB) or 4 (RGBA); another count makes a frame
 *   that the runs refuse
 * @stride: bytes from one row to the next
 */
VMOE_API void vmoe_image_init_packed (VmoeImage *image, const uint8_t *data,
    int width, int height, int channels, size_t stride);

/**
 * VmoeSession:
 *
 * Runs batches of images through one backend.  Used by one thread at a
 * time; see the top of this file.
 */
typedef struct VmoeSession VmoeSession;

/**
 * vmoe_session_new:
 * @model: (transfer none): the model; the session takes a reference
 * @options: (nullable): from vmoe_session_options_init, or NULL for the
 *   defaults
 * @error: return location for a VMOE_ERROR, or NULL
 *
 * A CPU session sets OpenBLAS to one thread for the whole process
 * (openblas_set_num_threads, which OpenBLAS only has process-wide): the
 * session's own threads split the work, and OpenBLAS's spinning threads
 * would fight them for the cores (docs/cpu.md).  An application that uses
 * OpenBLAS itself may set it back; results stay correct, only slower.
 *
 * Returns: (transfer full) (nullable): the session, to free with
 * vmoe_session_free, or NULL with @error set.
 */
VMOE_API VmoeSession *vmoe_session_new (VmoeModel *model,
    const VmoeSessionOptions *options, GError **error);
/* @session: (nullable) (transfer full) */
VMOE_API void vmoe_session_free (VmoeSession *session);
/* Returns: (transfer none): the session's model; vmoe_model_ref it to keep
 * it past the session. */
VMOE_API VmoeModel *vmoe_session_get_model (VmoeSession *session);
VMOE_API VmoeBackend vmoe_session_get_backend (VmoeSession *session);
/* Returns: (transfer none): the device a session runs on, "cpu" or the
 * Vulkan device's name, valid as long as the session. */
VMOE_API const char *vmoe_session_get_device (VmoeSession *session);

/* Classes reported per image from the next run on (0 means 5; at most the
 * model's class count).  Post-processing only: the backend is untouched, so
 * this is cheap on any backend.  Results of earlier runs become invalid. */
VMOE_API gboolean vmoe_session_set_top_k (VmoeSession *session, int top_k,
    GError **error);

/* Classifies n images already pre-processed: float32 [n, C, H, W]. */
VMOE_API gboolean vmoe_session_run_f32 (VmoeSession *session, const float *input,
    int n, GError **error);
/* Classifies n 8-bit frames of any size, or their regions, through the
 * pre-processing of docs/design.md (resize, centre crop or stretch,
 * normalise).  The regions of one frame go in one call as images that share
 * its planes; an image whose region is empty once clamped fails the call
 * with VMOE_ERROR_INVALID_ARGUMENT naming its index. */
VMOE_API gboolean vmoe_session_run_u8 (VmoeSession *session, const VmoeImage *images,
    int n, GError **error);
/**
 * vmoe_session_get_result:
 * @session: a session
 * @i: an image of the last run, 0 <= i < n
 *
 * Returns: (transfer none): result @i of the last run; see VmoeImageResult
 * for how long it stays valid.
 */
VMOE_API const VmoeImageResult *vmoe_session_get_result (VmoeSession *session, int i);

/**
 * vmoe_preprocess:
 * @config: (transfer none): a model's configuration, from
 *   vmoe_model_get_config; never one the caller made (see VmoeConfig)
 * @image: the frame
 * @out: (out caller-allocates): room for in_channels * image_h * image_w
 *   floats
 * @error: return location for a VMOE_ERROR, or NULL
 *
 * Pre-processing alone, for tests and other backends.
 *
 * Returns: TRUE on success; FALSE with @error set for an invalid frame.
 */
VMOE_API gboolean vmoe_preprocess (const VmoeConfig *config, const VmoeImage *image,
    float *out, GError **error);

/* The reserved tails keep these sizes within a soversion.  Checked where
 * pointers are 8 bytes; a field added later takes its bytes out of
 * _vmoe_reserved (with the same alignment) on every platform. */
#if GLIB_SIZEOF_VOID_P == 8
G_STATIC_ASSERT (sizeof (VmoeSessionOptions) == 128);
G_STATIC_ASSERT (sizeof (VmoeImage) == 128);
#endif

G_DEFINE_AUTOPTR_CLEANUP_FUNC (VmoeModel, vmoe_model_unref)
G_DEFINE_AUTOPTR_CLEANUP_FUNC (VmoeSession, vmoe_session_free)

G_END_DECLS

#endif /* VMOE_VMOE_H */
