#!/bin/sh
# The Debian 12 packages gst-vmoe builds, tests and trains with: installs
# whichever are missing (as root, or through sudo).  Sourced by test.sh and
# .ci/run so that the list lives in one place.
VMOE_PACKAGES="meson ninja-build pkg-config gcc clang-14 libclang-rt-14-dev libc6-dev \
libglib2.0-dev libjson-glib-dev libopenblas-dev libdnnl-dev check \
libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-tools \
gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
libvulkan-dev mesa-vulkan-drivers glslc spirv-tools valgrind \
python3-torch python3-torchvision python3-numpy python3-scipy python3-matplotlib dataset-fashion-mnist \
gobject-introspection libgirepository1.0-dev python3-gi gir1.2-gstreamer-1.0 \
gir1.2-gst-plugins-base-1.0 libmosquitto-dev mosquitto mosquitto-clients \
libcairo2-dev python3-jsonschema"

vmoe_install_deps () {
  missing=""
  for p in $VMOE_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
      || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  echo "installing:$missing"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q $missing
}
