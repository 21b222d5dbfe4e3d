#!/bin/sh
# The overlay: Fashion-MNIST test items (Debian's dataset-fashion-mnist), one
# a second, classified by vmoeclassify and drawn on by vmoeoverlay: label,
# score and the super-class of the chosen expert, top left.  With a display
# (DISPLAY or WAYLAND_DISPLAY set) they play in autovideosink; without one
# each frame is written as a PNG file, OUT/overlay-00000.png and on.
# vmoeoverlay draws on packed RGB only (RGB, BGR and the 32-bit orders), so
# the 8-bit gray items go through videoconvert to BGRx first; vmoeclassify
# takes BGRx too.
#
#   pipelines/overlay.sh [MODEL] [ITEMS] [OUT]   (defaults: the shipped
#                                                 fashion-vmoe, 10, ./overlay-frames)
set -eu
here=$(dirname "$0")
model=${1:-$here/../models/fashion-vmoe.safetensors}
items=${2:-10}
out=${3:-overlay-frames}
export GST_PLUGIN_PATH="$here/../build/gst${GST_PLUGIN_PATH:+:$GST_PLUGIN_PATH}"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The first ITEMS test images as binary PGM files, which pnmdec reads.
/usr/bin/python3 - /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \
    "$items" "$tmp" <<'PY'
import gzip, struct, sys
path, count, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
data = gzip.open(path).read()
_, n, rows, cols = struct.unpack(">IIII", data[:16])
for i in range(min(count, n)):
    start = 16 + i * rows * cols
    with open("%s/item-%03d.pgm" % (folder, i), "wb") as f:
        f.write(b"P5 %d %d 255\n" % (cols, rows) + data[start:start + rows * cols])
PY

if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  sink="videoconvert ! autovideosink"
else
  mkdir -p "$out"
  echo "no display: writing $out/overlay-NNNNN.png"
  sink="videoconvert ! pngenc ! multifilesink location=$out/overlay-%05d.png"
fi
# shellcheck disable=SC2086  # $sink is a pipeline fragment
gst-launch-1.0 -q multifilesrc location="$tmp/item-%03d.pgm" stop-index=$((items - 1)) \
    caps="image/x-portable-graymap, framerate=(fraction)1/1" ! pnmdec ! \
  videoscale method=nearest-neighbour ! video/x-raw, width=448, height=448 ! \
  videoconvert ! video/x-raw, format=BGRx ! \
  vmoeclassify model="$model" ! vmoeoverlay font-size=16 ! $sink
