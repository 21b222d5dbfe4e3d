/* vmoeclassify: classifies video frames with a sparse ViT Mixture-of-Experts
 * model and attaches a GstVmoeMeta to every buffer.  A thin adapter over
 * libvmoe's public API: the element maps frames, keeps the session, and
 * turns results into metas and bus messages (after gst-plugins-good's
 * level element).
 *
 * Threads (docs/design.md, "The element vmoeclassify"): the session lives
 * in a GstVmoeInstance, private or shared through `model-instance-id`, whose
 * worker thread runs the batches.  The streaming thread maps each frame,
 * queues its jobs (the frame, or its regions of interest) and the frame in
 * the element's bounded queue of frames in flight, and returns; the pusher
 * thread pushes the frames downstream in order once their results are
 * attached.  Serialized events wait until the frames before them are out.
 * A new model set while playing is loaded by a loader thread (one at a
 * time; the last model set wins) and swapped in by the worker between two
 * batches, so no frame is ever without a result and set_property never
 * waits for a load.  Other settings made while playing are applied by the
 * worker too: top-k to the session itself (post-processing), experts-k and
 * capacity-ratio through a new session on the same model; a value the model
 * cannot take is a warning and the property returns to the value in force.
 */
#include "gstvmoeclassify.h"

#include <gst/video/video.h>
#include <string.h>

#include "gstvmoeinstance.h"
#include "gstvmoemeta.h"
#include "gstvmoeresult.h"

GST_DEBUG_CATEGORY_STATIC (gst_vmoe_classify_debug);
#define GST_CAT_DEFAULT gst_vmoe_classify_debug

#define FORMATS \
  "{ RGB, BGR, RGBx, BGRx, xRGB, xBGR, RGBA, BGRA, ARGB, ABGR, GRAY8, I420, NV12 }"
/* Pre-processing takes frames up to VMOE_IMAGE_MAX_SIDE a side; larger ones
 * are refused at negotiation rather than failed frame by frame. */
#define CAPS "video/x-raw, format = (string) " FORMATS ", " \
  "width = (int) [ 1, " G_STRINGIFY (VMOE_IMAGE_MAX_SIDE) " ], " \
  "height = (int) [ 1, " G_STRINGIFY (VMOE_IMAGE_MAX_SIDE) " ], " \
  "framerate = " GST_VIDEO_FPS_RANGE

enum {
  PROP_0,
  PROP_MODEL,
  PROP_BACKEND,
  PROP_DEVICE,
  PROP_FP16,
  PROP_PRECISION,
  PROP_TOP_K,
  PROP_INFERENCE_INTERVAL,
  PROP_THREADS,
  PROP_POST_MESSAGES,
  PROP_EXPERTS_K,
  PROP_CAPACITY_RATIO,
  PROP_QOS,
  PROP_MODEL_INSTANCE_ID,
  PROP_BATCH_SIZE,
  PROP_BATCH_TIMEOUT,
  PROP_QUEUE_SIZE,
  PROP_INFERENCE_REGION,
  PROP_OBJECT_CLASS,
  PROP_MIN_WIDTH,
  PROP_MIN_HEIGHT,
  PROP_ATTRIBUTE_NAME,
  PROP_ENTROPY_THRESHOLD,
  N_PROPS,
};
static GParamSpec *properties[N_PROPS];

#define DEFAULT_TOP_K 5
#define DEFAULT_INTERVAL 1
#define DEFAULT_POST_MESSAGES FALSE
#define DEFAULT_QOS TRUE
#define DEFAULT_BATCH_SIZE 1
#define DEFAULT_BATCH_TIMEOUT 0
#define DEFAULT_QUEUE_SIZE 4
#define DEFAULT_ATTRIBUTE_NAME "vmoe"

typedef enum {
  INFERENCE_REGION_FULL_FRAME,
  INFERENCE_REGION_ROI_LIST,
} InferenceRegion;

/* One image of a frame for the worker: the whole frame or one region. */
typedef struct _Frame Frame;
typedef struct {
  GstVmoeJob job;                  /* first: the done callback gets back here */
  Frame *frame;
  GstVideoRegionOfInterestMeta *roi; /* NULL: the whole frame */
  guint x, y, width, height;       /* the region clamped to the frame */
} FrameJob;

/* A frame in flight, from the streaming thread to the pusher. */
struct _Frame {
  GstVmoeClassify *self;
  GstBuffer *buf;                  /* writable, ours */
  GstVideoFrame video;             /* holds a reference to buf while mapped */
  gboolean mapped;
  guint64 index;
  gboolean infer;                  /* FALSE: carries the last result */
  gboolean roi_mode;
  /* Under queue_lock: dropped unpushed and without a message, because
   * downstream refused a frame before it (see discard_frames_in_flight). */
  gboolean discard;
  guint n_jobs, n_done;            /* n_done under queue_lock */
  FrameJob *jobs;
};

/* The routing settings a session was made with. */
typedef struct {
  gint experts_k;
  gdouble capacity_ratio;
} RoutingSettings;

struct _GstVmoeClassify {
  GstVideoFilter parent;

  /* Properties, under the object lock. */
  gchar *model_path;
  VmoeBackend backend;
  gchar *device;
  gboolean fp16;
  VmoePrecision precision;
  guint top_k;
  guint interval;
  gint threads;
  gboolean post_messages;
  RoutingSettings routing;
  gboolean qos;
  GstClockTime qos_earliest;       /* running time before which frames are late */
  GstClockTime latency;            /* reported in LATENCY queries */
  gboolean top_k_changed;          /* for the worker to apply */
  gboolean routing_changed;
  gchar *model_instance_id;
  guint batch_size;
  guint64 batch_timeout;           /* µs */
  guint queue_size;
  InferenceRegion inference_region;
  gchar *object_class;
  guint min_width, min_height;
  gchar *attribute_name;
  gdouble entropy_threshold;       /* 0: no result is marked uncertain */

  /* Model loading, under swap_lock. */
  GMutex swap_lock;
  gchar *load_request;             /* the next model file to load, or NULL */
  guint load_generation;           /* bumped by every request and by stop */
  GThread *loader;
  gboolean loading;                /* the loader thread is still in its loop */
  VmoeSession *pending;            /* loaded, for the worker to swap in */
  gchar *pending_path;
  RoutingSettings pending_requested; /* the properties when it was loaded */
  RoutingSettings pending_routing; /* what it runs with */

  GstVmoeInstance *instance;       /* from start to stop */

  /* Frames in flight, under queue_lock. */
  GMutex queue_lock;
  GCond queue_cond;
  GQueue frames;                   /* Frame, oldest first */
  gboolean pushing;                /* the pusher has a frame out of the queue */
  gboolean flushing;               /* frames are dropped, not pushed */
  gboolean quit;                   /* the pusher ends once the queue is empty */
  GstFlowReturn flow;              /* downstream's, for the next submit */
  GThread *pusher;

  /* Streaming thread only. */
  guint64 frames_in;
  gboolean submitted_infer;        /* a frame was sent to be classified */
  gboolean warned_yuv_matrix;      /* of a matrix the engine does not know */

  /* Pusher thread only. */
  GstVmoeResult last;              /* what frames between classifications carry */
  guint64 failing_since;           /* frames without a result in a row */
  guint64 failed_frames;           /* frames without a result since start */
};

#define gst_vmoe_classify_parent_class parent_class
G_DEFINE_TYPE (GstVmoeClassify, gst_vmoe_classify, GST_TYPE_VIDEO_FILTER);
GST_ELEMENT_REGISTER_DEFINE (vmoeclassify, "vmoeclassify", GST_RANK_NONE,
    GST_TYPE_VMOE_CLASSIFY);

#define GST_TYPE_VMOE_BACKEND (gst_vmoe_backend_get_type ())
static GType
gst_vmoe_backend_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    { VMOE_BACKEND_AUTO, "Vulkan on a GPU if there is one, else CPU", "auto" },
    { VMOE_BACKEND_CPU, "CPU (oneDNN or OpenBLAS)", "cpu" },
    { VMOE_BACKEND_VULKAN, "Vulkan compute", "vulkan" },
    { 0, NULL, NULL },
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstVmoeBackend", values));
  return type;
}

#define GST_TYPE_VMOE_PRECISION (gst_vmoe_precision_get_type ())
static GType
gst_vmoe_precision_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    { VMOE_PRECISION_FP32, "float32", "fp32" },
    { VMOE_PRECISION_BF16, "bfloat16 weights and activations, float32 sums", "bf16" },
    { 0, NULL, NULL },
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstVmoePrecision", values));
  return type;
}

#define GST_TYPE_VMOE_INFERENCE_REGION (gst_vmoe_inference_region_get_type ())
static GType
gst_vmoe_inference_region_get_type (void)
{
  static GType type = 0;
  static const GEnumValue values[] = {
    { INFERENCE_REGION_FULL_FRAME, "Classify the whole frame", "full-frame" },
    { INFERENCE_REGION_ROI_LIST, "Classify each GstVideoRegionOfInterestMeta",
      "roi-list" },
    { 0, NULL, NULL },
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type,
        g_enum_register_static ("GstVmoeInferenceRegion", values));
  return type;
}

/* ------------------------------------------------------------ sessions */

/* The session options of the current properties; *device is a copy to
 * g_free, since a session is made outside the lock (which may take long: a
 * Vulkan device and its weight upload). */
static void
session_options (GstVmoeClassify *self, VmoeSessionOptions *options, gchar **device)
{
  vmoe_session_options_init (options);
  GST_OBJECT_LOCK (self);
  options->backend = self->backend;
  *device = g_strdup (self->device);
  options->device = *device;
  options->fp16 = self->fp16;
  options->precision = self->precision;
  options->threads = self->threads;
  options->top_k = (int) self->top_k;
  options->experts_k = self->routing.experts_k;
  options->capacity_ratio = self->routing.capacity_ratio;
  GST_OBJECT_UNLOCK (self);
}

static VmoeSession *
new_session (GstVmoeClassify *self, VmoeModel *model, const VmoeSessionOptions *options,
    GError **error)
{
  VmoeSession *session = vmoe_session_new (model, options, error);
  if (session)
    GST_INFO_OBJECT (self, "new session on %s (%s), experts-k %d, capacity-ratio %g",
        vmoe_session_get_device (session),
        vmoe_backend_name (vmoe_session_get_backend (session)), options->experts_k,
        options->capacity_ratio);
  return session;
}

static VmoeModel *
load_model (const gchar *path, GError **error)
{
  if (!path || !*path) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "no model set: give the 'model' property a model file");
    return NULL;
  }
  return vmoe_model_load (path, error);
}

/* Sets the routing properties back to `in_force` (unless they changed since
 * `rejected` was read) and tells the application. */
static void
revert_routing (GstVmoeClassify *self, const RoutingSettings *rejected,
    const RoutingSettings *in_force)
{
  gboolean k_back = FALSE, ratio_back = FALSE;
  GST_OBJECT_LOCK (self);
  if (self->routing.experts_k == rejected->experts_k
      && rejected->experts_k != in_force->experts_k) {
    self->routing.experts_k = in_force->experts_k;
    k_back = TRUE;
  }
  if (self->routing.capacity_ratio == rejected->capacity_ratio
      && rejected->capacity_ratio != in_force->capacity_ratio) {
    self->routing.capacity_ratio = in_force->capacity_ratio;
    ratio_back = TRUE;
  }
  GST_OBJECT_UNLOCK (self);
  if (k_back)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_EXPERTS_K]);
  if (ratio_back)
    g_object_notify_by_pspec (G_OBJECT (self), properties[PROP_CAPACITY_RATIO]);
}

/* Loader thread: a session for the model at `path`, made with *routing (the
 * routing properties when it starts, in *requested).  A new model that
 * cannot take experts-k runs with its own k, with a warning, rather than
 * failing (experts-k returns to 0 when it is swapped in); any other failure
 * is a warning and the current model stays, so that a bad file never stops
 * a live stream. */
static VmoeSession *
load_for_swap (GstVmoeClassify *self, const gchar *path, RoutingSettings *requested,
    RoutingSettings *routing)
{
  GError *error = NULL;
  VmoeSession *session = NULL;
  VmoeModel *model = load_model (path, &error);
  if (model) {
    VmoeSessionOptions options;
    gchar *device;
    session_options (self, &options, &device);
    *routing = *requested = (RoutingSettings) { options.experts_k, options.capacity_ratio };
    session = new_session (self, model, &options, &error);
    if (!session && options.experts_k > 0
        && g_error_matches (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT)) {
      GST_ELEMENT_WARNING (self, LIBRARY, SETTINGS,
          ("experts-k %d does not fit model '%s', which runs with its own k.",
              options.experts_k, path), ("%s", error->message));
      g_clear_error (&error);
      options.experts_k = routing->experts_k = 0;
      session = new_session (self, model, &options, &error);
    }
    g_free (device);
    vmoe_model_unref (model);
  }
  if (!session) {
    GST_ELEMENT_WARNING (self, RESOURCE, OPEN_READ,
        ("Could not load model '%s'; keeping the current one.", path),
        ("%s", error->message));
    g_error_free (error);
  }
  return session;
}

static gpointer
loader_main (gpointer data)
{
  GstVmoeClassify *self = data;
  g_mutex_lock (&self->swap_lock);
  while (self->load_request) {
    gchar *path = self->load_request;
    self->load_request = NULL;
    guint generation = self->load_generation;
    g_mutex_unlock (&self->swap_lock);
    RoutingSettings requested, routing;
    VmoeSession *session = load_for_swap (self, path, &requested, &routing);
    g_mutex_lock (&self->swap_lock);
    if (session && generation == self->load_generation) {
      GST_INFO_OBJECT (self, "model '%s' loaded, swapping it in", path);
      VmoeSession *replaced = self->pending;
      self->pending = session;
      g_free (self->pending_path);
      self->pending_path = g_strdup (path);
      self->pending_requested = requested;
      self->pending_routing = routing;
      session = replaced;
    }
    g_mutex_unlock (&self->swap_lock);
    /* Superseded by a newer request, or a pending one never swapped in. */
    vmoe_session_free (session);
    g_free (path);
    g_mutex_lock (&self->swap_lock);
  }
  self->loading = FALSE;
  g_mutex_unlock (&self->swap_lock);
  return NULL;
}

/* Asks for `path` to be loaded in the background, superseding any earlier
 * request.  Never waits for a load: one loader thread works through the
 * requests, the latest first, so a storm of requests costs one load at a
 * time. */
static void
request_load (GstVmoeClassify *self, const gchar *path)
{
  GThread *finished = NULL;
  g_mutex_lock (&self->swap_lock);
  g_free (self->load_request);
  self->load_request = g_strdup (path);
  self->load_generation++;
  GError *error = NULL;
  if (!self->loading) {
    finished = self->loader;
    self->loader = g_thread_try_new ("vmoe-loader", loader_main, self, &error);
    self->loading = self->loader != NULL;
    if (!self->loader)
      g_clear_pointer (&self->load_request, g_free);
  }
  g_mutex_unlock (&self->swap_lock);
  /* Out of threads: the model in use stays, as for a model that fails to
   * load; a later `model` tries again. */
  if (error) {
    GST_ELEMENT_WARNING (self, RESOURCE, FAILED,
        ("Could not load model '%s'; keeping the current one.", path),
        ("Could not start a loader thread: %s", error->message));
    g_error_free (error);
  }
  /* It has left its loop, so this returns at once. */
  if (finished)
    g_thread_join (finished);
}

/* Drops the requests and any loaded session not yet swapped in; waits for
 * the load in progress, if any (at a state change, never in set_property). */
static void
cancel_loads (GstVmoeClassify *self)
{
  g_mutex_lock (&self->swap_lock);
  g_clear_pointer (&self->load_request, g_free);
  self->load_generation++;
  GThread *loader = self->loader;
  self->loader = NULL;
  VmoeSession *pending = self->pending;
  self->pending = NULL;
  g_clear_pointer (&self->pending_path, g_free);
  g_mutex_unlock (&self->swap_lock);
  if (loader)
    g_thread_join (loader);
  vmoe_session_free (pending);
}

/* Worker thread: a new routing setting made while playing, through a new
 * session on the same model. */
static void
apply_routing (GstVmoeClassify *self, GstVmoeInstance *inst)
{
  VmoeSessionOptions options;
  gchar *device;
  session_options (self, &options, &device);
  RoutingSettings wanted = { options.experts_k, options.capacity_ratio }, in_force;
  gst_vmoe_instance_get_routing (inst, &in_force.experts_k, &in_force.capacity_ratio);
  if (wanted.experts_k == in_force.experts_k
      && wanted.capacity_ratio == in_force.capacity_ratio) {
    g_free (device);
    return;
  }
  GError *error = NULL;
  VmoeSession *session = new_session (self,
      vmoe_session_get_model (gst_vmoe_instance_get_session (inst)), &options, &error);
  g_free (device);
  if (!session) {
    GST_ELEMENT_WARNING (self, LIBRARY, SETTINGS,
        ("The new settings do not fit the model; keeping the previous ones."),
        ("%s", error->message));
    g_error_free (error);
    revert_routing (self, &wanted, &in_force);
    return;
  }
  gst_vmoe_instance_replace_session (inst, session, NULL);
  gst_vmoe_instance_set_routing (inst, wanted.experts_k, wanted.capacity_ratio);
}

/* Worker thread, before each batch (GstVmoeBeforeBatch): swaps in a model
 * loaded through this element and applies the settings made on it while
 * playing; with a shared instance they apply to every sharer. */
static void
before_batch (GObject *member, GstVmoeInstance *inst)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (member);
  g_mutex_lock (&self->swap_lock);
  VmoeSession *pending = self->pending;
  gchar *path = self->pending_path;
  self->pending = NULL;
  self->pending_path = NULL;
  RoutingSettings requested = self->pending_requested, routing = self->pending_routing;
  g_mutex_unlock (&self->swap_lock);
  gboolean swapped = pending != NULL;
  if (swapped) {
    gst_vmoe_instance_replace_session (inst, pending, path);
    gst_vmoe_instance_set_routing (inst, routing.experts_k, routing.capacity_ratio);
    revert_routing (self, &requested, &routing);
  }
  g_free (path);
  GST_OBJECT_LOCK (self);
  gboolean routing_changed = self->routing_changed, top_k_changed = self->top_k_changed;
  self->routing_changed = self->top_k_changed = FALSE;
  guint top_k = self->top_k;
  GST_OBJECT_UNLOCK (self);
  /* A model swapped in was made with the settings of when its load started;
   * any made during the load apply now. */
  if (routing_changed || swapped)
    apply_routing (self, inst);
  if (top_k_changed || swapped) {
    GError *error = NULL;
    if (!vmoe_session_set_top_k (gst_vmoe_instance_get_session (inst), (int) top_k,
            &error)) {
      GST_ELEMENT_WARNING (self, LIBRARY, SETTINGS, ("Could not set top-k %u.", top_k),
          ("%s", error->message));
      g_error_free (error);
    }
  }
}

/* --------------------------------------------------------------- frames */

static gboolean
map_image (const GstVideoFrame *frame, VmoeImage *img)
{
  VmoePixelFormat format;
  switch (GST_VIDEO_FRAME_FORMAT (frame)) {
    case GST_VIDEO_FORMAT_RGB: format = VMOE_PIXEL_RGB; break;
    case GST_VIDEO_FORMAT_BGR: format = VMOE_PIXEL_BGR; break;
    case GST_VIDEO_FORMAT_RGBx:
    case GST_VIDEO_FORMAT_RGBA: format = VMOE_PIXEL_RGBA; break;
    case GST_VIDEO_FORMAT_BGRx:
    case GST_VIDEO_FORMAT_BGRA: format = VMOE_PIXEL_BGRA; break;
    case GST_VIDEO_FORMAT_xRGB:
    case GST_VIDEO_FORMAT_ARGB: format = VMOE_PIXEL_ARGB; break;
    case GST_VIDEO_FORMAT_xBGR:
    case GST_VIDEO_FORMAT_ABGR: format = VMOE_PIXEL_ABGR; break;
    case GST_VIDEO_FORMAT_GRAY8: format = VMOE_PIXEL_GRAY8; break;
    case GST_VIDEO_FORMAT_I420: format = VMOE_PIXEL_I420; break;
    case GST_VIDEO_FORMAT_NV12: format = VMOE_PIXEL_NV12; break;
    default: return FALSE;
  }
  *img = (VmoeImage) { .format = format, .width = GST_VIDEO_FRAME_WIDTH (frame),
    .height = GST_VIDEO_FRAME_HEIGHT (frame) };
  for (guint i = 0; i < GST_VIDEO_FRAME_N_PLANES (frame) && i < 3; i++) {
    img->planes[i] = GST_VIDEO_FRAME_PLANE_DATA (frame, i);
    img->strides[i] = (size_t) GST_VIDEO_FRAME_PLANE_STRIDE (frame, i);
  }
  return TRUE;
}

/* The engine's encoding for the frame's colorimetry.  A matrix it does not
 * know is converted with the closest it knows, with a warning once, rather
 * than refused in caps: a decoder cannot change the colorimetry it outputs,
 * so refusing would fail the pipeline, while the closest matrix only shifts
 * colours slightly (FCC is within 0.004 of BT.601 and SMPTE 240M within
 * 0.015 of BT.709 in Kr and Kb). */
static void
set_yuv_encoding (GstVmoeClassify *self, const GstVideoInfo *info, VmoeImage *img)
{
  const GstVideoColorimetry *colorimetry = &GST_VIDEO_INFO_COLORIMETRY (info);
  if (!GST_VIDEO_INFO_IS_YUV (info))
    return;
  img->yuv_range = colorimetry->range == GST_VIDEO_COLOR_RANGE_0_255
      ? VMOE_YUV_RANGE_FULL : VMOE_YUV_RANGE_LIMITED;
  switch (colorimetry->matrix) {
    case GST_VIDEO_COLOR_MATRIX_BT601: img->yuv_matrix = VMOE_YUV_MATRIX_BT601; return;
    case GST_VIDEO_COLOR_MATRIX_BT709: img->yuv_matrix = VMOE_YUV_MATRIX_BT709; return;
    case GST_VIDEO_COLOR_MATRIX_BT2020: img->yuv_matrix = VMOE_YUV_MATRIX_BT2020; return;
    case GST_VIDEO_COLOR_MATRIX_SMPTE240M: img->yuv_matrix = VMOE_YUV_MATRIX_BT709; break;
    default: img->yuv_matrix = VMOE_YUV_MATRIX_BT601; break;
  }
  if (self->warned_yuv_matrix)
    return;
  self->warned_yuv_matrix = TRUE;
  gchar *name = gst_video_colorimetry_to_string (colorimetry);
  GST_ELEMENT_WARNING (self, STREAM, FORMAT,
      ("Frames of colorimetry %s are converted to RGB with the %s matrix.",
          name ? name : "unknown",
          img->yuv_matrix == VMOE_YUV_MATRIX_BT709 ? "BT.709" : "BT.601"),
      ("vmoeclassify knows the BT.601, BT.709 and BT.2020 matrices; "
          "this is the closest"));
  g_free (name);
}

static gboolean
frame_is_late (GstVmoeClassify *self, GstBuffer *buf)
{
  GstBaseTransform *trans = GST_BASE_TRANSFORM (self);
  GstClockTime rt = gst_segment_to_running_time (&trans->segment, GST_FORMAT_TIME,
      GST_BUFFER_PTS (buf));
  GST_OBJECT_LOCK (self);
  gboolean late = self->qos && GST_CLOCK_TIME_IS_VALID (rt)
      && GST_CLOCK_TIME_IS_VALID (self->qos_earliest) && rt < self->qos_earliest;
  GST_OBJECT_UNLOCK (self);
  return late;
}

/* Tells the pipeline when inference got much slower than it last reported,
 * so that live sinks can re-query the latency. */
static void
track_latency (GstVmoeClassify *self, GstClockTime latency)
{
  GST_OBJECT_LOCK (self);
  gboolean grew = latency > self->latency + self->latency / 4;
  if (grew)
    self->latency = latency;
  GST_OBJECT_UNLOCK (self);
  if (grew)
    gst_element_post_message (GST_ELEMENT (self),
        gst_message_new_latency (GST_OBJECT (self)));
}

/* Posts the `vmoe` message of `result` on `buf`; `roi` adds the region's
 * fields (README.md, docs/design.md). */
static void
post_result (GstVmoeClassify *self, const GstVmoeResult *result, const gchar *name,
    GstBuffer *buf, guint64 index, gboolean fresh, const FrameJob *roi)
{
  GstBaseTransform *trans = GST_BASE_TRANSFORM (self);
  GstClockTime ts = GST_BUFFER_PTS (buf);
  GstStructure *s = gst_vmoe_result_to_structure (result, name, index, fresh, ts,
      gst_segment_to_stream_time (&trans->segment, GST_FORMAT_TIME, ts),
      gst_segment_to_running_time (&trans->segment, GST_FORMAT_TIME, ts));
  if (roi)
    gst_structure_set (s, "roi-id", G_TYPE_INT, roi->roi->id,
        "roi-type", G_TYPE_STRING, g_quark_to_string (roi->roi->roi_type),
        "x", G_TYPE_UINT, roi->x, "y", G_TYPE_UINT, roi->y,
        "w", G_TYPE_UINT, roi->width, "h", G_TYPE_UINT, roi->height, NULL);
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
}

/* A job that failed.  A failure of the backend itself (a lost device, no
 * memory) is an element error; any other (an image whose logits are not
 * finite) fails this image only: a warning when such failures start, a
 * debug line for the ones after it, and the frame passes on without a
 * result, since one bad frame must not end a live stream. */
static GstFlowReturn
job_failed (GstVmoeClassify *self, const Frame *frame, const GError *error)
{
  if (g_error_matches (error, VMOE_ERROR, VMOE_ERROR_BACKEND)) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Inference failed."), ("%s", error->message));
    return GST_FLOW_ERROR;
  }
  if (!frame->roi_mode)
    gst_vmoe_result_clear (&self->last);
  self->failed_frames++;
  if (self->failing_since++ == 0)
    GST_ELEMENT_WARNING (self, STREAM, FAILED,
        ("Could not classify frame %" G_GUINT64_FORMAT "; frames pass on without a "
            "result until classifying works again.", frame->index),
        ("%s (%" G_GUINT64_FORMAT " frames without a result since start)",
            error->message, self->failed_frames));
  else
    GST_DEBUG_OBJECT (self, "frame %" G_GUINT64_FORMAT " failed too, %" G_GUINT64_FORMAT
        " in a row: %s", frame->index, self->failing_since, error->message);
  return GST_FLOW_OK;
}

static void
job_succeeded (GstVmoeClassify *self, const GstVmoeResult *result)
{
  if (self->failing_since) {
    GST_INFO_OBJECT (self, "classifying again after %" G_GUINT64_FORMAT " frames without "
        "a result", self->failing_since);
    self->failing_since = 0;
  }
  track_latency (self, result->latency);
}

/* Pusher thread: the results of a region, on its ROI meta (a param named
 * after attribute-name, what DL Streamer's converters read), in a
 * GstVmoeMeta of its own and in a message. */
static void
attach_roi_result (GstVmoeClassify *self, Frame *frame, FrameJob *fj,
    const gchar *name, const gchar *attribute_name, gdouble entropy_threshold,
    gboolean post)
{
  GstVmoeResult *r = &fj->job.result;
  gst_vmoe_result_mark_uncertain (r, entropy_threshold);
  gst_video_region_of_interest_meta_add_param (fj->roi,
      gst_vmoe_result_to_roi_param (r, attribute_name));
  GstVmoeMeta *meta = gst_buffer_add_vmoe_meta (frame->buf);
  gst_vmoe_result_fill_meta (r, meta, name, frame->index, TRUE);
  meta->roi_id = fj->roi->id;
  GST_LOG_OBJECT (self, "frame %" G_GUINT64_FORMAT ", roi %d: %s (%.3f)", frame->index,
      fj->roi->id, r->top_labels[0], r->top_scores[0]);
  if (post)
    post_result (self, r, name, frame->buf, frame->index, TRUE, fj);
}

/* Pusher thread: attaches the results of `frame` to its buffer (in stream
 * order, so frames between classifications carry the last result). */
static GstFlowReturn
attach_results (GstVmoeClassify *self, Frame *frame)
{
  GST_OBJECT_LOCK (self);
  gboolean post = self->post_messages;
  gchar *attribute_name = g_strdup (self->attribute_name);
  gdouble entropy_threshold = self->entropy_threshold;
  /* Results name the element that attaches them (GstVmoeMeta, message). */
  gchar *name = g_strdup (GST_OBJECT_NAME (self));
  GST_OBJECT_UNLOCK (self);
  GstFlowReturn flow = GST_FLOW_OK;
  for (guint i = 0; i < frame->n_jobs && flow == GST_FLOW_OK; i++) {
    FrameJob *fj = &frame->jobs[i];
    if (fj->job.error) {
      flow = job_failed (self, frame, fj->job.error);
      continue;
    }
    job_succeeded (self, &fj->job.result);
    if (frame->roi_mode)
      attach_roi_result (self, frame, fj, name, attribute_name, entropy_threshold,
          post);
    else {
      gst_vmoe_result_clear (&self->last);
      self->last = fj->job.result;
      fj->job.result = (GstVmoeResult) { 0 };
    }
  }
  g_free (attribute_name);
  if (flow != GST_FLOW_OK || frame->roi_mode || !gst_vmoe_result_is_set (&self->last)) {
    g_free (name);
    return flow;
  }
  gboolean fresh = frame->n_jobs > 0;
  gst_vmoe_result_mark_uncertain (&self->last, entropy_threshold);
  gst_vmoe_result_fill_meta (&self->last, gst_buffer_add_vmoe_meta (frame->buf), name,
      frame->index, fresh);
  GST_LOG_OBJECT (self, "frame %" G_GUINT64_FORMAT ": %s (%.3f)%s", frame->index,
      self->last.top_labels[0], self->last.top_scores[0], fresh ? "" : ", carried");
  /* Every frame with a result posts, carried ones too (fresh = FALSE), so
   * that a bus-only application sees each frame's classification as the
   * meta gives it. */
  if (post)
    post_result (self, &self->last, name, frame->buf, frame->index, fresh, NULL);
  g_free (name);
  return GST_FLOW_OK;
}

static void
frame_unmap (Frame *frame)
{
  if (frame->mapped)
    gst_video_frame_unmap (&frame->video);
  frame->mapped = FALSE;
}

static void
frame_free (Frame *frame)
{
  frame_unmap (frame);
  for (guint i = 0; i < frame->n_jobs; i++) {
    gst_vmoe_result_clear (&frame->jobs[i].job.result);
    g_clear_error (&frame->jobs[i].job.error);
  }
  g_free (frame->jobs);
  gst_clear_buffer (&frame->buf);
  g_free (frame);
}

/* Pusher thread: attaches the results and pushes the frame downstream. */
static GstFlowReturn
push_frame (GstVmoeClassify *self, Frame *frame)
{
  /* The map's reference would make the buffer read-only. */
  frame_unmap (frame);
  GstFlowReturn flow = attach_results (self, frame);
  GstBuffer *buf = frame->buf;
  frame->buf = NULL;
  frame_free (frame);
  if (flow != GST_FLOW_OK) {
    gst_buffer_unref (buf);
    return flow;
  }
  return gst_pad_push (GST_BASE_TRANSFORM_SRC_PAD (self), buf);
}

/* Under queue_lock, after downstream refused a frame (flushing, EOS,
 * not linked).  A synchronous element would have returned that to
 * upstream for this frame, and upstream would not have sent the frames
 * behind it; those are already here, so they go the same way: not pushed,
 * and no message for a frame that never left.  Frames taken in after
 * upstream has been told are pushed as usual. */
static void
discard_frames_in_flight (GstVmoeClassify *self)
{
  for (GList *l = self->frames.head; l; l = l->next)
    ((Frame *) l->data)->discard = TRUE;
}

static gpointer
pusher_main (gpointer data)
{
  GstVmoeClassify *self = data;
  g_mutex_lock (&self->queue_lock);
  for (;;) {
    Frame *frame = g_queue_peek_head (&self->frames);
    if (frame && frame->n_done == frame->n_jobs) {
      g_queue_pop_head (&self->frames);
      self->pushing = TRUE;
      gboolean drop = self->flushing || frame->discard;
      /* Room for the streaming thread. */
      g_cond_broadcast (&self->queue_cond);
      g_mutex_unlock (&self->queue_lock);
      GstFlowReturn flow = GST_FLOW_FLUSHING;
      if (drop)
        frame_free (frame);
      else
        flow = push_frame (self, frame);
      g_mutex_lock (&self->queue_lock);
      self->pushing = FALSE;
      if (!drop && flow != GST_FLOW_OK) {
        if (self->flow == GST_FLOW_OK)
          self->flow = flow;
        discard_frames_in_flight (self);
      }
      g_cond_broadcast (&self->queue_cond);
      continue;
    }
    if (!frame && self->quit)
      break;
    g_cond_wait (&self->queue_cond, &self->queue_lock);
  }
  g_mutex_unlock (&self->queue_lock);
  return NULL;
}

/* Until every frame taken in has been pushed (or dropped, when flushing). */
static void
wait_drained (GstVmoeClassify *self)
{
  g_mutex_lock (&self->queue_lock);
  while (!g_queue_is_empty (&self->frames) || self->pushing)
    g_cond_wait (&self->queue_cond, &self->queue_lock);
  g_mutex_unlock (&self->queue_lock);
}

/* Drops the frames in flight: those not yet in a batch at once, the others
 * when their batch is done. */
static void
start_flushing (GstVmoeClassify *self)
{
  g_mutex_lock (&self->queue_lock);
  self->flushing = TRUE;
  g_cond_broadcast (&self->queue_cond);
  g_mutex_unlock (&self->queue_lock);
  if (self->instance)
    gst_vmoe_instance_cancel (self->instance, self);
}

static void
job_done (GstVmoeJob *job)
{
  Frame *frame = ((FrameJob *) job)->frame;
  GstVmoeClassify *self = frame->self;
  g_mutex_lock (&self->queue_lock);
  frame->n_done++;
  g_cond_broadcast (&self->queue_cond);
  g_mutex_unlock (&self->queue_lock);
}

/* Whether `roi_type` is one of the comma-separated names in `classes`
 * (empty or NULL: all). */
static gboolean
class_wanted (const gchar *classes, GQuark roi_type)
{
  if (!classes || !*classes)
    return TRUE;
  gchar **names = g_strsplit (classes, ",", -1);
  gboolean wanted = FALSE;
  for (gchar **n = names; *n && !wanted; n++)
    wanted = g_strcmp0 (g_strstrip (*n), g_quark_to_string (roi_type)) == 0;
  g_strfreev (names);
  return wanted;
}

/* The regions of `frame`'s buffer to classify: each ROI meta of a wanted
 * class, clamped to the frame, at least min_width x min_height after
 * clamping (an empty one is never classified). */
static void
collect_regions (GstVmoeClassify *self, Frame *frame, guint frame_w, guint frame_h)
{
  GST_OBJECT_LOCK (self);
  gchar *classes = g_strdup (self->object_class);
  guint min_w = MAX (self->min_width, 1), min_h = MAX (self->min_height, 1);
  GST_OBJECT_UNLOCK (self);
  GArray *jobs = g_array_new (FALSE, TRUE, sizeof (FrameJob));
  gpointer state = NULL;
  GstMeta *meta;
  while ((meta = gst_buffer_iterate_meta_filtered (frame->buf, &state,
              GST_VIDEO_REGION_OF_INTEREST_META_API_TYPE))) {
    GstVideoRegionOfInterestMeta *roi = (GstVideoRegionOfInterestMeta *) meta;
    guint x = MIN (roi->x, frame_w), y = MIN (roi->y, frame_h);
    guint right = (guint) MIN ((guint64) roi->x + roi->w, frame_w);
    guint bottom = (guint) MIN ((guint64) roi->y + roi->h, frame_h);
    guint w = right - x, h = bottom - y;
    if (w < min_w || h < min_h || !class_wanted (classes, roi->roi_type)) {
      GST_LOG_OBJECT (self, "frame %" G_GUINT64_FORMAT ": roi %d (%s, %ux%u in the frame) "
          "skipped", frame->index, roi->id, g_quark_to_string (roi->roi_type), w, h);
      continue;
    }
    FrameJob fj = { .frame = frame, .roi = roi, .x = x, .y = y, .width = w, .height = h };
    g_array_append_val (jobs, fj);
  }
  g_free (classes);
  frame->n_jobs = jobs->len;
  frame->jobs = (FrameJob *) g_array_free (jobs, FALSE);
}

/* Streaming thread: the frame in flight for `buf`, its jobs decided. */
static Frame *
frame_new (GstVmoeClassify *self, GstBuffer *buf)
{
  GST_OBJECT_LOCK (self);
  guint interval = self->interval;
  InferenceRegion region = self->inference_region;
  GST_OBJECT_UNLOCK (self);
  GstVideoFilter *filter = GST_VIDEO_FILTER (self);
  Frame *frame = g_new0 (Frame, 1);
  frame->self = self;
  frame->buf = buf;
  frame->index = self->frames_in++;
  frame->roi_mode = region == INFERENCE_REGION_ROI_LIST;
  if (frame->roi_mode) {
    /* Regions move: a frame not classified carries nothing. */
    frame->infer = frame->index % interval == 0;
    if (frame->infer)
      collect_regions (self, frame, (guint) GST_VIDEO_INFO_WIDTH (&filter->in_info),
          (guint) GST_VIDEO_INFO_HEIGHT (&filter->in_info));
  } else {
    frame->infer = !self->submitted_infer || frame->index % interval == 0;
    if (frame->infer && self->submitted_infer && frame_is_late (self, buf)) {
      GST_DEBUG_OBJECT (self, "frame %" G_GUINT64_FORMAT " is late, carrying the last "
          "result", frame->index);
      frame->infer = FALSE;
    }
    if (frame->infer) {
      frame->n_jobs = 1;
      frame->jobs = g_new0 (FrameJob, 1);
      frame->jobs[0].frame = frame;
      self->submitted_infer = TRUE;
    }
  }
  return frame;
}

/* Streaming thread: maps the frame and fills its jobs' images. */
static gboolean
frame_map (GstVmoeClassify *self, Frame *frame)
{
  if (!frame->n_jobs)
    return TRUE;
  /* Read-only map: the pixels are never touched, and mapping shared memory
   * for reading copies nothing. */
  if (!gst_video_frame_map (&frame->video, &GST_VIDEO_FILTER (self)->in_info, frame->buf,
          GST_MAP_READ)) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Could not map the video frame."), (NULL));
    return FALSE;
  }
  frame->mapped = TRUE;
  VmoeImage image;
  if (!map_image (&frame->video, &image)) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Inference failed."),
        ("unsupported frame format"));
    return FALSE;
  }
  set_yuv_encoding (self, &frame->video.info, &image);
  for (guint i = 0; i < frame->n_jobs; i++) {
    FrameJob *fj = &frame->jobs[i];
    fj->job.image = image;
    if (fj->roi) {
      fj->job.image.region.x = (int) fj->x;
      fj->job.image.region.y = (int) fj->y;
      fj->job.image.region.width = (int) fj->width;
      fj->job.image.region.height = (int) fj->height;
    }
    fj->job.owner = self;
    fj->job.done = job_done;
  }
  return TRUE;
}

/* Streaming thread: takes a frame in, to be pushed by the pusher thread;
 * blocks while queue-size frames are in flight. */
static GstFlowReturn
gst_vmoe_classify_submit_input_buffer (GstBaseTransform *trans, gboolean discont,
    GstBuffer *buf)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  if (!GST_VIDEO_FILTER (self)->negotiated) {
    gst_buffer_unref (buf);
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, ("A frame came before its caps."), (NULL));
    return GST_FLOW_NOT_NEGOTIATED;
  }
  /* Only metas are added; the pixels are shared, not copied, when the
   * buffer's memory is. */
  Frame *frame = frame_new (self, gst_buffer_make_writable (buf));
  if (!frame_map (self, frame)) {
    frame_free (frame);
    return GST_FLOW_ERROR;
  }
  GST_OBJECT_LOCK (self);
  guint queue_size = self->queue_size;
  GST_OBJECT_UNLOCK (self);
  g_mutex_lock (&self->queue_lock);
  while (!self->flushing && g_queue_get_length (&self->frames) >= queue_size)
    g_cond_wait (&self->queue_cond, &self->queue_lock);
  if (self->flushing) {
    g_mutex_unlock (&self->queue_lock);
    frame_free (frame);
    return GST_FLOW_FLUSHING;
  }
  /* What downstream last returned, once, as a synchronous element would;
   * the frame that carries it upstream is refused with it. */
  frame->discard = self->flow != GST_FLOW_OK;
  g_queue_push_tail (&self->frames, frame);
  GstFlowReturn flow = self->flow;
  self->flow = GST_FLOW_OK;
  g_cond_broadcast (&self->queue_cond);
  guint n_jobs = frame->n_jobs;
  FrameJob *jobs = frame->jobs;
  g_mutex_unlock (&self->queue_lock);
  /* The frame is not freed before its jobs are done. */
  for (guint i = 0; i < n_jobs; i++)
    gst_vmoe_instance_queue (self->instance, &jobs[i].job);
  return flow;
}

/* Frames leave through the pusher thread, never from the chain function. */
static GstFlowReturn
gst_vmoe_classify_generate_output (GstBaseTransform *trans, GstBuffer **outbuf)
{
  *outbuf = NULL;
  return GST_FLOW_OK;
}

static gboolean
gst_vmoe_classify_sink_event (GstBaseTransform *trans, GstEvent *event)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  switch (GST_EVENT_TYPE (event)) {
    case GST_EVENT_FLUSH_START:
      start_flushing (self);
      break;
    case GST_EVENT_FLUSH_STOP:
      wait_drained (self);
      g_mutex_lock (&self->queue_lock);
      self->flushing = FALSE;
      self->flow = GST_FLOW_OK;
      g_mutex_unlock (&self->queue_lock);
      break;
    default:
      /* Caps, segments, EOS, gaps: after the frames before them. */
      if (GST_EVENT_IS_SERIALIZED (event))
        wait_drained (self);
      break;
  }
  return GST_BASE_TRANSFORM_CLASS (parent_class)->sink_event (trans, event);
}

/* ------------------------------------------------------- base transform */

/* The first session of a new instance (GstVmoeSessionMaker). */
static VmoeSession *
make_first_session (gpointer data, gint *experts_k, gdouble *capacity_ratio,
    GError **error)
{
  GstVmoeClassify *self = data;
  GST_OBJECT_LOCK (self);
  gchar *path = g_strdup (self->model_path);
  GST_OBJECT_UNLOCK (self);
  VmoeSession *session = NULL;
  VmoeModel *model = load_model (path, error);
  if (model) {
    VmoeSessionOptions options;
    gchar *device;
    session_options (self, &options, &device);
    session = new_session (self, model, &options, error);
    *experts_k = options.experts_k;
    *capacity_ratio = options.capacity_ratio;
    g_free (device);
    vmoe_model_unref (model);
  }
  g_free (path);
  return session;
}

/* Drops the frames in flight and ends the pusher thread. */
static void
stop_pusher (GstVmoeClassify *self)
{
  if (!self->pusher)
    return;
  start_flushing (self);
  wait_drained (self);
  g_mutex_lock (&self->queue_lock);
  self->quit = TRUE;
  g_cond_broadcast (&self->queue_cond);
  g_mutex_unlock (&self->queue_lock);
  g_thread_join (self->pusher);
  self->pusher = NULL;
}

static gboolean
gst_vmoe_classify_start (GstBaseTransform *trans)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  /* The pusher first: it is the thread a failure to start one leaves
   * nothing to undo for. */
  GError *error = NULL;
  self->flushing = self->quit = FALSE;
  self->flow = GST_FLOW_OK;
  self->pusher = g_thread_try_new ("vmoe-push", pusher_main, self, &error);
  if (!self->pusher) {
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED, ("Could not start vmoeclassify."),
        ("Could not start its pusher thread: %s", error->message));
    g_error_free (error);
    return FALSE;
  }
  GST_OBJECT_LOCK (self);
  GstVmoeInstanceSettings settings = {
    .model_path = g_strdup (self->model_path),
    .backend = self->backend,
    .device = g_strdup (self->device),
    .fp16 = self->fp16,
    .precision = self->precision,
    .batch_size = self->batch_size,
    .batch_timeout_us = self->batch_timeout,
  };
  gchar *id = g_strdup (self->model_instance_id && *self->model_instance_id
      ? self->model_instance_id : NULL);
  self->qos_earliest = GST_CLOCK_TIME_NONE;
  self->routing_changed = self->top_k_changed = FALSE;
  GST_OBJECT_UNLOCK (self);
  self->instance = gst_vmoe_instance_acquire (id, &settings, make_first_session, self,
      G_OBJECT (self), before_batch, &error);
  if (!self->instance) {
    GST_ELEMENT_ERROR (self, RESOURCE, OPEN_READ,
        ("Could not start vmoeclassify with model '%s'%s%s.",
            settings.model_path ? settings.model_path : "(none)",
            id ? " in model instance " : "", id ? id : ""),
        ("%s", error->message));
    g_error_free (error);
    gst_vmoe_instance_settings_clear (&settings);
    g_free (id);
    stop_pusher (self);
    return FALSE;
  }
  gst_vmoe_instance_settings_clear (&settings);
  g_free (id);
  self->frames_in = 0;
  self->submitted_infer = FALSE;
  self->failing_since = self->failed_frames = 0;
  GST_OBJECT_LOCK (self);
  self->latency = gst_vmoe_instance_get_warmup_latency (self->instance);
  GST_OBJECT_UNLOCK (self);
  GST_INFO_OBJECT (self, "model ready, first inference %" GST_TIME_FORMAT,
      GST_TIME_ARGS (self->latency));
  return TRUE;
}

static gboolean
gst_vmoe_classify_stop (GstBaseTransform *trans)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  stop_pusher (self);
  if (self->instance) {
    gst_vmoe_instance_release (self->instance, G_OBJECT (self));
    self->instance = NULL;
  }
  cancel_loads (self);
  gst_vmoe_result_clear (&self->last);
  return TRUE;
}

static gboolean
gst_vmoe_classify_src_event (GstBaseTransform *trans, GstEvent *event)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  if (GST_EVENT_TYPE (event) == GST_EVENT_QOS) {
    GstQOSType type;
    gdouble proportion;
    GstClockTimeDiff diff;
    GstClockTime timestamp;
    gst_event_parse_qos (event, &type, &proportion, &diff, &timestamp);
    GST_OBJECT_LOCK (self);
    /* Skipping inference wins back at most our inference time a frame, so
     * only lateness within it can be ours to fix: a frame later than that
     * would still be late had we spent nothing on it, and is late for
     * reasons downstream of us (a slow sink); skipping then would only lose
     * results.  Lateness we can fix is handled as GstBaseTransform does: the
     * next frames will be later still by about as much. */
    if (diff > 0 && (GstClockTime) diff <= self->latency)
      self->qos_earliest = timestamp + 2 * diff;
    else if (diff > 0)
      self->qos_earliest = GST_CLOCK_TIME_NONE;
    else
      self->qos_earliest = timestamp + diff;
    GST_OBJECT_UNLOCK (self);
  }
  return GST_BASE_TRANSFORM_CLASS (parent_class)->src_event (trans, event);
}

static gboolean
gst_vmoe_classify_query (GstBaseTransform *trans, GstPadDirection direction,
    GstQuery *query)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  /* A DRAIN (or any serialized query) answers for the frames before it. */
  if (direction == GST_PAD_SINK && GST_QUERY_IS_SERIALIZED (query))
    wait_drained (self);
  gboolean res = GST_BASE_TRANSFORM_CLASS (parent_class)->query (trans, direction, query);
  if (res && direction == GST_PAD_SRC && GST_QUERY_TYPE (query) == GST_QUERY_LATENCY) {
    gboolean live;
    GstClockTime min, max;
    gst_query_parse_latency (query, &live, &min, &max);
    GST_OBJECT_LOCK (self);
    /* A frame may wait batch-timeout for its batch, then the batch runs. */
    GstClockTime ours = self->latency + self->batch_timeout * GST_USECOND;
    GST_OBJECT_UNLOCK (self);
    min += ours;
    if (GST_CLOCK_TIME_IS_VALID (max))
      max += ours;
    gst_query_set_latency (query, live, min, max);
    GST_DEBUG_OBJECT (self, "adding %" GST_TIME_FORMAT " of batching and inference latency",
        GST_TIME_ARGS (ours));
  }
  return res;
}

/* ------------------------------------------------------------ GObject */

/* The rule GstStructure applies to names (it would refuse others with a
 * critical): a letter, then letters, digits or any of "/-_.:+". */
static gboolean
is_structure_name (const gchar *name)
{
  if (!g_ascii_isalpha (name[0]))
    return FALSE;
  for (const gchar *c = name + 1; *c; c++)
    if (!g_ascii_isalnum (*c) && !strchr ("/-_.:+", *c))
      return FALSE;
  return TRUE;
}

static void
gst_vmoe_classify_set_property (GObject *object, guint prop_id,
    const GValue *value, GParamSpec *pspec)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (object);
  GST_OBJECT_LOCK (self);
  gboolean running = GST_STATE (self) >= GST_STATE_PAUSED
      || GST_STATE_PENDING (self) >= GST_STATE_PAUSED;
  gchar *load = NULL;
  switch (prop_id) {
    case PROP_MODEL:
      g_free (self->model_path);
      self->model_path = g_value_dup_string (value);
      if (running)
        load = g_strdup (self->model_path);
      break;
    case PROP_BACKEND:
      self->backend = g_value_get_enum (value);
      break;
    case PROP_DEVICE:
      g_free (self->device);
      self->device = g_value_dup_string (value);
      break;
    case PROP_FP16:
      self->fp16 = g_value_get_boolean (value);
      break;
    case PROP_PRECISION:
      self->precision = g_value_get_enum (value);
      break;
    case PROP_TOP_K:
      self->top_k = g_value_get_uint (value);
      self->top_k_changed = TRUE;
      break;
    case PROP_INFERENCE_INTERVAL:
      self->interval = g_value_get_uint (value);
      break;
    case PROP_THREADS:
      self->threads = g_value_get_int (value);
      break;
    case PROP_POST_MESSAGES:
      self->post_messages = g_value_get_boolean (value);
      break;
    case PROP_EXPERTS_K:
      self->routing.experts_k = g_value_get_int (value);
      self->routing_changed = TRUE;
      break;
    case PROP_CAPACITY_RATIO:
      self->routing.capacity_ratio = g_value_get_double (value);
      self->routing_changed = TRUE;
      break;
    case PROP_QOS:
      self->qos = g_value_get_boolean (value);
      break;
    case PROP_MODEL_INSTANCE_ID:
      g_free (self->model_instance_id);
      self->model_instance_id = g_value_dup_string (value);
      break;
    case PROP_BATCH_SIZE:
      self->batch_size = g_value_get_uint (value);
      break;
    case PROP_BATCH_TIMEOUT:
      self->batch_timeout = g_value_get_uint64 (value);
      break;
    case PROP_QUEUE_SIZE:
      self->queue_size = g_value_get_uint (value);
      break;
    case PROP_INFERENCE_REGION:
      self->inference_region = g_value_get_enum (value);
      break;
    case PROP_OBJECT_CLASS:
      g_free (self->object_class);
      self->object_class = g_value_dup_string (value);
      break;
    case PROP_MIN_WIDTH:
      self->min_width = g_value_get_uint (value);
      break;
    case PROP_MIN_HEIGHT:
      self->min_height = g_value_get_uint (value);
      break;
    case PROP_ENTROPY_THRESHOLD:
      self->entropy_threshold = g_value_get_double (value);
      break;
    case PROP_ATTRIBUTE_NAME:
      g_free (self->attribute_name);
      self->attribute_name = g_value_dup_string (value);
      /* A GstStructure needs a valid name. */
      if (!self->attribute_name || !is_structure_name (self->attribute_name)) {
        GST_WARNING_OBJECT (self, "attribute-name '%s' is not a valid structure name; "
            "using '" DEFAULT_ATTRIBUTE_NAME "'", GST_STR_NULL (self->attribute_name));
        g_free (self->attribute_name);
        self->attribute_name = g_strdup (DEFAULT_ATTRIBUTE_NAME);
      }
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
  if (load) {
    request_load (self, load);
    g_free (load);
  }
}

static void
gst_vmoe_classify_get_property (GObject *object, guint prop_id, GValue *value,
    GParamSpec *pspec)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (object);
  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_MODEL:
      g_value_set_string (value, self->model_path);
      break;
    case PROP_BACKEND:
      g_value_set_enum (value, self->backend);
      break;
    case PROP_DEVICE:
      g_value_set_string (value, self->device);
      break;
    case PROP_FP16:
      g_value_set_boolean (value, self->fp16);
      break;
    case PROP_PRECISION:
      g_value_set_enum (value, self->precision);
      break;
    case PROP_TOP_K:
      g_value_set_uint (value, self->top_k);
      break;
    case PROP_INFERENCE_INTERVAL:
      g_value_set_uint (value, self->interval);
      break;
    case PROP_THREADS:
      g_value_set_int (value, self->threads);
      break;
    case PROP_POST_MESSAGES:
      g_value_set_boolean (value, self->post_messages);
      break;
    case PROP_EXPERTS_K:
      g_value_set_int (value, self->routing.experts_k);
      break;
    case PROP_CAPACITY_RATIO:
      g_value_set_double (value, self->routing.capacity_ratio);
      break;
    case PROP_QOS:
      g_value_set_boolean (value, self->qos);
      break;
    case PROP_MODEL_INSTANCE_ID:
      g_value_set_string (value, self->model_instance_id);
      break;
    case PROP_BATCH_SIZE:
      g_value_set_uint (value, self->batch_size);
      break;
    case PROP_BATCH_TIMEOUT:
      g_value_set_uint64 (value, self->batch_timeout);
      break;
    case PROP_QUEUE_SIZE:
      g_value_set_uint (value, self->queue_size);
      break;
    case PROP_INFERENCE_REGION:
      g_value_set_enum (value, self->inference_region);
      break;
    case PROP_OBJECT_CLASS:
      g_value_set_string (value, self->object_class);
      break;
    case PROP_MIN_WIDTH:
      g_value_set_uint (value, self->min_width);
      break;
    case PROP_MIN_HEIGHT:
      g_value_set_uint (value, self->min_height);
      break;
    case PROP_ATTRIBUTE_NAME:
      g_value_set_string (value, self->attribute_name);
      break;
    case PROP_ENTROPY_THRESHOLD:
      g_value_set_double (value, self->entropy_threshold);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_vmoe_classify_finalize (GObject *object)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (object);
  cancel_loads (self);
  gst_vmoe_result_clear (&self->last);
  g_free (self->model_path);
  g_free (self->device);
  g_free (self->model_instance_id);
  g_free (self->object_class);
  g_free (self->attribute_name);
  g_mutex_clear (&self->swap_lock);
  g_mutex_clear (&self->queue_lock);
  g_cond_clear (&self->queue_cond);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_vmoe_classify_class_init (GstVmoeClassifyClass *klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);
  GParamFlags rw = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS;

  gobject_class->set_property = gst_vmoe_classify_set_property;
  gobject_class->get_property = gst_vmoe_classify_get_property;
  gobject_class->finalize = gst_vmoe_classify_finalize;

  properties[PROP_MODEL] = g_param_spec_string ("model", "Model",
      "Path of the vmoe model file (.safetensors).  Changing it while playing "
      "loads the new model in the background and swaps it in without dropping "
      "a frame; the last file set wins", NULL, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_BACKEND] = g_param_spec_enum ("backend", "Backend",
      "Inference backend", GST_TYPE_VMOE_BACKEND, VMOE_BACKEND_AUTO,
      rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_DEVICE] = g_param_spec_string ("device", "Vulkan device",
      "Vulkan device for backend vulkan or auto: auto, an index, cpu (e.g. "
      "lavapipe) or part of the device name (NULL: $VMOE_VULKAN_DEVICE, else "
      "auto)", NULL, rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_FP16] = g_param_spec_boolean ("fp16", "fp16 weights",
      "Vulkan: keep the GEMM weights as half floats (logits within 1e-2 "
      "relative)", FALSE, rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_PRECISION] = g_param_spec_enum ("precision", "CPU precision",
      "CPU backend: fp32, or bf16 weights and activations (oneDNN on CPUs with "
      "avx512_bf16, logits within 2e-2 relative; refused elsewhere, and by "
      "Vulkan)", GST_TYPE_VMOE_PRECISION, VMOE_PRECISION_FP32,
      rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_TOP_K] = g_param_spec_uint ("top-k", "Top k",
      "Classes reported per frame in the meta and messages (at most the "
      "model's)", 1, 1000, DEFAULT_TOP_K, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_INFERENCE_INTERVAL] = g_param_spec_uint ("inference-interval",
      "Inference interval", "Classify every Nth frame; the frames between "
      "carry the last result, marked as not fresh", 1, G_MAXUINT,
      DEFAULT_INTERVAL, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_THREADS] = g_param_spec_int ("threads", "Threads",
      "CPU threads for inference (0: all cores)", 0, 256, 0,
      rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_POST_MESSAGES] = g_param_spec_boolean ("post-messages",
      "Post messages", "Post a 'vmoe' element message on the bus for every "
      "frame with a result (field fresh: classified, not carried)", DEFAULT_POST_MESSAGES, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_EXPERTS_K] = g_param_spec_int ("experts-k", "Experts k",
      "Experts per image for image routing (0: the model's k); a value the "
      "model cannot take is a warning and the value in force stays", 0, 4096, 0,
      rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_CAPACITY_RATIO] = g_param_spec_double ("capacity-ratio",
      "Capacity ratio", "Expert capacity ratio for token routing, V-MoE's "
      "test-time compute knob (0: the model's)", 0, 1e6, 0,
      rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_QOS] = g_param_spec_boolean ("qos", "QoS", "Skip inference "
      "on frames late by at most our inference time, the lateness skipping can "
      "win back (they carry the last result, marked as not fresh); frames are "
      "never dropped", DEFAULT_QOS, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_MODEL_INSTANCE_ID] = g_param_spec_string ("model-instance-id",
      "Model instance id", "Elements in a process with the same id share one "
      "loaded model, session and inference worker, which batches frames across "
      "their streams (they must ask for the same model, backend, device and "
      "fp16); NULL: a model of its own", NULL, rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_BATCH_SIZE] = g_param_spec_uint ("batch-size", "Batch size",
      "Images (frames or regions, from all sharing streams) per engine call at "
      "most; a shared instance runs with its first element's", 1, 1024,
      DEFAULT_BATCH_SIZE, rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_BATCH_TIMEOUT] = g_param_spec_uint64 ("batch-timeout",
      "Batch timeout", "Microseconds an image waits at most for its batch to "
      "fill (0: a batch takes what is queued); added to the LATENCY query", 0,
      G_MAXUINT32, DEFAULT_BATCH_TIMEOUT, rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_QUEUE_SIZE] = g_param_spec_uint ("queue-size", "Queue size",
      "Frames in flight at most (like DL Streamer's nireq): the streaming thread "
      "returns before inference and blocks only when this many wait for their "
      "results", 1, 1024, DEFAULT_QUEUE_SIZE, rw | GST_PARAM_MUTABLE_READY);
  properties[PROP_INFERENCE_REGION] = g_param_spec_enum ("inference-region",
      "Inference region", "What to classify: the whole frame, or each "
      "GstVideoRegionOfInterestMeta on it", GST_TYPE_VMOE_INFERENCE_REGION,
      INFERENCE_REGION_FULL_FRAME, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_OBJECT_CLASS] = g_param_spec_string ("object-class",
      "Object class", "roi-list: comma-separated roi_type names to classify "
      "(empty: all)", NULL, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_MIN_WIDTH] = g_param_spec_uint ("input-object-min-width",
      "Minimum object width", "roi-list: regions narrower than this, after "
      "clamping to the frame, are not classified", 0, G_MAXINT, 0,
      rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_MIN_HEIGHT] = g_param_spec_uint ("input-object-min-height",
      "Minimum object height", "roi-list: regions lower than this, after "
      "clamping to the frame, are not classified", 0, G_MAXINT, 0,
      rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_ATTRIBUTE_NAME] = g_param_spec_string ("attribute-name",
      "Attribute name", "roi-list: name of the GstStructure param added to each "
      "classified region's meta", DEFAULT_ATTRIBUTE_NAME, rw | GST_PARAM_MUTABLE_PLAYING);
  /* Results are marked, never withheld (docs/design.md): a frame without a
   * result already means "classification failed", and what to do with an
   * unsure one (hide it, show it, ask a person) is the application's. */
  properties[PROP_ENTROPY_THRESHOLD] = g_param_spec_double ("entropy-threshold",
      "Entropy threshold", "Results whose predictive entropy (nats; an E3 "
      "ensemble's is its calibrated uncertainty) is above this are marked "
      "uncertain in the meta, the message and ROI params; 0 marks none",
      0, 1000, 0, rw | GST_PARAM_MUTABLE_PLAYING);
  g_object_class_install_properties (gobject_class, N_PROPS, properties);

  GstCaps *caps = gst_caps_from_string (CAPS);
  gst_element_class_add_pad_template (element_class,
      gst_pad_template_new ("sink", GST_PAD_SINK, GST_PAD_ALWAYS, caps));
  gst_element_class_add_pad_template (element_class,
      gst_pad_template_new ("src", GST_PAD_SRC, GST_PAD_ALWAYS, caps));
  gst_caps_unref (caps);
  gst_element_class_set_static_metadata (element_class,
      "Sparse ViT Mixture-of-Experts classifier", "Filter/Analyzer/Video",
      "Classifies video frames with a sparse Vision-Transformer "
      "Mixture-of-Experts model (Mobile V-MoE, V-MoE, ViMoE) and attaches the "
      "class and the experts it used to every buffer as GstVmoeMeta; with "
      "post-messages, posts them on the bus too",
      "gst-vmoe developers");

  trans_class->start = GST_DEBUG_FUNCPTR (gst_vmoe_classify_start);
  trans_class->stop = GST_DEBUG_FUNCPTR (gst_vmoe_classify_stop);
  /* A worker behind submit_input_buffer rather than an element with its own
   * src pad task: GstBaseTransform keeps caps negotiation, allocation, QoS
   * events and queries (docs/design.md). */
  trans_class->submit_input_buffer =
      GST_DEBUG_FUNCPTR (gst_vmoe_classify_submit_input_buffer);
  trans_class->generate_output = GST_DEBUG_FUNCPTR (gst_vmoe_classify_generate_output);
  trans_class->sink_event = GST_DEBUG_FUNCPTR (gst_vmoe_classify_sink_event);
  trans_class->src_event = GST_DEBUG_FUNCPTR (gst_vmoe_classify_src_event);
  trans_class->query = GST_DEBUG_FUNCPTR (gst_vmoe_classify_query);
  trans_class->passthrough_on_same_caps = FALSE;

  GST_DEBUG_CATEGORY_INIT (gst_vmoe_classify_debug, "vmoeclassify", 0,
      "sparse ViT Mixture-of-Experts classifier");
  gst_type_mark_as_plugin_api (GST_TYPE_VMOE_BACKEND, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_VMOE_PRECISION, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_VMOE_INFERENCE_REGION, 0);
}

static void
gst_vmoe_classify_init (GstVmoeClassify *self)
{
  self->backend = VMOE_BACKEND_AUTO;
  self->top_k = DEFAULT_TOP_K;
  self->interval = DEFAULT_INTERVAL;
  self->post_messages = DEFAULT_POST_MESSAGES;
  self->qos = DEFAULT_QOS;
  self->qos_earliest = GST_CLOCK_TIME_NONE;
  self->batch_size = DEFAULT_BATCH_SIZE;
  self->batch_timeout = DEFAULT_BATCH_TIMEOUT;
  self->queue_size = DEFAULT_QUEUE_SIZE;
  self->attribute_name = g_strdup (DEFAULT_ATTRIBUTE_NAME);
  g_mutex_init (&self->swap_lock);
  g_mutex_init (&self->queue_lock);
  g_cond_init (&self->queue_cond);
  g_queue_init (&self->frames);
  /* Late frames are never dropped: QoS only skips inference (see qos). */
  gst_base_transform_set_qos_enabled (GST_BASE_TRANSFORM (self), FALSE);
  gst_base_transform_set_in_place (GST_BASE_TRANSFORM (self), TRUE);
}
