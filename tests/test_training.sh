#!/bin/sh
# Smoke run of every training command on a tiny model (a few steps each), a
# 2-process torchrun with gloo, and the C engine reading the exported files:
# the full procedure, as docs/training.md runs it, in about a minute.
#   tests/test_training.sh SOURCE_DIR BUILD_DIR
set -eu
src=$1
build=$2
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
T="/usr/bin/python3 $src/training/train.py"
vmoe=$build/tools/vmoe
fail () { echo "FAIL: $*"; exit 1; }
cat > "$out/arch.json" <<'JSON'
{"embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_dim": 32, "patch_size": 7}
JSON

$T dense --out "$out/dense" --arch "$out/arch.json" --steps 40 --threads 1
$T superclasses --checkpoint "$out/dense/checkpoint.pt" --experts 3 --out "$out/sc.json"
/usr/bin/python3 - "$out/sc.json" <<'PY' || fail "superclasses"
import json, sys
sc = json.load(open(sys.argv[1]))["superclasses"]
classes = sorted(c for s in sc for c in s["classes"])
assert len(sc) == 3 and classes == list(range(10)), sc
PY
$T moe --init "$out/dense/model.safetensors" --superclasses "$out/sc.json" \
  --out "$out/moe" --steps 40 --threads 1
$T moe --routing token --experts 4 --top-k 2 --shared --capacity-ratio 1.0 \
  --arch "$out/arch.json" --out "$out/token" --steps 20 --threads 1
$T export --checkpoint "$out/moe/checkpoint.pt" --out "$out/moe16.safetensors" --dtype F16
$T analyze --model "$out/moe/model.safetensors" --out "$out/analysis"
for f in confusion.png experts_block0.png experts_block1.png analysis.json; do
  [ -s "$out/analysis/$f" ] || fail "analyze wrote no $f"
done

# The like-for-like baseline (dense continued from a checkpoint), E3, and
# the seed table: seeds.sh runs dense -> superclasses -> moe, dense-cont, e3.
RUNS="moe dense-cont e3" DENSE_EPOCHS=1 MOE_EPOCHS=1 THREADS=1 \
  EXTRA="--arch $out/arch.json --steps 15" \
  sh "$src/training/seeds.sh" "$out/seeds" 0 > "$out/seeds.txt"
for run in dense-s0 dense-cont-s0 moe-s0 e3-s0; do
  [ -s "$out/seeds/$run/summary.json" ] || fail "seeds.sh wrote no $run"
done
grep -q "^| moe | " "$out/seeds.txt" || fail "table lacks the moe row"
grep -q "^test ECE, 15 bins" "$out/seeds.txt" || fail "table lacks the ECE table"
/usr/bin/python3 - "$out/seeds/table.json" <<'PY' || fail "table.json"
import json, sys
t = json.load(open(sys.argv[1]))
assert set(t) == {"dense", "dense-cont", "moe", "e3"}, t
assert all(0 <= r["mean"] <= 1 for r in t.values()), t
assert all(r["nll"]["mean"] > 0 and 0 <= r["ece"]["mean"] <= 1 for r in t.values()), t
PY
"$vmoe" info "$out/seeds/e3-s0/model.safetensors" | grep -q "E3, 2 members of 4 experts" \
  || fail "the engine reads no E3 ensemble from train.py moe --ensemble 2"
RUNS=e3x sh "$src/training/seeds.sh" "$out/bad-runs" 0 2>/dev/null \
  && fail "seeds.sh accepted an unknown run"
$T moe --experts 4 --ensemble 3 --arch "$out/arch.json" --out "$out/bad" --steps 1 \
  2>"$out/err.txt" && fail "moe accepted 3 ensemble members of 4 experts"
grep -q "ensemble 3 must .* divide the 4 experts" "$out/err.txt" || fail "ensemble message"
$T dense --init "$out/moe/checkpoint.pt" --out "$out/bad" --steps 1 2>/dev/null \
  && fail "dense --init accepted a MoE checkpoint"

# Users' own data: one sub-folder per class.
/usr/bin/python3 - "$out/folder" <<'PY'
import os, sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for name, level in (("dark", 40), ("light", 200)):
    os.makedirs(os.path.join(sys.argv[1], name))
    for i in range(12):
        a = np.clip(rng.normal(level, 20, (20, 24)), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(os.path.join(sys.argv[1], name, "%d.png" % i))
PY
$T dense --data "$out/folder" --arch "$out/arch.json" --out "$out/folder-run" \
  --batch 4 --epochs 2 --threads 1
"$vmoe" info "$out/folder-run/model.safetensors" | grep -q "classes:      2: dark, light" \
  || fail "image-folder labels"

# The engine loads what training exports, super-classes included.
"$vmoe" info "$out/moe16.safetensors" | grep -q "superclass 2: " || fail "info"
"$vmoe" info "$out/token/model.safetensors" | grep -q "token (V-MoE)" || fail "token info"

# Two processes with gloo; rank 0 alone writes the run folder.
torchrun --standalone --nproc_per_node 2 --redirects 1 --tee 1 "$src/training/train.py" dense \
  --out "$out/ddp" --arch "$out/arch.json" --steps 10 --threads 1
[ -s "$out/ddp/model.safetensors" ] || fail "torchrun wrote no model"
/usr/bin/python3 - "$out/ddp/summary.json" <<'PY' || fail "torchrun summary"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["history"][-1]["step"] == 10, s["history"]
PY
echo "training: every command ran"
