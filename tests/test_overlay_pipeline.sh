#!/bin/sh
# Runs pipelines/overlay.sh without a display, as on a headless machine, and
# checks that it wrote one PNG per item with text drawn at the top left: the
# Fashion-MNIST items have black corners, so white pixels there are ours.
#   tests/test_overlay_pipeline.sh SOURCE_DIR BUILD_DIR
set -eu
src=$1
build=$2
export GST_PLUGIN_PATH="$build/gst"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
env -u DISPLAY -u WAYLAND_DISPLAY "$src/pipelines/overlay.sh" \
  "$src/models/fashion-vmoe.safetensors" 2 "$out"
# Decoded to 8-bit gray by GStreamer itself (448 wide: rows are not padded).
for i in 0 1; do
  png="$out/overlay-0000$i.png"
  [ -f "$png" ] || { echo "FAIL: $png missing"; exit 1; }
  gst-launch-1.0 -q filesrc location="$png" ! pngdec ! videoconvert ! \
    video/x-raw, format=GRAY8, width=448, height=448 ! filesink location="$png.gray"
done
/usr/bin/python3 - "$out" <<'PY'
import sys
folder, size = sys.argv[1], 448
for i in range(2):
    gray = open("%s/overlay-%05d.png.gray" % (folder, i), "rb").read()
    assert len(gray) == size * size, len(gray)
    top_left = [gray[y * size + x] for y in range(20) for x in range(60)]
    white = sum(v > 200 for v in top_left)
    if white < 40:
        sys.exit("overlay-%05d.png: %d white pixels at the top left, no text" % (i, white))
    bottom_right = [gray[y * size + x] for y in range(size - 8, size)
                    for x in range(size - 8, size)]
    if max(bottom_right) > 40:
        sys.exit("overlay-%05d.png: the bottom right corner is not black" % i)
print("overlay.sh: 2 frames with text")
PY
