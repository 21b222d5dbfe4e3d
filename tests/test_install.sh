#!/bin/sh
# libvmoe as a user gets it: installs the build into a temporary DESTDIR,
# then checks that the library exports exactly the functions its installed
# header declares, that vmoe.pc alone compiles the README's example, and
# that the example classifies a frame as `vmoe run` does.
# Usage: test_install.sh SOURCE_ROOT BUILD_ROOT MESON PYTHON VMOE_TOOL
set -eu
src=$1 build=$2 meson=$3 python=$4 tool=$5
model=$src/models/fashion-vmoe.safetensors

fail () {
  echo "FAIL: $*" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
$meson install -C "$build" --destdir "$tmp/root" --no-rebuild --quiet

pc=$(find "$tmp/root" -name vmoe.pc)
[ -n "$pc" ] || fail "meson install put no vmoe.pc under $tmp/root"
export PKG_CONFIG_PATH="$(dirname "$pc")"
libdir=$(pkg-config --variable=libdir vmoe)
[ -f "$libdir/libvmoe.so" ] || fail "pkg-config's libdir $libdir has no libvmoe.so"
version=$(pkg-config --modversion vmoe)
echo "vmoe.pc: version $version, $(pkg-config --cflags --libs vmoe)"

# The public API: every vmoe_ function the installed header declares, read
# from what the compiler sees (comments gone), not from the VMOE_API marks
# that the build's version script is made from.
echo '#include <vmoe/vmoe.h>' > "$tmp/header.c"
# shellcheck disable=SC2046 # pkg-config's flags are meant to split
${CC:-cc} -E $(pkg-config --cflags vmoe) "$tmp/header.c" \
  | grep -o 'vmoe_[a-z0-9_]* *(' | tr -d ' (' | sort -u > "$tmp/declared"
[ -s "$tmp/declared" ] || fail "no vmoe_ function found in the installed header"
nm -D --defined-only "$libdir/libvmoe.so" | awk '{ print $NF }' | sort -u > "$tmp/exported"
if ! diff -u "$tmp/declared" "$tmp/exported" > "$tmp/symbols.diff"; then
  cat "$tmp/symbols.diff" >&2
  fail "libvmoe.so exports (+) or lacks (-) symbols against the header's functions"
fi
echo "libvmoe.so exports exactly the header's $(wc -l < "$tmp/declared") functions"

# The version macros agree with vmoe.pc.
cat > "$tmp/version.c" <<'EOF'
#include <stdio.h>
#include <vmoe/vmoe.h>
#if !VMOE_VERSION_CHECK (VMOE_VERSION_MAJOR, VMOE_VERSION_MINOR, VMOE_VERSION_MICRO) \
    || VMOE_VERSION_CHECK (VMOE_VERSION_MAJOR, VMOE_VERSION_MINOR, VMOE_VERSION_MICRO + 1)
#error VMOE_VERSION_CHECK disagrees with the version macros
#endif
int main (void) { printf ("%d.%d.%d %s\n", VMOE_VERSION_MAJOR, VMOE_VERSION_MINOR,
    VMOE_VERSION_MICRO, VMOE_VERSION_STRING); return 0; }
EOF
# shellcheck disable=SC2046
${CC:-cc} -std=c11 -Wall -Wextra -Werror "$tmp/version.c" $(pkg-config --cflags vmoe) \
  -o "$tmp/version"
[ "$("$tmp/version")" = "$version $version" ] \
  || fail "version macros say '$("$tmp/version")', vmoe.pc says $version"

# The README's example, compiled as its first line says.
awk '/<!-- \/vmoe-example -->/ { on = 0 }
     on && !/^```/ { print }
     /<!-- vmoe-example: classify.c -->/ { on = 1 }' "$src/README.md" > "$tmp/classify.c"
grep -q 'int$' "$tmp/classify.c" && grep -q '^main (' "$tmp/classify.c" \
  || fail "README.md has no complete program between the vmoe-example marks"
# shellcheck disable=SC2046
${CC:-cc} -std=c11 -Wall -Wextra -Werror "$tmp/classify.c" \
  $(pkg-config --cflags --libs vmoe) -o "$tmp/classify" \
  || fail "the README's example does not compile against the installed library"

# One 40x30 RGB frame, as raw bytes for the example and as .npy for the tool.
"$python" - "$tmp" <<'EOF'
import struct, sys
h, w = 30, 40
pixels = bytes((x * 7 + y * 13 + c * 50) % 256
               for y in range(h) for x in range(w) for c in range(3))
open(sys.argv[1] + "/frame.rgb", "wb").write(pixels)
header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1, %d, %d, 3), }" % (h, w)
header += " " * (63 - (10 + len(header)) % 64) + "\n"
with open(sys.argv[1] + "/frame.npy", "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    f.write(pixels)
EOF

got=$(LD_LIBRARY_PATH="$libdir" "$tmp/classify" "$model" 40 30 < "$tmp/frame.rgb") \
  || fail "the README's example failed"
"$tool" run "$model" "$tmp/frame.npy" --top-k 1 > "$tmp/tool.json"
want=$("$python" -c '
import json, sys
r = json.load(open(sys.argv[1]))
line = "%s %.4f" % (r["top"][0]["label"], r["top"][0]["score"])
if r.get("experts"):
    line += " expert %d" % r["experts"][0]
print(line)' "$tmp/tool.json")
echo "example: $got"
echo "vmoe run: $want"
[ "$got" = "$want" ] || fail "the README's example and vmoe run disagree"

# A bad model path is an error message and a non-zero exit, not a crash.
if LD_LIBRARY_PATH="$libdir" "$tmp/classify" "$tmp/missing.safetensors" 40 30 \
    < "$tmp/frame.rgb" 2> "$tmp/err"; then
  fail "the example accepted a missing model"
fi
grep -q missing.safetensors "$tmp/err" || fail "unexpected error: $(cat "$tmp/err")"
echo "ok"
