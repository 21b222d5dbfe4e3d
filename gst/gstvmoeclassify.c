/* vmoeclassify: classifies video frames with a sparse ViT Mixture-of-Experts
 * model and attaches a GstVmoeMeta to every buffer.  A thin adapter over
 * libvmoe's public API: the element maps frames, keeps the session, and
 * turns results into metas and bus messages (after gst-plugins-good's
 * level element).
 *
 * Threads: the streaming thread owns `session`.  A new model set while
 * playing is loaded by a loader thread (one at a time; the last model set
 * wins) and swapped in by the streaming thread before its next frame, so no
 * frame is ever without a result and set_property never waits for a load.
 * Other settings made while playing are applied by the streaming thread:
 * top-k to the session itself (post-processing), experts-k and
 * capacity-ratio through a new session on the same model; a value the model
 * cannot take is a warning and the property returns to the value in force.
 */
#include "gstvmoeclassify.h"

#include <gst/video/video.h>

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
  PROP_TOP_K,
  PROP_INFERENCE_INTERVAL,
  PROP_THREADS,
  PROP_POST_MESSAGES,
  PROP_EXPERTS_K,
  PROP_CAPACITY_RATIO,
  PROP_QOS,
  N_PROPS,
};
static GParamSpec *properties[N_PROPS];

#define DEFAULT_TOP_K 5
#define DEFAULT_INTERVAL 1
#define DEFAULT_POST_MESSAGES FALSE
#define DEFAULT_QOS TRUE

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
  guint top_k;
  guint interval;
  gint threads;
  gboolean post_messages;
  RoutingSettings routing;
  gboolean qos;
  GstClockTime qos_earliest;       /* running time before which frames are late */
  GstClockTime latency;            /* reported in LATENCY queries */
  gboolean top_k_changed;          /* for the streaming thread to apply */
  gboolean routing_changed;

  /* Model loading, under swap_lock. */
  GMutex swap_lock;
  gchar *load_request;             /* the next model file to load, or NULL */
  guint load_generation;           /* bumped by every request and by stop */
  GThread *loader;
  gboolean loading;                /* the loader thread is still in its loop */
  VmoeSession *pending;            /* loaded, for the streaming thread */
  RoutingSettings pending_requested; /* the properties when it was loaded */
  RoutingSettings pending_routing; /* what it runs with */

  /* Streaming thread only. */
  VmoeSession *session;
  RoutingSettings session_routing; /* what a rejected setting returns to */
  guint64 frames;
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
    { VMOE_BACKEND_CPU, "CPU (OpenBLAS)", "cpu" },
    { VMOE_BACKEND_VULKAN, "Vulkan compute", "vulkan" },
    { 0, NULL, NULL },
  };
  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstVmoeBackend", values));
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
  if (!self->loading) {
    finished = self->loader;
    self->loading = TRUE;
    self->loader = g_thread_new ("vmoe-loader", loader_main, self);
  }
  g_mutex_unlock (&self->swap_lock);
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
  g_mutex_unlock (&self->swap_lock);
  if (loader)
    g_thread_join (loader);
  vmoe_session_free (pending);
}

/* Streaming thread: a new routing setting made while playing, through a new
 * session on the same model. */
static void
apply_routing (GstVmoeClassify *self)
{
  VmoeSessionOptions options;
  gchar *device;
  session_options (self, &options, &device);
  RoutingSettings wanted = { options.experts_k, options.capacity_ratio };
  if (wanted.experts_k == self->session_routing.experts_k
      && wanted.capacity_ratio == self->session_routing.capacity_ratio) {
    g_free (device);
    return;
  }
  GError *error = NULL;
  VmoeSession *session = new_session (self, vmoe_session_get_model (self->session),
      &options, &error);
  g_free (device);
  if (!session) {
    GST_ELEMENT_WARNING (self, LIBRARY, SETTINGS,
        ("The new settings do not fit the model; keeping the previous ones."),
        ("%s", error->message));
    g_error_free (error);
    revert_routing (self, &wanted, &self->session_routing);
    return;
  }
  vmoe_session_free (self->session);
  self->session = session;
  self->session_routing = wanted;
}

/* Streaming thread, before each frame: swaps in a loaded model and applies
 * the settings made while playing. */
static void
update_session (GstVmoeClassify *self)
{
  g_mutex_lock (&self->swap_lock);
  VmoeSession *pending = self->pending;
  self->pending = NULL;
  RoutingSettings requested = self->pending_requested, routing = self->pending_routing;
  g_mutex_unlock (&self->swap_lock);
  gboolean swapped = pending != NULL;
  if (swapped) {
    vmoe_session_free (self->session);
    self->session = pending;
    self->session_routing = routing;
    revert_routing (self, &requested, &routing);
  }
  GST_OBJECT_LOCK (self);
  gboolean routing_changed = self->routing_changed, top_k_changed = self->top_k_changed;
  self->routing_changed = self->top_k_changed = FALSE;
  guint top_k = self->top_k;
  GST_OBJECT_UNLOCK (self);
  /* A model swapped in was made with the settings of when its load started;
   * any made during the load apply now. */
  if (routing_changed || swapped)
    apply_routing (self);
  if (top_k_changed || swapped) {
    GError *error = NULL;
    if (!vmoe_session_set_top_k (self->session, (int) top_k, &error)) {
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

static void
post_result (GstVmoeClassify *self, GstBuffer *buf, guint64 index, gboolean fresh)
{
  GstBaseTransform *trans = GST_BASE_TRANSFORM (self);
  GstClockTime ts = GST_BUFFER_PTS (buf);
  GstStructure *s = gst_vmoe_result_to_structure (&self->last, index, fresh, ts,
      gst_segment_to_stream_time (&trans->segment, GST_FORMAT_TIME, ts),
      gst_segment_to_running_time (&trans->segment, GST_FORMAT_TIME, ts));
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
}

/* Classifies `buf` into self->last.  A failure of the backend itself (a lost
 * device, no memory) is an element error; any other (a frame whose logits
 * are not finite) fails this frame only: a warning when such failures start,
 * a debug line for the frames after it, and the frame passes on without a
 * result, since one bad frame must not end a live stream. */
static GstFlowReturn
classify (GstVmoeClassify *self, GstBuffer *buf, guint64 index)
{
  GstVideoFilter *filter = GST_VIDEO_FILTER (self);
  GstVideoFrame frame;
  /* Read-only map: the pixels are never touched, and mapping shared memory
   * for reading copies nothing. */
  if (!gst_video_frame_map (&frame, &filter->in_info, buf, GST_MAP_READ)) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Could not map the video frame."), (NULL));
    return GST_FLOW_ERROR;
  }
  VmoeImage img;
  GError *error = NULL;
  gint64 t0 = g_get_monotonic_time ();
  gboolean mapped = map_image (&frame, &img);
  gboolean ok = mapped && vmoe_session_run_u8 (self->session, &img, 1, &error);
  GstClockTime latency = (GstClockTime) (g_get_monotonic_time () - t0) * GST_USECOND;
  gst_video_frame_unmap (&frame);
  if (!mapped || g_error_matches (error, VMOE_ERROR, VMOE_ERROR_BACKEND)) {
    GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Inference failed."),
        ("%s", error ? error->message : "unsupported frame format"));
    g_clear_error (&error);
    return GST_FLOW_ERROR;
  }
  if (!ok) {
    gst_vmoe_result_clear (&self->last);
    self->failed_frames++;
    if (self->failing_since++ == 0)
      GST_ELEMENT_WARNING (self, STREAM, FAILED,
          ("Could not classify frame %" G_GUINT64_FORMAT "; frames pass on without a "
              "result until classifying works again.", index),
          ("%s (%" G_GUINT64_FORMAT " frames without a result since start)",
              error->message, self->failed_frames));
    else
      GST_DEBUG_OBJECT (self, "frame %" G_GUINT64_FORMAT " failed too, %" G_GUINT64_FORMAT
          " in a row: %s", index, self->failing_since, error->message);
    g_error_free (error);
    return GST_FLOW_OK;
  }
  if (self->failing_since) {
    GST_INFO_OBJECT (self, "classifying again after %" G_GUINT64_FORMAT " frames without "
        "a result", self->failing_since);
    self->failing_since = 0;
  }
  gchar *name = gst_object_get_name (GST_OBJECT (self));
  gst_vmoe_result_set (&self->last, vmoe_session_get_model (self->session), name,
      vmoe_session_get_result (self->session, 0), latency);
  g_free (name);
  track_latency (self, latency);
  return GST_FLOW_OK;
}

static GstFlowReturn
gst_vmoe_classify_transform_ip (GstBaseTransform *trans, GstBuffer *buf)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  update_session (self);

  GST_OBJECT_LOCK (self);
  guint interval = self->interval;
  gboolean post = self->post_messages;
  GST_OBJECT_UNLOCK (self);
  guint64 index = self->frames++;
  gboolean have_last = gst_vmoe_result_is_set (&self->last);
  gboolean infer = !have_last || index % interval == 0;
  if (infer && have_last && frame_is_late (self, buf)) {
    GST_DEBUG_OBJECT (self, "frame %" G_GUINT64_FORMAT " is late, carrying the last result",
        index);
    infer = FALSE;
  }
  if (infer) {
    GstFlowReturn flow = classify (self, buf, index);
    if (flow != GST_FLOW_OK || !gst_vmoe_result_is_set (&self->last))
      return flow;
  }
  gst_vmoe_result_fill_meta (&self->last, gst_buffer_add_vmoe_meta (buf), index, infer);
  GST_LOG_OBJECT (self, "frame %" G_GUINT64_FORMAT ": %s (%.3f)%s", index,
      self->last.top_labels[0], self->last.top_scores[0], infer ? "" : ", carried");
  /* Every frame with a result posts, carried ones too (fresh = FALSE), so
   * that a bus-only application sees each frame's classification as the
   * meta gives it. */
  if (post)
    post_result (self, buf, index, infer);
  return GST_FLOW_OK;
}

/* ------------------------------------------------------- base transform */

static gboolean
gst_vmoe_classify_start (GstBaseTransform *trans)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  GST_OBJECT_LOCK (self);
  gchar *path = g_strdup (self->model_path);
  self->qos_earliest = GST_CLOCK_TIME_NONE;
  self->routing_changed = self->top_k_changed = FALSE;
  GST_OBJECT_UNLOCK (self);
  GError *error = NULL;
  VmoeModel *model = load_model (path, &error);
  if (model) {
    VmoeSessionOptions options;
    gchar *device;
    session_options (self, &options, &device);
    self->session = new_session (self, model, &options, &error);
    self->session_routing = (RoutingSettings) { options.experts_k, options.capacity_ratio };
    g_free (device);
    vmoe_model_unref (model);
  }
  if (!self->session) {
    GST_ELEMENT_ERROR (self, RESOURCE, OPEN_READ,
        ("Could not start vmoeclassify with model '%s'.", path ? path : "(none)"),
        ("%s", error->message));
    g_error_free (error);
    g_free (path);
    return FALSE;
  }
  g_free (path);
  self->frames = 0;
  self->failing_since = self->failed_frames = 0;
  /* One inference on a black frame at the model's size warms the engine up
   * and gives the first latency estimate for LATENCY queries. */
  const VmoeConfig *c = vmoe_model_get_config (vmoe_session_get_model (self->session));
  guint8 *black = g_malloc0 ((gsize) c->image_w * c->image_h);
  VmoeImage img;
  vmoe_image_init_packed (&img, black, c->image_w, c->image_h, 1, c->image_w);
  gint64 t0 = g_get_monotonic_time ();
  vmoe_session_run_u8 (self->session, &img, 1, NULL);
  GST_OBJECT_LOCK (self);
  self->latency = (GstClockTime) (g_get_monotonic_time () - t0) * GST_USECOND;
  GST_OBJECT_UNLOCK (self);
  g_free (black);
  GST_INFO_OBJECT (self, "model loaded, %s backend, first inference %" GST_TIME_FORMAT,
      vmoe_backend_name (vmoe_session_get_backend (self->session)),
      GST_TIME_ARGS (self->latency));
  return TRUE;
}

static gboolean
gst_vmoe_classify_stop (GstBaseTransform *trans)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  cancel_loads (self);
  vmoe_session_free (self->session);
  self->session = NULL;
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
  gboolean res = GST_BASE_TRANSFORM_CLASS (parent_class)->query (trans, direction, query);
  if (res && direction == GST_PAD_SRC && GST_QUERY_TYPE (query) == GST_QUERY_LATENCY) {
    gboolean live;
    GstClockTime min, max;
    gst_query_parse_latency (query, &live, &min, &max);
    GST_OBJECT_LOCK (self);
    GstClockTime ours = self->latency;
    GST_OBJECT_UNLOCK (self);
    min += ours;
    if (GST_CLOCK_TIME_IS_VALID (max))
      max += ours;
    gst_query_set_latency (query, live, min, max);
    GST_DEBUG_OBJECT (self, "adding %" GST_TIME_FORMAT " of inference latency",
        GST_TIME_ARGS (ours));
  }
  return res;
}

/* ------------------------------------------------------------ GObject */

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
  vmoe_session_free (self->session);
  gst_vmoe_result_clear (&self->last);
  g_free (self->model_path);
  g_free (self->device);
  g_mutex_clear (&self->swap_lock);
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
  /* Our own transform_ip instead of GstVideoFilter's: it would map the frame
   * for writing, which copies pixels of a shared buffer. */
  trans_class->transform_ip = GST_DEBUG_FUNCPTR (gst_vmoe_classify_transform_ip);
  trans_class->src_event = GST_DEBUG_FUNCPTR (gst_vmoe_classify_src_event);
  trans_class->query = GST_DEBUG_FUNCPTR (gst_vmoe_classify_query);
  trans_class->passthrough_on_same_caps = FALSE;

  GST_DEBUG_CATEGORY_INIT (gst_vmoe_classify_debug, "vmoeclassify", 0,
      "sparse ViT Mixture-of-Experts classifier");
  gst_type_mark_as_plugin_api (GST_TYPE_VMOE_BACKEND, 0);
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
  g_mutex_init (&self->swap_lock);
  /* Late frames are never dropped: QoS only skips inference (see qos). */
  gst_base_transform_set_qos_enabled (GST_BASE_TRANSFORM (self), FALSE);
  gst_base_transform_set_in_place (GST_BASE_TRANSFORM (self), TRUE);
}
