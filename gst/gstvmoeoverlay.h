#ifndef GST_VMOE_OVERLAY_H
#define GST_VMOE_OVERLAY_H

#include <gst/video/gstvideofilter.h>

G_BEGIN_DECLS

#define GST_TYPE_VMOE_OVERLAY (gst_vmoe_overlay_get_type ())
G_DECLARE_FINAL_TYPE (GstVmoeOverlay, gst_vmoe_overlay, GST, VMOE_OVERLAY,
    GstVideoFilter)

GST_ELEMENT_REGISTER_DECLARE (vmoeoverlay);

G_END_DECLS

#endif
