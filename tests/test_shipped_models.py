"""The shipped models in models/, run by the C engine, agree with PyTorch
(training/vmoe_torch.py) on Fashion-MNIST test images: at least 99.9% of
top-1 predictions and the same experts, and the MoE keeps its FLOPs within
5% of the dense model's.  The E3 ensemble also reports PyTorch's entropy,
and on the whole test set its accuracy, NLL and ECE from the engine are the
model card's (models/card/e3-summary.json, written by training).

    /usr/bin/python3 tests/test_shipped_models.py VMOE_BINARY MODELS_DIR [IMAGES]
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "training"))
import calibration  # noqa: E402
import data  # noqa: E402
import vmoe_torch  # noqa: E402

# The card's figures for a shipped file: its training run's summary.json.
CARD_SUMMARIES = {"fashion-e3.safetensors": "e3-summary.json"}


def gflops(vmoe, model):
    info = subprocess.run([vmoe, "info", model], capture_output=True, text=True,
                          check=True).stdout
    line = next(l for l in info.splitlines() if l.startswith("GFLOPs/image"))
    return float(line.split()[1])


def engine_results(vmoe, path, images, top_k):
    with tempfile.TemporaryDirectory() as tmp:
        npy = os.path.join(tmp, "images.npy")
        np.save(npy, images)
        out = subprocess.run([vmoe, "run", path, npy, "--batch", "64", "--top-k", str(top_k)],
                             capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def check_card(vmoe, path, summary_path, images, labels):
    """The engine's accuracy, NLL and ECE on every test image against the
    card's (computed by PyTorch when training ended); failures as strings."""
    with open(summary_path) as f:
        card = json.load(f)
    k = vmoe_torch.load_model(path).config["num_classes"]
    results = engine_results(vmoe, path, images, k)
    probs = np.zeros((len(results), k))
    for i, r in enumerate(results):
        for t in r["top"]:
            probs[i, t["class"]] = t["score"]
    figures = {"test_acc": float((probs.argmax(1) == labels).mean()),
               "test_nll": calibration.negative_log_likelihood(
                   np.log(np.maximum(probs, 1e-30)), labels),
               "test_ece": calibration.expected_calibration_error(probs, labels)}
    print("%s on %d images: engine %s, card %s" % (
        os.path.basename(path), len(labels),
        {key: round(v, 5) for key, v in figures.items()},
        {key: round(card[key], 5) for key in figures}))
    # One image in 10,000 may flip between float orders (as the card says
    # of the MoE); probabilities agree to float rounding.
    limits = {"test_acc": 1.5e-4, "test_nll": 1e-3, "test_ece": 1e-3}
    return ["%s: engine %s %.5f, card %.5f" % (path, key, figures[key], card[key])
            for key in figures if abs(figures[key] - card[key]) > limits[key]]


def check_model(vmoe, path, images, labels):
    model = vmoe_torch.load_model(path).eval()
    with torch.inference_mode():
        x = vmoe_torch.preprocess_uint8(images, model.config)
        logits, routing = model(x)
    torch_top = logits.argmax(-1).numpy()
    torch_experts = routing["experts"].numpy().tolist() if "experts" in routing else None
    results = engine_results(vmoe, path, images, 1)
    c_top = np.array([r["top"][0]["class"] for r in results])
    agree = float((c_top == torch_top).mean())
    experts_agree = None
    if torch_experts is not None:
        experts_agree = float(np.mean([r["experts"] == e for r, e in zip(results, torch_experts)]))
    acc = float((c_top == labels).mean())
    print("%s: top-1 agreement %.4f, experts agreement %s, C engine accuracy %.4f on %d images"
          % (os.path.basename(path), agree, experts_agree, acc, len(labels)))
    entropy_error = None
    if "entropy" in routing:
        entropy_error = float(np.max(np.abs(np.array([r["entropy"] for r in results])
                                            - routing["entropy"].numpy())))
        print("  entropy: max |engine - PyTorch| %.2g nats" % entropy_error)
    return agree, experts_agree, entropy_error


def main():
    vmoe, models = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    _, _, test_x, test_y = data.fashion_mnist()
    images, labels = test_x[:count], test_y[:count]
    failures = []
    paths = sorted(os.path.join(models, f) for f in os.listdir(models)
                   if f.endswith(".safetensors"))
    if not paths:
        sys.exit("no model in %s" % models)
    for path in paths:
        agree, experts, entropy_error = check_model(vmoe, path, images, labels)
        if agree < 0.999:
            failures.append("%s: top-1 agreement %.4f < 0.999" % (path, agree))
        if experts is not None and experts < 0.999:
            failures.append("%s: expert agreement %.4f < 0.999" % (path, experts))
        if entropy_error is not None and entropy_error > 1e-4:
            failures.append("%s: entropy off PyTorch's by %.2g nats" % (path, entropy_error))
        summary = CARD_SUMMARIES.get(os.path.basename(path))
        if summary:
            failures += check_card(vmoe, path, os.path.join(models, "card", summary),
                                   test_x, test_y)
    dense = os.path.join(models, "fashion-dense.safetensors")
    moe = os.path.join(models, "fashion-vmoe.safetensors")
    if os.path.exists(dense) and os.path.exists(moe):
        ratio = gflops(vmoe, moe) / gflops(vmoe, dense)
        print("FLOPs MoE / dense: %.4f" % ratio)
        if abs(ratio - 1) > 0.05:
            failures.append("MoE FLOPs are %.3f x the dense model's" % ratio)
    if failures:
        sys.exit("\n".join(failures))


if __name__ == "__main__":
    main()
