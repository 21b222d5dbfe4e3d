/* GstVmoeResult: one classification kept by the element, and its two
 * conversions, to the meta and to the bus message. */
#include "gstvmoeresult.h"

void
gst_vmoe_result_clear (GstVmoeResult *r)
{
  g_clear_pointer (&r->model, vmoe_model_unref);
  g_free (r->top_classes);
  g_free (r->top_scores);
  g_free (r->top_labels);
  g_free (r->experts);
  g_free (r->gates);
  g_free (r->blocks);
  g_free (r->layer_members);
  g_free (r->member_classes);
  g_free (r->dropped);
  g_free (r->tokens_per_expert);
  *r = (GstVmoeResult) { 0 };
}

gboolean
gst_vmoe_result_is_set (const GstVmoeResult *r)
{
  return r->model != NULL;
}

void
gst_vmoe_result_set (GstVmoeResult *r, VmoeModel *model, const VmoeImageResult *src,
    GstClockTime latency)
{
  gst_vmoe_result_clear (r);
  r->model = vmoe_model_ref (model);
  r->latency = latency;
  r->n_top = (guint) src->n_top;
  r->top_classes = g_memdup2 (src->top_classes, r->n_top * sizeof (gint));
  r->top_scores = g_memdup2 (src->top_scores, r->n_top * sizeof (gfloat));
  r->top_labels = g_memdup2 (src->top_labels, r->n_top * sizeof (gchar *));
  r->n_experts = (guint) src->n_experts;
  r->experts = g_memdup2 (src->experts, r->n_experts * sizeof (gint));
  r->gates = g_memdup2 (src->gates, r->n_experts * sizeof (gfloat));
  r->superclass = r->n_experts ? src->superclasses[0] : NULL;
  r->n_layers = (guint) src->n_layers;
  const VmoeConfig *c = vmoe_model_get_config (model);
  r->layer_experts = r->n_layers ? (guint) (c->num_experts / c->ensemble_members) : 0;
  r->blocks = g_new (gint, r->n_layers);
  r->layer_members = g_new (gint, r->n_layers);
  r->dropped = g_new (gint, r->n_layers);
  r->tokens_per_expert = g_new (guint, r->n_layers * r->layer_experts);
  r->entropy = src->entropy;
  r->n_members = (guint) src->n_members;
  r->member_classes = g_memdup2 (src->member_classes, r->n_members * sizeof (gint));
  r->disagreement = src->disagreement;
  for (guint l = 0; l < r->n_layers; l++) {
    r->blocks[l] = src->layers[l].block;
    r->layer_members[l] = src->layers[l].member;
    r->dropped[l] = src->layers[l].dropped;
    for (guint e = 0; e < r->layer_experts; e++)
      r->tokens_per_expert[l * r->layer_experts + e] =
          (guint) src->layers[l].tokens_per_expert[e];
  }
}

void
gst_vmoe_result_mark_uncertain (GstVmoeResult *r, gdouble entropy_threshold)
{
  r->uncertain = entropy_threshold > 0 && r->entropy > entropy_threshold;
}

void
gst_vmoe_result_fill_meta (const GstVmoeResult *r, GstVmoeMeta *m,
    const gchar *element_name, guint64 frame, gboolean fresh)
{
  m->frame = frame;
  m->fresh = fresh;
  m->latency = r->latency;
  m->class_id = r->top_classes[0];
  m->label = g_strdup (r->top_labels[0]);
  m->score = r->top_scores[0];
  m->n_top = r->n_top;
  m->top_classes = g_memdup2 (r->top_classes, r->n_top * sizeof (gint));
  m->top_scores = g_memdup2 (r->top_scores, r->n_top * sizeof (gfloat));
  m->top_labels = g_new0 (gchar *, r->n_top + 1);
  for (guint i = 0; i < r->n_top; i++)
    m->top_labels[i] = g_strdup (r->top_labels[i]);
  m->n_experts = r->n_experts;
  m->experts = g_memdup2 (r->experts, r->n_experts * sizeof (gint));
  m->gates = g_memdup2 (r->gates, r->n_experts * sizeof (gfloat));
  m->superclass = g_strdup (r->superclass);
  m->n_layers = r->n_layers;
  m->layers = g_new0 (GstVmoeLayerStats, r->n_layers);
  for (guint l = 0; l < r->n_layers; l++) {
    m->layers[l].block = r->blocks[l];
    m->layers[l].n_experts = r->layer_experts;
    m->layers[l].tokens_per_expert = g_memdup2 (r->tokens_per_expert + l * r->layer_experts,
        r->layer_experts * sizeof (guint));
    m->layers[l].dropped = r->dropped[l];
  }
  m->model_name = g_strdup (vmoe_model_get_name (r->model));
  m->element_name = g_strdup (element_name);
  m->entropy = r->entropy;
  m->uncertain = r->uncertain;
  m->n_members = r->n_members;
  m->member_classes = g_memdup2 (r->member_classes, r->n_members * sizeof (gint));
  m->disagreement = r->disagreement;
  m->layer_members = g_memdup2 (r->layer_members, r->n_layers * sizeof (gint));
}

/* A GValueArray of n ints (G_TYPE_INT: gint or guint values) or floats (as
 * doubles).  Message arrays are GValueArrays, as level posts them, so that
 * every binding reads them; nested ones too (PyGObject gives lists). */
G_GNUC_BEGIN_IGNORE_DEPRECATIONS
static GValueArray *
value_array (GType type, const void *values, guint n)
{
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
  return arr;
}

static void
take_array (GstStructure *s, const char *name, GValueArray *arr)
{
  GValue field = G_VALUE_INIT;
  g_value_init (&field, g_value_array_get_type ());
  g_value_take_boxed (&field, arr);
  gst_structure_take_value (s, name, &field);
}

static void
set_array (GstStructure *s, const char *name, GType type, const void *values, guint n)
{
  take_array (s, name, value_array (type, values, n));
}

/* `tokens-per-expert`: one GValueArray of gint per MoE block. */
static void
set_tokens_per_expert (GstStructure *s, const GstVmoeResult *r)
{
  GValueArray *layers = g_value_array_new (r->n_layers);
  GValue layer = G_VALUE_INIT;
  g_value_init (&layer, g_value_array_get_type ());
  for (guint l = 0; l < r->n_layers; l++) {
    g_value_take_boxed (&layer, value_array (G_TYPE_INT,
            r->tokens_per_expert + l * r->layer_experts, r->layer_experts));
    g_value_array_append (layers, &layer);
  }
  g_value_unset (&layer);
  take_array (s, "tokens-per-expert", layers);
}
G_GNUC_END_IGNORE_DEPRECATIONS

GstStructure *
gst_vmoe_result_to_structure (const GstVmoeResult *r, const gchar *element_name,
    guint64 frame, gboolean fresh, GstClockTime timestamp, GstClockTime stream_time, GstClockTime running_time)
{
  GstStructure *s = gst_structure_new ("vmoe",
      "timestamp", G_TYPE_UINT64, timestamp,
      "stream-time", G_TYPE_UINT64, stream_time,
      "running-time", G_TYPE_UINT64, running_time,
      "frame", G_TYPE_UINT64, frame,
      "fresh", G_TYPE_BOOLEAN, fresh,
      "class-id", G_TYPE_INT, r->top_classes[0],
      "label", G_TYPE_STRING, r->top_labels[0],
      "score", G_TYPE_DOUBLE, (gdouble) r->top_scores[0],
      "latency", G_TYPE_UINT64, r->latency,
      "model", G_TYPE_STRING, vmoe_model_get_name (r->model),
      "element", G_TYPE_STRING, element_name,
      "entropy", G_TYPE_DOUBLE, (gdouble) r->entropy,
      "uncertain", G_TYPE_BOOLEAN, r->uncertain, NULL);
  set_array (s, "top-classes", G_TYPE_INT, r->top_classes, r->n_top);
  set_array (s, "top-scores", G_TYPE_DOUBLE, r->top_scores, r->n_top);
  if (r->n_experts) {
    set_array (s, "experts", G_TYPE_INT, r->experts, r->n_experts);
    set_array (s, "gates", G_TYPE_DOUBLE, r->gates, r->n_experts);
  }
  if (r->superclass)
    gst_structure_set (s, "superclass", G_TYPE_STRING, r->superclass, NULL);
  if (r->n_layers) {
    set_array (s, "blocks", G_TYPE_INT, r->blocks, r->n_layers);
    set_tokens_per_expert (s, r);
    set_array (s, "dropped", G_TYPE_INT, r->dropped, r->n_layers);
  }
  if (r->n_members > 1) {
    set_array (s, "member-classes", G_TYPE_INT, r->member_classes, r->n_members);
    gst_structure_set (s, "disagreement", G_TYPE_DOUBLE, (gdouble) r->disagreement, NULL);
    if (r->n_layers)
      set_array (s, "layer-members", G_TYPE_INT, r->layer_members, r->n_layers);
  }
  return s;
}

GstStructure *
gst_vmoe_result_to_roi_param (const GstVmoeResult *r, const gchar *name)
{
  GstStructure *s = gst_structure_new (name,
      "label", G_TYPE_STRING, r->top_labels[0],
      "label_id", G_TYPE_INT, r->top_classes[0],
      "confidence", G_TYPE_DOUBLE, (gdouble) r->top_scores[0],
      "model_name", G_TYPE_STRING, vmoe_model_get_name (r->model), NULL);
  set_array (s, "experts", G_TYPE_INT, r->experts, r->n_experts);
  set_array (s, "gates", G_TYPE_DOUBLE, r->gates, r->n_experts);
  if (r->superclass)
    gst_structure_set (s, "superclass", G_TYPE_STRING, r->superclass, NULL);
  gst_structure_set (s, "entropy", G_TYPE_DOUBLE, (gdouble) r->entropy,
      "uncertain", G_TYPE_BOOLEAN, r->uncertain, NULL);
  if (r->n_members > 1)
    gst_structure_set (s, "disagreement", G_TYPE_DOUBLE, (gdouble) r->disagreement, NULL);
  return s;
}

/* Appends `value` converted to a double; FALSE if it is not a number. */
static gboolean
append_number (const GValue *value, GArray *doubles)
{
  GValue d = G_VALUE_INIT;
  g_value_init (&d, G_TYPE_DOUBLE);
  gboolean ok = g_value_transform (value, &d);
  gdouble v = g_value_get_double (&d);
  g_value_unset (&d);
  if (ok)
    g_array_append_val (doubles, v);
  return ok;
}

gboolean
gst_vmoe_value_get_numbers (const GValue *value, GArray *doubles)
{
  G_GNUC_BEGIN_IGNORE_DEPRECATIONS
  if (G_VALUE_HOLDS (value, g_value_array_get_type ())) {
    GValueArray *array = g_value_get_boxed (value);
    for (guint i = 0; array && i < array->n_values; i++)
      if (!append_number (g_value_array_get_nth (array, i), doubles))
        return FALSE;
    return TRUE;
  }
  G_GNUC_END_IGNORE_DEPRECATIONS
  if (GST_VALUE_HOLDS_ARRAY (value)) {
    for (guint i = 0; i < gst_value_array_get_size (value); i++)
      if (!append_number (gst_value_array_get_value (value, i), doubles))
        return FALSE;
    return TRUE;
  }
  if (GST_VALUE_HOLDS_LIST (value)) {
    for (guint i = 0; i < gst_value_list_get_size (value); i++)
      if (!append_number (gst_value_list_get_value (value, i), doubles))
        return FALSE;
    return TRUE;
  }
  return FALSE;
}
