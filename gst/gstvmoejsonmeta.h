/* GstVmoeJsonMeta: the JSON text of one frame's results, attached by
 * vmoemetaconvert and read by vmoemetapublish (docs/design.md, Results as
 * JSON).  Installed beside gstvmoemeta.h; applications read it with
 * gst_buffer_get_vmoe_json_meta (buffer).  No tags, like GstVmoeMeta: the
 * text describes the frame's content whatever is done to its pixels. */
#ifndef GST_VMOE_JSON_META_H
#define GST_VMOE_JSON_META_H

#include <gst/gst.h>

G_BEGIN_DECLS

#define GST_VMOE_JSON_META_API_TYPE (gst_vmoe_json_meta_api_get_type ())
#define GST_VMOE_JSON_META_INFO (gst_vmoe_json_meta_get_info ())

typedef struct {
  GstMeta meta;
  gchar *message;             /* one JSON object, UTF-8 */
} GstVmoeJsonMeta;

GType gst_vmoe_json_meta_api_get_type (void);
const GstMetaInfo *gst_vmoe_json_meta_get_info (void);

#define gst_buffer_get_vmoe_json_meta(b) \
  ((GstVmoeJsonMeta *) gst_buffer_get_meta ((b), GST_VMOE_JSON_META_API_TYPE))

/* Adds a meta holding a copy of `message` to `buffer` (writable). */
GstVmoeJsonMeta *gst_buffer_add_vmoe_json_meta (GstBuffer *buffer, const gchar *message);

G_END_DECLS

#endif
