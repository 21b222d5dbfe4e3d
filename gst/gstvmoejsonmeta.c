/* GstVmoeJsonMeta registration, after gst-plugins-base's gstvideometa.c. */
#include "gstvmoejsonmeta.h"

GType
gst_vmoe_json_meta_api_get_type (void)
{
  static GType type = 0;
  static const gchar *tags[] = { NULL };
  if (g_once_init_enter (&type)) {
    GType t = gst_meta_api_type_register ("GstVmoeJsonMetaAPI", tags);
    g_once_init_leave (&type, t);
  }
  return type;
}

static gboolean
vmoe_json_meta_init (GstMeta *meta, gpointer params, GstBuffer *buffer)
{
  ((GstVmoeJsonMeta *) meta)->message = NULL;
  return TRUE;
}

static void
vmoe_json_meta_free (GstMeta *meta, GstBuffer *buffer)
{
  g_free (((GstVmoeJsonMeta *) meta)->message);
}

static gboolean
vmoe_json_meta_transform (GstBuffer *dest, GstMeta *meta, GstBuffer *buffer,
    GQuark type, gpointer data)
{
  return gst_buffer_add_vmoe_json_meta (dest, ((GstVmoeJsonMeta *) meta)->message) != NULL;
}

const GstMetaInfo *
gst_vmoe_json_meta_get_info (void)
{
  static const GstMetaInfo *info = NULL;
  if (g_once_init_enter ((GstMetaInfo **) &info)) {
    const GstMetaInfo *mi = gst_meta_register (GST_VMOE_JSON_META_API_TYPE,
        "GstVmoeJsonMeta", sizeof (GstVmoeJsonMeta), vmoe_json_meta_init,
        vmoe_json_meta_free, vmoe_json_meta_transform);
    g_once_init_leave ((GstMetaInfo **) &info, (GstMetaInfo *) mi);
  }
  return info;
}

GstVmoeJsonMeta *
gst_buffer_add_vmoe_json_meta (GstBuffer *buffer, const gchar *message)
{
  g_return_val_if_fail (GST_IS_BUFFER (buffer), NULL);
  g_return_val_if_fail (message != NULL, NULL);
  GstVmoeJsonMeta *m = (GstVmoeJsonMeta *) gst_buffer_add_meta (buffer,
      GST_VMOE_JSON_META_INFO, NULL);
  if (m)
    m->message = g_strdup (message);
  return m;
}
