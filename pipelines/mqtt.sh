#!/bin/sh
# Results to an MQTT broker: a private mosquitto on a loopback port (its own
# config file, not the system service), a subscriber that prints every
# message, and a live pipeline whose vmoemetaconvert writes DL Streamer's
# JSON and vmoemetapublish sends it.  Stop the broker meanwhile (kill the
# PID printed) and the pipeline runs on; messages resume once it is back.
#
#   pipelines/mqtt.sh [MODEL] [FRAMES] [PORT]
set -eu
here=$(dirname "$0")
model=${1:-$here/../models/fashion-vmoe.safetensors}
frames=${2:-60}
port=${3:-18830}
topic=vmoe/demo
export GST_PLUGIN_PATH="$here/../build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

tmp=$(mktemp -d)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" \
  > "$tmp/mosquitto.conf"
mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$mosquitto" -c "$tmp/mosquitto.conf" 2>"$tmp/broker.log" &
broker=$!
sub=
trap 'kill $sub $broker 2>/dev/null; rm -rf "$tmp"' EXIT
echo "broker: PID $broker on 127.0.0.1:$port" >&2
# The subscriber prints each message as it arrives.
sleep 0.5
mosquitto_sub -h 127.0.0.1 -p "$port" -t "$topic" &
sub=$!
sleep 0.5

gst-launch-1.0 -q videotestsrc is-live=true num-buffers="$frames" pattern=ball ! \
  video/x-raw,width=320,height=240,framerate=10/1 ! \
  vmoeclassify model="$model" ! vmoemetaconvert source=videotestsrc ! \
  vmoemetapublish method=mqtt address=127.0.0.1:"$port" topic="$topic" ! fakesink sync=true
# Let the last messages reach the subscriber before both stop.
sleep 0.5
