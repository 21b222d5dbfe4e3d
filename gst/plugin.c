/* The GStreamer plugin "vmoe": the vmoeclassify element. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <gst/gst.h>

#include "gstvmoeclassify.h"
#include "gstvmoeoverlay.h"

static gboolean
plugin_init (GstPlugin *plugin)
{
  gboolean ok = GST_ELEMENT_REGISTER (vmoeclassify, plugin);
  ok &= GST_ELEMENT_REGISTER (vmoeoverlay, plugin);
  return ok;
}

GST_PLUGIN_DEFINE (GST_VERSION_MAJOR, GST_VERSION_MINOR, vmoe,
    "Sparse Vision-Transformer Mixture-of-Experts video classification",
    plugin_init, VMOE_VERSION, "LGPL", "gst-vmoe", "https://example.invalid/gst-vmoe")
