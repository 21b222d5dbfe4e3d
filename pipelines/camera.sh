#!/bin/sh
# A camera (V4L2): classify a live webcam, showing the picture.  Any format
# the camera gives goes through videoconvert; vmoeclassify itself takes RGB,
# BGR, the 32-bit RGB orders, GRAY8, I420 and NV12, so with a camera that
# delivers NV12 or I420 you may drop the first videoconvert.
# inference-interval=2 classifies every other frame for a slow CPU; the
# frames between carry the last result (GstVmoeMeta.fresh is FALSE).
#
#   pipelines/camera.sh [MODEL] [DEVICE]     (default device /dev/video0)
set -eu
here=$(dirname "$0")
model=${1:-$here/../models/fashion-vmoe.safetensors}
device=${2:-/dev/video0}
export GST_PLUGIN_PATH="$here/../build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
gst-launch-1.0 -m v4l2src device="$device" ! videoconvert ! \
  vmoeclassify model="$model" post-messages=true inference-interval=2 ! \
  videoconvert ! autovideosink
