#!/bin/sh
# A file through the element to fakesink, printing labels: any image or video
# file GStreamer decodes (PNG, JPEG, MP4, ...) is classified frame by frame,
# and gst-launch's -m prints the "vmoe" bus messages, filtered to the labels.
#
#   pipelines/file-labels.sh FILE [MODEL]
set -eu
here=$(dirname "$0")
file=${1:?usage: file-labels.sh FILE [MODEL]}
model=${2:-$here/../models/fashion-vmoe.safetensors}
export GST_PLUGIN_PATH="$here/../build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"
gst-launch-1.0 -m filesrc location="$file" ! decodebin ! videoconvert ! \
  vmoeclassify model="$model" post-messages=true ! fakesink \
  | sed -n 's/.*frame=(guint64)\([0-9]*\).*label=(string)\(.*\), score=(double)\([0-9.e-]*\).*/frame \1: \2 (\3)/p' \
  | sed 's/\\ / /g; s/"//g'
