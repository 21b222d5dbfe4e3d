#!/bin/sh
# Frame rate: fpsdisplaysink measures how many frames per second pass through
# vmoeclassify when nothing else limits them (sync=false, a fake video sink).
# -v prints its last-message (frames rendered, current and average rate)
# every 250 ms.
#
#   pipelines/fps.sh [MODEL] [FRAMES] [WIDTHxHEIGHT]
set -eu
here=$(dirname "$0")
model=${1:-$here/../models/fashion-vmoe.safetensors}
frames=${2:-300}
size=${3:-224x224}
export GST_PLUGIN_PATH="$here/../build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
gst-launch-1.0 -v videotestsrc num-buffers="$frames" ! \
  video/x-raw,format=RGB,width="${size%x*}",height="${size#*x}" ! \
  vmoeclassify model="$model" ! \
  fpsdisplaysink video-sink=fakesink text-overlay=false sync=false fps-update-interval=250 \
  | grep -E "last-message|ERROR"
