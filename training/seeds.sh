#!/bin/sh
# The model card's comparison: for each seed, the whole Mobile V-MoE procedure
# (dense -> superclasses -> moe) plus the like-for-like baseline "dense-cont"
# (the same dense model trained as many more epochs as moe adds, at moe's
# learning rate), then `train.py table`.  RUNS picks the runs that continue
# from the dense model: moe, dense-cont (the default: both) and e3 (`moe
# --ensemble $ENSEMBLE` at moe's schedule).  They run side by side after the
# seed's dense model; seeds run side by side.  A seed whose dense checkpoint
# and super-classes exist in OUT_DIR keeps them, so that runs can be added
# to a table later.
#
#   training/seeds.sh OUT_DIR [SEED...]
#
# Environment: PYTHON (default /usr/bin/python3), DEVICE (cpu or cuda),
# THREADS per process, DENSE_EPOCHS (20), MOE_EPOCHS (12), DENSE_STEPS and
# MOE_STEPS (cut the runs short after so many steps: a schedule that fits
# a small machine), RUNS ("moe dense-cont"), ENSEMBLE (2), DATA_ROOT
# (default: Debian's dataset-fashion-mnist), EXTRA (more train options).
set -eu
out=${1:?usage: training/seeds.sh OUT_DIR [SEED...]}
shift
[ $# -gt 0 ] || set -- 0 1 2
py=${PYTHON:-/usr/bin/python3}
here=$(dirname "$0")
common="--device ${DEVICE:-cpu} --threads ${THREADS:-0} ${EXTRA:-}"
[ -n "${DATA_ROOT:-}" ] && common="$common --data-root $DATA_ROOT"
mkdir -p "$out"

runs=${RUNS:-moe dense-cont}
for run in $runs; do
    case $run in
    moe|dense-cont|e3) ;;
    *) echo "seeds.sh: unknown run '$run' in RUNS (moe, dense-cont, e3)" >&2; exit 1 ;;
    esac
done

one_seed() {
    s=$1
    t="$py $here/train.py"
    dense="$out/dense-s$s"
    if [ ! -s "$dense/checkpoint.pt" ] || [ ! -s "$dense/superclasses.json" ]; then
        $t dense --out "$dense" --epochs "${DENSE_EPOCHS:-20}" --steps "${DENSE_STEPS:-0}" \
            --lr 1e-3 --seed "$s" $common
        $t superclasses --checkpoint "$dense/checkpoint.pt" --experts 4 --seed "$s" \
            --out "$dense/superclasses.json" ${DATA_ROOT:+--data-root "$DATA_ROOT"}
    fi
    # The continuations share moe's schedule: as many epochs, its learning rate.
    more="--init $dense/checkpoint.pt --epochs ${MOE_EPOCHS:-12} --steps ${MOE_STEPS:-0}
          --lr 5e-4 --warmup-epochs 0.5"
    pids=
    for run in $runs; do
        case $run in
        moe) $t moe $more --superclasses "$dense/superclasses.json" --out "$out/moe-s$s" \
                --seed "$s" $common & ;;
        e3) $t moe $more --superclasses "$dense/superclasses.json" --out "$out/e3-s$s" \
                --ensemble "${ENSEMBLE:-2}" --seed "$s" $common & ;;
        dense-cont) $t dense $more --out "$out/dense-cont-s$s" --seed "$s" $common & ;;
        esac
        pids="$pids $!"
    done
    failed=0
    for p in $pids; do wait "$p" || failed=1; done
    return $failed
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
