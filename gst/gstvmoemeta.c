/* GstVmoeMeta registration, after gst-plugins-base's gstvideometa.c. */
#include "gstvmoemeta.h"

#include <string.h>

GType
gst_vmoe_meta_api_get_type (void)
{
  static GType type = 0;
  /* No tags: the classification holds for the frame whatever is done to its
   * pixels, so every element keeps the meta. */
  static const gchar *tags[] = { NULL };
  if (g_once_init_enter (&type)) {
    /* An earlier copy of this library may have registered it and been
     * unloaded since (the plugin scanner opens and closes every file in a
     * plugin folder); GType keeps the type, so reuse it. */
    GType t = g_type_from_name ("GstVmoeMetaAPI");
    if (t == 0)
      t = gst_meta_api_type_register ("GstVmoeMetaAPI", tags);
    g_once_init_leave (&type, t);
  }
  return type;
}

/* Registers the API type as soon as the library is loaded, so that an
 * application sees "GstVmoeMetaAPI" (g_type_from_name, a typelib) before any
 * element has made a meta.  GStreamer's registration needs gst_init's
 * quarks, so this can only happen where GStreamer is already initialised:
 * the library dlopened by the plugin loader, by PyGObject for the typelib,
 * or by g_module_open.  A library linked at start-up is loaded before main,
 * hence before gst_init: there the first gst_vmoe_meta_api_get_type call
 * registers the type, as every reader of the meta makes one. */
__attribute__((constructor)) static void
register_api_type_at_load (void)
{
  if (gst_is_initialized ())
    gst_vmoe_meta_api_get_type ();
}

static gboolean
vmoe_meta_init (GstMeta *meta, gpointer params, GstBuffer *buffer)
{
  GstVmoeMeta *m = (GstVmoeMeta *) meta;
  memset ((guint8 *) m + sizeof (GstMeta), 0, sizeof *m - sizeof (GstMeta));
  m->class_id = -1;
  m->roi_id = -1;
  m->latency = GST_CLOCK_TIME_NONE;
  m->n_members = 1;
  return TRUE;
}

static void
vmoe_meta_free (GstMeta *meta, GstBuffer *buffer)
{
  GstVmoeMeta *m = (GstVmoeMeta *) meta;
  g_free (m->label);
  g_free (m->top_classes);
  g_free (m->top_scores);
  g_strfreev (m->top_labels);
  g_free (m->experts);
  g_free (m->gates);
  g_free (m->superclass);
  for (guint i = 0; i < m->n_layers; i++)
    g_free (m->layers[i].tokens_per_expert);
  g_free (m->layers);
  g_free (m->model_name);
  g_free (m->element_name);
  g_free (m->member_classes);
  g_free (m->layer_members);
}

void
gst_vmoe_meta_copy_into (GstVmoeMeta *d, const GstVmoeMeta *s)
{
  d->frame = s->frame;
  d->fresh = s->fresh;
  d->latency = s->latency;
  d->class_id = s->class_id;
  d->label = g_strdup (s->label);
  d->score = s->score;
  d->n_top = s->n_top;
  d->top_classes = g_memdup2 (s->top_classes, s->n_top * sizeof (gint));
  d->top_scores = g_memdup2 (s->top_scores, s->n_top * sizeof (gfloat));
  d->top_labels = g_strdupv (s->top_labels);
  d->n_experts = s->n_experts;
  d->experts = g_memdup2 (s->experts, s->n_experts * sizeof (gint));
  d->gates = g_memdup2 (s->gates, s->n_experts * sizeof (gfloat));
  d->superclass = g_strdup (s->superclass);
  d->n_layers = s->n_layers;
  d->layers = g_memdup2 (s->layers, s->n_layers * sizeof (GstVmoeLayerStats));
  for (guint i = 0; i < s->n_layers; i++)
    d->layers[i].tokens_per_expert = g_memdup2 (s->layers[i].tokens_per_expert,
        s->layers[i].n_experts * sizeof (guint));
  d->model_name = g_strdup (s->model_name);
  d->element_name = g_strdup (s->element_name);
  d->roi_id = s->roi_id;
  d->entropy = s->entropy;
  d->uncertain = s->uncertain;
  d->n_members = s->n_members;
  d->member_classes = g_memdup2 (s->member_classes, s->n_members * sizeof (gint));
  d->disagreement = s->disagreement;
  d->layer_members = g_memdup2 (s->layer_members, s->n_layers * sizeof (gint));
}

static gboolean
vmoe_meta_transform (GstBuffer *dest, GstMeta *meta, GstBuffer *buffer,
    GQuark type, gpointer data)
{
  GstVmoeMeta *d = gst_buffer_add_vmoe_meta (dest);
  if (!d)
    return FALSE;
  gst_vmoe_meta_copy_into (d, (GstVmoeMeta *) meta);
  return TRUE;
}

const GstMetaInfo *
gst_vmoe_meta_get_info (void)
{
  static const GstMetaInfo *info = NULL;
  if (g_once_init_enter ((GstMetaInfo **) &info)) {
    const GstMetaInfo *mi = gst_meta_register (GST_VMOE_META_API_TYPE,
        "GstVmoeMeta", sizeof (GstVmoeMeta), vmoe_meta_init, vmoe_meta_free,
        vmoe_meta_transform);
    g_once_init_leave ((GstMetaInfo **) &info, (GstMetaInfo *) mi);
  }
  return info;
}

GstVmoeMeta *
gst_buffer_add_vmoe_meta (GstBuffer *buffer)
{
  g_return_val_if_fail (GST_IS_BUFFER (buffer), NULL);
  return (GstVmoeMeta *) gst_buffer_add_meta (buffer, GST_VMOE_META_INFO, NULL);
}

GstVmoeMeta *
gst_buffer_get_vmoe_meta (GstBuffer *buffer)
{
  g_return_val_if_fail (GST_IS_BUFFER (buffer), NULL);
  return (GstVmoeMeta *) gst_buffer_get_meta (buffer, GST_VMOE_META_API_TYPE);
}

const gint *
gst_vmoe_meta_get_member_classes (const GstVmoeMeta *meta, guint *n)
{
  g_return_val_if_fail (meta && n, NULL);
  *n = meta->member_classes ? meta->n_members : 0;
  return meta->member_classes;
}

const gint *
gst_vmoe_meta_get_layer_members (const GstVmoeMeta *meta, guint *n)
{
  g_return_val_if_fail (meta && n, NULL);
  *n = meta->layer_members ? meta->n_layers : 0;
  return meta->layer_members;
}

const gint *
gst_vmoe_meta_get_top_classes (const GstVmoeMeta *meta, guint *n)
{
  g_return_val_if_fail (meta && n, NULL);
  *n = meta->n_top;
  return meta->top_classes;
}

const gfloat *
gst_vmoe_meta_get_top_scores (const GstVmoeMeta *meta, guint *n)
{
  g_return_val_if_fail (meta && n, NULL);
  *n = meta->n_top;
  return meta->top_scores;
}

const gchar *const *
gst_vmoe_meta_get_top_labels (const GstVmoeMeta *meta)
{
  g_return_val_if_fail (meta, NULL);
  return (const gchar *const *) meta->top_labels;
}

const gint *
gst_vmoe_meta_get_experts (const GstVmoeMeta *meta, guint *n)
{
  g_return_val_if_fail (meta && n, NULL);
  *n = meta->n_experts;
  return meta->experts;
}

const gfloat *
gst_vmoe_meta_get_gates (const GstVmoeMeta *meta, guint *n)
{
  g_return_val_if_fail (meta && n, NULL);
  *n = meta->n_experts;
  return meta->gates;
}

const GstVmoeLayerStats *
gst_vmoe_meta_get_layer (const GstVmoeMeta *meta, guint index)
{
  g_return_val_if_fail (meta, NULL);
  return index < meta->n_layers ? &meta->layers[index] : NULL;
}

const guint *
gst_vmoe_layer_stats_get_tokens_per_expert (const GstVmoeLayerStats *layer, guint *n)
{
  g_return_val_if_fail (layer && n, NULL);
  *n = layer->n_experts;
  return layer->tokens_per_expert;
}
