/* The GStreamer plugin "vmoe": the vmoeclassify element. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <gst/gst.h>

#include "gstvmoeclassify.h"
#include "gstvmoeoverlay.h"
#include "gstvmoemetaconvert.h"
#include "gstvmoemetapublish.h"

static gboolean
plugin_init (GstPlugin *plugin)
{
  return GST_ELEMENT_REGISTER (vmoeclassify, plugin)
      && GST_ELEMENT_REGISTER (vmoeoverlay, plugin)
      && GST_ELEMENT_REGISTER (vmoemetaconvert, plugin)
      && GST_ELEMENT_REGISTER (vmoemetapublish, plugin);
}

GST_PLUGIN_DEFINE (GST_VERSION_MAJOR, GST_VERSION_MINOR, vmoe,
    "Sparse Vision-Transformer Mixture-of-Experts video classification",
    plugin_init, VMOE_VERSION, "LGPL", "gst-vmoe", "https://example.invalid/gst-vmoe")
