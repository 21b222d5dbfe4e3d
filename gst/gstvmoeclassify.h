#ifndef GST_VMOE_CLASSIFY_H
#define GST_VMOE_CLASSIFY_H

#include <gst/video/gstvideofilter.h>
#include <vmoe/vmoe.h>

G_BEGIN_DECLS

#define GST_TYPE_VMOE_CLASSIFY (gst_vmoe_classify_get_type ())
G_DECLARE_FINAL_TYPE (GstVmoeClassify, gst_vmoe_classify, GST, VMOE_CLASSIFY,
    GstVideoFilter)

GST_ELEMENT_REGISTER_DECLARE (vmoeclassify);

G_END_DECLS

#endif
