#!/bin/sh
# Runs the examples of pipelines/ as a user would, on a parity-suite model,
# and checks that each prints what its comment promises.
#   tests/test_pipelines.sh SOURCE_DIR BUILD_DIR
set -eu
src=$1
build=$2
model=$build/tests/parity/image_k1.safetensors
token_model=$build/tests/parity/token_k2_c05_bpr.safetensors
export GST_PLUGIN_PATH="$build/gst"
fail () { echo "FAIL: $*"; exit 1; }

png=$(mktemp --suffix=.png)
trap 'rm -f "$png"' EXIT
gst-launch-1.0 -q videotestsrc num-buffers=1 ! video/x-raw,width=64,height=48 ! pngenc ! \
  filesink location="$png"
out=$("$src/pipelines/file-labels.sh" "$png" "$model")
echo "$out" | grep -qE '^frame 0: class [0-9] \(0\.[0-9]+\)$' || fail "file-labels: $out"

n=$("$src/pipelines/videotestsrc-live.sh" "$model" 5 | grep -c 'element "vmoeclassify0" (element): vmoe')
[ "$n" -eq 5 ] || fail "videotestsrc-live: $n messages for 5 frames"

"$src/pipelines/fps.sh" "$model" 3000 | grep -q "last-message = rendered" || fail "fps"

out=$("$build/pipelines/read-meta" "$model" 4)
[ "$(echo "$out" | grep -c '; expert [0-9] gate')" -eq 4 ] || fail "read-meta: $out"
[ "$(echo "$out" | grep -c '(carried)')" -eq 2 ] || fail "read-meta interval: $out"

out=$(/usr/bin/python3 "$src/pipelines/bus-messages.py" "$token_model" 3)
[ "$(echo "$out" | grep -c '^frame [0-9] at ')" -eq 3 ] || fail "bus-messages: $out"
[ "$(echo "$out" | grep -c ', block 2 tokens \[[0-9, ]*\] dropped [0-9]*')" -eq 3 ] \
  || fail "bus-messages token routing: $out"

out=$(/usr/bin/python3 "$src/pipelines/roi-classify.py" "$model" 2)
[ "$(echo "$out" | grep -c 'label_id [0-9], confidence 0\.[0-9]*, model image_k1, experts \[[0-9]\]')" -eq 6 ] \
  || fail "roi-classify: $out"
[ "$(echo "$out" | grep -c ': no result$')" -eq 2 ] || fail "roi-classify min size: $out"

n=$("$src/pipelines/multi-camera.sh" "$model" 3 | grep -c 'vmoe, timestamp')
[ "$n" -eq 12 ] || fail "multi-camera: $n messages for 4 cameras of 3 frames"

sh -n "$src/pipelines/camera.sh" || fail "camera.sh does not parse"

port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
n=$("$src/pipelines/mqtt.sh" "$model" 4 "$port" 2>/dev/null | grep -c '^{"objects":\[{"x":0,"y":0,"w":320,"h":240,"vmoe":{"label"')
[ "$n" -eq 4 ] || fail "mqtt: $n messages for 4 frames"
# The demo's --uncertain: the frames it marks are those whose entropy under
# PyTorch's E3 ensemble is above the threshold (none lies within 1e-3 of it).
out=$(/usr/bin/python3 "$src/pipelines/demo.py" --build "$build" --frames 40 --uncertain 0.5)
marked=$(echo "$out" | grep '<- uncertain$' | awk '{print $1}' | tr '\n' ' ')
want=$(/usr/bin/python3 - "$src" <<'PY'
import sys, torch
sys.path.insert(0, sys.argv[1] + "/training")
import data, vmoe_torch
model = vmoe_torch.load_model(sys.argv[1] + "/models/fashion-e3.safetensors").eval()
images = data.fashion_mnist()[2][:40]
with torch.inference_mode():
    entropy = model(vmoe_torch.preprocess_uint8(images, model.config))[1]["entropy"]
assert ((entropy - 0.5).abs() > 1e-3).all(), entropy
print(" ".join(str(i) for i in range(40) if entropy[i] > 0.5), end=" ")
PY
)
[ -n "$marked" ] && [ "$marked" = "$want" ] || fail "demo --uncertain marked [$marked], want [$want]"
echo "$out" | grep -q "^uncertain (entropy above 0.500 nats): $(echo $want | wc -w) frames" \
  || fail "demo --uncertain summary: $out"
/usr/bin/python3 "$src/pipelines/demo.py" --build "$build" --uncertain 0 2>&1 \
  | grep -q "above 0" || fail "demo accepted --uncertain 0"
echo "pipelines: all examples ran"
