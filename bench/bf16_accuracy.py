"""bf16 against fp32 in the CPU engine on the 10,000 Fashion-MNIST test
images: issue #11's accuracy targets for the shipped models.

Each model (default: models/fashion-{vmoe,dense,e3}.safetensors) runs through
`vmoe run --backend cpu` twice on the same uint8 test images, in fp32 and with
`--precision bf16`.  Printed per model: top-1 agreement of bf16 with fp32,
each one's top-1 accuracy on the labels, expert agreement (the same experts
chosen for the image; with E3 every member's), the largest and median
relative logit error (per image max |bf16 - fp32| / max |fp32|, the parity
suite's measure), and for each image whose top-1 or experts differ, its fp32
margin: the gap between its two most probable classes (softmax of the
engine's fp32 logits), or between the router probabilities of the last
expert chosen and the first passed over (PyTorch's fp32 model,
training/vmoe_torch.py, on those images: the engine reports only the chosen
experts' gates).  Then issue #11's targets: the same top-1 class and the same
experts on at least 99.5% of the images.

    /usr/bin/python3 bench/bf16_accuracy.py [--build build | --vmoe PATH] [--dataset DIR]
        [--count N] [--batch 256] [--check] [MODEL ...]

Exits 77 (skipped) where the dataset is absent or the engine refuses bf16
(an OpenBLAS build, a CPU without avx512_bf16); with --check, 1 where a
target is not met (meson test bf16-accuracy).
"""

import argparse
import concurrent.futures
import os
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "training"))
import data  # noqa: E402
import vmoe_torch  # noqa: E402
from vmoe_tool import bf16_unavailable, info, relative_error, run_logits  # noqa: E402

SHIPPED = ["fashion-vmoe.safetensors", "fashion-dense.safetensors", "fashion-e3.safetensors"]
# Issue #11: bf16 agrees with fp32 on the top-1 class and on the experts of
# at least this share of the test images.
LEAST_AGREEMENT = 0.995
PRECISIONS = ("fp32", "bf16")
SKIPPED = 77
# Issue #11's relative logit error for bf16 on the random parity models
# (meson test parity-bf16); here only counted, trained weights are not bound by it.
PARITY_TOLERANCE = 2e-2
# Differing images listed per model (all are counted).
LISTED = 20


def fail(message):
    print("bf16_accuracy: %s" % message, file=sys.stderr)
    sys.exit(1)


def skip(message):
    print("bf16_accuracy: skipped: %s" % message)
    sys.exit(SKIPPED)


def test_set(root):
    """uint8 images [N, 28, 28, 1] and int labels [N]; skips where absent."""
    paths = [os.path.join(root, name) for name in
             ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        skip("Fashion-MNIST test set not found (%s; apt-get install dataset-fashion-mnist)"
             % missing[0])
    try:
        images, labels = (data.read_idx(p) for p in paths)
    except (OSError, ValueError, EOFError) as e:
        fail("cannot read the Fashion-MNIST test set: %s" % e)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        fail("%s: images %s and labels %s do not match" % (root, images.shape, labels.shape))
    return images[..., None], labels.astype(np.int64)


def engine_runs(vmoe, models, images, batch):
    """{(model, precision): vmoe run's per-image JSON objects}, the runs
    side by side, one engine thread each (an image's bits do not depend on
    the thread count or the batch: docs/cpu.md)."""
    options = ["--backend", "cpu", "--threads", "1", "--top-k", "1", "--precision"]
    jobs = [(m, p) for m in models for p in PRECISIONS]
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        futures = [pool.submit(run_logits, vmoe, m, images, options + [p], batch)
                   for m, p in jobs]
        runs = {}
        for (m, p), future in zip(jobs, futures):
            try:
                runs[(m, p)] = future.result()
            except subprocess.CalledProcessError as e:
                pool.shutdown(cancel_futures=True)
                fail("vmoe run %s --precision %s: %s" % (
                    m, p, (e.stderr.strip().splitlines() or ["failed"])[-1]))
        return runs


def class_margins(logits):
    """Per image the gap between its two largest softmax probabilities."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def router_margins(model_path, images):
    """Per image, PyTorch's fp32 router: the gap between the probabilities of
    the k-th and (k+1)-th expert (with E3 the smallest over the members, each
    choosing among its own), and its experts.  Image routing only."""
    model = vmoe_torch.load_model(model_path).eval()
    with torch.inference_mode():
        _, routing = model(vmoe_torch.preprocess_uint8(images, model.config))
    probs = routing["router_probs"][0].numpy()
    probs = probs.reshape(len(images), model.members, -1)
    k = model.top_k
    if probs.shape[-1] <= k:
        return np.full(len(images), np.inf), routing["experts"].numpy().tolist()
    ordered = -np.sort(-probs, axis=-1)
    gaps = (ordered[..., k - 1] - ordered[..., k]).min(axis=1)
    return gaps, routing["experts"].numpy().tolist()


def compare(model_path, fp32, bf16, images, labels):
    """The figures of one model (a dict); see the module's docstring."""
    top = {name: np.array([r["top"][0]["class"] for r in runs])
           for name, runs in (("fp32", fp32), ("bf16", bf16))}
    ref_logits = np.array([r["logits"] for r in fp32])
    error = relative_error([r["logits"] for r in bf16], ref_logits)
    margins = class_margins(ref_logits)
    top1_differ = np.flatnonzero(top["fp32"] != top["bf16"])
    found = {
        "model": os.path.basename(model_path), "images": len(labels),
        "accuracy": {name: float((t == labels).mean()) for name, t in top.items()},
        "top1_agreement": 1 - len(top1_differ) / len(labels),
        "max_error": float(error.max()), "median_error": float(np.median(error)),
        "p99_error": float(np.percentile(error, 99)),
        "over_parity_tolerance": int((error > PARITY_TOLERANCE).sum()),
        "top1_differ": [{"image": int(i), "fp32": int(top["fp32"][i]),
                         "bf16": int(top["bf16"][i]), "fp32_margin": float(margins[i]),
                         "error": float(error[i])} for i in top1_differ],
    }
    if top1_differ.size:
        # How common such near-ties are: the share of all images whose fp32
        # top-2 gap is no wider than the widest among those that flipped.
        widest = margins[top1_differ].max()
        found["top1_margin_share"] = float((margins <= widest).mean())
    if "experts" not in fp32[0]:
        return found
    same = np.array([a["experts"] == b["experts"] for a, b in zip(fp32, bf16)])
    experts_differ = np.flatnonzero(~same)
    found["expert_agreement"] = float(same.mean())
    found["max_error_same_experts"] = float(error[same].max()) if same.any() else None
    found["experts_differ"] = [{"image": int(i), "fp32": fp32[i]["experts"],
                                "bf16": bf16[i]["experts"], "error": float(error[i])}
                               for i in experts_differ]
    if experts_differ.size:
        gaps, torch_experts = router_margins(model_path, images[experts_differ])
        for d, gap, chosen in zip(found["experts_differ"], gaps, torch_experts):
            d["fp32_router_margin"] = float(gap)
            d["pytorch_experts"] = chosen
    return found


def report(f):
    print("%s, %d images:" % (f["model"], f["images"]))
    print("  top-1 accuracy on the labels: fp32 %.2f%%, bf16 %.2f%%"
          % (100 * f["accuracy"]["fp32"], 100 * f["accuracy"]["bf16"]))
    print("  top-1 agreement bf16 vs fp32: %.2f%% (%d of %d images differ)"
          % (100 * f["top1_agreement"], len(f["top1_differ"]), f["images"]))
    if "expert_agreement" in f:
        print("  expert agreement: %.2f%% (%d of %d images differ)"
              % (100 * f["expert_agreement"], len(f["experts_differ"]), f["images"]))
    print("  relative logit error: max %.2e, 99th percentile %.2e, median %.2e"
          % (f["max_error"], f["p99_error"], f["median_error"]), end="")
    if f.get("max_error_same_experts") is not None:
        print(", max %.2e where the experts agree" % f["max_error_same_experts"], end="")
    print("; %d images over %g" % (f["over_parity_tolerance"], PARITY_TOLERANCE))
    for d in f["top1_differ"][:LISTED]:
        print("    image %5d: class %d -> %d, fp32 top-2 probability gap %.2e, error %.2e"
              % (d["image"], d["fp32"], d["bf16"], d["fp32_margin"], d["error"]))
    if f["top1_differ"]:
        print("    (%.2f%% of all images have an fp32 top-2 gap no wider than the widest of these)"
              % (100 * f["top1_margin_share"]))
    for d in f.get("experts_differ", [])[:LISTED]:
        note = "" if d["pytorch_experts"] == d["fp32"] else \
            " (PyTorch fp32 chose %s)" % d["pytorch_experts"]
        print("    image %5d: experts %s -> %s, fp32 router probability gap %.2e, error %.2e%s"
              % (d["image"], d["fp32"], d["bf16"], d["fp32_router_margin"], d["error"], note))
    listed = max(len(f["top1_differ"]), len(f.get("experts_differ", [])))
    if listed > LISTED:
        print("    (first %d listed of each)" % LISTED)


def targets(figures):
    """Prints issue #11's targets, met or not; returns whether all were met."""
    all_met = True
    for f in figures:
        for what, key in (("top-1 agreement", "top1_agreement"),
                          ("same experts", "expert_agreement")):
            if key not in f:
                continue
            met = f[key] >= LEAST_AGREEMENT
            all_met &= met
            print("target bf16 %-15s >= %.1f%%  %-26s: %6.2f%%  %s" % (
                what, 100 * LEAST_AGREEMENT, f["model"], 100 * f[key],
                "met" if met else "NOT met"))
    return all_met


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model files (default: the shipped ones)")
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--vmoe", help="the vmoe tool (default BUILD/tools/vmoe)")
    parser.add_argument("--dataset", default=data.FASHION_ROOT,
                        help="directory of the Fashion-MNIST IDX files")
    parser.add_argument("--count", type=int, help="the first N test images (default all)")
    parser.add_argument("--batch", type=int, default=256, help="images per engine call")
    parser.add_argument("--check", action="store_true", help="exit 1 where a target is not met")
    args = parser.parse_args()
    started = time.monotonic()
    vmoe = args.vmoe or os.path.join(args.build, "tools", "vmoe")
    if not os.access(vmoe, os.X_OK):
        fail("%s not found: build first (meson compile -C %s)"
             % (vmoe, os.path.dirname(os.path.dirname(vmoe)) or "."))
    models = args.models or [os.path.join(ROOT, "models", name) for name in SHIPPED]
    for m in models:
        # A model the engine cannot load is an error, not a reason to skip:
        # the bf16 probe below would fail on it too.
        loaded = subprocess.run([vmoe, "info", m], capture_output=True, text=True)
        if loaded.returncode != 0:
            fail((loaded.stderr.strip().splitlines() or ["vmoe info %s failed" % m])[-1])
    if args.batch < 1:
        fail("--batch must be at least 1")
    images, labels = test_set(args.dataset)
    if args.count is not None:
        if not 1 <= args.count <= len(labels):
            fail("--count must be 1 to %d" % len(labels))
        images, labels = images[:args.count], labels[:args.count]
    why_not = bf16_unavailable(vmoe, models[0])
    if why_not:
        skip("bf16 not available here: %s" % why_not)
    paths = info(vmoe, models[0])
    print("vmoe cpu fp32: %s; cpu bf16: %s" % (paths.get("cpu fp32", "?"),
                                              paths.get("cpu bf16", "?")))
    runs = engine_runs(vmoe, models, images, args.batch)
    figures = []
    for m in models:
        fp32, bf16 = runs[(m, "fp32")], runs[(m, "bf16")]
        if len(fp32) != len(labels) or len(bf16) != len(labels):
            fail("%s: vmoe run gave %d and %d results for %d images"
                 % (m, len(fp32), len(bf16), len(labels)))
        figures.append(compare(m, fp32, bf16, images, labels))
        report(figures[-1])
    all_met = targets(figures)
    print("(%.1f s)" % (time.monotonic() - started))
    if args.check and not all_met:
        sys.exit(1)


if __name__ == "__main__":
    main()
