/* vmoemetaconvert: turns each frame's classifications into one JSON object
 * in the schema of DL Streamer's gvametaconvert (docs/design.md, Results as
 * JSON; docs/vmoe-metaconvert.schema.json), so that consumers written for
 * DL Streamer parse ours unchanged.  The text goes onto the buffer as a
 * GstVmoeJsonMeta, which vmoemetapublish reads, and optionally onto the bus.
 *
 * It reads two sources of results: full-frame GstVmoeMeta (roi_id -1), and
 * GstVideoRegionOfInterestMeta whose param structure is named
 * `attribute-name` (the fields #12 fixes), with that ROI's token routing
 * statistics from the GstVmoeMeta whose roi_id is the ROI's id.  Buffers
 * pass through unchanged but for the added meta. */
#include "gstvmoemetaconvert.h"

#include <gst/video/video.h>

#include "gstvmoejsonmeta.h"
#include "gstvmoemeta.h"
#include "gstvmoeresult.h"
#include "vmoejson.h"

GST_DEBUG_CATEGORY_STATIC (gst_vmoe_meta_convert_debug);
#define GST_CAT_DEFAULT gst_vmoe_meta_convert_debug

enum {
  PROP_0,
  PROP_JSON_INDENT,
  PROP_ADD_EMPTY_RESULTS,
  PROP_SOURCE,
  PROP_TAGS,
  PROP_ATTRIBUTE_NAME,
  PROP_POST_MESSAGES,
  N_PROPS,
};
static GParamSpec *properties[N_PROPS];

#define DEFAULT_JSON_INDENT -1
#define DEFAULT_ATTRIBUTE_NAME "vmoe"

struct _GstVmoeMetaConvert {
  GstBaseTransform parent;

  /* Properties, under the object lock. */
  gint json_indent;
  gboolean add_empty_results;
  gchar *source;
  gchar *tags;
  gchar *attribute_name;
  gboolean post_messages;

  /* Streaming state. */
  JsonNode *tags_object;           /* `tags` parsed at start, NULL if unset */
  gint width, height;
};

G_DEFINE_TYPE (GstVmoeMetaConvert, gst_vmoe_meta_convert, GST_TYPE_BASE_TRANSFORM);
GST_ELEMENT_REGISTER_DEFINE (vmoemetaconvert, "vmoemetaconvert", GST_RANK_NONE,
    GST_TYPE_VMOE_META_CONVERT);

/* Any video: only the frame size is read, never a pixel. */
static GstStaticPadTemplate sink_template = GST_STATIC_PAD_TEMPLATE ("sink",
    GST_PAD_SINK, GST_PAD_ALWAYS, GST_STATIC_CAPS ("video/x-raw(ANY)"));
static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC, GST_PAD_ALWAYS, GST_STATIC_CAPS ("video/x-raw(ANY)"));

static void
add_model (JsonBuilder *b, const gchar *model_name)
{
  if (!model_name)
    return;
  json_builder_set_member_name (b, "model");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "name");
  json_builder_add_string_value (b, model_name);
  json_builder_end_object (b);
}

static void
add_string_member (JsonBuilder *b, const gchar *name, const gchar *value)
{
  if (!value)
    return;
  json_builder_set_member_name (b, name);
  json_builder_add_string_value (b, value);
}

static void
add_box (JsonBuilder *b, gint x, gint y, gint w, gint h)
{
  const gchar *names[] = { "x", "y", "w", "h" };
  const gint values[] = { x, y, w, h };
  for (guint i = 0; i < G_N_ELEMENTS (names); i++) {
    json_builder_set_member_name (b, names[i]);
    json_builder_add_int_value (b, values[i]);
  }
}

/* The view of a meta's token routing statistics; `layers` is the caller's
 * array of n_layers entries. */
static void
layers_from_meta (const GstVmoeMeta *m, VmoeJsonLayer *layers)
{
  for (guint l = 0; l < m->n_layers; l++)
    layers[l] = (VmoeJsonLayer) { m->layers[l].block, m->layers[l].n_experts,
      m->layers[l].tokens_per_expert, m->layers[l].dropped,
      m->layer_members ? m->layer_members[l] : 0 };
}

/* The E3 ensemble's fields and the element's uncertainty mark of a meta. */
static void
ensemble_from_meta (const GstVmoeMeta *m, VmoeJsonRouting *routing)
{
  if (m->member_classes) {
    routing->n_members = m->n_members;
    routing->member_classes = m->member_classes;
  }
  routing->entropy = m->entropy;
  routing->disagreement = m->disagreement;
  routing->uncertain = m->uncertain;
}

/* The attribute object of a full-frame GstVmoeMeta. */
static void
add_meta_attribute (JsonBuilder *b, const GstVmoeMeta *m)
{
  json_builder_begin_object (b);
  add_string_member (b, "label", m->label);
  json_builder_set_member_name (b, "label_id");
  json_builder_add_int_value (b, m->class_id);
  json_builder_set_member_name (b, "confidence");
  vmoe_json_add_double (b, m->score);
  add_model (b, m->model_name);
  VmoeJsonLayer *layers = g_new (VmoeJsonLayer, m->n_layers);
  layers_from_meta (m, layers);
  VmoeJsonRouting routing = { m->n_experts, m->experts, m->gates, m->n_layers, layers };
  ensemble_from_meta (m, &routing);
  vmoe_json_add_routing (b, &routing);
  g_free (layers);
  add_string_member (b, "superclass", m->superclass);
  json_builder_end_object (b);
}

/* The attribute object of an ROI from its param structure; `meta` is the
 * ROI's GstVmoeMeta for its token routing statistics, or NULL.  A field of
 * the wrong type is left out with a warning in the debug log rather than
 * written as a made-up value. */
static void
add_param_attribute (GstVmoeMetaConvert *self, JsonBuilder *b, const GstStructure *param,
    const GstVmoeMeta *meta)
{
  json_builder_begin_object (b);
  add_string_member (b, "label", gst_structure_get_string (param, "label"));
  gint label_id;
  if (gst_structure_get_int (param, "label_id", &label_id)) {
    json_builder_set_member_name (b, "label_id");
    json_builder_add_int_value (b, label_id);
  }
  gdouble confidence;
  if (gst_structure_get_double (param, "confidence", &confidence)) {
    json_builder_set_member_name (b, "confidence");
    vmoe_json_add_double (b, confidence);
  }
  add_model (b, gst_structure_get_string (param, "model_name"));

  GArray *experts = g_array_new (FALSE, FALSE, sizeof (gdouble));
  GArray *gates = g_array_new (FALSE, FALSE, sizeof (gdouble));
  const GValue *ev = gst_structure_get_value (param, "experts");
  const GValue *gv = gst_structure_get_value (param, "gates");
  VmoeJsonRouting routing = { 0 };
  if (ev && gv) {
    if (gst_vmoe_value_get_numbers (ev, experts) && gst_vmoe_value_get_numbers (gv, gates)
        && experts->len == gates->len) {
      routing.n_experts = experts->len;
      gint *expert_ids = g_new (gint, experts->len);
      gfloat *gate_values = g_new (gfloat, gates->len);
      for (guint i = 0; i < experts->len; i++) {
        expert_ids[i] = (gint) g_array_index (experts, gdouble, i);
        gate_values[i] = (gfloat) g_array_index (gates, gdouble, i);
      }
      routing.experts = expert_ids;
      routing.gates = gate_values;
    } else {
      GST_WARNING_OBJECT (self, "ROI param %s: experts and gates are not two "
          "number lists of one length; left out", gst_structure_get_name (param));
    }
  }
  VmoeJsonLayer *layers = NULL;
  if (meta && meta->n_layers) {
    layers = g_new (VmoeJsonLayer, meta->n_layers);
    layers_from_meta (meta, layers);
    routing.n_layers = meta->n_layers;
    routing.layers = layers;
  }
  /* members' experts are slices of `experts`, only where those are whole */
  if (meta && (routing.n_experts == meta->n_experts || meta->n_experts == 0))
    ensemble_from_meta (meta, &routing);
  vmoe_json_add_routing (b, &routing);
  g_free ((gpointer) routing.experts);
  g_free ((gpointer) routing.gates);
  g_free (layers);
  g_array_unref (experts);
  g_array_unref (gates);
  add_string_member (b, "superclass", gst_structure_get_string (param, "superclass"));
  json_builder_end_object (b);
}

static const GstVmoeMeta *
find_roi_result (GstBuffer *buf, gint roi_id)
{
  gpointer state = NULL;
  GstMeta *meta;
  while ((meta = gst_buffer_iterate_meta_filtered (buf, &state, GST_VMOE_META_API_TYPE)))
    if (((GstVmoeMeta *) meta)->roi_id == roi_id)
      return (GstVmoeMeta *) meta;
  return NULL;
}

/* Adds the frame's `objects` members; returns how many. */
static guint
add_objects (GstVmoeMetaConvert *self, JsonBuilder *b, GstBuffer *buf,
    const gchar *attribute_name)
{
  guint n = 0;
  gpointer state = NULL;
  GstMeta *meta;
  while ((meta = gst_buffer_iterate_meta_filtered (buf, &state, GST_VMOE_META_API_TYPE))) {
    const GstVmoeMeta *m = (const GstVmoeMeta *) meta;
    if (m->roi_id != -1)
      continue;
    json_builder_begin_object (b);
    add_box (b, 0, 0, self->width, self->height);
    json_builder_set_member_name (b, attribute_name);
    add_meta_attribute (b, m);
    json_builder_end_object (b);
    n++;
  }
  state = NULL;
  while ((meta = gst_buffer_iterate_meta_filtered (buf, &state,
              GST_VIDEO_REGION_OF_INTEREST_META_API_TYPE))) {
    GstVideoRegionOfInterestMeta *roi = (GstVideoRegionOfInterestMeta *) meta;
    GstStructure *param = gst_video_region_of_interest_meta_get_param (roi, attribute_name);
    json_builder_begin_object (b);
    add_box (b, (gint) roi->x, (gint) roi->y, (gint) roi->w, (gint) roi->h);
    json_builder_set_member_name (b, "id");
    json_builder_add_int_value (b, roi->id);
    add_string_member (b, "roi_type", g_quark_to_string (roi->roi_type));
    if (param) {
      json_builder_set_member_name (b, attribute_name);
      add_param_attribute (self, b, param, find_roi_result (buf, roi->id));
    }
    json_builder_end_object (b);
    n++;
  }
  return n;
}

static GstFlowReturn
gst_vmoe_meta_convert_transform_ip (GstBaseTransform *trans, GstBuffer *buf)
{
  GstVmoeMetaConvert *self = GST_VMOE_META_CONVERT (trans);
  GST_OBJECT_LOCK (self);
  gint indent = self->json_indent;
  gboolean add_empty = self->add_empty_results;
  gboolean post = self->post_messages;
  gchar *source = g_strdup (self->source);
  gchar *attribute_name = g_strdup (self->attribute_name);
  GST_OBJECT_UNLOCK (self);

  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "objects");
  json_builder_begin_array (b);
  guint n_objects = add_objects (self, b, buf, attribute_name);
  json_builder_end_array (b);
  json_builder_set_member_name (b, "resolution");
  json_builder_begin_object (b);
  json_builder_set_member_name (b, "width");
  json_builder_add_int_value (b, self->width);
  json_builder_set_member_name (b, "height");
  json_builder_add_int_value (b, self->height);
  json_builder_end_object (b);
  GstClockTime stream_time = gst_segment_to_stream_time (&trans->segment, GST_FORMAT_TIME,
      GST_BUFFER_PTS (buf));
  if (GST_CLOCK_TIME_IS_VALID (stream_time)) {
    json_builder_set_member_name (b, "timestamp");
    json_builder_add_int_value (b, (gint64) stream_time);
  }
  add_string_member (b, "source", source);
  if (self->tags_object) {
    json_builder_set_member_name (b, "tags");
    json_builder_add_value (b, json_node_copy (self->tags_object));
  }
  json_builder_end_object (b);

  if (n_objects || add_empty) {
    gchar *text = vmoe_json_to_string (b, indent);
    gst_buffer_add_vmoe_json_meta (buf, text);
    if (post) {
      GstStructure *s = gst_structure_new ("vmoe-json",
          "json", G_TYPE_STRING, text,
          "timestamp", G_TYPE_UINT64, GST_BUFFER_PTS (buf),
          "stream-time", G_TYPE_UINT64, stream_time, NULL);
      gst_element_post_message (GST_ELEMENT (self),
          gst_message_new_element (GST_OBJECT (self), s));
    }
    g_free (text);
  }
  g_object_unref (b);
  g_free (source);
  g_free (attribute_name);
  return GST_FLOW_OK;
}

static gboolean
gst_vmoe_meta_convert_set_caps (GstBaseTransform *trans, GstCaps *incaps, GstCaps *outcaps)
{
  GstVmoeMetaConvert *self = GST_VMOE_META_CONVERT (trans);
  GstStructure *s = gst_caps_get_structure (incaps, 0);
  if (!gst_structure_get_int (s, "width", &self->width)
      || !gst_structure_get_int (s, "height", &self->height)) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, (NULL),
        ("caps without a fixed width and height: %" GST_PTR_FORMAT, incaps));
    return FALSE;
  }
  return TRUE;
}

static gboolean
gst_vmoe_meta_convert_start (GstBaseTransform *trans)
{
  GstVmoeMetaConvert *self = GST_VMOE_META_CONVERT (trans);
  GST_OBJECT_LOCK (self);
  gchar *tags = g_strdup (self->tags);
  gboolean attribute_ok = self->attribute_name && *self->attribute_name;
  GST_OBJECT_UNLOCK (self);
  if (!attribute_ok) {
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS, ("attribute-name must not be empty"), (NULL));
    g_free (tags);
    return FALSE;
  }
  g_clear_pointer (&self->tags_object, json_node_unref);
  if (tags && *tags) {
    GError *error = NULL;
    JsonNode *node = json_from_string (tags, &error);
    if (!node || !JSON_NODE_HOLDS_OBJECT (node)) {
      GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS,
          ("tags must be a JSON object, such as {\"camera\": \"door\"}"),
          ("tags '%s': %s", tags, error ? error->message : "not an object"));
      g_clear_error (&error);
      g_clear_pointer (&node, json_node_unref);
      g_free (tags);
      return FALSE;
    }
    self->tags_object = node;
  }
  g_free (tags);
  return TRUE;
}

static gboolean
gst_vmoe_meta_convert_stop (GstBaseTransform *trans)
{
  GstVmoeMetaConvert *self = GST_VMOE_META_CONVERT (trans);
  g_clear_pointer (&self->tags_object, json_node_unref);
  return TRUE;
}

static void
gst_vmoe_meta_convert_set_property (GObject *object, guint prop_id, const GValue *value,
    GParamSpec *pspec)
{
  GstVmoeMetaConvert *self = GST_VMOE_META_CONVERT (object);
  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_JSON_INDENT:
      self->json_indent = g_value_get_int (value);
      break;
    case PROP_ADD_EMPTY_RESULTS:
      self->add_empty_results = g_value_get_boolean (value);
      break;
    case PROP_SOURCE:
      g_free (self->source);
      self->source = g_value_dup_string (value);
      break;
    case PROP_TAGS:
      g_free (self->tags);
      self->tags = g_value_dup_string (value);
      break;
    case PROP_ATTRIBUTE_NAME:
      g_free (self->attribute_name);
      self->attribute_name = g_value_dup_string (value);
      break;
    case PROP_POST_MESSAGES:
      self->post_messages = g_value_get_boolean (value);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_vmoe_meta_convert_get_property (GObject *object, guint prop_id, GValue *value,
    GParamSpec *pspec)
{
  GstVmoeMetaConvert *self = GST_VMOE_META_CONVERT (object);
  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_JSON_INDENT:
      g_value_set_int (value, self->json_indent);
      break;
    case PROP_ADD_EMPTY_RESULTS:
      g_value_set_boolean (value, self->add_empty_results);
      break;
    case PROP_SOURCE:
      g_value_set_string (value, self->source);
      break;
    case PROP_TAGS:
      g_value_set_string (value, self->tags);
      break;
    case PROP_ATTRIBUTE_NAME:
      g_value_set_string (value, self->attribute_name);
      break;
    case PROP_POST_MESSAGES:
      g_value_set_boolean (value, self->post_messages);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_vmoe_meta_convert_finalize (GObject *object)
{
  GstVmoeMetaConvert *self = GST_VMOE_META_CONVERT (object);
  g_free (self->source);
  g_free (self->tags);
  g_free (self->attribute_name);
  g_clear_pointer (&self->tags_object, json_node_unref);
  G_OBJECT_CLASS (gst_vmoe_meta_convert_parent_class)->finalize (object);
}

static void
gst_vmoe_meta_convert_init (GstVmoeMetaConvert *self)
{
  self->json_indent = DEFAULT_JSON_INDENT;
  self->attribute_name = g_strdup (DEFAULT_ATTRIBUTE_NAME);
  gst_base_transform_set_in_place (GST_BASE_TRANSFORM (self), TRUE);
}

static void
gst_vmoe_meta_convert_class_init (GstVmoeMetaConvertClass *klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseTransformClass *trans_class = GST_BASE_TRANSFORM_CLASS (klass);

  gobject_class->set_property = gst_vmoe_meta_convert_set_property;
  gobject_class->get_property = gst_vmoe_meta_convert_get_property;
  gobject_class->finalize = gst_vmoe_meta_convert_finalize;

  const GParamFlags rw = G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS;
  properties[PROP_JSON_INDENT] = g_param_spec_int ("json-indent", "JSON indent",
      "-1: one compact line per frame; else pretty-printed with this many spaces",
      -1, 32, DEFAULT_JSON_INDENT, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_ADD_EMPTY_RESULTS] = g_param_spec_boolean ("add-empty-results",
      "Add empty results", "Also write an object (with empty objects) for frames "
      "without results", FALSE, rw | GST_PARAM_MUTABLE_PLAYING);
  properties[PROP_SOURCE] = g_param_spec_string ("source", "Source",
      "The `source` member of every object, e.g. the camera's URI (unset: left out)",
      NULL, rw);
  properties[PROP_TAGS] = g_param_spec_string ("tags", "Tags",
      "A JSON object copied into every object as `tags` (unset: left out)",
      NULL, rw);
  properties[PROP_ATTRIBUTE_NAME] = g_param_spec_string ("attribute-name",
      "Attribute name", "Key of the result object, and the name of the ROI param "
      "structure to read (the classifier's attribute-name)", DEFAULT_ATTRIBUTE_NAME, rw);
  properties[PROP_POST_MESSAGES] = g_param_spec_boolean ("post-messages",
      "Post messages", "Also post each object as a `vmoe-json` element message",
      FALSE, rw | GST_PARAM_MUTABLE_PLAYING);
  g_object_class_install_properties (gobject_class, N_PROPS, properties);

  gst_element_class_set_static_metadata (element_class, "V-MoE results to JSON",
      "Filter/Converter/Video", "Writes each frame's vmoe classifications as "
      "JSON in the schema of DL Streamer's gvametaconvert", "gst-vmoe");
  gst_element_class_add_static_pad_template (element_class, &sink_template);
  gst_element_class_add_static_pad_template (element_class, &src_template);

  trans_class->transform_ip = GST_DEBUG_FUNCPTR (gst_vmoe_meta_convert_transform_ip);
  trans_class->set_caps = GST_DEBUG_FUNCPTR (gst_vmoe_meta_convert_set_caps);
  trans_class->start = GST_DEBUG_FUNCPTR (gst_vmoe_meta_convert_start);
  trans_class->stop = GST_DEBUG_FUNCPTR (gst_vmoe_meta_convert_stop);

  GST_DEBUG_CATEGORY_INIT (gst_vmoe_meta_convert_debug, "vmoemetaconvert", 0,
      "vmoe results to JSON");
}
