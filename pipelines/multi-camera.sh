#!/bin/sh
# Several cameras, one model: four live videotestsrc "cameras" each run a
# vmoeclassify, and all four share one loaded model, one session and one
# inference worker through model-instance-id.  The worker gathers frames
# from all four streams into batches of up to batch-size (waiting at most
# batch-timeout µs for a batch to fill), and each stream keeps its own order
# and results.  -m shows the per-frame `vmoe` messages, each naming the
# element (camera) it came from.
#
#   pipelines/multi-camera.sh [MODEL] [FRAMES]
set -eu
here=$(dirname "$0")
model=${1:-$here/../models/fashion-vmoe.safetensors}
frames=${2:-90}
export GST_PLUGIN_PATH="$here/../build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
camera () {
  echo "videotestsrc is-live=true num-buffers=$frames pattern=$2 !" \
    "video/x-raw,width=320,height=240,framerate=30/1 !" \
    "vmoeclassify name=$1 model=$model model-instance-id=cameras batch-size=4" \
    "batch-timeout=10000 post-messages=true ! fakesink sync=true"
}
# shellcheck disable=SC2046 # the camera descriptions are meant to split
gst-launch-1.0 -m $(camera cam0 ball) $(camera cam1 smpte) $(camera cam2 snow) \
  $(camera cam3 pinwheel)
