/* vmoeoverlay: draws the results of vmoeclassify onto the frames, in place,
 * after DL Streamer's gvawatermark: for the whole frame (GstVmoeMeta with
 * roi_id -1) a text box at the top left with the label, the score and the
 * super-class or experts; for each classified region of interest (a
 * GstVideoRegionOfInterestMeta carrying the `attribute-name` structure,
 * docs/design.md) its box outline and a text box at its top left.
 *
 * Only packed 8-bit RGB formats are accepted, so that videoconvert
 * negotiates any other format in front of us.  Text is drawn with cairo in a
 * scratch ARGB32 surface the size of the text box only: the box's pixels are
 * copied in, drawn over and copied back, so the 3-byte formats and every
 * 4-byte channel order share one path, the alpha channel of RGBA-like frames
 * is left as it was, and the work per frame is bounded by what is drawn, not
 * by the frame.  Box outlines are axis-aligned rectangles, blended directly.
 * A frame with nothing to draw is not even mapped. */
#include "gstvmoeoverlay.h"

#include <math.h>
#include <string.h>

#include <cairo.h>
#include <gst/video/video.h>

#include "gstvmoemeta.h"
#include "gstvmoeresult.h"

GST_DEBUG_CATEGORY_STATIC (gst_vmoe_overlay_debug);
#define GST_CAT_DEFAULT gst_vmoe_overlay_debug

#define FORMATS "{ RGB, BGR, RGBx, BGRx, xRGB, xBGR, RGBA, BGRA, ARGB, ABGR }"

enum {
  PROP_0,
  PROP_SHOW_LABEL,
  PROP_SHOW_SCORE,
  PROP_SHOW_EXPERT,
  PROP_FONT_SIZE,
  PROP_TEXT_COLOR,
  PROP_BACKGROUND_COLOR,
  PROP_BOX_COLOR,
  PROP_THICKNESS,
  PROP_ATTRIBUTE_NAME,
  N_PROPS,
};
static GParamSpec *properties[N_PROPS];

#define DEFAULT_FONT_SIZE 14.0
#define DEFAULT_TEXT_COLOR 0xffffffffu
#define DEFAULT_BACKGROUND_COLOR 0xb0000000u
#define DEFAULT_BOX_COLOR 0xff00ff00u
#define DEFAULT_THICKNESS 2
#define DEFAULT_ATTRIBUTE_NAME "vmoe"

/* What one frame is drawn with: the properties, copied under the object
 * lock so that they may change while playing. */
typedef struct {
  gboolean show_label;
  gboolean show_score;
  gboolean show_expert;
  gdouble font_size;
  guint32 text_color;
  guint32 background_color;
  guint32 box_color;
  guint thickness;
  gchar *attribute_name;
} OverlaySettings;

/* A text box in frame coordinates, possibly reaching outside the frame. */
typedef struct {
  gint x, y, w, h;
  gchar *text;
} OverlayLabel;

typedef struct {
  gint64 x, y, w, h;
} OverlayBox;

struct _GstVmoeOverlay {
  GstVideoFilter parent;

  /* Properties, under the object lock. */
  OverlaySettings settings;

  /* Streaming thread only. */
  cairo_scaled_font_t *font;
  gdouble font_size_made;         /* the size `font` was made for */
  guchar *scratch;                /* the text box's ARGB32 pixels */
  gsize scratch_size;
};

#define gst_vmoe_overlay_parent_class parent_class
G_DEFINE_TYPE (GstVmoeOverlay, gst_vmoe_overlay, GST_TYPE_VIDEO_FILTER);
GST_ELEMENT_REGISTER_DEFINE (vmoeoverlay, "vmoeoverlay", GST_RANK_NONE,
    GST_TYPE_VMOE_OVERLAY);

static void
release_drawing_state (GstVmoeOverlay *self)
{
  g_clear_pointer (&self->font, cairo_scaled_font_destroy);
  self->font_size_made = 0;
  g_clear_pointer (&self->scratch, g_free);
  self->scratch_size = 0;
}

/* The font for `size`, made once per size; NULL (with a warning once) if
 * cairo cannot make one, and then only boxes are drawn. */
static cairo_scaled_font_t *
ensure_font (GstVmoeOverlay *self, gdouble size)
{
  if (self->font && self->font_size_made == size)
    return cairo_scaled_font_status (self->font) == CAIRO_STATUS_SUCCESS ?
        self->font : NULL;
  g_clear_pointer (&self->font, cairo_scaled_font_destroy);
  cairo_font_face_t *face = cairo_toy_font_face_create ("Sans",
      CAIRO_FONT_SLANT_NORMAL, CAIRO_FONT_WEIGHT_BOLD);
  cairo_matrix_t font_matrix, ctm;
  cairo_matrix_init_scale (&font_matrix, size, size);
  cairo_matrix_init_identity (&ctm);
  cairo_font_options_t *options = cairo_font_options_create ();
  self->font = cairo_scaled_font_create (face, &font_matrix, &ctm, options);
  self->font_size_made = size;
  cairo_font_options_destroy (options);
  cairo_font_face_destroy (face);
  cairo_status_t status = cairo_scaled_font_status (self->font);
  if (status != CAIRO_STATUS_SUCCESS) {
    GST_ELEMENT_WARNING (self, RESOURCE, FAILED, (NULL),
        ("cairo could not make a %g px font (%s): drawing boxes only", size,
            cairo_status_to_string (status)));
    return NULL;
  }
  return self->font;
}

/* The label's words as the settings ask for them, NULL when none is left.
 * Each part may be NULL.  The result is valid UTF-8 whatever the metadata
 * held: cairo puts a font into a lasting error state on invalid UTF-8. */
static gchar *
compose_text (const OverlaySettings *s, const gchar *label, gboolean have_score,
    gdouble score, const gchar *expert)
{
  GString *text = g_string_new (NULL);
  if (s->show_label && label && *label)
    g_string_append (text, label);
  if (s->show_score && have_score)
    g_string_append_printf (text, "%s%.2f", text->len ? " " : "", score);
  if (s->show_expert && expert && *expert)
    g_string_append_printf (text, "%s[%s]", text->len ? " " : "", expert);
  if (text->len == 0) {
    g_string_free (text, TRUE);
    return NULL;
  }
  gchar *valid = g_utf8_make_valid (text->str, (gssize) text->len);
  g_string_free (text, TRUE);
  return valid;
}

/* "expert 3" or "experts 3,5": what an unnamed image routing chose. */
static gchar *
experts_text (const gint *experts, guint n)
{
  if (n == 0)
    return NULL;
  GString *text = g_string_new (n == 1 ? "expert " : "experts ");
  for (guint i = 0; i < n; i++)
    g_string_append_printf (text, "%s%d", i ? "," : "", experts[i]);
  return g_string_free (text, FALSE);
}

static gchar *
full_frame_text (const OverlaySettings *s, const GstVmoeMeta *meta)
{
  g_autofree gchar *class_name = meta->label ? NULL :
      g_strdup_printf ("class %d", meta->class_id);
  g_autofree gchar *experts = meta->superclass ? NULL :
      experts_text (meta->experts, meta->n_experts);
  return compose_text (s, meta->label ? meta->label : class_name, TRUE,
      meta->score, meta->superclass ? meta->superclass : experts);
}

/* The expert ids of the ROI structure's `experts`: a GValueArray as the
 * contract says, or a GstValueArray, which is what the structure's string
 * form gives back. */
static gchar *
roi_experts_text (const GstStructure *result)
{
  const GValue *value = gst_structure_get_value (result, "experts");
  if (!value)
    return NULL;
  GArray *numbers = g_array_new (FALSE, FALSE, sizeof (gdouble));
  GArray *ids = g_array_new (FALSE, FALSE, sizeof (gint));
  if (gst_vmoe_value_get_numbers (value, numbers))
    for (guint i = 0; i < numbers->len; i++)
      g_array_append_vals (ids, &(gint) { (gint) g_array_index (numbers, gdouble, i) }, 1);
  g_array_free (numbers, TRUE);
  gchar *text = experts_text ((const gint *) ids->data, ids->len);
  g_array_free (ids, TRUE);
  return text;
}

static gchar *
roi_text (const OverlaySettings *s, const GstStructure *result)
{
  const gchar *label = gst_structure_get_string (result, "label");
  gint label_id;
  g_autofree gchar *class_name = !label &&
      gst_structure_get_int (result, "label_id", &label_id) ?
      g_strdup_printf ("class %d", label_id) : NULL;
  gdouble confidence = 0;
  gboolean have_score = gst_structure_get_double (result, "confidence",
      &confidence);
  const gchar *superclass = gst_structure_get_string (result, "superclass");
  g_autofree gchar *experts = superclass ? NULL : roi_experts_text (result);
  return compose_text (s, label ? label : class_name, have_score, confidence,
      superclass ? superclass : experts);
}

static void
clear_label (OverlayLabel *label)
{
  g_free (label->text);
}

/* Inner padding of a text box. */
static gint
label_padding (gdouble font_size)
{
  return MAX (1, (gint) lround (font_size / 4));
}

/* Sizes `label` for its text; `x`, `y` stay to be placed. */
static void
measure_label (OverlayLabel *label, cairo_scaled_font_t *font,
    gdouble font_size, gint line_height)
{
  cairo_text_extents_t extents;
  cairo_scaled_font_text_extents (font, label->text, &extents);
  label->w = (gint) ceil (MAX (extents.x_advance,
          extents.x_bearing + extents.width)) + 2 * label_padding (font_size);
  label->h = line_height;
}

/* Collects what `buffer` asks to draw: labels for the whole-frame results,
 * stacked from the top left, then for each classified ROI its box and a
 * label just above it (inside it when there is no room above).  FALSE when
 * there is nothing to draw. */
static gboolean
plan_overlay (GstVmoeOverlay *self, GstBuffer *buffer, const OverlaySettings *s,
    gint frame_width, GArray *labels, GArray *boxes)
{
  cairo_scaled_font_t *font = ensure_font (self, s->font_size);
  cairo_font_extents_t font_extents = { 0 };
  if (font)
    cairo_scaled_font_extents (font, &font_extents);
  gint line_height = (gint) ceil (font_extents.ascent + font_extents.descent) +
      2 * label_padding (s->font_size);

  gpointer state = NULL;
  GstMeta *meta;
  while (font && (meta = gst_buffer_iterate_meta_filtered (buffer, &state,
              GST_VMOE_META_API_TYPE))) {
    const GstVmoeMeta *result = (const GstVmoeMeta *) meta;
    if (result->roi_id != -1)
      continue;                 /* drawn from its ROI meta's structure */
    OverlayLabel label = { 0, 0, 0, 0, full_frame_text (s, result) };
    if (!label.text)
      continue;
    measure_label (&label, font, s->font_size, line_height);
    label.y = (gint) labels->len * line_height;
    g_array_append_val (labels, label);
  }

  state = NULL;
  while ((meta = gst_buffer_iterate_meta_filtered (buffer, &state,
              GST_VIDEO_REGION_OF_INTEREST_META_API_TYPE))) {
    GstVideoRegionOfInterestMeta *roi = (GstVideoRegionOfInterestMeta *) meta;
    GstStructure *result = gst_video_region_of_interest_meta_get_param (roi,
        s->attribute_name);
    if (!result)
      continue;                 /* not classified by us */
    OverlayBox box = { roi->x, roi->y, roi->w, roi->h };
    g_array_append_val (boxes, box);
    OverlayLabel label = { 0, 0, 0, 0, font ? roi_text (s, result) : NULL };
    if (!label.text)
      continue;
    measure_label (&label, font, s->font_size, line_height);
    gint64 above = box.y - line_height;
    label.y = (gint) (above >= 0 ? above : MIN (box.y, G_MAXINT / 2));
    label.x = (gint) CLAMP (box.x, 0, MAX (0, frame_width - label.w));
    g_array_append_val (labels, label);
  }
  return labels->len > 0 || boxes->len > 0;
}

/* Where the colour channels of packed-RGB `frame` lie. */
typedef struct {
  guint8 *data;
  gint stride, pixel_stride;
  gint r, g, b;                  /* byte offsets within a pixel */
} PackedPixels;

static PackedPixels
packed_pixels (GstVideoFrame *frame)
{
  return (PackedPixels) {
    GST_VIDEO_FRAME_PLANE_DATA (frame, 0),
    GST_VIDEO_FRAME_PLANE_STRIDE (frame, 0),
    GST_VIDEO_FRAME_COMP_PSTRIDE (frame, 0),
    GST_VIDEO_FRAME_COMP_POFFSET (frame, GST_VIDEO_COMP_R),
    GST_VIDEO_FRAME_COMP_POFFSET (frame, GST_VIDEO_COMP_G),
    GST_VIDEO_FRAME_COMP_POFFSET (frame, GST_VIDEO_COMP_B),
  };
}

static guint8
blend_channel (guint8 under, guint8 over, guint alpha)
{
  return (guint8) ((over * alpha + under * (255 - alpha) + 127) / 255);
}

/* Blends `argb` over the pixels [x0, x1) x [y0, y1), clipped to the frame. */
static void
blend_rect (GstVideoFrame *frame, gint64 x0, gint64 y0, gint64 x1, gint64 y1,
    guint32 argb)
{
  gint width = GST_VIDEO_FRAME_WIDTH (frame), height = GST_VIDEO_FRAME_HEIGHT (frame);
  x0 = CLAMP (x0, 0, width);
  x1 = CLAMP (x1, 0, width);
  y0 = CLAMP (y0, 0, height);
  y1 = CLAMP (y1, 0, height);
  PackedPixels p = packed_pixels (frame);
  guint alpha = argb >> 24;
  guint8 r = (argb >> 16) & 0xff, g = (argb >> 8) & 0xff, b = argb & 0xff;
  for (gint64 y = y0; y < y1; y++) {
    guint8 *row = p.data + y * p.stride;
    for (gint64 x = x0; x < x1; x++) {
      guint8 *pixel = row + x * p.pixel_stride;
      pixel[p.r] = blend_channel (pixel[p.r], r, alpha);
      pixel[p.g] = blend_channel (pixel[p.g], g, alpha);
      pixel[p.b] = blend_channel (pixel[p.b], b, alpha);
    }
  }
}

/* The outline of `box`, `thickness` pixels wide on its inside; each pixel is
 * blended once even where the sides meet or overlap. */
static void
draw_box (GstVideoFrame *frame, const OverlayBox *box, guint thickness,
    guint32 argb)
{
  if (box->w <= 0 || box->h <= 0)
    return;
  gint64 x1 = box->x + box->w, y1 = box->y + box->h;
  gint64 top_end = MIN (box->y + thickness, y1);
  gint64 bottom_start = MAX (y1 - thickness, top_end);
  gint64 left_end = MIN (box->x + thickness, x1);
  gint64 right_start = MAX (x1 - thickness, left_end);
  blend_rect (frame, box->x, box->y, x1, top_end, argb);
  blend_rect (frame, box->x, bottom_start, x1, y1, argb);
  blend_rect (frame, box->x, top_end, left_end, bottom_start, argb);
  blend_rect (frame, right_start, top_end, x1, bottom_start, argb);
}

static void
set_source_argb (cairo_t *cr, guint32 argb)
{
  cairo_set_source_rgba (cr, ((argb >> 16) & 0xff) / 255.0,
      ((argb >> 8) & 0xff) / 255.0, (argb & 0xff) / 255.0, (argb >> 24) / 255.0);
}

/* Draws `label` through the scratch surface: its pixels inside the frame
 * are copied in (opaque, so premultiplied alpha is the colour itself),
 * drawn over and copied back, colour channels only. */
static void
draw_label (GstVmoeOverlay *self, GstVideoFrame *frame,
    const OverlayLabel *label, const OverlaySettings *s)
{
  gint width = GST_VIDEO_FRAME_WIDTH (frame), height = GST_VIDEO_FRAME_HEIGHT (frame);
  gint x0 = CLAMP (label->x, 0, width), y0 = CLAMP (label->y, 0, height);
  gint x1 = (gint) CLAMP ((gint64) label->x + label->w, 0, width);
  gint y1 = (gint) CLAMP ((gint64) label->y + label->h, 0, height);
  if (x0 >= x1 || y0 >= y1)
    return;
  gint region_width = x1 - x0, region_height = y1 - y0;
  gint scratch_stride = cairo_format_stride_for_width (CAIRO_FORMAT_ARGB32,
      region_width);
  gsize needed = (gsize) scratch_stride * (gsize) region_height;
  if (self->scratch_size < needed) {
    g_free (self->scratch);
    self->scratch = g_malloc (needed);
    self->scratch_size = needed;
  }

  PackedPixels p = packed_pixels (frame);
  for (gint y = 0; y < region_height; y++) {
    const guint8 *row = p.data + (gsize) (y0 + y) * p.stride;
    guint32 *out = (guint32 *) (self->scratch + (gsize) y * scratch_stride);
    for (gint x = 0; x < region_width; x++) {
      const guint8 *pixel = row + (gsize) (x0 + x) * p.pixel_stride;
      out[x] = 0xff000000u | (guint32) pixel[p.r] << 16 |
          (guint32) pixel[p.g] << 8 | pixel[p.b];
    }
  }

  cairo_surface_t *surface = cairo_image_surface_create_for_data (self->scratch,
      CAIRO_FORMAT_ARGB32, region_width, region_height, scratch_stride);
  cairo_t *cr = cairo_create (surface);
  cairo_translate (cr, -x0, -y0);
  set_source_argb (cr, s->background_color);
  cairo_rectangle (cr, label->x, label->y, label->w, label->h);
  cairo_fill (cr);
  cairo_font_extents_t font_extents;
  cairo_scaled_font_extents (self->font, &font_extents);
  gint padding = label_padding (s->font_size);
  set_source_argb (cr, s->text_color);
  cairo_set_scaled_font (cr, self->font);
  cairo_move_to (cr, label->x + padding, label->y + padding + font_extents.ascent);
  cairo_show_text (cr, label->text);
  cairo_status_t status = cairo_status (cr);
  cairo_destroy (cr);
  cairo_surface_flush (surface);
  cairo_surface_destroy (surface);
  if (status != CAIRO_STATUS_SUCCESS) {
    GST_WARNING_OBJECT (self, "cairo could not draw \"%s\": %s", label->text,
        cairo_status_to_string (status));
    return;                     /* the frame keeps its pixels */
  }

  for (gint y = 0; y < region_height; y++) {
    guint8 *row = p.data + (gsize) (y0 + y) * p.stride;
    const guint32 *in = (const guint32 *) (self->scratch + (gsize) y * scratch_stride);
    for (gint x = 0; x < region_width; x++) {
      guint8 *pixel = row + (gsize) (x0 + x) * p.pixel_stride;
      pixel[p.r] = (in[x] >> 16) & 0xff;
      pixel[p.g] = (in[x] >> 8) & 0xff;
      pixel[p.b] = in[x] & 0xff;
    }
  }
}

static GstFlowReturn
gst_vmoe_overlay_transform_ip (GstBaseTransform *trans, GstBuffer *buffer)
{
  GstVmoeOverlay *self = GST_VMOE_OVERLAY (trans);
  GstVideoFilter *filter = GST_VIDEO_FILTER (trans);
  if (G_UNLIKELY (!filter->negotiated)) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("a buffer arrived before the caps"));
    return GST_FLOW_NOT_NEGOTIATED;
  }

  OverlaySettings s;
  GST_OBJECT_LOCK (self);
  s = self->settings;
  s.attribute_name = g_strdup (self->settings.attribute_name);
  GST_OBJECT_UNLOCK (self);

  GArray *labels = g_array_new (FALSE, FALSE, sizeof (OverlayLabel));
  g_array_set_clear_func (labels, (GDestroyNotify) clear_label);
  GArray *boxes = g_array_new (FALSE, FALSE, sizeof (OverlayBox));
  GstFlowReturn ret = GST_FLOW_OK;
  if (plan_overlay (self, buffer, &s, GST_VIDEO_INFO_WIDTH (&filter->in_info),
          labels, boxes)) {
    GstVideoFrame frame;
    if (gst_video_frame_map (&frame, &filter->in_info, buffer, GST_MAP_READWRITE)) {
      for (guint i = 0; i < boxes->len; i++)
        draw_box (&frame, &g_array_index (boxes, OverlayBox, i), s.thickness,
            s.box_color);
      for (guint i = 0; i < labels->len; i++)
        draw_label (self, &frame, &g_array_index (labels, OverlayLabel, i), &s);
      gst_video_frame_unmap (&frame);
    } else {
      GST_ELEMENT_ERROR (self, STREAM, FAILED, (NULL),
          ("could not map the frame for writing"));
      ret = GST_FLOW_ERROR;
    }
  }
  g_array_free (boxes, TRUE);
  g_array_free (labels, TRUE);
  g_free (s.attribute_name);
  return ret;
}

static gboolean
gst_vmoe_overlay_stop (GstBaseTransform *trans)
{
  release_drawing_state (GST_VMOE_OVERLAY (trans));
  return TRUE;
}

static void
gst_vmoe_overlay_set_property (GObject *object, guint prop_id,
    const GValue *value, GParamSpec *pspec)
{
  GstVmoeOverlay *self = GST_VMOE_OVERLAY (object);
  OverlaySettings *s = &self->settings;
  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_SHOW_LABEL:
      s->show_label = g_value_get_boolean (value);
      break;
    case PROP_SHOW_SCORE:
      s->show_score = g_value_get_boolean (value);
      break;
    case PROP_SHOW_EXPERT:
      s->show_expert = g_value_get_boolean (value);
      break;
    case PROP_FONT_SIZE:
      s->font_size = g_value_get_double (value);
      break;
    case PROP_TEXT_COLOR:
      s->text_color = g_value_get_uint (value);
      break;
    case PROP_BACKGROUND_COLOR:
      s->background_color = g_value_get_uint (value);
      break;
    case PROP_BOX_COLOR:
      s->box_color = g_value_get_uint (value);
      break;
    case PROP_THICKNESS:
      s->thickness = g_value_get_uint (value);
      break;
    case PROP_ATTRIBUTE_NAME:
      g_free (s->attribute_name);
      s->attribute_name = g_value_dup_string (value);
      if (!s->attribute_name || !*s->attribute_name) {
        g_free (s->attribute_name);
        s->attribute_name = g_strdup (DEFAULT_ATTRIBUTE_NAME);
      }
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_vmoe_overlay_get_property (GObject *object, guint prop_id, GValue *value,
    GParamSpec *pspec)
{
  GstVmoeOverlay *self = GST_VMOE_OVERLAY (object);
  const OverlaySettings *s = &self->settings;
  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_SHOW_LABEL:
      g_value_set_boolean (value, s->show_label);
      break;
    case PROP_SHOW_SCORE:
      g_value_set_boolean (value, s->show_score);
      break;
    case PROP_SHOW_EXPERT:
      g_value_set_boolean (value, s->show_expert);
      break;
    case PROP_FONT_SIZE:
      g_value_set_double (value, s->font_size);
      break;
    case PROP_TEXT_COLOR:
      g_value_set_uint (value, s->text_color);
      break;
    case PROP_BACKGROUND_COLOR:
      g_value_set_uint (value, s->background_color);
      break;
    case PROP_BOX_COLOR:
      g_value_set_uint (value, s->box_color);
      break;
    case PROP_THICKNESS:
      g_value_set_uint (value, s->thickness);
      break;
    case PROP_ATTRIBUTE_NAME:
      g_value_set_string (value, s->attribute_name);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_vmoe_overlay_finalize (GObject *object)
{
  GstVmoeOverlay *self = GST_VMOE_OVERLAY (object);
  release_drawing_state (self);
  g_free (self->settings.attribute_name);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_vmoe_overlay_class_init (GstVmoeOverlayClass *klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);
  GParamFlags rw = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS |
      GST_PARAM_MUTABLE_PLAYING;

  gobject_class->set_property = gst_vmoe_overlay_set_property;
  gobject_class->get_property = gst_vmoe_overlay_get_property;
  gobject_class->finalize = gst_vmoe_overlay_finalize;

  properties[PROP_SHOW_LABEL] = g_param_spec_boolean ("show-label",
      "Show label", "Draw the class label (\"class N\" when the model names "
      "none)", TRUE, rw);
  properties[PROP_SHOW_SCORE] = g_param_spec_boolean ("show-score",
      "Show score", "Draw the score (softmax probability, two decimals)",
      TRUE, rw);
  properties[PROP_SHOW_EXPERT] = g_param_spec_boolean ("show-expert",
      "Show expert", "Draw the super-class of the chosen expert in brackets, "
      "or the expert ids when it has no name (image routing only)", TRUE, rw);
  properties[PROP_FONT_SIZE] = g_param_spec_double ("font-size", "Font size",
      "Text height in pixels (the em size of a bold sans-serif font)",
      4, 512, DEFAULT_FONT_SIZE, rw);
  properties[PROP_TEXT_COLOR] = g_param_spec_uint ("text-color", "Text color",
      "Text colour as 0xAARRGGBB", 0, G_MAXUINT32, DEFAULT_TEXT_COLOR, rw);
  properties[PROP_BACKGROUND_COLOR] = g_param_spec_uint ("background-color",
      "Background color", "Colour of the box behind the text as 0xAARRGGBB "
      "(alpha 0: none)", 0, G_MAXUINT32, DEFAULT_BACKGROUND_COLOR, rw);
  properties[PROP_BOX_COLOR] = g_param_spec_uint ("box-color", "Box color",
      "Colour of the outline of a region of interest as 0xAARRGGBB", 0,
      G_MAXUINT32, DEFAULT_BOX_COLOR, rw);
  properties[PROP_THICKNESS] = g_param_spec_uint ("thickness", "Thickness",
      "Width in pixels of a region's outline, drawn inside the region (0: no "
      "outline)", 0, 1024, DEFAULT_THICKNESS, rw);
  properties[PROP_ATTRIBUTE_NAME] = g_param_spec_string ("attribute-name",
      "Attribute name", "Name of the result structure on a region of interest "
      "(the classifier's attribute-name); regions without it are not drawn",
      DEFAULT_ATTRIBUTE_NAME, rw);
  g_object_class_install_properties (gobject_class, N_PROPS, properties);

  GstCaps *caps = gst_caps_from_string (GST_VIDEO_CAPS_MAKE (FORMATS));
  gst_element_class_add_pad_template (element_class,
      gst_pad_template_new ("sink", GST_PAD_SINK, GST_PAD_ALWAYS, caps));
  gst_element_class_add_pad_template (element_class,
      gst_pad_template_new ("src", GST_PAD_SRC, GST_PAD_ALWAYS, caps));
  gst_caps_unref (caps);
  gst_element_class_set_static_metadata (element_class,
      "Sparse ViT Mixture-of-Experts overlay", "Filter/Effect/Video",
      "Draws the results of vmoeclassify onto the frames: label, score and "
      "super-class or experts, and for regions of interest their boxes "
      "(after gvawatermark)", "gst-vmoe developers");

  /* Our own transform_ip instead of GstVideoFilter's, which would map (and
   * so copy, when shared) every frame for writing, even one with nothing to
   * draw. */
  trans_class->transform_ip = GST_DEBUG_FUNCPTR (gst_vmoe_overlay_transform_ip);
  trans_class->stop = GST_DEBUG_FUNCPTR (gst_vmoe_overlay_stop);
  trans_class->passthrough_on_same_caps = FALSE;

  GST_DEBUG_CATEGORY_INIT (gst_vmoe_overlay_debug, "vmoeoverlay", 0,
      "sparse ViT Mixture-of-Experts overlay");
}

static void
gst_vmoe_overlay_init (GstVmoeOverlay *self)
{
  self->settings = (OverlaySettings) {
    .show_label = TRUE,
    .show_score = TRUE,
    .show_expert = TRUE,
    .font_size = DEFAULT_FONT_SIZE,
    .text_color = DEFAULT_TEXT_COLOR,
    .background_color = DEFAULT_BACKGROUND_COLOR,
    .box_color = DEFAULT_BOX_COLOR,
    .thickness = DEFAULT_THICKNESS,
    .attribute_name = g_strdup (DEFAULT_ATTRIBUTE_NAME),
  };
}
