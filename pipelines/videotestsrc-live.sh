#!/bin/sh
# A live source: videotestsrc is-live=true produces frames at 30 frames/s in
# real time, like a camera.  vmoeclassify adds its inference latency to the
# pipeline's LATENCY query, and with qos=true (the default) it skips inference
# on frames that arrive late instead of dropping them.  -v shows the caps and
# -m the per-frame bus messages.
#
#   pipelines/videotestsrc-live.sh [MODEL] [FRAMES]
set -eu
here=$(dirname "$0")
model=${1:-$here/../models/fashion-vmoe.safetensors}
frames=${2:-90}
export GST_PLUGIN_PATH="$here/../build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
gst-launch-1.0 -m videotestsrc is-live=true num-buffers="$frames" pattern=ball ! \
  video/x-raw,width=320,height=240,framerate=30/1 ! \
  vmoeclassify model="$model" post-messages=true ! fakesink sync=true
