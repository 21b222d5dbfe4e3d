/* Element tests for vmoeoverlay (GstHarness): real frames with a gradient
 * (never a flat colour, so that any write shows), results attached by hand
 * as vmoeclassify and #12's ROI classification attach them (docs/design.md),
 * and the output compared byte by byte with the input.  Where a text box's
 * exact size depends on the font, the tests check properties that do not:
 * the changed pixels form one filled rectangle at the expected corner, and
 * nothing else changed. */
#include <cairo.h>
#include <fontconfig/fontconfig.h>
#include <gst/check/gstcheck.h>
#include <gst/check/gstharness.h>
#include <gst/video/video.h>
#include <string.h>

#include "gstvmoemeta.h"

static const char *const packed_formats[] = {
  "RGB", "BGR", "RGBx", "BGRx", "xRGB", "xBGR", "RGBA", "BGRA", "ARGB", "ABGR",
};

#define OPAQUE_BLUE 0xff0000ffu
#define OPAQUE_GREEN 0xff00ff00u

/* A frame of `format` whose every byte (padding too) is a gradient value in
 * [40, 220): never 0 or 255, so that a black, white or pure-colour write
 * always changes it. */
static GstBuffer *
gradient_frame (const GstVideoInfo *info)
{
  GstBuffer *buffer = gst_buffer_new_allocate (NULL, GST_VIDEO_INFO_SIZE (info), NULL);
  GstMapInfo map;
  gst_buffer_map (buffer, &map, GST_MAP_WRITE);
  for (gsize i = 0; i < map.size; i++) {
    gsize row = i / GST_VIDEO_INFO_PLANE_STRIDE (info, 0);
    gsize column = i % GST_VIDEO_INFO_PLANE_STRIDE (info, 0);
    map.data[i] = (guint8) (40 + (column * 3 + row * 5) % 180);
  }
  gst_buffer_unmap (buffer, &map);
  return buffer;
}

static void
video_info (GstVideoInfo *info, const char *format, gint width, gint height)
{
  gst_video_info_set_format (info, gst_video_format_from_string (format),
      width, height);
  GST_VIDEO_INFO_FPS_N (info) = 30;
  GST_VIDEO_INFO_FPS_D (info) = 1;
}

static GstHarness *
overlay_harness (const GstVideoInfo *info)
{
  GstHarness *h = gst_harness_new ("vmoeoverlay");
  GstCaps *caps = gst_video_info_to_caps (info);
  gst_harness_set_src_caps (h, caps);
  return h;
}

/* Sets "name=value name=value" on the harness's element, as gst-launch
 * would. */
static void
set_properties (GstHarness *h, const char *props)
{
  gchar **settings = g_strsplit (props ? props : "", " ", -1);
  for (gchar **setting = settings; *setting; setting++) {
    gchar **pair = g_strsplit (*setting, "=", 2);
    ck_assert (pair[1] != NULL);
    gst_util_set_object_arg (G_OBJECT (h->element), pair[0], pair[1]);
    g_strfreev (pair);
  }
  g_strfreev (settings);
}

/* A whole-frame result as vmoeclassify attaches it. */
static GstVmoeMeta *
add_frame_result (GstBuffer *buffer, const char *label, float score,
    const char *superclass, guint n_experts, const gint *experts)
{
  GstVmoeMeta *meta = gst_buffer_add_vmoe_meta (buffer);
  meta->class_id = 7;
  meta->label = g_strdup (label);
  meta->score = score;
  meta->superclass = g_strdup (superclass);
  meta->n_experts = n_experts;
  meta->experts = g_memdup2 (experts, n_experts * sizeof (gint));
  meta->gates = g_new0 (gfloat, n_experts);
  meta->model_name = g_strdup ("fashion-vmoe");
  meta->roi_id = -1;
  return meta;
}

/* An ROI classified per the contract: the `name` structure on the ROI meta
 * and a GstVmoeMeta with its id. */
static GstVideoRegionOfInterestMeta *
add_roi_result (GstBuffer *buffer, const char *name, guint x, guint y, guint w,
    guint h, const char *label, gdouble confidence)
{
  GstVideoRegionOfInterestMeta *roi =
      gst_buffer_add_video_region_of_interest_meta (buffer, "object", x, y, w, h);
  G_GNUC_BEGIN_IGNORE_DEPRECATIONS
  GValueArray *experts = g_value_array_new (1);
  GValue id = G_VALUE_INIT;
  g_value_init (&id, G_TYPE_INT);
  g_value_set_int (&id, 2);
  g_value_array_append (experts, &id);
  GstStructure *result = gst_structure_new (name, "label", G_TYPE_STRING, label,
      "label_id", G_TYPE_INT, 8, "confidence", G_TYPE_DOUBLE, confidence,
      "model_name", G_TYPE_STRING, "fashion-vmoe",
      "experts", g_value_array_get_type (), experts, NULL);
  g_value_array_free (experts);
  G_GNUC_END_IGNORE_DEPRECATIONS
  gst_video_region_of_interest_meta_add_param (roi, result);
  GstVmoeMeta *meta = gst_buffer_add_vmoe_meta (buffer);
  meta->label = g_strdup (label);
  meta->score = (gfloat) confidence;
  meta->roi_id = roi->id;
  return roi;
}

/* Runs `input` through `h` and returns the output's bytes; `input` is
 * consumed. */
static GBytes *
push_and_pull (GstHarness *h, GstBuffer *input)
{
  ck_assert_int_eq (gst_harness_push (h, input), GST_FLOW_OK);
  GstBuffer *output = gst_harness_pull (h);
  ck_assert (output != NULL);
  gsize size = gst_buffer_get_size (output);
  gpointer data = g_malloc (size);
  gst_buffer_extract (output, 0, data, size);
  gst_buffer_unref (output);
  return g_bytes_new_take (data, size);
}

static GBytes *
buffer_bytes (GstBuffer *buffer)
{
  gsize size = gst_buffer_get_size (buffer);
  gpointer data = g_malloc (size);
  gst_buffer_extract (buffer, 0, data, size);
  return g_bytes_new_take (data, size);
}

/* Which pixels changed between two frames, and where the colour bytes lie. */
typedef struct {
  const GstVideoInfo *info;
  const guint8 *before, *after;
  gint n_changed;
  gint x0, y0, x1, y1;          /* bounding box of the changed pixels */
  gboolean only_colour_bytes;   /* no alpha, x or padding byte changed */
} FrameDiff;

static const guint8 *
pixel_at (const GstVideoInfo *info, const guint8 *data, gint x, gint y)
{
  return data + (gsize) y * GST_VIDEO_INFO_PLANE_STRIDE (info, 0) +
      (gsize) x * GST_VIDEO_INFO_COMP_PSTRIDE (info, 0);
}

static gboolean
is_colour_byte (const GstVideoInfo *info, gsize offset)
{
  gsize stride = GST_VIDEO_INFO_PLANE_STRIDE (info, 0);
  gsize pixel_stride = GST_VIDEO_INFO_COMP_PSTRIDE (info, 0);
  gsize column = offset % stride;
  if (column >= (gsize) GST_VIDEO_INFO_WIDTH (info) * pixel_stride)
    return FALSE;
  gsize within = column % pixel_stride;
  for (int c = 0; c < 3; c++)
    if (within == (gsize) GST_VIDEO_INFO_COMP_POFFSET (info, c))
      return TRUE;
  return FALSE;
}

static gboolean
pixel_changed (const FrameDiff *d, gint x, gint y)
{
  const guint8 *a = pixel_at (d->info, d->before, x, y);
  const guint8 *b = pixel_at (d->info, d->after, x, y);
  for (int c = 0; c < 3; c++) {
    gint offset = GST_VIDEO_INFO_COMP_POFFSET (d->info, c);
    if (a[offset] != b[offset])
      return TRUE;
  }
  return FALSE;
}

static FrameDiff
frame_diff (const GstVideoInfo *info, GBytes *before, GBytes *after)
{
  gsize size;
  FrameDiff d = { info, g_bytes_get_data (before, &size),
    g_bytes_get_data (after, NULL), 0, G_MAXINT, G_MAXINT, -1, -1, TRUE };
  ck_assert_uint_eq (size, g_bytes_get_size (after));
  for (gsize i = 0; i < size; i++)
    if (d.before[i] != d.after[i] && !is_colour_byte (info, i))
      d.only_colour_bytes = FALSE;
  for (gint y = 0; y < GST_VIDEO_INFO_HEIGHT (info); y++)
    for (gint x = 0; x < GST_VIDEO_INFO_WIDTH (info); x++)
      if (pixel_changed (&d, x, y)) {
        d.n_changed++;
        d.x0 = MIN (d.x0, x);
        d.y0 = MIN (d.y0, y);
        d.x1 = MAX (d.x1, x + 1);
        d.y1 = MAX (d.y1, y + 1);
      }
  return d;
}

static gint
diff_width (const FrameDiff *d)
{
  return d->n_changed ? d->x1 - d->x0 : 0;
}

/* The pixel's colour as 0xRRGGBB. */
static guint32
rgb_at (const GstVideoInfo *info, const guint8 *data, gint x, gint y)
{
  const guint8 *p = pixel_at (info, data, x, y);
  return (guint32) p[GST_VIDEO_INFO_COMP_POFFSET (info, GST_VIDEO_COMP_R)] << 16 |
      (guint32) p[GST_VIDEO_INFO_COMP_POFFSET (info, GST_VIDEO_COMP_G)] << 8 |
      p[GST_VIDEO_INFO_COMP_POFFSET (info, GST_VIDEO_COMP_B)];
}

/* Draws a whole-frame result on a 320x120 frame of `format`, with `props`
 * set as in gst-launch, and returns the difference.  The frames stay alive
 * in `before` and `after` for the caller. */
static FrameDiff
overlay_full_frame (const char *format, const char *props, GstVideoInfo *info,
    GBytes **before, GBytes **after, const char *superclass)
{
  video_info (info, format, 320, 120);
  GstHarness *h = overlay_harness (info);
  set_properties (h, props);
  GstBuffer *input = gradient_frame (info);
  gint experts[] = { 3, 5 };
  add_frame_result (input, "Sneaker", 0.87f, superclass, 2, experts);
  *before = buffer_bytes (input);
  *after = push_and_pull (h, input);
  gst_harness_teardown (h);
  return frame_diff (info, *before, *after);
}

/* With an opaque background the text box is one filled rectangle at the top
 * left, drawn in the right channels; nothing else changes, not even alpha or
 * padding. */
GST_START_TEST (test_text_box_changes_only_its_region)
{
  const char *format = packed_formats[__i__];
  GstVideoInfo info;
  GBytes *before, *after;
  FrameDiff d = overlay_full_frame (format,
      "background-color=0xff0000ff text-color=0xffffffff font-size=14", &info,
      &before, &after, "footwear");
  ck_assert_msg (d.only_colour_bytes, "%s: a non-colour byte changed", format);
  ck_assert_int_eq (d.x0, 0);
  ck_assert_int_eq (d.y0, 0);
  /* Every pixel in the bounding box changed: the box is filled and nothing
   * lies outside it. */
  ck_assert_int_eq (d.n_changed, (d.x1 - d.x0) * (d.y1 - d.y0));
  ck_assert_int_ge (d.y1, 14);
  ck_assert_int_le (d.y1, 14 * 3);
  /* "Sneaker 0.87 [footwear]": 23 characters of a 14 px font. */
  ck_assert_int_gt (d.x1, 23 * 4);
  ck_assert_int_lt (d.x1, 320);
  /* The background is pure blue in this format's order, and the text white
   * or anti-aliased between white and blue. */
  gint blue = 0, white = 0;
  for (gint y = d.y0; y < d.y1; y++)
    for (gint x = d.x0; x < d.x1; x++) {
      guint32 rgb = rgb_at (&info, d.after, x, y);
      blue += rgb == 0x0000ff;
      white += rgb == 0xffffff;
      ck_assert_msg ((rgb >> 16) == ((rgb >> 8) & 0xff) && (rgb & 0xff) == 0xff,
          "%s: pixel (%d, %d) is %06x, neither blue, white nor between", format,
          x, y, rgb);
    }
  ck_assert_int_gt (blue, d.n_changed / 2);
  ck_assert_int_gt (white, 20);
  g_bytes_unref (before);
  g_bytes_unref (after);
}
GST_END_TEST;

/* A half-transparent background blends with the frame: the pixel under the
 * box's corner becomes the hand-computed mix. */
GST_START_TEST (test_background_blends)
{
  GstVideoInfo info;
  GBytes *before, *after;
  FrameDiff d = overlay_full_frame ("RGB", "background-color=0x80000000", &info,
      &before, &after, NULL);
  ck_assert_int_gt (d.n_changed, 0);
  guint32 under = rgb_at (&info, d.before, 0, 0);
  guint32 over = rgb_at (&info, d.after, 0, 0);
  for (int shift = 0; shift <= 16; shift += 8) {
    /* black at alpha 128/255 */
    gint expected = (gint) (((under >> shift) & 0xff) * (255 - 128) / 255.0 + 0.5);
    ck_assert_int_le (abs ((gint) ((over >> shift) & 0xff) - expected), 1);
  }
  g_bytes_unref (before);
  g_bytes_unref (after);
}
GST_END_TEST;

/* Each field switch changes what is drawn: the text box narrows when a field
 * is turned off, and with none left nothing is drawn. */
GST_START_TEST (test_field_switches)
{
  static const char *const cases[] = {
    "show-score=false", "show-expert=false", "show-label=false",
  };
  GstVideoInfo info;
  GBytes *before, *after;
  FrameDiff all = overlay_full_frame ("BGR", NULL, &info, &before, &after, "footwear");
  gint full_width = diff_width (&all);
  ck_assert_int_gt (full_width, 0);
  g_bytes_unref (before);
  g_bytes_unref (after);
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    FrameDiff d = overlay_full_frame ("BGR", cases[i], &info, &before, &after,
        "footwear");
    ck_assert_msg (diff_width (&d) > 0 && diff_width (&d) < full_width,
        "%s: width %d, all fields %d", cases[i], diff_width (&d), full_width);
    g_bytes_unref (before);
    g_bytes_unref (after);
  }
  /* Without a super-class the experts are shown, and the switch hides them. */
  FrameDiff ids = overlay_full_frame ("BGR", NULL, &info, &before, &after, NULL);
  gint ids_width = diff_width (&ids);
  g_bytes_unref (before);
  g_bytes_unref (after);
  FrameDiff no_ids = overlay_full_frame ("BGR", "show-expert=false", &info,
      &before, &after, NULL);
  ck_assert_int_lt (diff_width (&no_ids), ids_width);
  g_bytes_unref (before);
  g_bytes_unref (after);

  FrameDiff none = overlay_full_frame ("BGR",
      "show-label=false show-score=false show-expert=false", &info, &before,
      &after, "footwear");
  ck_assert_int_eq (none.n_changed, 0);
  ck_assert (g_bytes_equal (before, after));
  g_bytes_unref (before);
  g_bytes_unref (after);
}
GST_END_TEST;

/* Two classifiers in a row: one line each, stacked from the top left, each
 * as tall as a single result's box. */
GST_START_TEST (test_results_stack)
{
  GstVideoInfo info;
  GBytes *before, *after;
  FrameDiff one = overlay_full_frame ("RGB", "background-color=0xff0000ff",
      &info, &before, &after, NULL);
  g_bytes_unref (before);
  g_bytes_unref (after);

  GstHarness *h = overlay_harness (&info);
  set_properties (h, "background-color=0xff0000ff");
  GstBuffer *input = gradient_frame (&info);
  gint experts[] = { 3, 5 };
  add_frame_result (input, "Sneaker", 0.87f, NULL, 2, experts);
  add_frame_result (input, "Sneaker", 0.87f, NULL, 2, experts);
  before = buffer_bytes (input);
  after = push_and_pull (h, input);
  FrameDiff two = frame_diff (&info, before, after);
  ck_assert_int_eq (two.x0, 0);
  ck_assert_int_eq (two.y0, 0);
  ck_assert_int_eq (two.x1, one.x1);
  ck_assert_int_eq (two.y1, 2 * one.y1);
  ck_assert_int_eq (two.n_changed, 2 * one.n_changed);
  g_bytes_unref (before);
  g_bytes_unref (after);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* A larger font makes a taller box. */
GST_START_TEST (test_font_size)
{
  GstVideoInfo info;
  GBytes *before, *after;
  FrameDiff small = overlay_full_frame ("RGB", "font-size=10", &info, &before,
      &after, NULL);
  g_bytes_unref (before);
  g_bytes_unref (after);
  FrameDiff large = overlay_full_frame ("RGB", "font-size=30", &info, &before,
      &after, NULL);
  g_bytes_unref (before);
  g_bytes_unref (after);
  ck_assert_int_gt (large.y1, small.y1 * 2);
}
GST_END_TEST;

/* Frames without anything of ours pass bit-identical: no meta at all, an
 * ROI without our structure, a per-ROI GstVmoeMeta without its ROI. */
GST_START_TEST (test_nothing_to_draw_passes_unchanged)
{
  const char *format = packed_formats[__i__];
  GstVideoInfo info;
  video_info (&info, format, 64, 48);
  GstHarness *h = overlay_harness (&info);
  for (int variant = 0; variant < 3; variant++) {
    GstBuffer *input = gradient_frame (&info);
    if (variant == 1) {
      GstVideoRegionOfInterestMeta *roi =
          gst_buffer_add_video_region_of_interest_meta (input, "face", 4, 4, 20, 20);
      gst_video_region_of_interest_meta_add_param (roi,
          gst_structure_new ("detection", "confidence", G_TYPE_DOUBLE, 0.9, NULL));
    } else if (variant == 2) {
      GstVmoeMeta *meta = gst_buffer_add_vmoe_meta (input);
      meta->label = g_strdup ("Bag");
      meta->roi_id = 3;
    }
    GBytes *before = buffer_bytes (input);
    GBytes *after = push_and_pull (h, input);
    ck_assert_msg (g_bytes_equal (before, after), "%s, variant %d changed",
        format, variant);
    g_bytes_unref (before);
    g_bytes_unref (after);
  }
  gst_harness_teardown (h);
}
GST_END_TEST;

static gboolean
on_outline (gint x, gint y, gint rx, gint ry, gint rw, gint rh, gint t)
{
  gboolean inside = x >= rx && x < rx + rw && y >= ry && y < ry + rh;
  gboolean interior = x >= rx + t && x < rx + rw - t && y >= ry + t &&
      y < ry + rh - t;
  return inside && !interior;
}

/* The outline of an ROI is exactly the hand-derived ring of `thickness`
 * pixels inside its rectangle, in the box colour; its label sits above the
 * box, and the interior and the rest of the frame stay. */
GST_START_TEST (test_roi_box_and_label)
{
  const gint rx = 60, ry = 50, rw = 80, rh = 60, t = 3;
  GstVideoInfo info;
  video_info (&info, "BGRx", 200, 150);
  GstHarness *h = overlay_harness (&info);
  set_properties (h, "thickness=3 box-color=0xff00ff00 show-label=false "
      "show-score=false show-expert=false");

  GstBuffer *input = gradient_frame (&info);
  add_roi_result (input, "vmoe", rx, ry, rw, rh, "Bag", 0.5);
  GBytes *before = buffer_bytes (input);
  GBytes *after = push_and_pull (h, input);
  FrameDiff d = frame_diff (&info, before, after);
  ck_assert (d.only_colour_bytes);
  for (gint y = 0; y < 150; y++)
    for (gint x = 0; x < 200; x++) {
      gboolean ring = on_outline (x, y, rx, ry, rw, rh, t);
      if (ring)
        ck_assert_msg (rgb_at (&info, d.after, x, y) == 0x00ff00,
            "(%d, %d) on the outline is %06x", x, y, rgb_at (&info, d.after, x, y));
      else
        ck_assert_msg (!pixel_changed (&d, x, y), "(%d, %d) off the outline changed",
            x, y);
    }
  g_bytes_unref (before);
  g_bytes_unref (after);

  /* With its label: the same ring, and a text box whose bottom-left corner
   * touches the box's top-left; the interior stays. */
  g_object_set (h->element, "show-label", TRUE, "show-score", TRUE,
      "background-color", OPAQUE_BLUE, NULL);
  input = gradient_frame (&info);
  add_roi_result (input, "vmoe", rx, ry, rw, rh, "Bag", 0.5);
  before = buffer_bytes (input);
  after = push_and_pull (h, input);
  d = frame_diff (&info, before, after);
  gint label_pixels = 0;
  for (gint y = 0; y < 150; y++)
    for (gint x = 0; x < 200; x++) {
      if (on_outline (x, y, rx, ry, rw, rh, t))
        ck_assert (rgb_at (&info, d.after, x, y) == 0x00ff00);
      else if (pixel_changed (&d, x, y)) {
        ck_assert_msg (y < ry && x >= rx, "(%d, %d) changed", x, y);
        label_pixels++;
      }
    }
  ck_assert (pixel_changed (&d, rx, ry - 1));
  ck_assert (!pixel_changed (&d, rx - 1, ry - 1));
  ck_assert (!pixel_changed (&d, rx, ry - 40));
  ck_assert_int_gt (label_pixels, 14 * 20);
  g_bytes_unref (before);
  g_bytes_unref (after);

  /* A structure of another name is someone else's result... */
  input = gradient_frame (&info);
  add_roi_result (input, "other", rx, ry, rw, rh, "Bag", 0.5);
  before = buffer_bytes (input);
  after = push_and_pull (h, input);
  ck_assert (g_bytes_equal (before, after));
  g_bytes_unref (before);
  g_bytes_unref (after);
  /* ...unless attribute-name names it. */
  g_object_set (h->element, "attribute-name", "other", NULL);
  input = gradient_frame (&info);
  add_roi_result (input, "other", rx, ry, rw, rh, "Bag", 0.5);
  before = buffer_bytes (input);
  after = push_and_pull (h, input);
  d = frame_diff (&info, before, after);
  ck_assert (rgb_at (&info, d.after, rx, ry) == 0x00ff00);
  g_bytes_unref (before);
  g_bytes_unref (after);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* An ROI at the top of the frame has no room above: its label goes inside,
 * at its top left, and still nothing outside the ROI changes. */
GST_START_TEST (test_roi_label_inside_at_top)
{
  GstVideoInfo info;
  video_info (&info, "RGB", 320, 120);
  GstHarness *h = overlay_harness (&info);
  set_properties (h, "background-color=0xff0000ff");
  GstBuffer *input = gradient_frame (&info);
  add_roi_result (input, "vmoe", 20, 0, 260, 80, "Trouser", 0.25);
  GBytes *before = buffer_bytes (input);
  GBytes *after = push_and_pull (h, input);
  FrameDiff d = frame_diff (&info, before, after);
  ck_assert_int_eq (d.x0, 20);
  ck_assert_int_eq (d.y0, 0);
  ck_assert_int_eq (d.x1, 280);
  ck_assert_int_eq (d.y1, 80);
  /* The label: blue just inside the outline's corner. */
  ck_assert_uint_eq (rgb_at (&info, d.after, 22, 2), 0x0000ff);
  g_bytes_unref (before);
  g_bytes_unref (after);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Hostile metadata is drawn as far as it makes sense and never crashes:
 * invalid UTF-8, ROIs reaching past the frame or empty, fields of the wrong
 * type; the element keeps drawing afterwards. */
GST_START_TEST (test_hostile_metadata)
{
  GstVideoInfo info;
  video_info (&info, "RGB", 64, 48);
  GstHarness *h = overlay_harness (&info);
  GstBuffer *input = gradient_frame (&info);
  add_frame_result (input, "bad \xff\xfe utf-8 \xc3", 2.5f, "\x80", 0, NULL);
  add_roi_result (input, "vmoe", G_MAXUINT - 5, G_MAXUINT - 5, G_MAXUINT, 10,
      "far", 0.1);
  add_roi_result (input, "vmoe", 10, 10, 0, 0, "empty", 0.1);
  add_roi_result (input, "vmoe", 30, 20, 1000, 1000, "huge", -1);
  GstVideoRegionOfInterestMeta *roi =
      gst_buffer_add_video_region_of_interest_meta (input, "x", 5, 5, 10, 10);
  gst_video_region_of_interest_meta_add_param (roi, gst_structure_new ("vmoe",
          "label", G_TYPE_INT, 3, "confidence", G_TYPE_STRING, "high",
          "experts", G_TYPE_STRING, "none", NULL));
  GBytes *before = buffer_bytes (input);
  GBytes *after = push_and_pull (h, input);
  FrameDiff d = frame_diff (&info, before, after);
  ck_assert_int_gt (d.n_changed, 0);
  /* The huge ROI's outline runs along the frame's edge from (30, 20). */
  ck_assert_uint_eq (rgb_at (&info, d.after, 30, 47), 0x00ff00);
  g_bytes_unref (before);
  g_bytes_unref (after);

  /* The font survived the invalid text. */
  input = gradient_frame (&info);
  add_frame_result (input, "Coat", 0.5f, NULL, 0, NULL);
  g_object_set (h->element, "background-color", 0, NULL);
  before = buffer_bytes (input);
  after = push_and_pull (h, input);
  d = frame_diff (&info, before, after);
  ck_assert_int_gt (d.n_changed, 10);
  g_bytes_unref (before);
  g_bytes_unref (after);
  gst_harness_teardown (h);
}
GST_END_TEST;

/* Formats we do not draw on are not in the pad templates: upstream must
 * convert (videoconvert negotiates), and a fixed one is refused. */
GST_START_TEST (test_other_formats_refused)
{
  GstHarness *h = gst_harness_new ("vmoeoverlay");
  gst_harness_set_src_caps_str (h,
      "video/x-raw, format=I420, width=64, height=48, framerate=30/1");
  GstBuffer *input = gst_buffer_new_allocate (NULL, 64 * 48 * 3 / 2, NULL);
  ck_assert_int_eq (gst_harness_push (h, input), GST_FLOW_NOT_NEGOTIATED);
  gst_harness_teardown (h);

  GstElement *element = gst_element_factory_make ("vmoeoverlay", NULL);
  GstPad *sink = gst_element_get_static_pad (element, "sink");
  GstCaps *template = gst_pad_get_pad_template_caps (sink);
  GstCaps *nv12 = gst_caps_from_string ("video/x-raw, format=NV12");
  GstCaps *bgr = gst_caps_from_string ("video/x-raw, format=BGR");
  ck_assert (!gst_caps_can_intersect (template, nv12));
  ck_assert (gst_caps_can_intersect (template, bgr));
  gst_caps_unref (bgr);
  gst_caps_unref (nv12);
  gst_caps_unref (template);
  gst_object_unref (sink);
  gst_object_unref (element);
}
GST_END_TEST;

static Suite *
overlay_suite (void)
{
  Suite *s = suite_create ("vmoeoverlay");
  TCase *tc = tcase_create ("overlay");
  tcase_set_timeout (tc, 300);
  tcase_add_loop_test (tc, test_text_box_changes_only_its_region, 0,
      G_N_ELEMENTS (packed_formats));
  tcase_add_test (tc, test_background_blends);
  tcase_add_test (tc, test_field_switches);
  tcase_add_test (tc, test_results_stack);
  tcase_add_test (tc, test_font_size);
  tcase_add_loop_test (tc, test_nothing_to_draw_passes_unchanged, 0,
      G_N_ELEMENTS (packed_formats));
  tcase_add_test (tc, test_roi_box_and_label);
  tcase_add_test (tc, test_roi_label_inside_at_top);
  tcase_add_test (tc, test_hostile_metadata);
  tcase_add_test (tc, test_other_formats_refused);
  suite_add_tcase (s, tc);
  return s;
}

int
main (int argc, char **argv)
{
  if (argc != 2) {
    g_printerr ("usage: test_overlay PLUGIN.so\n");
    return 1;
  }
  gst_check_init (NULL, NULL);
  GError *error = NULL;
  GstPlugin *plugin = gst_plugin_load_file (argv[1], &error);
  if (!plugin) {
    g_printerr ("test_overlay: cannot load %s: %s\n", argv[1], error->message);
    return 1;
  }
  gst_object_unref (plugin);
  SRunner *runner = srunner_create (overlay_suite ());
  srunner_run_all (runner, CK_NORMAL);
  int failed = srunner_ntests_failed (runner);
  srunner_free (runner);
  if (failed)
    return 1;
  /* cairo's font caches and fontconfig's configuration live until these
   * calls; without them LeakSanitizer would count them as leaks.  Every
   * element is gone by now (a failed test may leave one, hence only after
   * success), so any cairo object still alive would be ours and would make
   * cairo abort here. */
  cairo_debug_reset_static_data ();
  FcFini ();
  return 0;
}
