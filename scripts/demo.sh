#!/bin/sh
# The demo, from a fresh Debian 12 machine: installs what is missing, builds,
# and classifies a clip of Fashion-MNIST test images with the default model
# in models/, printing each frame's label, expert and super-class and the
# accuracy over the clip.  Options go to pipelines/demo.py (--frames N, --model M).
set -eu
cd "$(dirname "$0")/.."
. scripts/deps.sh
vmoe_install_deps
[ -f build/build.ninja ] || meson setup build
meson compile -C build >/dev/null
exec /usr/bin/python3 pipelines/demo.py "$@"
