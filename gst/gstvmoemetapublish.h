#ifndef GST_VMOE_META_PUBLISH_H
#define GST_VMOE_META_PUBLISH_H

#include <gst/base/gstbasetransform.h>

G_BEGIN_DECLS

#define GST_TYPE_VMOE_META_PUBLISH (gst_vmoe_meta_publish_get_type ())
G_DECLARE_FINAL_TYPE (GstVmoeMetaPublish, gst_vmoe_meta_publish, GST, VMOE_META_PUBLISH,
    GstBaseTransform)

GST_ELEMENT_REGISTER_DECLARE (vmoemetapublish);

G_END_DECLS

#endif
