#!/bin/sh
# The instructions as a user follows them, against the installed files:
# installs the build into a temporary DESTDIR, then
# - compiles every C snippet of README.md with the command on its first
#   line, run as written (each ```c block must sit between
#   <!-- vmoe-example: NAME --> marks, so that none escapes the test);
# - runs every compile command written in pipelines/ (a line of a C file's
#   comment beginning with "cc FILE.c"), as written, on a copy of the file;
# - runs the read-meta application so built on the installed plugin, which
#   calls gst_buffer_get_vmoe_meta from the installed library;
# - runs pipelines/read-meta.py on the installed typelib.
# Usage: test_install_meta.sh SOURCE_ROOT BUILD_ROOT MESON MODEL
set -eu
src=$1 build=$2 meson=$3 model=$4

fail () {
  echo "FAIL: $*" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet

pc=$(find "$tmp/root" -name gstreamer-vmoe-1.0.pc)
[ -n "$pc" ] || fail "meson install put no gstreamer-vmoe-1.0.pc under $tmp/root"
# vmoe.pc and GStreamer's own .pc files: the installed ones, then the system's.
PKG_CONFIG_PATH="$(dirname "$pc")${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
export PKG_CONFIG_PATH
# The .pc files are relocatable (pkgconfig.relocatable): paths under DESTDIR.
libdir=$(pkg-config --variable=libdir gstreamer-vmoe-1.0)
[ -f "$libdir/libgstvmoemeta-1.0.so" ] || fail "no libgstvmoemeta-1.0.so in $libdir"
echo "gstreamer-vmoe-1.0.pc: $(pkg-config --cflags --libs gstreamer-vmoe-1.0)"

# README.md: every C block marked, each compiled by its first line.
blocks=$(grep -c '^```c$' "$src/README.md" || true)
marks=$(grep -c '^<!-- vmoe-example: [a-z0-9_-]*\.c -->$' "$src/README.md" || true)
[ "$blocks" -gt 0 ] || fail "README.md has no C snippet"
[ "$blocks" -eq "$marks" ] \
  || fail "README.md has $blocks C snippets but $marks vmoe-example marks"
mkdir "$tmp/readme"
sed -n 's/^<!-- vmoe-example: \([a-z0-9_-]*\.c\) -->$/\1/p' "$src/README.md" > "$tmp/names"
while IFS= read -r name; do
  awk -v mark="<!-- vmoe-example: $name -->" '
    /<!-- \/vmoe-example -->/ { on = 0 }
    on && !/^```/ { print }
    $0 == mark { on = 1 }' "$src/README.md" > "$tmp/readme/$name"
  command=$(head -n 1 "$tmp/readme/$name" | sed -n 's|^/\* \(cc .*\)$|\1|p' | sed 's| \*/$||')
  [ -n "$command" ] || fail "README.md's $name does not begin with /* cc ... */"
  echo "README.md $name: $command"
  (cd "$tmp/readme" && sh -c "$command") \
    || fail "README.md's $name does not compile against the installed files"
done < "$tmp/names"

# pipelines/: each compile command, as written.
commands=0
for file in "$src"/pipelines/*.c; do
  base=$(basename "$file")
  grep -o "cc $base .*" "$file" > "$tmp/commands" || continue
  while IFS= read -r command; do
    mkdir -p "$tmp/pipelines" && cp "$file" "$tmp/pipelines/"
    echo "pipelines/$base: $command"
    (cd "$tmp/pipelines" && sh -c "$command") \
      || fail "pipelines/$base: '$command' fails against the installed files"
    commands=$((commands + 1))
  done < "$tmp/commands"
done
[ "$commands" -gt 0 ] || fail "no compile command found in pipelines/*.c"

# The application just built reads the meta through the installed library,
# on the installed plugin: 4 frames, every other one carried.
export LD_LIBRARY_PATH="$libdir"
export GST_PLUGIN_PATH="$libdir/gstreamer-1.0"
export GST_REGISTRY="$tmp/registry.bin"
[ -x "$tmp/pipelines/read-meta" ] || fail "pipelines/read-meta.c's command made no read-meta"
out=$("$tmp/pipelines/read-meta" "$model" 4) || fail "installed read-meta failed: $out"
echo "$out"
[ "$(echo "$out" | grep -c '^frame [0-9] at .*; expert [0-9]* gate')" -eq 4 ] \
  || fail "installed read-meta printed no meta for 4 frames"
[ "$(echo "$out" | grep -c '(carried)')" -eq 2 ] || fail "installed read-meta: carried frames"

# The installed typelib, found where GObject-introspection looks for it.
typelib=$(find "$tmp/root" -name GstVmoe-1.0.typelib)
[ -n "$typelib" ] || fail "no GstVmoe-1.0.typelib installed"
find "$tmp/root" -name GstVmoe-1.0.gir | grep -q . || fail "no GstVmoe-1.0.gir installed"
out=$(GI_TYPELIB_PATH=$(dirname "$typelib") /usr/bin/python3 "$src/pipelines/read-meta.py" \
  "$model" 2) || fail "read-meta.py on the installed typelib failed: $out"
echo "$out"
[ "$(echo "$out" | grep -c '"model_name": "fashion-vmoe"')" -eq 2 ] \
  || fail "read-meta.py on the installed typelib printed no meta for 2 frames"
echo "ok"
