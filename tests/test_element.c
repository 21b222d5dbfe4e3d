/* Element tests for vmoeclassify (GstHarness and small pipelines), on models
 * with random weights that the test writes itself (vmoe_random_model_write),
 * so that they run wherever the plugin builds.  Expected results come from
 * the engine run on RGB pixels that the test converts itself. */
#include <gst/app/gstappsink.h>
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <glib/gstdio.h>
#include <gst/video/video.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "gstvmoemeta.h"
#include "testutil.h"
#include "vmoe/vmoe.h"

static char *model_dir;
/* "vulkan" mode: every harness runs backend=vulkan; results must match the
 * CPU engine within score_tolerance. */
static const char *backend = "cpu";
static double score_tolerance = 1e-6;

/* GstCheck bundles a Check without the floating-point assertions. */
#define assert_near(a, b, tol) \
  ck_assert_msg (fabs ((double) (a) - (double) (b)) <= (tol), \
      "%s = %g, %s = %g, beyond %g", #a, (double) (a), #b, (double) (b), (double) (tol))

/* The configurations of the parity suite's models of the same names
 * (tests/parity/make_references.py), here with the engine's random weights. */
#define BASE_CONFIG "\"format\": \"vmoe\", \"version\": 1, \"patch_size\": 8, " \
  "\"embed_dim\": 32, \"depth\": 3, \"num_heads\": 4, \"mlp_dim\": 64, \"num_classes\": 10"
#define RGB_CONFIG BASE_CONFIG ", \"image_size\": [32, 32], \"in_channels\": 3, " \
  "\"mean\": [0.485, 0.456, 0.406], \"std\": [0.229, 0.224, 0.225], \"crop_pct\": 0.875"
static const struct {
  const char *name;
  const char *config;
} test_models[] = {
  { "dense", "{" RGB_CONFIG "}" },
  { "gray_nonsquare_tanh", "{" BASE_CONFIG ", \"image_size\": [24, 40], "
    "\"in_channels\": 1, \"mean\": [0.3], \"std\": [0.4], \"act\": \"gelu_tanh\", "
    "\"crop_pct\": 1.0}" },
  { "image_k1", "{" RGB_CONFIG ", \"moe\": {\"layers\": [1, 2], \"num_experts\": 4, "
    "\"top_k\": 1, \"routing\": \"image\"}}" },
  { "image_k2_norm_mean", "{" RGB_CONFIG ", \"moe\": {\"layers\": [2], \"num_experts\": 4, "
    "\"top_k\": 2, \"routing\": \"image\", \"normalize_gates\": true, "
    "\"router_input\": \"mean\", \"expert_mlp_dim\": 48}}" },
  { "token_k2_c05_bpr", "{" RGB_CONFIG ", \"moe\": {\"layers\": [1, 2], \"num_experts\": 4, "
    "\"top_k\": 2, \"routing\": \"token\", \"capacity_ratio\": 0.5, \"bpr\": true}}" },
  { "e3_token_m2_shared", "{" RGB_CONFIG ", \"moe\": {\"layers\": [1, 2], \"num_experts\": 4, "
    "\"top_k\": 1, \"routing\": \"token\", \"shared_expert\": true, "
    "\"ensemble_members\": 2}}" },
};

static char *
model_path (const char *name)
{
  char *file = g_strdup_printf ("%s.safetensors", name);
  char *path = g_build_filename (model_dir, file, NULL);
  g_free (file);
  return path;
}

static void
write_test_models (void)
{
  GError *error = NULL;
  model_dir = g_dir_make_tmp ("vmoe-element-XXXXXX", &error);
  g_assert_no_error (error);
  for (guint i = 0; i < G_N_ELEMENTS (test_models); i++) {
    char *path = model_path (test_models[i].name);
    if (!vmoe_random_model_write (test_models[i].config, 1 + i, path, &error))
      g_error ("cannot write test model %s: %s", test_models[i].name, error->message);
    g_free (path);
  }
}

static void
remove_test_models (void)
{
  GDir *dir = g_dir_open (model_dir, 0, NULL);
  const char *name;
  while (dir && (name = g_dir_read_name (dir))) {
    char *path = g_build_filename (model_dir, name, NULL);
    g_unlink (path);
    g_free (path);
  }
  if (dir)
    g_dir_close (dir);
  g_rmdir (model_dir);
  g_free (model_dir);
}

/* A deterministic test picture: RGB at (x, y). */
static void
test_rgb (int x, int y, int seed, guint8 rgb[3])
{
  guint32 h = (guint32) x * 73856093u ^ (guint32) y * 19349663u ^ (guint32) seed * 83492791u;
  h ^= h >> 13;
  h *= 0x5bd1e995;
  rgb[0] = (guint8) (x * 7 + seed * 40 + (h & 31));
  rgb[1] = (guint8) (y * 5 + ((h >> 8) & 63));
  rgb[2] = (guint8) ((x + y) * 3 + ((h >> 16) & 127));
}

static guint8
clamp_u8 (double v)
{
  return (guint8) (v < 0 ? 0 : v > 255 ? 255 : floor (v + 0.5));
}

/* The byte of component `comp` at pixel (x, y), wherever GStreamer's own
 * description of the format (GstVideoFormatInfo) puts it. */
static guint8 *
component_byte (GstVideoFrame *frame, int comp, int x, int y)
{
  const GstVideoFormatInfo *f = frame->info.finfo;
  int plane = GST_VIDEO_FORMAT_INFO_PLANE (f, comp);
  int cx = x >> GST_VIDEO_FORMAT_INFO_W_SUB (f, comp);
  int cy = y >> GST_VIDEO_FORMAT_INFO_H_SUB (f, comp);
  return (guint8 *) GST_VIDEO_FRAME_PLANE_DATA (frame, plane)
      + cy * GST_VIDEO_FRAME_PLANE_STRIDE (frame, plane)
      + cx * GST_VIDEO_FORMAT_INFO_PSTRIDE (f, comp) + GST_VIDEO_FORMAT_INFO_POFFSET (f, comp);
}

/* Builds a frame of `format` and the packed RGB (or gray) pixels it stands
 * for, with the test's own conversions (BT.601 limited range for YUV). */
static GstBuffer *
make_frame (GstVideoFormat format, int w, int h, int seed, guint8 *rgb_out,
    gboolean *gray_out)
{
  GstVideoInfo info;
  gst_video_info_set_format (&info, format, w, h);
  GstBuffer *buf = gst_buffer_new_allocate (NULL, GST_VIDEO_INFO_SIZE (&info), NULL);
  /* Padding and alpha bytes hold this, which the element must ignore. */
  gst_buffer_memset (buf, 0, 0x5a, GST_VIDEO_INFO_SIZE (&info));
  gst_buffer_add_video_meta_full (buf, GST_VIDEO_FRAME_FLAG_NONE, format, w, h,
      GST_VIDEO_INFO_N_PLANES (&info), info.offset, info.stride);
  GstVideoFrame frame;
  ck_assert (gst_video_frame_map (&frame, &info, buf, GST_MAP_WRITE));
  gboolean gray = GST_VIDEO_INFO_IS_GRAY (&info), yuv = GST_VIDEO_INFO_IS_YUV (&info);
  ck_assert (gray || yuv || GST_VIDEO_INFO_IS_RGB (&info));
  *gray_out = gray;
  for (int y = 0; y < h; y++) {
    for (int x = 0; x < w; x++) {
      guint8 c[3];
      test_rgb (x, y, seed, c);
      /* rgb_out is packed: 3 bytes a pixel, or 1 for gray. */
      guint8 *out = rgb_out + (y * w + x) * (gray ? 1 : 3);
      if (gray) {
        *component_byte (&frame, GST_VIDEO_COMP_Y, x, y) = c[0];
        out[0] = c[0];
      } else if (yuv) {
        /* Y from the pixel, chroma from its subsampling block's top-left
         * pixel (written by each pixel of the block, always the same). */
        int yv = 16 + c[1] % 220;
        int sx = GST_VIDEO_FORMAT_INFO_W_SUB (info.finfo, GST_VIDEO_COMP_U);
        int sy = GST_VIDEO_FORMAT_INFO_H_SUB (info.finfo, GST_VIDEO_COMP_U);
        guint8 cc[3];
        test_rgb (x >> sx << sx, y >> sy << sy, seed, cc);
        int u = 16 + cc[0] % 225, v = 16 + cc[2] % 225;
        *component_byte (&frame, GST_VIDEO_COMP_Y, x, y) = (guint8) yv;
        *component_byte (&frame, GST_VIDEO_COMP_U, x, y) = (guint8) u;
        *component_byte (&frame, GST_VIDEO_COMP_V, x, y) = (guint8) v;
        double yy = 1.164383 * (yv - 16);
        out[0] = clamp_u8 (yy + 1.596027 * (v - 128));
        out[1] = clamp_u8 (yy - 0.391762 * (u - 128) - 0.812968 * (v - 128));
        out[2] = clamp_u8 (yy + 2.017232 * (u - 128));
      } else {
        *component_byte (&frame, GST_VIDEO_COMP_R, x, y) = c[0];
        *component_byte (&frame, GST_VIDEO_COMP_G, x, y) = c[1];
        *component_byte (&frame, GST_VIDEO_COMP_B, x, y) = c[2];
        memcpy (out, c, 3);
      }
    }
  }
  gst_video_frame_unmap (&frame);
  return buf;
}

/* The engine's result for the same pixels, as packed RGB or gray. */
static void
engine_expect (const char *model_name, const guint8 *pixels, gboolean gray, int w,
    int h, int *class_id, float *scores, int *expert)
{
  char *path = model_path (model_name);
  VmoeModel *model = vmoe_model_load (path, NULL);
  ck_assert (model);
  VmoeSessionOptions cpu;
  vmoe_session_options_init (&cpu);
  cpu.backend = VMOE_BACKEND_CPU;
  VmoeSession *session = vmoe_session_new (model, &cpu, NULL);
  VmoeImage img;
  vmoe_image_init_packed (&img, pixels, w, h, gray ? 1 : 3, (size_t) w * (gray ? 1 : 3));
  ck_assert (vmoe_session_run_u8 (session, &img, 1, NULL));
  const VmoeImageResult *r = vmoe_session_get_result (session, 0);
  *class_id = r->top_classes[0];
  memcpy (scores, r->top_scores, r->n_top * sizeof (float));
  *expert = r->n_experts ? r->experts[0] : -1;
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_free (path);
}

static GstHarness *
harness_for_caps (const char *model_name, const char *props, const char *caps)
{
  char *path = model_path (model_name);
  GstElement *element = gst_element_factory_make ("vmoeclassify", NULL);
  ck_assert (element != NULL);
  g_object_set (element, "model", path, NULL);
  gst_util_set_object_arg (G_OBJECT (element), "backend", backend);
  char **assignments = g_strsplit (props ? props : "", " ", -1);
  for (char **a = assignments; *a; a++) {
    char **kv = g_strsplit (*a, "=", 2);
    if (kv[0] && kv[1])
      gst_util_set_object_arg (G_OBJECT (element), kv[0], kv[1]);
    g_strfreev (kv);
  }
  g_strfreev (assignments);
  GstHarness *hs = gst_harness_new_with_element (element, "sink", "src");
  gst_object_unref (element);
  gst_harness_set_src_caps_str (hs, caps);
  g_free (path);
  return hs;
}

static GstHarness *
harness_for (const char *model_name, const char *props, GstVideoFormat format,
    int w, int h)
{
  char *caps = g_strdup_printf ("video/x-raw,format=%s,width=%d,height=%d,framerate=30/1",
      gst_video_format_to_string (format), w, h);
  GstHarness *hs = harness_for_caps (model_name, props, caps);
  g_free (caps);
  return hs;
}

static GstBuffer *
push_frame_at (GstHarness *hs, GstBuffer *buf, GstClockTime pts)
{
  GST_BUFFER_PTS (buf) = pts;
  GST_BUFFER_DURATION (buf) = GST_SECOND / 30;
  ck_assert_int_eq (gst_harness_push (hs, buf), GST_FLOW_OK);
  return gst_harness_pull (hs);
}

static GstBuffer *
push_frame (GstHarness *hs, GstBuffer *buf, int index)
{
  return push_frame_at (hs, buf, index * GST_SECOND / 30);
}

static const GstVideoFormat all_formats[] = {
  GST_VIDEO_FORMAT_RGB, GST_VIDEO_FORMAT_BGR, GST_VIDEO_FORMAT_RGBx,
  GST_VIDEO_FORMAT_BGRx, GST_VIDEO_FORMAT_xRGB, GST_VIDEO_FORMAT_xBGR,
  GST_VIDEO_FORMAT_RGBA, GST_VIDEO_FORMAT_BGRA, GST_VIDEO_FORMAT_ARGB,
  GST_VIDEO_FORMAT_ABGR, GST_VIDEO_FORMAT_GRAY8, GST_VIDEO_FORMAT_I420,
  GST_VIDEO_FORMAT_NV12,
};

/* Every caps format gives the class the engine computes for the same
 * pixels, and the frame passes through untouched. */
START_TEST (test_formats_match_engine)
{
  GstVideoFormat format = all_formats[_i];
  const int w = 46, h = 38;
  guint8 *rgb = g_malloc (w * h * 3);
  gboolean gray;
  GstBuffer *in = make_frame (format, w, h, 1, rgb, &gray);
  GstMapInfo before;
  gst_buffer_map (in, &before, GST_MAP_READ);
  guint8 *copy = g_memdup2 (before.data, before.size);
  gsize size = before.size;
  gst_buffer_unmap (in, &before);

  int class_id, expert;
  float scores[5];
  engine_expect ("image_k1", rgb, gray, w, h, &class_id, scores, &expert);
  GstHarness *hs = harness_for ("image_k1", "top-k=3", format, w, h);
  GstBuffer *out = push_frame (hs, in, 0);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
  ck_assert_msg (meta != NULL, "%s: no meta", gst_video_format_to_string (format));
  ck_assert_msg (meta->class_id == class_id, "%s: class %d, engine %d",
      gst_video_format_to_string (format), meta->class_id, class_id);
  ck_assert_uint_eq (meta->n_top, 3);
  for (int i = 0; i < 3; i++)
    assert_near (meta->top_scores[i], scores[i], score_tolerance);
  ck_assert_int_eq (meta->n_experts, 1);
  ck_assert_int_eq (meta->experts[0], expert);
  ck_assert (meta->fresh);
  GstMapInfo after;
  gst_buffer_map (out, &after, GST_MAP_READ);
  ck_assert_uint_eq (after.size, size);
  ck_assert (memcmp (after.data, copy, size) == 0);
  gst_buffer_unmap (out, &after);
  gst_buffer_unref (out);
  gst_harness_teardown (hs);
  g_free (copy);
  g_free (rgb);
}
END_TEST

START_TEST (test_gray_model_takes_luma)
{
  /* A 1-channel model on RGB frames: the engine's luma path. */
  const int w = 50, h = 30;
  guint8 *rgb = g_malloc (w * h * 3);
  gboolean gray;
  GstBuffer *in = make_frame (GST_VIDEO_FORMAT_BGRx, w, h, 3, rgb, &gray);
  int class_id, expert;
  float scores[5];
  engine_expect ("gray_nonsquare_tanh", rgb, FALSE, w, h, &class_id, scores, &expert);
  GstHarness *hs = harness_for ("gray_nonsquare_tanh", NULL, GST_VIDEO_FORMAT_BGRx, w, h);
  GstBuffer *out = push_frame (hs, in, 0);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
  ck_assert_int_eq (meta->class_id, class_id);
  assert_near (meta->score, scores[0], score_tolerance);
  ck_assert_int_eq (meta->n_experts, 0);
  gst_buffer_unref (out);
  gst_harness_teardown (hs);
  g_free (rgb);
}
END_TEST

START_TEST (test_unsupported_caps_refused)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstPad *sink = gst_element_get_static_pad (hs->element, "sink");
  const char *refused[] = { "video/x-raw,format=YUY2,width=32,height=32,framerate=30/1",
    "video/x-raw,format=RGB16,width=32,height=32,framerate=30/1",
    "audio/x-raw,format=S16LE,rate=44100,channels=2,layout=interleaved" };
  for (guint i = 0; i < G_N_ELEMENTS (refused); i++) {
    GstCaps *caps = gst_caps_from_string (refused[i]);
    ck_assert_msg (!gst_pad_query_accept_caps (sink, caps), "accepted %s", refused[i]);
    gst_caps_unref (caps);
  }
  GstCaps *ok = gst_caps_from_string ("video/x-raw,format=NV12,width=7,height=5,framerate=5/1");
  ck_assert (gst_pad_query_accept_caps (sink, ok));
  gst_caps_unref (ok);
  gst_object_unref (sink);
  gst_harness_teardown (hs);
}
END_TEST

static GValueArray *
array_field (const GstStructure *s, const char *name)
{
  const GValue *v = gst_structure_get_value (s, name);
  ck_assert_msg (v != NULL, "message has no '%s'", name);
  G_GNUC_BEGIN_IGNORE_DEPRECATIONS
  ck_assert (G_VALUE_HOLDS (v, g_value_array_get_type ()));
  G_GNUC_END_IGNORE_DEPRECATIONS
  return g_value_get_boxed (v);
}

START_TEST (test_messages)
{
  GstHarness *hs = harness_for ("image_k1", "post-messages=true top-k=4",
      GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (hs->element, bus);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 2, rgb, &gray), 5);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
  ck_assert (msg != NULL);
  ck_assert (GST_MESSAGE_SRC (msg) == GST_OBJECT (hs->element));
  const GstStructure *s = gst_message_get_structure (msg);
  ck_assert_str_eq (gst_structure_get_name (s), "vmoe");
  guint64 ts, stream_time, running_time, frame, latency;
  gint class_id;
  gdouble score;
  ck_assert (gst_structure_get (s, "timestamp", G_TYPE_UINT64, &ts,
          "stream-time", G_TYPE_UINT64, &stream_time,
          "running-time", G_TYPE_UINT64, &running_time,
          "frame", G_TYPE_UINT64, &frame, "class-id", G_TYPE_INT, &class_id,
          "score", G_TYPE_DOUBLE, &score, "latency", G_TYPE_UINT64, &latency, NULL));
  ck_assert_uint_eq (ts, 5 * GST_SECOND / 30);
  ck_assert_uint_eq (stream_time, ts);      /* default segment from 0 */
  ck_assert_uint_eq (running_time, ts);
  ck_assert_uint_eq (frame, 0);
  gboolean fresh;
  ck_assert (gst_structure_get_boolean (s, "fresh", &fresh));
  ck_assert (fresh);
  ck_assert (meta->fresh);
  ck_assert_int_eq (class_id, meta->class_id);
  ck_assert_str_eq (gst_structure_get_string (s, "label"), meta->label);
  assert_near (score, meta->score, 1e-7);
  ck_assert_uint_eq (latency, meta->latency);
  ck_assert_uint_gt (latency, 0);
  G_GNUC_BEGIN_IGNORE_DEPRECATIONS
  GValueArray *top = array_field (s, "top-classes");
  GValueArray *top_scores = array_field (s, "top-scores");
  ck_assert_uint_eq (top->n_values, 4);
  for (guint i = 0; i < 4; i++) {
    ck_assert_int_eq (g_value_get_int (g_value_array_get_nth (top, i)), meta->top_classes[i]);
    assert_near (g_value_get_double (g_value_array_get_nth (top_scores, i)),
        meta->top_scores[i], 1e-7);
  }
  GValueArray *experts = array_field (s, "experts");
  GValueArray *gates = array_field (s, "gates");
  ck_assert_uint_eq (experts->n_values, 1);
  ck_assert_int_eq (g_value_get_int (g_value_array_get_nth (experts, 0)), meta->experts[0]);
  assert_near (g_value_get_double (g_value_array_get_nth (gates, 0)),
      meta->gates[0], 1e-7);
  G_GNUC_END_IGNORE_DEPRECATIONS
  /* The parity models name no super-classes, so there is no such field;
   * image routing has no token-routing statistics. */
  ck_assert (!gst_structure_has_field (s, "superclass"));
  ck_assert (!gst_structure_has_field (s, "tokens-per-expert"));
  ck_assert (!gst_structure_has_field (s, "dropped"));
  /* Who made it: the model file's name without .safetensors, and the element. */
  ck_assert_str_eq (gst_structure_get_string (s, "model"), "image_k1");
  ck_assert_str_eq (meta->model_name, "image_k1");
  ck_assert_str_eq (gst_structure_get_string (s, "element"), GST_OBJECT_NAME (hs->element));
  ck_assert_str_eq (meta->element_name, GST_OBJECT_NAME (hs->element));
  ck_assert_int_eq (meta->roi_id, -1);
  gst_message_unref (msg);
  gst_buffer_unref (out);
  gst_element_set_bus (hs->element, NULL);
  gst_object_unref (bus);
  gst_harness_teardown (hs);
}
END_TEST

START_TEST (test_inference_interval)
{
  GstHarness *hs = harness_for ("image_k1", "post-messages=true inference-interval=3",
      GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (hs->element, bus);
  int fresh_class = -1;
  for (int i = 0; i < 7; i++) {
    guint8 rgb[32 * 32 * 3];
    gboolean gray;
    GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, i, rgb, &gray), i);
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
    ck_assert (meta != NULL);
    ck_assert_uint_eq (meta->frame, (guint64) i);
    ck_assert_int_eq (meta->fresh, i % 3 == 0);
    /* Carried frames post too, marked as in the meta. */
    GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
    ck_assert_msg (msg != NULL, "no message for frame %d", i);
    const GstStructure *st = gst_message_get_structure (msg);
    guint64 frame;
    gboolean fresh;
    gint message_class;
    ck_assert (gst_structure_get (st, "frame", G_TYPE_UINT64, &frame,
            "fresh", G_TYPE_BOOLEAN, &fresh, "class-id", G_TYPE_INT, &message_class, NULL));
    ck_assert_uint_eq (frame, (guint64) i);
    ck_assert_int_eq (fresh, i % 3 == 0);
    ck_assert_int_eq (message_class, meta->class_id);
    gst_message_unref (msg);
    if (meta->fresh) {
      int class_id, expert;
      float scores[5];
      engine_expect ("image_k1", rgb, FALSE, 32, 32, &class_id, scores, &expert);
      ck_assert_int_eq (meta->class_id, class_id);
      fresh_class = meta->class_id;
    } else {
      ck_assert_int_eq (meta->class_id, fresh_class);
    }
    gst_buffer_unref (out);
  }
  GstMessage *extra = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
  ck_assert_msg (extra == NULL, "more messages than frames");
  gst_element_set_bus (hs->element, NULL);
  gst_object_unref (bus);
  gst_harness_teardown (hs);
}
END_TEST

/* Changing `model` while playing loads it in the background; every frame
 * keeps getting a result and none is dropped. */
START_TEST (test_model_swap_while_playing)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  char *token_model = model_path ("token_k2_c05_bpr");
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  int swapped_at = -1;
  for (int i = 0; i < 2000 && swapped_at < 0; i++) {
    if (i == 3)
      g_object_set (hs->element, "model", token_model, NULL);
    GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, i, rgb, &gray), i);
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
    ck_assert_msg (meta != NULL, "frame %d without a result", i);
    ck_assert (meta->fresh);
    ck_assert_uint_eq (meta->frame, (guint64) i);
    if (meta->n_layers == 2) {       /* token routing: the new model */
      ck_assert_int_eq (meta->n_experts, 0);
      swapped_at = i;
    } else {
      ck_assert_int_eq (meta->n_experts, 1);
    }
    gst_buffer_unref (out);
    if (i >= 3 && swapped_at < 0)
      g_usleep (1000);
  }
  ck_assert_msg (swapped_at >= 3, "the new model never arrived");
  ck_assert_uint_eq (gst_harness_buffers_received (hs), (guint) swapped_at + 1);
  g_free (token_model);
  gst_harness_teardown (hs);
}
END_TEST

START_TEST (test_swap_to_bad_model_keeps_running)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (hs->element, bus);
  g_object_set (hs->element, "model", "/nonexistent/model.safetensors", NULL);
  GstMessage *msg = gst_bus_timed_pop_filtered (bus, 30 * GST_SECOND, GST_MESSAGE_WARNING);
  ck_assert (msg != NULL);
  GError *err = NULL;
  gchar *debug = NULL;
  gst_message_parse_warning (msg, &err, &debug);
  ck_assert (strstr (debug, "/nonexistent/model.safetensors") != NULL);
  g_error_free (err);
  g_free (debug);
  gst_message_unref (msg);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 0, rgb, &gray), 0);
  ck_assert_int_eq (gst_buffer_get_vmoe_meta (out)->n_experts, 1);
  gst_buffer_unref (out);
  gst_element_set_bus (hs->element, NULL);
  gst_object_unref (bus);
  gst_harness_teardown (hs);
}
END_TEST

/* Pops the error message on bus, checks that its debug text names the
 * reason (needle) and returns its GError. */
static GError *
expect_bus_error (GstBus *bus, const char *needle)
{
  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  ck_assert (msg != NULL);
  GError *err = NULL;
  gchar *debug = NULL;
  gst_message_parse_error (msg, &err, &debug);
  ck_assert_msg (strstr (debug, needle) != NULL, "'%s' lacks '%s'", debug, needle);
  g_free (debug);
  gst_message_unref (msg);
  return err;
}

/* A missing or bad model is an element error with the reason, at the state
 * change, never a crash. */
static void
expect_start_error (const char *model, const char *props, const char *needle)
{
  char *desc = g_strdup_printf ("videotestsrc num-buffers=1 ! vmoeclassify name=c "
      "model=\"%s\" %s ! fakesink", model, props);
  GError *error = NULL;
  GstElement *pipeline = gst_parse_launch (desc, &error);
  ck_assert_msg (pipeline && !error, "%s", error ? error->message : "");
  ck_assert_int_eq (gst_element_set_state (pipeline, GST_STATE_PAUSED),
      GST_STATE_CHANGE_FAILURE);
  GstBus *bus = gst_element_get_bus (pipeline);
  GError *err = expect_bus_error (bus, needle);
  ck_assert (strstr (err->message, "vmoeclassify") != NULL);
  g_error_free (err);
  gst_object_unref (bus);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (pipeline);
  g_free (desc);
}

START_TEST (test_bad_models_error_at_start)
{
  expect_start_error ("/nonexistent/model.safetensors", "", "No such file");
  /* A file that is not a model. */
  char *tmp = NULL;
  int fd = g_file_open_tmp ("vmoe-bad-XXXXXX", &tmp, NULL);
  ck_assert (write (fd, "\x10\0\0\0\0\0\0\0{not json}      ", 24) == 24);
  close (fd);
  expect_start_error (tmp, "", "not valid JSON");
  g_unlink (tmp);
  g_free (tmp);
  /* Settings the model cannot take. */
  char *path = model_path ("image_k1");
  expect_start_error (path, "experts-k=9", "experts-k 9");
#ifdef VMOE_HAVE_VULKAN
  /* A precision the backend does not have (docs/cpu.md). */
  expect_start_error (path, "backend=vulkan precision=bf16", "no precision bf16");
  /* A Vulkan device that is not there. */
  char *saved = g_strdup (g_getenv ("VMOE_VULKAN_DEVICE"));
  g_setenv ("VMOE_VULKAN_DEVICE", "no-such-gpu", TRUE);
  expect_start_error (path, "backend=vulkan", "no matching device");
  /* The element's own device property wins over the environment. */
  g_unsetenv ("VMOE_VULKAN_DEVICE");
  expect_start_error (path, "backend=vulkan device=another-missing-gpu",
      "another-missing-gpu");
  if (saved)
    g_setenv ("VMOE_VULKAN_DEVICE", saved, TRUE);
  else
    g_unsetenv ("VMOE_VULKAN_DEVICE");
  g_free (saved);
#else
  expect_start_error (path, "backend=vulkan", "vulkan backend is not built");
#endif
  g_free (path);
  expect_start_error ("", "", "no model set");
}
END_TEST

/* Resolution and format change mid-stream: results follow the new pixels. */
START_TEST (test_caps_change_mid_stream)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 40, 30);
  const struct { GstVideoFormat format; int w, h; } steps[] = {
    { GST_VIDEO_FORMAT_RGB, 40, 30 }, { GST_VIDEO_FORMAT_I420, 64, 48 },
    { GST_VIDEO_FORMAT_GRAY8, 21, 33 }, { GST_VIDEO_FORMAT_BGRA, 40, 30 },
  };
  for (guint i = 0; i < G_N_ELEMENTS (steps); i++) {
    char *caps = g_strdup_printf ("video/x-raw,format=%s,width=%d,height=%d,framerate=30/1",
        gst_video_format_to_string (steps[i].format), steps[i].w, steps[i].h);
    gst_harness_set_src_caps_str (hs, caps);
    g_free (caps);
    guint8 *rgb = g_malloc (steps[i].w * steps[i].h * 3);
    gboolean gray;
    GstBuffer *out = push_frame (hs, make_frame (steps[i].format, steps[i].w, steps[i].h,
            (int) i, rgb, &gray), (int) i);
    int class_id, expert;
    float scores[5];
    engine_expect ("image_k1", rgb, gray, steps[i].w, steps[i].h, &class_id, scores, &expert);
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
    ck_assert_int_eq (meta->class_id, class_id);
    assert_near (meta->score, scores[0], score_tolerance);
    gst_buffer_unref (out);
    g_free (rgb);
  }
  gst_harness_teardown (hs);
}
END_TEST

START_TEST (test_timestamps_and_latency)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  gst_harness_set_upstream_latency (hs, 10 * GST_MSECOND);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  GstBuffer *in = make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 0, rgb, &gray);
  GST_BUFFER_DTS (in) = 7 * GST_MSECOND;
  GST_BUFFER_OFFSET (in) = 42;
  GstBuffer *out = push_frame (hs, in, 4);
  ck_assert_uint_eq (GST_BUFFER_PTS (out), 4 * GST_SECOND / 30);
  ck_assert_uint_eq (GST_BUFFER_DTS (out), 7 * GST_MSECOND);
  ck_assert_uint_eq (GST_BUFFER_DURATION (out), GST_SECOND / 30);
  ck_assert_uint_eq (GST_BUFFER_OFFSET (out), 42);
  GstClockTime ours = gst_buffer_get_vmoe_meta (out)->latency;
  /* The upstream 10 ms plus the element's latency, which follows any
   * inference more than 25% slower than it last reported, so it is at least
   * 4/5 of the inference just measured. */
  GstClockTime min = gst_harness_query_latency (hs);
  ck_assert_uint_gt (ours, 0);
  ck_assert_uint_gt (min, 10 * GST_MSECOND);
  ck_assert_uint_ge (min, 10 * GST_MSECOND + ours * 4 / 5);
  gst_buffer_unref (out);
  gst_harness_teardown (hs);
}
END_TEST

/* QoS skips inference only on lateness that skipping can win back: at most
 * our inference time a frame.  A frame later than that is late for reasons
 * downstream of us, and skipping would only lose results. */
START_TEST (test_qos_skips_only_lateness_we_cause)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 0, rgb, &gray), 0);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
  ck_assert (meta->fresh);
  GstClockTime inference = meta->latency;
  gst_buffer_unref (out);
  /* What the lateness below needs: 0.5 s well beyond our inference time.
   * (A 50 ms bound failed once: a sanitizer build's first inference took
   * 60 ms while other suites loaded the machine.) */
  ck_assert_uint_lt (inference, GST_SECOND / 4);
  /* Downstream slow for its own reasons: frame 30 came 0.5 s late, far
   * beyond our inference time.  Every frame is still classified. */
  gst_harness_push_upstream_event (hs, gst_event_new_qos (GST_QOS_TYPE_UNDERFLOW, 2.0,
          GST_SECOND / 2, GST_SECOND));
  for (int i = 31; i < 34; i++) {
    out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, i, rgb, &gray), i);
    ck_assert_msg (gst_buffer_get_vmoe_meta (out)->fresh, "frame %d skipped", i);
    gst_buffer_unref (out);
  }
  /* Our inference the cause: frame 60 came late by half our inference
   * time; the frame right after it is skipped, a later one is not. */
  GstClockTime ts = 2 * GST_SECOND, jitter = inference / 2;
  gst_harness_push_upstream_event (hs, gst_event_new_qos (GST_QOS_TYPE_UNDERFLOW, 1.0,
          (GstClockTimeDiff) jitter, ts));
  out = push_frame_at (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 1, rgb, &gray),
      ts + jitter);
  ck_assert (!gst_buffer_get_vmoe_meta (out)->fresh);
  gst_buffer_unref (out);
  out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 1, rgb, &gray), 90);
  ck_assert (gst_buffer_get_vmoe_meta (out)->fresh);   /* 3 s: in time */
  gst_buffer_unref (out);
  /* qos=false: no skipping at all. */
  g_object_set (hs->element, "qos", FALSE, NULL);
  gst_harness_push_upstream_event (hs, gst_event_new_qos (GST_QOS_TYPE_UNDERFLOW, 1.0,
          (GstClockTimeDiff) jitter, 4 * GST_SECOND));
  out = push_frame_at (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 1, rgb, &gray),
      4 * GST_SECOND + jitter);
  ck_assert (gst_buffer_get_vmoe_meta (out)->fresh);
  gst_buffer_unref (out);
  ck_assert_uint_eq (gst_harness_buffers_received (hs), 7);
  gst_harness_teardown (hs);
}
END_TEST

typedef struct {
  int frames, fresh, late_reports;
} QosCounts;

/* On our src pad: the frames going out with a meta, those of them freshly
 * classified, and the QoS events coming back that report lateness. */
static GstPadProbeReturn
count_qos (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  QosCounts *counts = data;
  if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
    /* Counted, not asserted: this is the streaming thread. */
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (GST_PAD_PROBE_INFO_BUFFER (info));
    counts->frames += meta != NULL;
    counts->fresh += meta && meta->fresh;
  } else if (GST_EVENT_TYPE (GST_PAD_PROBE_INFO_EVENT (info)) == GST_EVENT_QOS) {
    GstClockTimeDiff diff;
    gst_event_parse_qos (GST_PAD_PROBE_INFO_EVENT (info), NULL, NULL, &diff, NULL);
    counts->late_reports += diff > 0;
  }
  return GST_PAD_PROBE_OK;
}

/* The reported case: a live stream whose sink is late because of a slow
 * element after us (60 ms a frame at 30 frames/s) sends QoS events
 * upstream; skipping our sub-millisecond inference cannot help, so every
 * frame is classified. */
START_TEST (test_qos_downstream_slow_classifies_all)
{
  char *path = model_path ("image_k1");
  char *desc = g_strdup_printf ("videotestsrc is-live=true num-buffers=12 ! "
      "video/x-raw,width=32,height=32,framerate=30/1 ! vmoeclassify name=c model=%s "
      "backend=%s ! identity sleep-time=60000 ! fakesink sync=true qos=true", path, backend);
  GError *error = NULL;
  GstElement *pipeline = gst_parse_launch (desc, &error);
  ck_assert_msg (pipeline && !error, "%s", error ? error->message : "");
  GstElement *classify = gst_bin_get_by_name (GST_BIN (pipeline), "c");
  GstPad *src = gst_element_get_static_pad (classify, "src");
  QosCounts counts = { 0 };
  gst_pad_add_probe (src, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_EVENT_UPSTREAM,
      count_qos, &counts, NULL);
  GstBus *bus = gst_element_get_bus (pipeline);
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  GstMessage *msg = gst_bus_timed_pop_filtered (bus, 60 * GST_SECOND,
      GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  ck_assert (msg != NULL && GST_MESSAGE_TYPE (msg) == GST_MESSAGE_EOS);
  gst_message_unref (msg);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  /* The sink did report frames late: the case is the reported one. */
  ck_assert_int_gt (counts.late_reports, 0);
  ck_assert_int_eq (counts.frames, 12);
  ck_assert_int_eq (counts.fresh, 12);
  gst_object_unref (bus);
  gst_object_unref (src);
  gst_object_unref (classify);
  gst_object_unref (pipeline);
  g_free (desc);
  g_free (path);
}
END_TEST

static GstBus *
harness_bus (GstHarness *hs)
{
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (hs->element, bus);
  return bus;
}

static void
harness_bus_free (GstHarness *hs, GstBus *bus)
{
  gst_element_set_bus (hs->element, NULL);
  gst_object_unref (bus);
}

/* Assignments of token_k2_c05_bpr per block on a 32x32 image: the class
 * token and 4x4 patches of 8 pixels, k = 2 each. */
#define TOKEN_ASSIGNMENTS ((1 + (32 / 8) * (32 / 8)) * 2)

/* The message's token-routing fields equal the meta's layers, and every
 * block's tokens and drops add up to all the assignments. */
static void
expect_layer_fields (GstBus *bus, const GstVmoeMeta *meta)
{
  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
  ck_assert (msg != NULL);
  const GstStructure *s = gst_message_get_structure (msg);
  G_GNUC_BEGIN_IGNORE_DEPRECATIONS
  GValueArray *blocks = array_field (s, "blocks");
  GValueArray *tokens = array_field (s, "tokens-per-expert");
  GValueArray *dropped = array_field (s, "dropped");
  ck_assert_uint_eq (blocks->n_values, meta->n_layers);
  ck_assert_uint_eq (tokens->n_values, meta->n_layers);
  ck_assert_uint_eq (dropped->n_values, meta->n_layers);
  for (guint l = 0; l < meta->n_layers; l++) {
    const GstVmoeLayerStats *layer = &meta->layers[l];
    ck_assert_int_eq (g_value_get_int (g_value_array_get_nth (blocks, l)), layer->block);
    ck_assert_int_eq (g_value_get_int (g_value_array_get_nth (dropped, l)), layer->dropped);
    GValue *row_value = g_value_array_get_nth (tokens, l);
    ck_assert (G_VALUE_HOLDS (row_value, g_value_array_get_type ()));
    GValueArray *row = g_value_get_boxed (row_value);
    ck_assert_uint_eq (row->n_values, 4);
    ck_assert_uint_eq (layer->n_experts, 4);
    gint assigned = 0;
    for (guint e = 0; e < row->n_values; e++) {
      gint n = g_value_get_int (g_value_array_get_nth (row, e));
      ck_assert_int_eq (n, (gint) layer->tokens_per_expert[e]);
      assigned += n;
    }
    ck_assert_int_eq (assigned + layer->dropped, TOKEN_ASSIGNMENTS);
  }
  G_GNUC_END_IGNORE_DEPRECATIONS
  ck_assert_int_eq (meta->layers[0].block, 1);      /* the model's moe.layers */
  ck_assert_int_eq (meta->layers[1].block, 2);
  gst_message_unref (msg);
}

START_TEST (test_routing_knobs)
{
  GstHarness *hs = harness_for ("image_k2_norm_mean", "experts-k=1", GST_VIDEO_FORMAT_RGB, 32, 32);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 0, rgb, &gray), 0);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
  ck_assert_uint_eq (meta->n_experts, 1);
  assert_near (meta->gates[0], 1.0, 1e-6);     /* normalised over k = 1 */
  gst_buffer_unref (out);
  g_object_set (hs->element, "experts-k", 2, NULL);       /* while playing */
  out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 0, rgb, &gray), 1);
  ck_assert_uint_eq (gst_buffer_get_vmoe_meta (out)->n_experts, 2);
  gst_buffer_unref (out);
  gst_harness_teardown (hs);

  /* Token routing: a larger capacity ratio drops fewer assignments. */
  int dropped[2];
  const char *ratios[] = { "post-messages=true capacity-ratio=0.25",
    "post-messages=true capacity-ratio=4.0" };
  for (int r = 0; r < 2; r++) {
    hs = harness_for ("token_k2_c05_bpr", ratios[r], GST_VIDEO_FORMAT_RGB, 32, 32);
    GstBus *bus = harness_bus (hs);
    out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 0, rgb, &gray), 0);
    meta = gst_buffer_get_vmoe_meta (out);
    ck_assert_uint_eq (meta->n_layers, 2);
    dropped[r] = meta->layers[0].dropped + meta->layers[1].dropped;
    expect_layer_fields (bus, meta);
    gst_buffer_unref (out);
    harness_bus_free (hs, bus);
    gst_harness_teardown (hs);
  }
  ck_assert_int_gt (dropped[0], 0);
  ck_assert_int_eq (dropped[1], 0);
}
END_TEST

/* entropy-threshold marks results above it uncertain in the meta and the
 * message, carried ones too, and follows changes while playing; 0 (the
 * default) marks none.  The entropy is the engine's for the same pixels. */
START_TEST (test_entropy_threshold_marks)
{
  GstHarness *hs = harness_for ("image_k1", "post-messages=true inference-interval=2",
      GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = harness_bus (hs);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  gst_buffer_unref (make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 4, rgb, &gray));
  char *path = model_path ("image_k1");
  VmoeModel *model = vmoe_model_load (path, NULL);
  VmoeSessionOptions cpu;
  vmoe_session_options_init (&cpu);
  cpu.backend = VMOE_BACKEND_CPU;
  VmoeSession *session = vmoe_session_new (model, &cpu, NULL);
  VmoeImage img;
  vmoe_image_init_packed (&img, rgb, 32, 32, 3, 32 * 3);
  ck_assert (vmoe_session_run_u8 (session, &img, 1, NULL));
  float entropy = vmoe_session_get_result (session, 0)->entropy;
  ck_assert (entropy > 0);
  /* threshold just below, then just above the frame's entropy, then 0 */
  const double thresholds[] = { 0, entropy * 0.99, entropy * 1.01 };
  for (int f = 0; f < 6; f++) {
    g_object_set (hs->element, "entropy-threshold", thresholds[f / 2 % 3], NULL);
    GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 4, rgb,
            &gray), f);
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
    gboolean want = f / 2 == 1;
    ck_assert_int_eq (meta->fresh, f % 2 == 0);      /* odd frames are carried */
    ck_assert_msg (meta->uncertain == want, "frame %d: uncertain %d", f, meta->uncertain);
    assert_near (meta->entropy, entropy, 1e-6);
    GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
    ck_assert (msg != NULL);
    const GstStructure *s = gst_message_get_structure (msg);
    gboolean uncertain;
    gdouble message_entropy;
    ck_assert (gst_structure_get_boolean (s, "uncertain", &uncertain));
    ck_assert (gst_structure_get_double (s, "entropy", &message_entropy));
    ck_assert_int_eq (uncertain, want);
    assert_near (message_entropy, entropy, 1e-6);
    /* A single model has no ensemble fields. */
    ck_assert (!gst_structure_has_field (s, "member-classes"));
    ck_assert (!gst_structure_has_field (s, "disagreement"));
    ck_assert_uint_eq (meta->n_members, 1);
    gst_message_unref (msg);
    gst_buffer_unref (out);
  }
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_free (path);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
}
END_TEST

/* An E3 model through the element: the meta and the message carry the
 * engine's members' top-1, disagreement and entropy, and token routing's
 * layers per block and member with the member's 2 experts each. */
START_TEST (test_ensemble_results)
{
  GstHarness *hs = harness_for ("e3_token_m2_shared", "post-messages=true",
      GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = harness_bus (hs);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 6, rgb,
          &gray), 0);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
  char *path = model_path ("e3_token_m2_shared");
  VmoeModel *model = vmoe_model_load (path, NULL);
  VmoeSessionOptions cpu;
  vmoe_session_options_init (&cpu);
  cpu.backend = VMOE_BACKEND_CPU;
  VmoeSession *session = vmoe_session_new (model, &cpu, NULL);
  VmoeImage img;
  vmoe_image_init_packed (&img, rgb, 32, 32, 3, 32 * 3);
  ck_assert (vmoe_session_run_u8 (session, &img, 1, NULL));
  const VmoeImageResult *r = vmoe_session_get_result (session, 0);
  ck_assert_int_eq (meta->class_id, r->top_classes[0]);
  ck_assert_uint_eq (meta->n_members, 2);
  guint n;
  const gint *classes = gst_vmoe_meta_get_member_classes (meta, &n);
  ck_assert_uint_eq (n, 2);
  for (guint m = 0; m < 2; m++)
    ck_assert_int_eq (classes[m], r->member_classes[m]);
  assert_near (meta->entropy, r->entropy, score_tolerance);
  assert_near (meta->disagreement, r->disagreement, 0);
  ck_assert_uint_eq (meta->n_layers, 4);
  const gint *members = gst_vmoe_meta_get_layer_members (meta, &n);
  ck_assert_uint_eq (n, 4);
  for (guint l = 0; l < 4; l++) {
    ck_assert_int_eq (meta->layers[l].block, 1 + (gint) l / 2);
    ck_assert_int_eq (members[l], (gint) l % 2);
    ck_assert_uint_eq (meta->layers[l].n_experts, 2);
    for (guint e = 0; e < 2; e++)
      ck_assert_int_eq (meta->layers[l].tokens_per_expert[e],
          r->layers[l].tokens_per_expert[e]);
  }
  GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
  ck_assert (msg != NULL);
  const GstStructure *s = gst_message_get_structure (msg);
  G_GNUC_BEGIN_IGNORE_DEPRECATIONS
  GValueArray *message_classes = array_field (s, "member-classes");
  GValueArray *layer_members = array_field (s, "layer-members");
  ck_assert_uint_eq (message_classes->n_values, 2);
  for (guint m = 0; m < 2; m++)
    ck_assert_int_eq (g_value_get_int (g_value_array_get_nth (message_classes, m)),
        r->member_classes[m]);
  ck_assert_uint_eq (layer_members->n_values, 4);
  for (guint l = 0; l < 4; l++)
    ck_assert_int_eq (g_value_get_int (g_value_array_get_nth (layer_members, l)),
        (gint) l % 2);
  G_GNUC_END_IGNORE_DEPRECATIONS
  gdouble disagreement;
  ck_assert (gst_structure_get_double (s, "disagreement", &disagreement));
  assert_near (disagreement, r->disagreement, 0);
  gst_message_unref (msg);
  /* The meta copies itself whole. */
  GstBuffer *copy = gst_buffer_copy (out);
  GstVmoeMeta *copied = gst_buffer_get_vmoe_meta (copy);
  ck_assert_int_eq (copied->member_classes[1], r->member_classes[1]);
  ck_assert_int_eq (copied->layer_members[3], 1);
  gst_buffer_unref (copy);
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_free (path);
  gst_buffer_unref (out);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
}
END_TEST

/* Pops a warning from bus within `timeout`, checks that its text or debug
 * text names `needle`. */
static void
expect_bus_warning (GstBus *bus, GstClockTime timeout, const char *needle)
{
  GstMessage *msg = gst_bus_timed_pop_filtered (bus, timeout, GST_MESSAGE_WARNING);
  ck_assert_msg (msg != NULL, "no warning about '%s'", needle);
  GError *err = NULL;
  gchar *debug = NULL;
  gst_message_parse_warning (msg, &err, &debug);
  ck_assert_msg (strstr (err->message, needle) || (debug && strstr (debug, needle)),
      "warning '%s' (%s) lacks '%s'", err->message, debug, needle);
  g_error_free (err);
  g_free (debug);
  gst_message_unref (msg);
}

/* Pushes frames (counting on from *index) until one carries a meta with
 * `n_experts` experts; fails after 30 s. */
static void
push_until_experts (GstHarness *hs, int *index, guint n_experts)
{
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  gint64 end = g_get_monotonic_time () + 30 * G_USEC_PER_SEC;
  for (;;) {
    GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, *index, rgb,
            &gray), *index);
    (*index)++;
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
    ck_assert (meta != NULL);
    guint n = meta->n_experts;
    gst_buffer_unref (out);
    if (n == n_experts)
      return;
    ck_assert_msg (g_get_monotonic_time () < end, "no frame with %u experts", n_experts);
    g_usleep (2000);
  }
}

/* Frames larger than pre-processing takes (65536 a side) are refused at
 * negotiation, not failed one by one. */
START_TEST (test_frame_size_limits)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstPad *sink = gst_element_get_static_pad (hs->element, "sink");
  const struct { int w, h; gboolean ok; } sizes[] = {
    { 65536, 1, TRUE }, { 1, 65536, TRUE }, { 65537, 1, FALSE }, { 1, 65537, FALSE },
    { 100000, 100000, FALSE },
  };
  for (guint i = 0; i < G_N_ELEMENTS (sizes); i++) {
    char *text = g_strdup_printf ("video/x-raw,format=GRAY8,width=%d,height=%d,"
        "framerate=30/1", sizes[i].w, sizes[i].h);
    GstCaps *caps = gst_caps_from_string (text);
    ck_assert_msg (gst_pad_query_accept_caps (sink, caps) == sizes[i].ok, "%s %s", text,
        sizes[i].ok ? "refused" : "accepted");
    gst_caps_unref (caps);
    g_free (text);
  }
  gst_object_unref (sink);
  gst_harness_teardown (hs);
}
END_TEST

/* A setting the model cannot take, made while playing, is a warning and
 * leaves the last accepted value in force and in the property; later
 * settings are not held up by it. */
START_TEST (test_rejected_setting_keeps_last)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = harness_bus (hs);
  int index = 0;
  push_until_experts (hs, &index, 1);
  g_object_set (hs->element, "experts-k", 4096, NULL);
  push_until_experts (hs, &index, 1);
  expect_bus_warning (bus, 0, "experts-k 4096");
  gint experts_k;
  g_object_get (hs->element, "experts-k", &experts_k, NULL);
  ck_assert_int_eq (experts_k, 0);
  g_object_set (hs->element, "top-k", 2, NULL);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 0, rgb, &gray),
      index++);
  ck_assert_uint_eq (gst_buffer_get_vmoe_meta (out)->n_top, 2);
  gst_buffer_unref (out);
  ck_assert (gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING) == NULL);
  g_object_set (hs->element, "experts-k", 3, NULL);
  push_until_experts (hs, &index, 3);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
}
END_TEST

/* A new model swapped in while playing that cannot take experts-k runs
 * with its own k; experts-k reads 0 and a warning says why. */
START_TEST (test_swap_resets_settings_the_model_cannot_take)
{
  GstHarness *hs = harness_for ("image_k1", "experts-k=3", GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = harness_bus (hs);
  int index = 0;
  push_until_experts (hs, &index, 3);
  char *dense = model_path ("dense");
  g_object_set (hs->element, "model", dense, NULL);
  push_until_experts (hs, &index, 0);
  expect_bus_warning (bus, 0, "experts-k 3");
  gint experts_k;
  g_object_get (hs->element, "experts-k", &experts_k, NULL);
  ck_assert_int_eq (experts_k, 0);
  /* Back to the MoE model: its own k. */
  char *moe = model_path ("image_k1");
  g_object_set (hs->element, "model", moe, NULL);
  push_until_experts (hs, &index, 1);
  g_free (moe);
  g_free (dense);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
}
END_TEST

/* Counts a debug category's log lines that contain a phrase (a new
 * session, a full batch): what the element did, observed from outside. */
typedef struct {
  const gchar *category, *phrase;
  gint count;
} LogCounter;

static void
count_log_lines (GstDebugCategory *category, GstDebugLevel level, const gchar *file,
    const gchar *function, gint line, GObject *object, GstDebugMessage *message,
    gpointer user_data)
{
  LogCounter *counter = user_data;
  if (strcmp (gst_debug_category_get_name (category), counter->category) == 0
      && strstr (gst_debug_message_get (message), counter->phrase))
    g_atomic_int_inc (&counter->count);
}

/* Each "new session" line is one vmoe_session_new (a new Vulkan device and
 * weight upload on that backend). */
static LogCounter sessions_made = { "vmoeclassify", "new session", 0 };

/* top-k is post-processing: changing it while playing changes the classes
 * reported from the next frame on, without a new session. */
START_TEST (test_top_k_without_new_session)
{
  g_atomic_int_set (&sessions_made.count, 0);
  gst_debug_set_threshold_for_name ("vmoeclassify", GST_LEVEL_INFO);
  gst_debug_add_log_function (count_log_lines, &sessions_made, NULL);
  GstHarness *hs = harness_for ("image_k1", "post-messages=true", GST_VIDEO_FORMAT_RGB,
      32, 32);
  GstBus *bus = harness_bus (hs);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  const guint ks[] = { 5, 2, 7, 1 };
  for (guint i = 0; i < G_N_ELEMENTS (ks); i++) {
    if (i > 0)
      g_object_set (hs->element, "top-k", ks[i], NULL);
    GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, 0, rgb,
            &gray), (int) i);
    ck_assert_uint_eq (gst_buffer_get_vmoe_meta (out)->n_top, ks[i]);
    gst_buffer_unref (out);
    GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
    ck_assert (msg != NULL);
    G_GNUC_BEGIN_IGNORE_DEPRECATIONS
    ck_assert_uint_eq (array_field (gst_message_get_structure (msg), "top-classes")->n_values,
        ks[i]);
    G_GNUC_END_IGNORE_DEPRECATIONS
    gst_message_unref (msg);
  }
  int sessions = g_atomic_int_get (&sessions_made.count);
  ck_assert_int_eq (sessions, 1);
  gst_debug_remove_log_function_by_data (&sessions_made);
  gst_debug_set_threshold_for_name ("vmoeclassify", GST_LEVEL_NONE);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
}
END_TEST

/* Setting `model` while playing never waits for a load in progress, and the
 * last model set is the one that ends up classifying. */
START_TEST (test_set_model_never_blocks)
{
  /* A model slow enough to load that blocking on it shows. */
  char *big = model_path ("big");
  GError *error = NULL;
  ck_assert (vmoe_random_model_write ("{\"format\": \"vmoe\", \"version\": 1, "
          "\"image_size\": [32, 32], \"patch_size\": 8, \"in_channels\": 3, "
          "\"embed_dim\": 512, \"depth\": 12, \"num_heads\": 8, \"mlp_dim\": 2048, "
          "\"num_classes\": 10}", 5, big, &error));
  gint64 t0 = g_get_monotonic_time ();
  VmoeModel *model = vmoe_model_load (big, &error);
  ck_assert (model);
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  vmoe_backend_from_string (backend, &options.backend);
  VmoeSession *session = vmoe_session_new (model, &options, &error);
  ck_assert (session);
  gint64 load_time = g_get_monotonic_time () - t0;
  vmoe_session_free (session);
  vmoe_model_unref (model);

  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  int index = 0;
  push_until_experts (hs, &index, 1);
  char *token = model_path ("token_k2_c05_bpr");
  char *image = model_path ("image_k2_norm_mean");
  gint64 slowest = 0;
  const char *order[] = { big, token, big, image };
  for (guint i = 0; i < G_N_ELEMENTS (order); i++) {
    gint64 t = g_get_monotonic_time ();
    g_object_set (hs->element, "model", order[i], NULL);
    slowest = MAX (slowest, g_get_monotonic_time () - t);
  }
  ck_assert_msg (slowest < load_time / 5, "set_property took %" G_GINT64_FORMAT
      " us, a load %" G_GINT64_FORMAT " us", slowest, load_time);
  push_until_experts (hs, &index, 2);     /* image_k2_norm_mean, the last set */
  /* and it stays */
  for (int i = 0; i < 5; i++) {
    g_usleep (load_time / 2);
    push_until_experts (hs, &index, 2);
  }
  gst_harness_teardown (hs);
  g_unlink (big);
  g_free (big);
  g_free (token);
  g_free (image);
}
END_TEST

/* Writes a model file whose header nests `depth` JSON arrays. */
static char *
write_deeply_nested_model (int depth)
{
  GString *header = g_string_new (NULL);
  for (int i = 0; i < depth; i++)
    g_string_append_c (header, '[');
  for (int i = 0; i < depth; i++)
    g_string_append_c (header, ']');
  guint64 n = GUINT64_TO_LE ((guint64) header->len);
  g_string_prepend_len (header, (const char *) &n, 8);
  char *path = model_path ("deeply_nested");
  ck_assert (g_file_set_contents (path, header->str, header->len, NULL));
  g_string_free (header, TRUE);
  return path;
}

/* Hostile model files set while playing are a warning (from the loader
 * thread) and the old model keeps classifying. */
START_TEST (test_swap_to_hostile_model_keeps_running)
{
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = harness_bus (hs);
  char *nested = write_deeply_nested_model (80000);
  g_object_set (hs->element, "model", nested, NULL);
  expect_bus_warning (bus, 60 * GST_SECOND, nested);
  int index = 0;
  push_until_experts (hs, &index, 1);
  g_unlink (nested);
  g_free (nested);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
}
END_TEST

/* Makes every new thread ask for a stack far beyond memory, so that
 * creating one fails as it does when a process is out of threads or
 * address space; `restore` undoes it.  FALSE where the system grants the
 * stack anyway (overcommit_memory = 1). */
static gpointer
idle_thread (gpointer data)
{
  return data;
}

static gboolean
starve_threads (pthread_attr_t *restore)
{
  ck_assert_int_eq (pthread_getattr_default_np (restore), 0);
  pthread_attr_t huge;
  pthread_attr_init (&huge);
  ck_assert_int_eq (pthread_attr_setstacksize (&huge, (size_t) 1 << 44), 0);
  ck_assert_int_eq (pthread_setattr_default_np (&huge), 0);
  pthread_attr_destroy (&huge);
  GThread *probe = g_thread_try_new ("probe", idle_thread, NULL, NULL);
  if (!probe)
    return TRUE;
  g_thread_join (probe);
  pthread_setattr_default_np (restore);
  pthread_attr_destroy (restore);
  return FALSE;
}

static void
feed_threads (pthread_attr_t *restore)
{
  ck_assert_int_eq (pthread_setattr_default_np (restore), 0);
  pthread_attr_destroy (restore);
}

/* Out of threads: at start, an element error; for a model set while
 * playing, a warning, and the model in use keeps classifying. */
START_TEST (test_out_of_threads)
{
  pthread_attr_t restore;
  if (!starve_threads (&restore)) {
    g_printerr ("test_out_of_threads: this system grants any thread stack; not run\n");
    return;
  }
  char *path = model_path ("image_k1");
  expect_start_error (path, "threads=1", "pusher thread");
  feed_threads (&restore);

  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = harness_bus (hs);
  char *other = model_path ("image_k2_norm_mean");
  ck_assert (starve_threads (&restore));
  g_object_set (hs->element, "model", other, NULL);
  feed_threads (&restore);
  expect_bus_warning (bus, 0, "loader thread");
  int index = 0;
  push_until_experts (hs, &index, 1);
  /* Threads again: the next request loads. */
  g_object_set (hs->element, "model", other, NULL);
  push_until_experts (hs, &index, 2);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
  g_free (other);
  g_free (path);
}
END_TEST

/* Writes a copy of model `name` whose block-0 MLP weights are scaled by
 * `factor` (1e31: its output overflows float, the logits are not finite). */
static char *
write_overflowing_model (const char *name, float factor)
{
  char *path = model_path (name);
  TestModelFile file;
  test_model_file_read (path, &file);
  gsize size;
  const guint8 *original = g_bytes_get_data (file.data, &size);
  guint8 *data = g_memdup2 (original, size);
  const char *tensors[] = { "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight" };
  for (guint t = 0; t < G_N_ELEMENTS (tensors); t++) {
    JsonArray *range = json_object_get_array_member (test_tensor (&file, tensors[t]),
        "data_offsets");
    gint64 begin = json_array_get_int_element (range, 0);
    gint64 end = json_array_get_int_element (range, 1);
    for (gint64 o = begin; o < end; o += 4) {
      float v;
      memcpy (&v, data + o, 4);
      v *= factor;
      memcpy (data + o, &v, 4);
    }
  }
  g_bytes_unref (file.data);
  file.data = g_bytes_new_take (data, size);
  char *out = test_model_file_write (&file, NULL);
  test_model_file_clear (&file);
  g_free (path);
  return out;
}

/* A frame whose logits are not finite gets no result: a warning when such
 * failures start (not one per frame), and the frame passes on without a
 * meta or message; the stream goes on. */
START_TEST (test_non_finite_logits_warn)
{
  char *bad = write_overflowing_model ("image_k1", 1e31f);
  GstElement *element = gst_element_factory_make ("vmoeclassify", NULL);
  g_object_set (element, "model", bad, "post-messages", TRUE, NULL);
  gst_util_set_object_arg (G_OBJECT (element), "backend", backend);
  GstHarness *hs = gst_harness_new_with_element (element, "sink", "src");
  gst_object_unref (element);
  gst_harness_set_src_caps_str (hs, "video/x-raw,format=RGB,width=32,height=32,framerate=30/1");
  GstBus *bus = harness_bus (hs);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  for (int i = 0; i < 4; i++) {
    GstBuffer *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, i, rgb, &gray), i);
    ck_assert_msg (gst_buffer_get_vmoe_meta (out) == NULL, "frame %d has a result", i);
    gst_buffer_unref (out);
  }
  expect_bus_warning (bus, 0, "Could not classify frame 0");
  ck_assert (gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING) == NULL);
  ck_assert (gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT) == NULL);
  ck_assert (gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR) == NULL);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
  g_unlink (bad);
  g_free (bad);
}
END_TEST

/* An I420 frame of strong colours, where the YUV matrices and ranges
 * differ most: chroma spans 16..240, luma is near 16 or 235. */
static GstBuffer *
make_colourful_i420 (int w, int h, GstVideoInfo *info)
{
  gst_video_info_set_format (info, GST_VIDEO_FORMAT_I420, w, h);
  GstBuffer *buf = gst_buffer_new_allocate (NULL, GST_VIDEO_INFO_SIZE (info), NULL);
  GstVideoFrame frame;
  ck_assert (gst_video_frame_map (&frame, info, buf, GST_MAP_WRITE));
  for (int y = 0; y < h; y++) {
    for (int x = 0; x < w; x++) {
      guint8 c[3];
      test_rgb (x / 4, y / 4, 5, c);
      int luma = (c[1] + x) % 60;
      *component_byte (&frame, GST_VIDEO_COMP_Y, x, y) =
          (guint8) (luma < 30 ? 16 + luma : 175 + luma);
      *component_byte (&frame, GST_VIDEO_COMP_U, x, y) = (guint8) (16 + c[0] % 225);
      *component_byte (&frame, GST_VIDEO_COMP_V, x, y) = (guint8) (16 + c[2] % 225);
    }
  }
  gst_video_frame_unmap (&frame);
  return buf;
}

/* GStreamer's own conversion of an I420 buffer of `colorimetry` to RGB
 * (GstVideoConverter, videoconvert's code), the independent reference.
 * Chroma mode none gives each pixel the chroma sample of its 2x2 block, as
 * the engine does; without dithering only GStreamer's rounding remains.
 * Through 16-bit RGB, whose fixed-point matrix is finer than the 8-bit
 * paths' (those are off by a level or two), rounded here to 8 bits. */
static GstBuffer *
gstreamer_to_rgb (GstBuffer *i420, int w, int h, const char *colorimetry)
{
  GstVideoInfo in_info, out_info;
  gst_video_info_set_format (&in_info, GST_VIDEO_FORMAT_I420, w, h);
  ck_assert (gst_video_colorimetry_from_string (&in_info.colorimetry, colorimetry));
  gst_video_info_set_format (&out_info, GST_VIDEO_FORMAT_ARGB64, w, h);
  GstVideoConverter *convert = gst_video_converter_new (&in_info, &out_info,
      gst_structure_new ("options",
          GST_VIDEO_CONVERTER_OPT_CHROMA_MODE, GST_TYPE_VIDEO_CHROMA_MODE,
          GST_VIDEO_CHROMA_MODE_NONE,
          GST_VIDEO_CONVERTER_OPT_DITHER_METHOD, GST_TYPE_VIDEO_DITHER_METHOD,
          GST_VIDEO_DITHER_NONE, NULL));
  ck_assert (convert != NULL);
  GstBuffer *rgb = gst_buffer_new_allocate (NULL, GST_VIDEO_INFO_SIZE (&out_info), NULL);
  GstVideoFrame src, dst;
  ck_assert (gst_video_frame_map (&src, &in_info, i420, GST_MAP_READ));
  ck_assert (gst_video_frame_map (&dst, &out_info, rgb, GST_MAP_WRITE));
  gst_video_converter_frame (convert, &src, &dst);
  gst_video_frame_unmap (&src);
  GstBuffer *rgb8 = gst_buffer_new_allocate (NULL, (gsize) w * h * 3, NULL);
  GstMapInfo map;
  ck_assert (gst_buffer_map (rgb8, &map, GST_MAP_WRITE));
  for (int y = 0; y < h; y++) {
    const guint16 *row = (const guint16 *) ((const guint8 *) GST_VIDEO_FRAME_PLANE_DATA (&dst, 0)
        + y * GST_VIDEO_FRAME_PLANE_STRIDE (&dst, 0));
    for (int x = 0; x < w; x++)
      for (int c = 0; c < 3; c++)
        map.data[(y * w + x) * 3 + c] = clamp_u8 (row[4 * x + 1 + c] / 257.0);
  }
  gst_buffer_unmap (rgb8, &map);
  gst_video_frame_unmap (&dst);
  gst_buffer_unref (rgb);
  gst_video_converter_free (convert);
  return rgb8;
}

/* Of the test models, the one whose scores the colour conversion moves
 * most. */
static const char *const colour_model = "dense";

/* The top-3 class scores the element gives a frame under `caps`. */
static void
element_scores (const char *caps, GstBuffer *buf, int *class_id, float scores[3])
{
  GstHarness *hs = harness_for_caps (colour_model, "top-k=3", caps);
  GstBuffer *out = push_frame (hs, buf, 0);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
  ck_assert_msg (meta != NULL && meta->n_top == 3, "%s: no meta", caps);
  *class_id = meta->class_id;
  memcpy (scores, meta->top_scores, 3 * sizeof (float));
  gst_buffer_unref (out);
  gst_harness_teardown (hs);
}

static double
max_score_difference (const float *a, const float *b)
{
  double worst = 0;
  for (int i = 0; i < 3; i++)
    worst = MAX (worst, fabs ((double) a[i] - b[i]));
  return worst;
}

/* An I420 frame is classified with the colorimetry of its caps: BT.709,
 * full-range BT.601 (jpegdec's) and full-range BT.709 give the scores of
 * the element fed GStreamer's own RGB conversion of the frame, within
 * GStreamer's rounding (its 8-bit fixed-point matrices), while reading the
 * same frame as BT.601 limited range, the engine's default, misses them by
 * more: the comparison can tell the encodings apart. */
START_TEST (test_yuv_colorimetry_matches_videoconvert)
{
  const char *colorimetries[] = { "bt709", "1:4:0:0", "1:3:5:1" };
  const double rounding = 1.5e-3;
  const int w = 64, h = 48;
  GstVideoInfo info;
  GstBuffer *i420 = make_colourful_i420 (w, h, &info);
  char *rgb_caps = g_strdup_printf ("video/x-raw,format=RGB,width=%d,height=%d,"
      "framerate=30/1", w, h);
  for (guint i = 0; i < G_N_ELEMENTS (colorimetries); i++) {
    int rgb_class, yuv_class, bt601_class;
    float rgb_scores[3], yuv_scores[3], bt601_scores[3];
    element_scores (rgb_caps, gstreamer_to_rgb (i420, w, h, colorimetries[i]), &rgb_class,
        rgb_scores);
    char *caps = g_strdup_printf ("video/x-raw,format=I420,width=%d,height=%d,"
        "framerate=30/1,colorimetry=%s", w, h, colorimetries[i]);
    element_scores (caps, gst_buffer_copy_deep (i420), &yuv_class, yuv_scores);
    char *bt601 = g_strdup_printf ("video/x-raw,format=I420,width=%d,height=%d,"
        "framerate=30/1,colorimetry=bt601", w, h);
    element_scores (bt601, gst_buffer_copy_deep (i420), &bt601_class, bt601_scores);
    double error = max_score_difference (yuv_scores, rgb_scores);
    double bt601_error = max_score_difference (bt601_scores, rgb_scores);
    printf ("colorimetry %s: scores differ from videoconvert's RGB by %.2g "
        "(by %.2g read as BT.601 limited range)\n", colorimetries[i], error, bt601_error);
    ck_assert_int_eq (yuv_class, rgb_class);
    ck_assert_msg (error <= rounding, "%s: scores differ by %g from GStreamer's RGB",
        colorimetries[i], error);
    ck_assert_msg (bt601_error > 2 * rounding, "%s: BT.601 limited range is within %g",
        colorimetries[i], bt601_error);
    g_free (caps);
    g_free (bt601);
  }
  g_free (rgb_caps);
  gst_buffer_unref (i420);
}
END_TEST

/* A matrix the engine does not know converts with the closest it knows
 * (SMPTE 240M: BT.709) and warns once, not per frame. */
START_TEST (test_unknown_yuv_matrix_warns_once)
{
  const int w = 64, h = 48;
  GstVideoInfo info;
  GstBuffer *i420 = make_colourful_i420 (w, h, &info);
  int bt709_class, class_id;
  float bt709_scores[3], scores[3];
  char *bt709 = g_strdup_printf ("video/x-raw,format=I420,width=%d,height=%d,"
      "framerate=30/1,colorimetry=2:3:0:0", w, h);
  element_scores (bt709, gst_buffer_copy_deep (i420), &bt709_class, bt709_scores);
  char *caps = g_strdup_printf ("video/x-raw,format=I420,width=%d,height=%d,"
      "framerate=30/1,colorimetry=2:5:0:0", w, h);
  GstHarness *hs = harness_for_caps (colour_model, "top-k=3", caps);
  GstBus *bus = harness_bus (hs);
  for (int i = 0; i < 3; i++) {
    GstBuffer *out = push_frame (hs, gst_buffer_copy_deep (i420), i);
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
    ck_assert (meta != NULL);
    class_id = meta->class_id;
    memcpy (scores, meta->top_scores, sizeof scores);
    gst_buffer_unref (out);
    ck_assert_int_eq (class_id, bt709_class);
    ck_assert (max_score_difference (scores, bt709_scores) <= score_tolerance);
  }
  expect_bus_warning (bus, 0, "BT.709 matrix");
  ck_assert (gst_bus_pop_filtered (bus, GST_MESSAGE_WARNING) == NULL);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
  g_free (caps);
  g_free (bt709);
  gst_buffer_unref (i420);
}
END_TEST

/* The top-3 scores of each frame reaching the appsink "sink" of a
 * pipeline; returns the frame count. */
static int
pipeline_scores (const char *desc, float (*scores)[3], int max_frames)
{
  GError *error = NULL;
  GstElement *pipeline = gst_parse_launch (desc, &error);
  ck_assert_msg (pipeline && !error, "%s: %s", desc, error ? error->message : "");
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  int frames = 0;
  GstSample *sample;
  while ((sample = gst_app_sink_try_pull_sample (GST_APP_SINK (sink), 60 * GST_SECOND))) {
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (gst_sample_get_buffer (sample));
    ck_assert_msg (meta != NULL && meta->n_top == 3, "%s: frame %d has no meta", desc, frames);
    ck_assert_int_lt (frames, max_frames);
    memcpy (scores[frames++], meta->top_scores, 3 * sizeof (float));
    gst_sample_unref (sample);
  }
  ck_assert (gst_app_sink_is_eos (GST_APP_SINK (sink)));
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (sink);
  gst_object_unref (pipeline);
  return frames;
}

/* JPEG decoded to full-range BT.601 I420 (colorimetry 1:4:0:0) straight
 * into the element scores as the same frames converted to RGB by
 * videoconvert (chroma mode none: each pixel its 2x2 block's chroma, as
 * the engine; no dithering); read as BT.601 limited range (capssetter)
 * they miss by 3e-3 or more.  Gray patterns, whose full-range Y is the
 * RGB value itself: videoconvert's 8-bit fixed-point matrix moves coloured
 * frames' scores by up to 3e-3, as much as the range does
 * (test_yuv_colorimetry_matches_videoconvert checks colours). */
START_TEST (test_jpeg_frames_match_videoconvert)
{
  char *path = model_path (colour_model);
  const char *patterns[] = { "pinwheel", "spokes" };
  const double rounding = 1e-4;
  for (guint p = 0; p < G_N_ELEMENTS (patterns); p++) {
    char *decoded = g_strdup_printf ("videotestsrc num-buffers=2 pattern=%s ! "
        "video/x-raw,format=I420,width=64,height=48 ! jpegenc quality=95 ! jpegdec",
        patterns[p]);
    char *classify = g_strdup_printf ("vmoeclassify model=%s top-k=3 backend=%s ! "
        "appsink name=sink sync=false", path, backend);
    char *direct = g_strdup_printf ("%s ! %s", decoded, classify);
    char *converted = g_strdup_printf ("%s ! videoconvert chroma-mode=none dither=none ! "
        "video/x-raw,format=RGB ! %s", decoded, classify);
    char *as_bt601 = g_strdup_printf ("%s ! capssetter join=true "
        "caps=\"video/x-raw,colorimetry=(string)bt601\" ! %s", decoded, classify);
    float yuv[2][3], rgb[2][3], bt601[2][3];
    ck_assert_int_eq (pipeline_scores (direct, yuv, 2), 2);
    ck_assert_int_eq (pipeline_scores (converted, rgb, 2), 2);
    ck_assert_int_eq (pipeline_scores (as_bt601, bt601, 2), 2);
    double error = MAX (max_score_difference (yuv[0], rgb[0]),
        max_score_difference (yuv[1], rgb[1]));
    double bt601_error = MIN (max_score_difference (bt601[0], rgb[0]),
        max_score_difference (bt601[1], rgb[1]));
    printf ("JPEG %s: scores differ from videoconvert's RGB by %.2g (by %.2g read as "
        "BT.601 limited range)\n", patterns[p], error, bt601_error);
    ck_assert_msg (error <= rounding, "%s: scores differ by %g", patterns[p], error);
    ck_assert_msg (bt601_error > 2e-3, "%s: BT.601 limited range is within %g",
        patterns[p], bt601_error);
    g_free (decoded);
    g_free (classify);
    g_free (direct);
    g_free (converted);
    g_free (as_bt601);
  }
  g_free (path);
}
END_TEST

/* The meta survives converters, scalers and tee downstream. */
START_TEST (test_meta_survives_downstream)
{
  char *path = model_path ("image_k1");
  char *desc = g_strdup_printf ("videotestsrc num-buffers=5 pattern=ball ! "
      "video/x-raw,format=RGB,width=64,height=48 ! vmoeclassify model=%s ! "
      "videoconvert ! video/x-raw,format=I420 ! videoscale ! "
      "video/x-raw,width=32,height=24 ! tee ! queue ! appsink name=sink sync=false", path);
  GError *error = NULL;
  GstElement *pipeline = gst_parse_launch (desc, &error);
  ck_assert_msg (pipeline && !error, "%s", error ? error->message : "");
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  int samples = 0;
  GstSample *sample;
  while ((sample = gst_app_sink_try_pull_sample (GST_APP_SINK (sink), 60 * GST_SECOND))) {
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (gst_sample_get_buffer (sample));
    ck_assert_msg (meta != NULL, "sample %d lost its meta", samples);
    ck_assert_uint_eq (meta->frame, (guint64) samples);
    ck_assert (meta->label != NULL && meta->n_experts == 1);
    gst_sample_unref (sample);
    samples++;
  }
  ck_assert_int_eq (samples, 5);
  ck_assert (gst_app_sink_is_eos (GST_APP_SINK (sink)));
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (sink);
  gst_object_unref (pipeline);
  g_free (desc);
  g_free (path);
}
END_TEST

/* 200 NULL <-> PLAYING cycles; leaks are caught by the leaks tracer (this
 * test runs with GST_TRACERS=leaks, see main) and by LeakSanitizer. */
START_TEST (test_state_cycles)
{
  char *path = model_path ("image_k1");
  char *desc = g_strdup_printf ("videotestsrc is-live=true ! video/x-raw,width=32,height=32 ! "
      "vmoeclassify model=%s post-messages=true ! fakesink", path);
  GError *error = NULL;
  GstElement *pipeline = gst_parse_launch (desc, &error);
  ck_assert_msg (pipeline && !error, "%s", error ? error->message : "");
  for (int i = 0; i < 200; i++) {
    ck_assert_int_ne (gst_element_set_state (pipeline, GST_STATE_PLAYING),
        GST_STATE_CHANGE_FAILURE);
    if (i % 50 == 0)
      gst_element_get_state (pipeline, NULL, NULL, GST_CLOCK_TIME_NONE);
    ck_assert_int_eq (gst_element_set_state (pipeline, GST_STATE_NULL),
        GST_STATE_CHANGE_SUCCESS);
  }
  gst_object_unref (pipeline);
  g_free (desc);
  g_free (path);
}
END_TEST

/* ------------------------------------------------ sharing and async (#12) */

/* The worker's full batches of 4. */
static LogCounter batches_of_4 = { "vmoeinstance", "batch of 4", 0 };

/* Checks that `meta` is the engine's own result (batch 1, unshared) on the
 * RGB frame with `seed`. */
static void
expect_engine_result (const char *model_name, const GstVmoeMeta *meta, int seed)
{
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  gst_buffer_unref (make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, seed, rgb, &gray));
  int class_id, expert;
  float scores[5];
  engine_expect (model_name, rgb, FALSE, 32, 32, &class_id, scores, &expert);
  ck_assert_int_eq (meta->class_id, class_id);
  /* The contract says bit-identical whatever batch the frame lands in; the
   * CPU engine differs in the last bits between batch 1 and batch 4 today
   * (0.196703106 and 0.196703136 on one frame), within its tolerance. */
  assert_near (meta->score, scores[0], score_tolerance);
  ck_assert_int_eq (meta->experts[0], expert);
}

/* 4 streams share one instance with batch-size 4: the worker runs batches
 * of 4 across them, and every frame gets, in its stream's order, exactly
 * the result it gets alone.  queue-size 1 lets each stream have one frame
 * in flight, so a batch of 4 can only be made across streams. */
START_TEST (test_shared_instance_matches_unshared)
{
  g_atomic_int_set (&batches_of_4.count, 0);
  gst_debug_set_threshold_for_name ("vmoeinstance", GST_LEVEL_LOG);
  gst_debug_add_log_function (count_log_lines, &batches_of_4, NULL);
  enum { STREAMS = 4, FRAMES = 6 };
  GstHarness *hs[STREAMS];
  for (int s = 0; s < STREAMS; s++)
    hs[s] = harness_for ("image_k1", "model-instance-id=four batch-size=4 "
        "batch-timeout=500000 queue-size=1", GST_VIDEO_FORMAT_RGB, 32, 32);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  for (int i = 0; i < FRAMES; i++)
    for (int s = 0; s < STREAMS; s++) {
      GstBuffer *buf = make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, s * 100 + i, rgb, &gray);
      GST_BUFFER_PTS (buf) = i * GST_SECOND / 30;
      ck_assert_int_eq (gst_harness_push (hs[s], buf), GST_FLOW_OK);
    }
  for (int s = 0; s < STREAMS; s++)
    for (int i = 0; i < FRAMES; i++) {
      GstBuffer *out = gst_harness_pull (hs[s]);
      ck_assert (out != NULL);
      GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
      ck_assert_msg (meta != NULL, "stream %d frame %d without a result", s, i);
      ck_assert_uint_eq (meta->frame, (guint64) i);
      ck_assert_uint_eq (GST_BUFFER_PTS (out), i * GST_SECOND / 30);
      ck_assert_int_eq (meta->roi_id, -1);
      expect_engine_result ("image_k1", meta, s * 100 + i);
      gst_buffer_unref (out);
    }
  ck_assert_msg (g_atomic_int_get (&batches_of_4.count) >= 1, "no batch of 4 ran");
  gst_debug_remove_log_function_by_data (&batches_of_4);
  gst_debug_set_threshold_for_name ("vmoeinstance", GST_LEVEL_NONE);
  for (int s = 0; s < STREAMS; s++)
    gst_harness_teardown (hs[s]);
}
END_TEST

static GstVmoeMeta *
push_and_check (GstHarness *hs, int seed, int index, GstBuffer **out)
{
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  *out = push_frame (hs, make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, seed, rgb, &gray), index);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (*out);
  ck_assert_msg (meta != NULL, "frame %d without a result", index);
  ck_assert_uint_eq (meta->frame, (guint64) index);
  return meta;
}

/* A sharer that stops leaves the others classifying; a model set on one
 * sharer swaps it for all of them without a frame lost; the last one out
 * frees the instance, so the id can then name another model. */
START_TEST (test_shared_instance_lifetime_and_swap)
{
  const char *props = "model-instance-id=life batch-size=2 batch-timeout=1000";
  GstHarness *a = harness_for ("image_k1", props, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstHarness *b = harness_for ("image_k1", props, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstHarness *c = harness_for ("image_k1", props, GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBuffer *out;
  int i = 0;
  for (; i < 3; i++) {
    GstHarness *all[] = { a, b, c };
    for (int s = 0; s < 3; s++) {
      expect_engine_result ("image_k1", push_and_check (all[s], i, i, &out), i);
      gst_buffer_unref (out);
    }
  }
  gst_harness_teardown (c);
  for (; i < 6; i++) {
    expect_engine_result ("image_k1", push_and_check (a, i, i, &out), i);
    gst_buffer_unref (out);
    expect_engine_result ("image_k1", push_and_check (b, i, i, &out), i);
    gst_buffer_unref (out);
  }
  /* image_k2_norm_mean chooses 2 experts: set on a, it reaches b too. */
  char *k2 = model_path ("image_k2_norm_mean");
  g_object_set (a->element, "model", k2, NULL);
  gboolean b_swapped = FALSE;
  for (int tries = 0; tries < 2000 && !b_swapped; tries++, i++) {
    GstVmoeMeta *meta = push_and_check (b, i, i, &out);
    b_swapped = meta->n_experts == 2;
    ck_assert (b_swapped || meta->n_experts == 1);
    gst_buffer_unref (out);
    g_usleep (1000);
  }
  ck_assert_msg (b_swapped, "the model set on one sharer never reached the other");
  gst_harness_teardown (a);
  gst_harness_teardown (b);
  /* Everyone is out: the id is free for another model. */
  GstHarness *d = harness_for ("dense", props, GST_VIDEO_FORMAT_RGB, 32, 32);
  ck_assert_int_eq (push_and_check (d, 0, 0, &out)->n_experts, 0);
  gst_buffer_unref (out);
  gst_harness_teardown (d);
  g_free (k2);
}
END_TEST

/* A second element with the same id but another model is an error at
 * start, naming what differs. */
START_TEST (test_shared_instance_mismatch_errors)
{
  GstHarness *a = harness_for ("image_k1", "model-instance-id=mismatch",
      GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBuffer *out;
  push_and_check (a, 0, 0, &out);
  gst_buffer_unref (out);
  char *dense = model_path ("dense");
  expect_start_error (dense, "model-instance-id=mismatch", "'model' differs");
  char *k1 = model_path ("image_k1");
  char *props = g_strdup_printf ("model-instance-id=mismatch backend=%s fp16=true",
      backend);
  expect_start_error (k1, props, "'fp16' differs");
  g_free (props);
  props = g_strdup_printf ("model-instance-id=mismatch backend=%s precision=bf16",
      backend);
  expect_start_error (k1, props, "'precision' differs");
  g_free (props);
  g_free (k1);
  g_free (dense);
  gst_harness_teardown (a);
}
END_TEST

typedef struct {
  gint buffers_in;
} Counter;

static GstPadProbeReturn
count_buffer (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  g_atomic_int_inc (&((Counter *) data)->buffers_in);
  return GST_PAD_PROBE_OK;
}

static GstPadProbeReturn
hold_buffers (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  return GST_PAD_PROBE_OK;
}

/* The streaming thread does not wait for inference, but a downstream that
 * stalls makes it wait once queue-size frames are in flight: memory stays
 * bounded and no frame is dropped. */
START_TEST (test_bounded_queue_blocks_upstream)
{
  const int queue_size = 3, frames = 20;
  char *path = model_path ("image_k1");
  char *desc = g_strdup_printf ("videotestsrc num-buffers=%d ! "
      "video/x-raw,format=RGB,width=32,height=32 ! vmoeclassify name=c model=%s "
      "queue-size=%d ! appsink name=sink sync=false", frames, path, queue_size);
  GstElement *pipeline = gst_parse_launch (desc, NULL);
  ck_assert (pipeline != NULL);
  GstElement *c = gst_bin_get_by_name (GST_BIN (pipeline), "c");
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  GstPad *sinkpad = gst_element_get_static_pad (c, "sink");
  GstPad *srcpad = gst_element_get_static_pad (c, "src");
  Counter counter = { 0 };
  gst_pad_add_probe (sinkpad, GST_PAD_PROBE_TYPE_BUFFER, count_buffer, &counter, NULL);
  gulong stall = gst_pad_add_probe (srcpad, GST_PAD_PROBE_TYPE_BLOCK |
      GST_PAD_PROBE_TYPE_BUFFER, hold_buffers, NULL, NULL);
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  /* One frame held downstream, queue-size in the queue, one waiting for
   * room: no more, however long downstream stalls. */
  int expected = queue_size + 2;
  for (int t = 0; t < 500 && g_atomic_int_get (&counter.buffers_in) < expected; t++)
    g_usleep (10000);
  g_usleep (300000);
  int taken_in = g_atomic_int_get (&counter.buffers_in);
  ck_assert_int_eq (taken_in, expected);
  gst_pad_remove_probe (srcpad, stall);
  for (int i = 0; i < frames; i++) {
    GstSample *sample = gst_app_sink_try_pull_sample (GST_APP_SINK (sink), 60 * GST_SECOND);
    ck_assert_msg (sample != NULL, "frame %d never came", i);
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (gst_sample_get_buffer (sample));
    ck_assert (meta != NULL && meta->fresh);
    ck_assert_uint_eq (meta->frame, (guint64) i);
    gst_sample_unref (sample);
  }
  ck_assert (gst_app_sink_try_pull_sample (GST_APP_SINK (sink), 60 * GST_SECOND) == NULL);
  ck_assert (gst_app_sink_is_eos (GST_APP_SINK (sink)));
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (sinkpad);
  gst_object_unref (srcpad);
  gst_object_unref (sink);
  gst_object_unref (c);
  gst_object_unref (pipeline);
  g_free (desc);
  g_free (path);
}
END_TEST

/* Frames without timestamps are classified like any other. */
START_TEST (test_frames_without_timestamps)
{
  GstHarness *hs = harness_for ("image_k1", "post-messages=true queue-size=2",
      GST_VIDEO_FORMAT_RGB, 32, 32);
  GstBus *bus = harness_bus (hs);
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  for (int i = 0; i < 4; i++) {
    GstBuffer *buf = make_frame (GST_VIDEO_FORMAT_RGB, 32, 32, i, rgb, &gray);
    ck_assert_int_eq (gst_harness_push (hs, buf), GST_FLOW_OK);
  }
  for (int i = 0; i < 4; i++) {
    GstBuffer *out = gst_harness_pull (hs);
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
    ck_assert (meta != NULL && meta->fresh);
    ck_assert_uint_eq (meta->frame, (guint64) i);
    ck_assert (!GST_BUFFER_PTS_IS_VALID (out));
    expect_engine_result ("image_k1", meta, i);
    gst_buffer_unref (out);
    GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
    ck_assert (msg != NULL);
    guint64 timestamp;
    ck_assert (gst_structure_get_uint64 (gst_message_get_structure (msg), "timestamp",
            &timestamp));
    ck_assert_uint_eq (timestamp, GST_CLOCK_TIME_NONE);
    gst_message_unref (msg);
  }
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
}
END_TEST

/* EOS waits for the frames in flight: every frame comes out, in order, with
 * its result, before EOS (batches of up to 4 that fill or time out). */
START_TEST (test_eos_drains_frames_in_flight)
{
  const int frames = 30;
  char *path = model_path ("image_k1");
  char *desc = g_strdup_printf ("videotestsrc num-buffers=%d pattern=ball ! "
      "video/x-raw,format=I420,width=40,height=30 ! vmoeclassify model=%s "
      "queue-size=8 batch-size=4 batch-timeout=20000 ! appsink name=sink sync=false",
      frames, path);
  GstElement *pipeline = gst_parse_launch (desc, NULL);
  ck_assert (pipeline != NULL);
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  int samples = 0;
  GstSample *sample;
  while ((sample = gst_app_sink_try_pull_sample (GST_APP_SINK (sink), 60 * GST_SECOND))) {
    GstBuffer *buf = gst_sample_get_buffer (sample);
    GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (buf);
    ck_assert_msg (meta != NULL && meta->fresh, "frame %d without its result", samples);
    ck_assert_uint_eq (meta->frame, (guint64) samples);
    ck_assert_uint_eq (GST_BUFFER_PTS (buf), gst_util_uint64_scale (samples, GST_SECOND, 30));
    gst_sample_unref (sample);
    samples++;
  }
  ck_assert_int_eq (samples, frames);
  ck_assert (gst_app_sink_is_eos (GST_APP_SINK (sink)));
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (sink);
  gst_object_unref (pipeline);
  g_free (desc);
  g_free (path);
}
END_TEST

typedef struct {
  gboolean flushed;                /* a FLUSH_STOP went by */
  gboolean stale;                  /* a frame from before the seek came after it */
  gint after_flush;                /* frames after the FLUSH_STOP */
} SeekWatch;

static GstPadProbeReturn
watch_seek (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  SeekWatch *w = data;
  if (info->type & GST_PAD_PROBE_TYPE_EVENT_FLUSH
      && GST_EVENT_TYPE (GST_PAD_PROBE_INFO_EVENT (info)) == GST_EVENT_FLUSH_STOP)
    w->flushed = TRUE;
  else if (info->type & GST_PAD_PROBE_TYPE_BUFFER && w->flushed) {
    /* The seek goes back to 0: the frames after it are 0, 1, 2... */
    if (GST_BUFFER_PTS (GST_PAD_PROBE_INFO_BUFFER (info))
        != gst_util_uint64_scale (w->after_flush, GST_SECOND, 30))
      w->stale = TRUE;
    w->after_flush++;
  }
  return GST_PAD_PROBE_OK;
}

/* A flushing seek with frames in flight (downstream stalled) discards them:
 * none from before the seek comes out after it. */
START_TEST (test_flushing_seek_discards_frames_in_flight)
{
  char *path = model_path ("image_k1");
  char *desc = g_strdup_printf ("videotestsrc num-buffers=40 ! "
      "video/x-raw,format=RGB,width=32,height=32 ! vmoeclassify name=c model=%s "
      "queue-size=4 ! fakesink name=sink sync=false", path);
  GstElement *pipeline = gst_parse_launch (desc, NULL);
  ck_assert (pipeline != NULL);
  GstElement *c = gst_bin_get_by_name (GST_BIN (pipeline), "c");
  GstPad *srcpad = gst_element_get_static_pad (c, "src");
  gst_element_set_state (pipeline, GST_STATE_PAUSED);
  ck_assert_int_eq (gst_element_get_state (pipeline, NULL, NULL, 60 * GST_SECOND),
      GST_STATE_CHANGE_SUCCESS);
  /* Prerolled with frames in flight behind the first one (the sink holds it). */
  g_usleep (200000);
  SeekWatch watch = { 0 };
  gst_pad_add_probe (srcpad, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_EVENT_FLUSH,
      watch_seek, &watch, NULL);
  ck_assert (gst_element_seek_simple (pipeline, GST_FORMAT_TIME,
          GST_SEEK_FLAG_FLUSH, 0));
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  GstBus *bus = gst_element_get_bus (pipeline);
  GstMessage *msg = gst_bus_timed_pop_filtered (bus, 60 * GST_SECOND,
      GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  ck_assert (msg != NULL && GST_MESSAGE_TYPE (msg) == GST_MESSAGE_EOS);
  gst_message_unref (msg);
  ck_assert (watch.flushed);
  ck_assert_msg (!watch.stale, "a frame queued before the seek came out after it");
  /* num-buffers counts the frames made before the seek too. */
  ck_assert_int_gt (watch.after_flush, 20);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (bus);
  gst_object_unref (srcpad);
  gst_object_unref (c);
  gst_object_unref (pipeline);
  g_free (desc);
  g_free (path);
}
END_TEST

/* Downstream refuses frame REFUSED (as a sink going to READY does: FLUSHING)
 * while queue-size frames wait behind it.  A synchronous element would
 * have handed FLUSHING upstream for that frame, and upstream would have
 * sent no more, so the frames behind it are neither pushed nor announced:
 * every vmoe message is of a frame that left the element (the soak test's
 * count of messages against frames downstream depends on it). */
typedef struct {
  Counter *taken_in;
  int refused_from;
  int reached;                    /* frames the refusing probe saw */
} Refusal;

static GstPadProbeReturn
refuse_downstream (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  Refusal *refusal = data;
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (GST_PAD_PROBE_INFO_BUFFER (info));
  g_atomic_int_inc (&refusal->reached);
  if (!meta || meta->frame < (guint64) refusal->refused_from)
    return GST_PAD_PROBE_OK;
  /* The queue full behind this frame: the streaming thread has handed in
   * the frame that fills it and is waiting with the next one. */
  for (int t = 0; t < 1000 && g_atomic_int_get (&refusal->taken_in->buffers_in)
      < refusal->refused_from + 6; t++)
    g_usleep (10000);
  gst_buffer_unref (GST_PAD_PROBE_INFO_BUFFER (info));
  GST_PAD_PROBE_INFO_FLOW_RETURN (info) = GST_FLOW_FLUSHING;
  return GST_PAD_PROBE_HANDLED;
}

START_TEST (test_refused_frame_stops_frames_behind_it)
{
  const int refused = 5;
  char *path = model_path ("image_k1");
  char *desc = g_strdup_printf ("videotestsrc num-buffers=40 ! "
      "video/x-raw,format=RGB,width=32,height=32 ! vmoeclassify name=c model=%s "
      "post-messages=true queue-size=4 ! fakesink sync=false", path);
  GstElement *pipeline = gst_parse_launch (desc, NULL);
  ck_assert (pipeline != NULL);
  GstElement *c = gst_bin_get_by_name (GST_BIN (pipeline), "c");
  GstPad *sinkpad = gst_element_get_static_pad (c, "sink");
  GstPad *srcpad = gst_element_get_static_pad (c, "src");
  Counter counter = { 0 };
  Refusal refusal = { &counter, refused, 0 };
  gst_pad_add_probe (sinkpad, GST_PAD_PROBE_TYPE_BUFFER, count_buffer, &counter, NULL);
  gst_pad_add_probe (srcpad, GST_PAD_PROBE_TYPE_BUFFER, refuse_downstream, &refusal, NULL);
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  for (int t = 0; t < 1000 && g_atomic_int_get (&refusal.reached) <= refused; t++)
    g_usleep (10000);
  /* Time for the frames behind the refused one to come out, were they
   * pushed: each takes about a millisecond. */
  g_usleep (500000);
  ck_assert_int_eq (g_atomic_int_get (&refusal.reached), refused + 1);
  GstBus *bus = gst_element_get_bus (pipeline);
  GstMessage *msg;
  guint64 messages = 0, index_sum = 0;
  while ((msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT))) {
    const GstStructure *st = gst_message_get_structure (msg);
    guint64 frame;
    if (gst_structure_has_name (st, "vmoe")
        && gst_structure_get_uint64 (st, "frame", &frame)) {
      messages++;
      index_sum += frame;
    }
    gst_message_unref (msg);
  }
  /* Frames 0..refused, the refused one included: it left the element. */
  ck_assert_uint_eq (messages, refused + 1);
  ck_assert_uint_eq (index_sum, refused * (refused + 1) / 2);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (bus);
  gst_object_unref (sinkpad);
  gst_object_unref (srcpad);
  gst_object_unref (c);
  gst_object_unref (pipeline);
  g_free (desc);
  g_free (path);
}
END_TEST

/* PLAYING -> NULL with frames in flight in two elements sharing an
 * instance (one batch of 2 waiting a long timeout): no deadlock, no leak
 * (leaks tracer, LeakSanitizer). */
START_TEST (test_state_cycles_with_frames_in_flight)
{
  char *path = model_path ("image_k1");
  char *desc = g_strdup_printf ("videotestsrc ! video/x-raw,width=32,height=32 ! "
      "vmoeclassify model=%s model-instance-id=cycles batch-size=2 batch-timeout=200000 "
      "queue-size=2 ! fakesink sync=true  videotestsrc ! video/x-raw,width=32,height=32 ! "
      "vmoeclassify model=%s model-instance-id=cycles queue-size=2 ! fakesink", path, path);
  GstElement *pipeline = gst_parse_launch (desc, NULL);
  ck_assert (pipeline != NULL);
  for (int i = 0; i < 30; i++) {
    ck_assert_int_ne (gst_element_set_state (pipeline, GST_STATE_PLAYING),
        GST_STATE_CHANGE_FAILURE);
    if (i % 3 == 0)
      g_usleep (20000);
    ck_assert_int_eq (gst_element_set_state (pipeline, GST_STATE_NULL),
        GST_STATE_CHANGE_SUCCESS);
  }
  gst_object_unref (pipeline);
  g_free (desc);
  g_free (path);
}
END_TEST

/* ------------------------------------------------- regions of interest */

/* The engine's result on the pixels of a rectangle of a packed frame,
 * copied into a frame of their own. */
static void
engine_expect_crop (const char *model_name, const guint8 *pixels, gboolean gray, int w,
    int x, int y, int cw, int ch, int *class_id, float *scores, int *expert)
{
  int bpp = gray ? 1 : 3;
  guint8 *crop = g_malloc ((gsize) cw * ch * bpp);
  for (int row = 0; row < ch; row++)
    memcpy (crop + (gsize) row * cw * bpp, pixels + ((gsize) (y + row) * w + x) * bpp,
        (gsize) cw * bpp);
  engine_expect (model_name, crop, gray, cw, ch, class_id, scores, expert);
  g_free (crop);
}

/* roi-list: each region of a wanted class gets the engine's result on its
 * pixels clamped to the frame, as a param on its ROI meta, a GstVmoeMeta
 * with its id and a message; tiny, empty and unwanted ones get nothing; a
 * frame without regions passes without a result.  In every pixel format. */
START_TEST (test_regions_of_interest)
{
  GstVideoFormat format = all_formats[_i];
  const int w = 64, h = 48;
  GstHarness *hs = harness_for ("image_k1", "inference-region=roi-list post-messages=true "
      "input-object-min-width=4 input-object-min-height=4 object-class=car,person "
      "attribute-name=classified", format, w, h);
  GstBus *bus = harness_bus (hs);
  guint8 *rgb = g_malloc (w * h * 3);
  gboolean gray;
  GstBuffer *in = make_frame (format, w, h, 3, rgb, &gray);
  const struct {
    const char *type;
    guint x, y, w, h;
    gboolean classified;
    guint cx, cy, cw, ch;            /* clamped */
  } rois[] = {
    { "car", 4, 6, 20, 16, TRUE, 4, 6, 20, 16 },
    { "person", 50, 40, 30, 30, TRUE, 50, 40, 14, 8 },   /* clamped */
    { "car", 10, 10, 2, 2, FALSE },                      /* tiny */
    { "dog", 0, 0, 32, 32, FALSE },                      /* not a wanted class */
    { "car", 100, 100, 10, 10, FALSE },                  /* empty once clamped */
  };
  for (guint r = 0; r < G_N_ELEMENTS (rois); r++)
    gst_buffer_add_video_region_of_interest_meta (in, rois[r].type, rois[r].x, rois[r].y,
        rois[r].w, rois[r].h)->id = (gint) r + 10;
  GstBuffer *out = push_frame (hs, in, 0);
  guint vmoe_metas = 0;
  gpointer state = NULL;
  GstMeta *m;
  while ((m = gst_buffer_iterate_meta_filtered (out, &state, GST_VMOE_META_API_TYPE))) {
    GstVmoeMeta *meta = (GstVmoeMeta *) m;
    ck_assert_int_ge (meta->roi_id, 10);
    ck_assert (rois[meta->roi_id - 10].classified);
    ck_assert_str_eq (meta->model_name, "image_k1");
    vmoe_metas++;
  }
  ck_assert_uint_eq (vmoe_metas, 2);
  for (guint r = 0; r < G_N_ELEMENTS (rois); r++) {
    GstVideoRegionOfInterestMeta *roi =
        gst_buffer_get_video_region_of_interest_meta_id (out, (gint) r + 10);
    ck_assert (roi != NULL);
    GstStructure *param = gst_video_region_of_interest_meta_get_param (roi, "classified");
    if (!rois[r].classified) {
      ck_assert_msg (param == NULL, "roi %u classified", r);
      continue;
    }
    ck_assert_msg (param != NULL, "roi %u without a result", r);
    int class_id, expert;
    float scores[5];
    engine_expect_crop ("image_k1", rgb, gray, w, (int) rois[r].cx, (int) rois[r].cy,
        (int) rois[r].cw, (int) rois[r].ch, &class_id, scores, &expert);
    gint label_id;
    gdouble confidence;
    ck_assert (gst_structure_get_int (param, "label_id", &label_id));
    ck_assert (gst_structure_get_double (param, "confidence", &confidence));
    ck_assert_int_eq (label_id, class_id);
    assert_near (confidence, scores[0], score_tolerance);
    ck_assert_str_eq (gst_structure_get_string (param, "model_name"), "image_k1");
    ck_assert (gst_structure_get_string (param, "label") != NULL);
    G_GNUC_BEGIN_IGNORE_DEPRECATIONS
    GValueArray *experts = array_field (param, "experts");
    ck_assert_uint_eq (experts->n_values, 1);
    ck_assert_int_eq (g_value_get_int (g_value_array_get_nth (experts, 0)), expert);
    ck_assert_uint_eq (array_field (param, "gates")->n_values, 1);
    G_GNUC_END_IGNORE_DEPRECATIONS
    /* The region's entropy, as in its own meta; unmarked without a threshold. */
    gdouble entropy;
    gboolean uncertain = TRUE;
    ck_assert (gst_structure_get_double (param, "entropy", &entropy));
    ck_assert (gst_structure_get_boolean (param, "uncertain", &uncertain));
    ck_assert (!uncertain);
    state = NULL;
    while ((m = gst_buffer_iterate_meta_filtered (out, &state, GST_VMOE_META_API_TYPE)))
      if (((GstVmoeMeta *) m)->roi_id == (gint) r + 10)
        assert_near (entropy, ((GstVmoeMeta *) m)->entropy, 1e-7);
    ck_assert (entropy > 0);
    /* Its message names the region as clamped. */
    GstMessage *msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT);
    ck_assert (msg != NULL);
    const GstStructure *s = gst_message_get_structure (msg);
    gint roi_id, class_in_message;
    guint x, y, rw, rh;
    ck_assert (gst_structure_get (s, "roi-id", G_TYPE_INT, &roi_id, "x", G_TYPE_UINT, &x,
            "y", G_TYPE_UINT, &y, "w", G_TYPE_UINT, &rw, "h", G_TYPE_UINT, &rh,
            "class-id", G_TYPE_INT, &class_in_message, NULL));
    ck_assert_int_eq (roi_id, (gint) r + 10);
    ck_assert_str_eq (gst_structure_get_string (s, "roi-type"), rois[r].type);
    ck_assert_uint_eq (x, rois[r].cx);
    ck_assert_uint_eq (y, rois[r].cy);
    ck_assert_uint_eq (rw, rois[r].cw);
    ck_assert_uint_eq (rh, rois[r].ch);
    ck_assert_int_eq (class_in_message, class_id);
    gst_message_unref (msg);
  }
  ck_assert (gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT) == NULL);
  gst_buffer_unref (out);
  /* No regions: no result. */
  out = push_frame (hs, make_frame (format, w, h, 4, rgb, &gray), 1);
  ck_assert (gst_buffer_get_vmoe_meta (out) == NULL);
  gst_buffer_unref (out);
  ck_assert (gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT) == NULL);
  harness_bus_free (hs, bus);
  gst_harness_teardown (hs);
  g_free (rgb);
}
END_TEST

static Suite *
element_suite (void)
{
  Suite *s = suite_create ("vmoeclassify");
  TCase *tc = tcase_create ("element");
  tcase_set_timeout (tc, 300);
  tcase_add_loop_test (tc, test_formats_match_engine, 0, G_N_ELEMENTS (all_formats));
  tcase_add_test (tc, test_gray_model_takes_luma);
  tcase_add_test (tc, test_unsupported_caps_refused);
  tcase_add_test (tc, test_messages);
  tcase_add_test (tc, test_inference_interval);
  tcase_add_test (tc, test_model_swap_while_playing);
  tcase_add_test (tc, test_swap_to_bad_model_keeps_running);
  tcase_add_test (tc, test_bad_models_error_at_start);
  tcase_add_test (tc, test_caps_change_mid_stream);
  tcase_add_test (tc, test_timestamps_and_latency);
  tcase_add_test (tc, test_qos_skips_only_lateness_we_cause);
  tcase_add_test (tc, test_qos_downstream_slow_classifies_all);
  tcase_add_test (tc, test_routing_knobs);
  tcase_add_test (tc, test_entropy_threshold_marks);
  tcase_add_test (tc, test_ensemble_results);
  tcase_add_test (tc, test_frame_size_limits);
  tcase_add_test (tc, test_rejected_setting_keeps_last);
  tcase_add_test (tc, test_swap_resets_settings_the_model_cannot_take);
  tcase_add_test (tc, test_top_k_without_new_session);
  tcase_add_test (tc, test_set_model_never_blocks);
  tcase_add_test (tc, test_non_finite_logits_warn);
  tcase_add_test (tc, test_yuv_colorimetry_matches_videoconvert);
  tcase_add_test (tc, test_unknown_yuv_matrix_warns_once);
  tcase_add_test (tc, test_jpeg_frames_match_videoconvert);
  tcase_add_test (tc, test_meta_survives_downstream);
  tcase_add_test (tc, test_state_cycles);
  tcase_add_test (tc, test_shared_instance_matches_unshared);
  tcase_add_test (tc, test_shared_instance_lifetime_and_swap);
  tcase_add_test (tc, test_shared_instance_mismatch_errors);
  tcase_add_test (tc, test_bounded_queue_blocks_upstream);
  tcase_add_test (tc, test_eos_drains_frames_in_flight);
  tcase_add_test (tc, test_frames_without_timestamps);
  tcase_add_test (tc, test_flushing_seek_discards_frames_in_flight);
  tcase_add_test (tc, test_refused_frame_stops_frames_behind_it);
  tcase_add_test (tc, test_out_of_threads);
  tcase_add_test (tc, test_state_cycles_with_frames_in_flight);
  tcase_add_loop_test (tc, test_regions_of_interest, 0, G_N_ELEMENTS (all_formats));
  /* Last: until the engine bounds JSON nesting, json-glib's recursion
   * overflows the loader thread's stack here. */
  tcase_add_test (tc, test_swap_to_hostile_model_keeps_running);
  suite_add_tcase (s, tc);
  return s;
}

/* The device and fp16 properties reach the engine: fp16 weights give the
 * CPU engine's class with scores within the fp16 tolerance. */
START_TEST (test_vulkan_device_and_fp16)
{
  const int w = 40, h = 30;
  guint8 *rgb = g_malloc (w * h * 3);
  gboolean gray;
  GstBuffer *in = make_frame (GST_VIDEO_FORMAT_RGB, w, h, 3, rgb, &gray);
  int class_id, expert;
  float scores[5];
  engine_expect ("image_k1", rgb, gray, w, h, &class_id, scores, &expert);
  const char *device = g_getenv ("VMOE_VULKAN_DEVICE");
  char *props = g_strdup_printf ("fp16=true device=%s", device ? device : "auto");
  GstHarness *hs = harness_for ("image_k1", props, GST_VIDEO_FORMAT_RGB, w, h);
  GstBuffer *out = push_frame (hs, in, 0);
  GstVmoeMeta *meta = gst_buffer_get_vmoe_meta (out);
  ck_assert (meta != NULL);
  ck_assert_int_eq (meta->class_id, class_id);
  assert_near (meta->score, scores[0], 1e-2);
  ck_assert_int_eq (meta->experts[0], expert);
  gst_buffer_unref (out);
  gst_harness_teardown (hs);
  g_free (props);
  g_free (rgb);
}
END_TEST

/* A device lost while playing is an element error that says so; the frames
 * before it were classified. */
START_TEST (test_vulkan_device_lost)
{
  const int w = 32, h = 32;
  guint8 rgb[32 * 32 * 3];
  gboolean gray;
  /* Read when the session is made: two more submissions, then lost. */
  g_setenv ("VMOE_VULKAN_LOSE_DEVICE_AFTER", "2", TRUE);
  GstHarness *hs = harness_for ("image_k1", NULL, GST_VIDEO_FORMAT_RGB, w, h);
  g_unsetenv ("VMOE_VULKAN_LOSE_DEVICE_AFTER");
  GstBus *bus = gst_bus_new ();
  gst_element_set_bus (hs->element, bus);
  /* Inference runs off the streaming thread, so the failure reaches
   * upstream as the flow return of a later push; every frame that did come
   * out before it was classified. */
  GstFlowReturn flow = GST_FLOW_OK;
  int pushed = 0, out_frames = 0;
  for (; pushed < 40 && flow == GST_FLOW_OK; pushed++) {
    flow = gst_harness_push (hs, make_frame (GST_VIDEO_FORMAT_RGB, w, h, pushed, rgb, &gray));
    GstBuffer *out;
    while ((out = gst_harness_try_pull (hs))) {
      ck_assert (gst_buffer_get_vmoe_meta (out) != NULL);
      gst_buffer_unref (out);
      out_frames++;
    }
    if (flow == GST_FLOW_OK)
      g_usleep (20000);
  }
  ck_assert_int_eq (flow, GST_FLOW_ERROR);
  ck_assert_int_ge (pushed, 3);
  ck_assert_int_le (out_frames, 2);
  g_error_free (expect_bus_error (bus, "the device was lost"));
  gst_element_set_bus (hs->element, NULL);
  gst_object_unref (bus);
  gst_harness_teardown (hs);
}
END_TEST

/* The element on the Vulkan backend: the tests whose results are checked
 * against the CPU engine, with Vulkan's tolerance. */
static Suite *
vulkan_suite (void)
{
  Suite *s = suite_create ("vmoeclassify-vulkan");
  TCase *tc = tcase_create ("element");
  tcase_set_timeout (tc, 300);
  tcase_add_loop_test (tc, test_formats_match_engine, 0, G_N_ELEMENTS (all_formats));
  tcase_add_test (tc, test_gray_model_takes_luma);
  tcase_add_test (tc, test_messages);
  tcase_add_test (tc, test_inference_interval);
  tcase_add_test (tc, test_caps_change_mid_stream);
  tcase_add_test (tc, test_routing_knobs);
  tcase_add_test (tc, test_rejected_setting_keeps_last);
  tcase_add_test (tc, test_top_k_without_new_session);
  tcase_add_test (tc, test_non_finite_logits_warn);
  tcase_add_test (tc, test_yuv_colorimetry_matches_videoconvert);
  tcase_add_test (tc, test_vulkan_device_and_fp16);
  tcase_add_test (tc, test_vulkan_device_lost);
  suite_add_tcase (s, tc);
  return s;
}

/* Whether a Vulkan session opens (VMOE_VULKAN_DEVICE picks the device). */
static gboolean
vulkan_opens (void)
{
  char *path = model_path ("image_k1");
  VmoeModel *model = vmoe_model_load (path, NULL);
  VmoeSessionOptions options;
  vmoe_session_options_init (&options);
  options.backend = VMOE_BACKEND_VULKAN;
  GError *error = NULL;
  VmoeSession *session = model ? vmoe_session_new (model, &options, &error) : NULL;
  if (!session)
    g_print ("test_element: skipped, no Vulkan session: %s\n",
        error ? error->message : "no model");
  gboolean ok = session != NULL;
  g_clear_error (&error);
  vmoe_session_free (session);
  vmoe_model_unref (model);
  g_free (path);
  return ok;
}

int
main (int argc, char **argv)
{
  if (argc != 2 && !(argc == 3 && strcmp (argv[2], "vulkan") == 0)) {
    g_printerr ("usage: test_element PLUGIN.so [vulkan]\n");
    return 1;
  }
  gboolean vulkan = argc == 3;
  if (vulkan) {
    backend = "vulkan";
    score_tolerance = 1e-4;
  }
  gst_check_init (NULL, NULL);
  GError *error = NULL;
  GstPlugin *plugin = gst_plugin_load_file (argv[1], &error);
  if (!plugin) {
    g_printerr ("test_element: cannot load %s: %s\n", argv[1], error->message);
    return 1;
  }
  gst_object_unref (plugin);
  write_test_models ();
  if (vulkan && !vulkan_opens ()) {
    remove_test_models ();
    return 77;
  }
  SRunner *runner = srunner_create (vulkan ? vulkan_suite () : element_suite ());
  srunner_run_all (runner, CK_NORMAL);
  int failed = srunner_ntests_failed (runner);
  srunner_free (runner);
  remove_test_models ();
  /* GstCheck deinitialises GStreamer at exit; with GST_TRACERS=leaks any
   * GstObject or GstMiniObject still alive then is a fatal warning and a
   * non-zero exit. */
  return failed ? 1 : 0;
}
