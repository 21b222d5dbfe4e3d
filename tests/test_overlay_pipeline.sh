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
/usr/bin/python3 - "$out" <<'PY'
import sys
from PIL import Image
folder = sys.argv[1]
for i in range(2):
    image = Image.open("%s/overlay-%05d.png" % (folder, i)).convert("L")
    width, height = image.size
    top_left = [image.getpixel((x, y)) for y in range(20) for x in range(60)]
    white = sum(v > 200 for v in top_left)
    if white < 40:
        sys.exit("overlay-%05d.png: %d white pixels at the top left, no text" % (i, white))
    bottom_right = [image.getpixel((x, y)) for y in range(height - 8, height)
                    for x in range(width - 8, width)]
    if max(bottom_right) > 40:
        sys.exit("overlay-%05d.png: the bottom right corner is not black" % i)
print("overlay.sh: 2 frames with text")
PY
