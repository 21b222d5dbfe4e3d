/* vmoeclassify: classifies video frames with a sparse ViT Mixture-of-Experts
 * model and attaches a GstVmoeMeta to every buffer.  A thin adapter over
 * libvmoe's public API: the element maps frames, keeps the session, and
 * turns results into metas and bus messages (after gst-plugins-good's
 * level element).
 *
 * Threads: the streaming thread owns `session`.  Property changes that need
 * a new session (another model, top-k, experts-k, capacity-ratio) prepare it
 * off the streaming thread (a model file) or flag it (options only); the
 * streaming thread swaps it in before its next frame, so no frame is ever
 * without a result.
 */
#include "gstvmoeclassify.h"

#include <gst/video/video.h>

#include "gstvmoemeta.h"

GST_DEBUG_CATEGORY_STATIC (gst_vmoe_classify_debug);
#define GST_CAT_DEFAULT gst_vmoe_classify_debug

#define FORMATS "{ RGB, BGR, RGBx, BGRx, xRGB, xBGR, RGBA, BGRA, ARGB, ABGR, GRAY8, I420, NV12 }"

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
};

#define DEFAULT_TOP_K 5
#define DEFAULT_INTERVAL 1
#define DEFAULT_POST_MESSAGES FALSE
#define DEFAULT_QOS TRUE

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
  gint experts_k;
  gdouble capacity_ratio;
  gboolean qos;
  GstClockTime qos_earliest;       /* running time before which frames are late */
  gboolean options_changed;        /* new session from the same model needed */

  /* Hand-over from the model loader thread, under swap_lock. */
  GMutex swap_lock;
  VmoeSession *pending;
  GThread *loader;
  guint load_generation;           /* a newer request supersedes older loads */

  /* Streaming thread only. */
  VmoeSession *session;
  guint64 frames;
  GstBuffer *last;                 /* holds the last result as a GstVmoeMeta */
  GstClockTime latency;            /* reported in LATENCY queries */
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

/* A session for `model` with the current properties. */
static VmoeSession *
new_session (GstVmoeClassify *self, VmoeModel *model, GError **error)
{
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  GST_OBJECT_LOCK (self);
  options.backend = self->backend;
  /* A copy: the session is made outside the lock, which may take long
   * (a Vulkan device and its weight upload). */
  gchar *device = g_strdup (self->device);
  options.device = device;
  options.fp16 = self->fp16;
  options.threads = self->threads;
  options.top_k = (int) self->top_k;
  options.experts_k = self->experts_k;
  options.capacity_ratio = self->capacity_ratio;
  GST_OBJECT_UNLOCK (self);
  VmoeSession *session = vmoe_session_new (model, &options, error);
  g_free (device);
  return session;
}

static VmoeSession *
load_session (GstVmoeClassify *self, const gchar *path, GError **error)
{
  if (!path || !*path) {
    g_set_error (error, VMOE_ERROR, VMOE_ERROR_INVALID_ARGUMENT,
        "no model set: give the 'model' property a model file");
    return NULL;
  }
  VmoeModel *model = vmoe_model_load (path, error);
  if (!model)
    return NULL;
  VmoeSession *session = new_session (self, model, error);
  vmoe_model_unref (model);
  return session;
}

typedef struct {
  GstVmoeClassify *self;
  gchar *path;
  guint generation;
} LoadRequest;

/* Loads a model off the streaming thread; a failure keeps the model in use
 * and posts a warning, so that a bad file never stops a live stream. */
static gpointer
load_in_background (gpointer data)
{
  LoadRequest *req = data;
  GstVmoeClassify *self = req->self;
  GError *error = NULL;
  VmoeSession *session = load_session (self, req->path, &error);
  if (!session) {
    GST_ELEMENT_WARNING (self, RESOURCE, OPEN_READ,
        ("Could not load model '%s'; keeping the current one.", req->path),
        ("%s", error->message));
    g_error_free (error);
  } else {
    g_mutex_lock (&self->swap_lock);
    if (req->generation == self->load_generation) {
      if (self->pending)
        vmoe_session_free (self->pending);
      self->pending = session;
      session = NULL;
    }
    g_mutex_unlock (&self->swap_lock);
    vmoe_session_free (session);    /* superseded by a newer request */
    GST_INFO_OBJECT (self, "model '%s' loaded, swapping it in", req->path);
  }
  gst_object_unref (self);
  g_free (req->path);
  g_free (req);
  return NULL;
}

static void
join_loader (GstVmoeClassify *self)
{
  g_mutex_lock (&self->swap_lock);
  GThread *loader = self->loader;
  self->loader = NULL;
  g_mutex_unlock (&self->swap_lock);
  if (loader)
    g_thread_join (loader);
}

static void
start_background_load (GstVmoeClassify *self, const gchar *path)
{
  join_loader (self);
  LoadRequest *req = g_new0 (LoadRequest, 1);
  req->self = gst_object_ref (self);
  req->path = g_strdup (path);
  g_mutex_lock (&self->swap_lock);
  req->generation = ++self->load_generation;
  self->loader = g_thread_new ("vmoe-loader", load_in_background, req);
  g_mutex_unlock (&self->swap_lock);
}

/* Streaming thread: takes a freshly loaded session, or rebuilds the current
 * one when options changed. */
static void
update_session (GstVmoeClassify *self)
{
  g_mutex_lock (&self->swap_lock);
  VmoeSession *pending = self->pending;
  self->pending = NULL;
  g_mutex_unlock (&self->swap_lock);
  if (pending) {
    vmoe_session_free (self->session);
    self->session = pending;
  }
  GST_OBJECT_LOCK (self);
  gboolean changed = self->options_changed;
  self->options_changed = FALSE;
  GST_OBJECT_UNLOCK (self);
  if (!changed || !self->session)
    return;
  GError *error = NULL;
  VmoeSession *session = new_session (self, vmoe_session_get_model (self->session), &error);
  if (!session) {
    GST_ELEMENT_WARNING (self, LIBRARY, SETTINGS,
        ("The new settings do not fit the model; keeping the previous ones."),
        ("%s", error->message));
    g_error_free (error);
    return;
  }
  vmoe_session_free (self->session);
  self->session = session;
}

/* ------------------------------------------------------------- results */

static void
fill_meta (GstVmoeMeta *m, const VmoeConfig *c, const VmoeImageResult *r,
    GstClockTime latency)
{
  m->latency = latency;
  m->class_id = r->top_classes[0];
  m->label = g_strdup (r->top_labels[0]);
  m->score = r->top_scores[0];
  m->n_top = (guint) r->n_top;
  m->top_classes = g_memdup2 (r->top_classes, r->n_top * sizeof (gint));
  m->top_scores = g_memdup2 (r->top_scores, r->n_top * sizeof (gfloat));
  m->top_labels = g_new0 (gchar *, r->n_top + 1);
  for (int i = 0; i < r->n_top; i++)
    m->top_labels[i] = g_strdup (r->top_labels[i]);
  m->n_experts = (guint) r->n_experts;
  m->experts = g_memdup2 (r->experts, r->n_experts * sizeof (gint));
  m->gates = g_memdup2 (r->gates, r->n_experts * sizeof (gfloat));
  m->superclass = r->n_experts ? g_strdup (r->superclasses[0]) : NULL;
  m->n_layers = (guint) r->n_layers;
  m->layers = g_new0 (GstVmoeLayerStats, r->n_layers);
  for (int l = 0; l < r->n_layers; l++) {
    m->layers[l].block = r->layers[l].block;
    m->layers[l].n_experts = (guint) c->num_experts;
    m->layers[l].tokens_per_expert = g_memdup2 (r->layers[l].tokens_per_expert,
        c->num_experts * sizeof (guint));
    m->layers[l].dropped = r->layers[l].dropped;
  }
}

/* Sets field `name` of `s` to a GValueArray of n ints or floats. */
static void
set_array (GstStructure *s, const char *name, GType type, const void *values, guint n)
{
  G_GNUC_BEGIN_IGNORE_DEPRECATIONS
  GValueArray *arr = g_value_array_new (n);
  GValue v = G_VALUE_INIT;
  g_value_init (&v, type);
  for (guint i = 0; i < n; i++) {
    if (type == G_TYPE_INT)
      g_value_set_int (&v, ((const gint *) values)[i]);
    else
      g_value_set_double (&v, ((const gfloat *) values)[i]);
    g_value_array_append (arr, &v);
  }
  g_value_unset (&v);
  GValue field = G_VALUE_INIT;
  g_value_init (&field, g_value_array_get_type ());
  g_value_take_boxed (&field, arr);
  G_GNUC_END_IGNORE_DEPRECATIONS
  gst_structure_take_value (s, name, &field);
}

/* The element message of a classified frame, with the fields of DESIGN.md;
 * arrays are GValueArrays, as level posts them, so every binding reads them. */
static void
post_result (GstVmoeClassify *self, GstBuffer *buf, const GstVmoeMeta *m)
{
  GstBaseTransform *trans = GST_BASE_TRANSFORM (self);
  GstClockTime ts = GST_BUFFER_PTS (buf);
  GstClockTime stream_time = gst_segment_to_stream_time (&trans->segment,
      GST_FORMAT_TIME, ts);
  GstClockTime running_time = gst_segment_to_running_time (&trans->segment,
      GST_FORMAT_TIME, ts);
  GstStructure *s = gst_structure_new ("vmoe",
      "timestamp", G_TYPE_UINT64, ts,
      "stream-time", G_TYPE_UINT64, stream_time,
      "running-time", G_TYPE_UINT64, running_time,
      "frame", G_TYPE_UINT64, m->frame,
      "class-id", G_TYPE_INT, m->class_id,
      "label", G_TYPE_STRING, m->label,
      "score", G_TYPE_DOUBLE, (gdouble) m->score,
      "latency", G_TYPE_UINT64, m->latency, NULL);
  set_array (s, "top-classes", G_TYPE_INT, m->top_classes, m->n_top);
  set_array (s, "top-scores", G_TYPE_DOUBLE, m->top_scores, m->n_top);
  if (m->n_experts) {
    set_array (s, "experts", G_TYPE_INT, m->experts, m->n_experts);
    set_array (s, "gates", G_TYPE_DOUBLE, m->gates, m->n_experts);
  }
  if (m->superclass)
    gst_structure_set (s, "superclass", G_TYPE_STRING, m->superclass, NULL);
  gst_element_post_message (GST_ELEMENT (self),
      gst_message_new_element (GST_OBJECT (self), s));
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

static GstFlowReturn
gst_vmoe_classify_transform_ip (GstBaseTransform *trans, GstBuffer *buf)
{
  GstVmoeClassify *self = GST_VMOE_CLASSIFY (trans);
  GstVideoFilter *filter = GST_VIDEO_FILTER (trans);
  update_session (self);

  GST_OBJECT_LOCK (self);
  guint interval = self->interval;
  gboolean post = self->post_messages;
  GST_OBJECT_UNLOCK (self);
  guint64 index = self->frames++;
  GstVmoeMeta *last = self->last ? gst_buffer_get_vmoe_meta (self->last) : NULL;
  gboolean infer = !last || index % interval == 0;
  if (infer && last && frame_is_late (self, buf)) {
    GST_DEBUG_OBJECT (self, "frame %" G_GUINT64_FORMAT " is late, carrying the last result",
        index);
    infer = FALSE;
  }

  if (infer) {
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
    gboolean ok = map_image (&frame, &img)
        && vmoe_session_run_u8 (self->session, &img, 1, &error);
    GstClockTime latency = (GstClockTime) (g_get_monotonic_time () - t0) * GST_USECOND;
    gst_video_frame_unmap (&frame);
    if (!ok) {
      GST_ELEMENT_ERROR (self, STREAM, FAILED, ("Inference failed."),
          ("%s", error ? error->message : "unsupported frame"));
      g_clear_error (&error);
      return GST_FLOW_ERROR;
    }
    gst_clear_buffer (&self->last);
    self->last = gst_buffer_new ();
    last = gst_buffer_add_vmoe_meta (self->last);
    fill_meta (last, vmoe_model_get_config (vmoe_session_get_model (self->session)),
        vmoe_session_get_result (self->session, 0), latency);
    track_latency (self, latency);
  }

  GstVmoeMeta *meta = gst_buffer_add_vmoe_meta (buf);
  gst_vmoe_meta_copy_into (meta, last);
  meta->frame = index;
  meta->fresh = infer;
  GST_LOG_OBJECT (self, "frame %" G_GUINT64_FORMAT ": %s (%.3f)%s", index, meta->label,
      meta->score, infer ? "" : ", carried");
  if (infer && post)
    post_result (self, buf, meta);
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
  self->options_changed = FALSE;
  GST_OBJECT_UNLOCK (self);
  GError *error = NULL;
  self->session = load_session (self, path, &error);
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
  join_loader (self);
  g_mutex_lock (&self->swap_lock);
  VmoeSession *pending = self->pending;
  self->pending = NULL;
  g_mutex_unlock (&self->swap_lock);
  vmoe_session_free (pending);
  vmoe_session_free (self->session);
  self->session = NULL;
  gst_clear_buffer (&self->last);
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
    /* As GstBaseTransform estimates it: a late frame means the next ones
     * will be later still by about the same amount. */
    if (diff > 0)
      self->qos_earliest = timestamp + 2 * diff;
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
  gchar *reload = NULL;
  switch (prop_id) {
    case PROP_MODEL:
      g_free (self->model_path);
      self->model_path = g_value_dup_string (value);
      if (running)
        reload = g_strdup (self->model_path);
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
      self->options_changed = TRUE;
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
      self->experts_k = g_value_get_int (value);
      self->options_changed = TRUE;
      break;
    case PROP_CAPACITY_RATIO:
      self->capacity_ratio = g_value_get_double (value);
      self->options_changed = TRUE;
      break;
    case PROP_QOS:
      self->qos = g_value_get_boolean (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
  if (reload) {
    start_background_load (self, reload);
    g_free (reload);
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
      g_value_set_int (value, self->experts_k);
      break;
    case PROP_CAPACITY_RATIO:
      g_value_set_double (value, self->capacity_ratio);
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
  join_loader (self);
  vmoe_session_free (self->pending);
  vmoe_session_free (self->session);
  gst_clear_buffer (&self->last);
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

  g_object_class_install_property (gobject_class, PROP_MODEL,
      g_param_spec_string ("model", "Model", "Path of the vmoe model file "
          "(.safetensors).  Changing it while playing loads the new model in "
          "the background and swaps it in without dropping a frame", NULL,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_BACKEND,
      g_param_spec_enum ("backend", "Backend", "Inference backend",
          GST_TYPE_VMOE_BACKEND, VMOE_BACKEND_AUTO, rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_DEVICE,
      g_param_spec_string ("device", "Vulkan device", "Vulkan device for "
          "backend vulkan or auto: auto, an index, cpu (e.g. lavapipe) or part "
          "of the device name (NULL: $VMOE_VULKAN_DEVICE, else auto)", NULL,
          rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_FP16,
      g_param_spec_boolean ("fp16", "fp16 weights", "Vulkan: keep the GEMM "
          "weights as half floats (logits within 1e-2 relative)", FALSE,
          rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_TOP_K,
      g_param_spec_uint ("top-k", "Top k", "Classes reported per frame in the "
          "meta and messages", 1, 1000, DEFAULT_TOP_K, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_INFERENCE_INTERVAL,
      g_param_spec_uint ("inference-interval", "Inference interval",
          "Classify every Nth frame; the frames between carry the last result, "
          "marked as not fresh", 1, G_MAXUINT, DEFAULT_INTERVAL,
          rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_THREADS,
      g_param_spec_int ("threads", "Threads", "CPU threads for inference "
          "(0: all cores)", 0, 256, 0, rw | GST_PARAM_MUTABLE_READY));
  g_object_class_install_property (gobject_class, PROP_POST_MESSAGES,
      g_param_spec_boolean ("post-messages", "Post messages", "Post a 'vmoe' "
          "element message on the bus for every classified frame",
          DEFAULT_POST_MESSAGES, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_EXPERTS_K,
      g_param_spec_int ("experts-k", "Experts k", "Experts per image for image "
          "routing (0: the model's k)", 0, 4096, 0, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_CAPACITY_RATIO,
      g_param_spec_double ("capacity-ratio", "Capacity ratio", "Expert capacity "
          "ratio for token routing, V-MoE's test-time compute knob (0: the "
          "model's)", 0, 1e6, 0, rw | GST_PARAM_MUTABLE_PLAYING));
  g_object_class_install_property (gobject_class, PROP_QOS,
      g_param_spec_boolean ("qos", "QoS", "Skip inference on frames that are "
          "already late (they carry the last result, marked as not fresh); "
          "frames are never dropped", DEFAULT_QOS, rw | GST_PARAM_MUTABLE_PLAYING));

  GstCaps *caps = gst_caps_from_string (GST_VIDEO_CAPS_MAKE (FORMATS));
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
