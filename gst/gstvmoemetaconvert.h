#ifndef GST_VMOE_META_CONVERT_H
#define GST_VMOE_META_CONVERT_H

#include <gst/base/gstbasetransform.h>

G_BEGIN_DECLS

#define GST_TYPE_VMOE_META_CONVERT (gst_vmoe_meta_convert_get_type ())
G_DECLARE_FINAL_TYPE (GstVmoeMetaConvert, gst_vmoe_meta_convert, GST, VMOE_META_CONVERT,
    GstBaseTransform)

GST_ELEMENT_REGISTER_DECLARE (vmoemetaconvert);

G_END_DECLS

#endif
