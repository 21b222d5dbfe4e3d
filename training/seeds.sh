#!/bin/sh
# The model card's comparison: for each seed, the whole Mobile V-MoE procedure
# (dense -> superclasses -> moe) plus the like-for-like baseline "dense-cont"
# (the same dense model trained as many more epochs as moe adds, at moe's
# learning rate), then `train.py table`.  Runs of one seed are sequential;
# seeds run side by side.
#
#   training/seeds.sh OUT_DIR [SEED...]
#
# Environment: PYTHON (default /usr/bin/python3), DEVICE (cpu or cuda),
# THREADS per process, DENSE_EPOCHS (20), MOE_EPOCHS (12), and
# DATA_ROOT (default: Debian's dataset-fashion-mnist), EXTRA (more train options).
set -eu
out=${1:?usage: training/seeds.sh OUT_DIR [SEED...]}
shift
[ $# -gt 0 ] || set -- 0 1 2
py=${PYTHON:-/usr/bin/python3}
here=$(dirname "$0")
common="--device ${DEVICE:-cpu} --threads ${THREADS:-0} ${EXTRA:-}"
[ -n "${DATA_ROOT:-}" ] && common="$common --data-root $DATA_ROOT"
mkdir -p "$out"

one_seed() {
    s=$1
    t="$py $here/train.py"
    $t dense --out "$out/dense-s$s" --epochs "${DENSE_EPOCHS:-20}" --lr 1e-3 --seed "$s" $common
    $t superclasses --checkpoint "$out/dense-s$s/checkpoint.pt" --experts 4 --seed "$s" \
        --out "$out/dense-s$s/superclasses.json" ${DATA_ROOT:+--data-root "$DATA_ROOT"}
    $t moe --init "$out/dense-s$s/checkpoint.pt" --superclasses "$out/dense-s$s/superclasses.json" \
        --out "$out/moe-s$s" --epochs "${MOE_EPOCHS:-12}" --lr 5e-4 --warmup-epochs 0.5 \
        --seed "$s" $common &
    $t dense --init "$out/dense-s$s/checkpoint.pt" --out "$out/dense-cont-s$s" \
        --epochs "${MOE_EPOCHS:-12}" --lr 5e-4 --warmup-epochs 0.5 --seed "$s" $common
    wait
}

pids=
for s in "$@"; do
    one_seed "$s" >"$out/seed-$s.log" 2>&1 &
    pids="$pids $!"
done
status=0
for p in $pids; do wait "$p" || status=1; done
$py "$here/train.py" table "$out" --out "$out/table.json"
exit $status
