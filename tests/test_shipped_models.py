"""The shipped models in models/, run by the C engine, agree with PyTorch
(training/vmoe_torch.py) on Fashion-MNIST test images: at least 99.9% of
top-1 predictions and the same experts, and the MoE keeps its FLOPs within
5% of the dense model's.

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
import data  # noqa: E402
import vmoe_torch  # noqa: E402


def gflops(vmoe, model):
    info = subprocess.run([vmoe, "info", model], capture_output=True, text=True,
                          check=True).stdout
    line = next(l for l in info.splitlines() if l.startswith("GFLOPs/image"))
    return float(line.split()[1])


def check_model(vmoe, path, images, labels):
    model = vmoe_torch.load_model(path).eval()
    with torch.inference_mode():
        x = vmoe_torch.preprocess_uint8(images, model.config)
        logits, routing = model(x)
    torch_top = logits.argmax(-1).numpy()
    torch_experts = routing["experts"].numpy().tolist() if "experts" in routing else None
    with tempfile.TemporaryDirectory() as tmp:
        npy = os.path.join(tmp, "images.npy")
        np.save(npy, images)
        out = subprocess.run([vmoe, "run", path, npy, "--batch", "64", "--top-k", "1"],
                             capture_output=True, text=True, check=True).stdout
    results = [json.loads(line) for line in out.splitlines()]
    c_top = np.array([r["top"][0]["class"] for r in results])
    agree = float((c_top == torch_top).mean())
    experts_agree = None
    if torch_experts is not None:
        experts_agree = float(np.mean([r["experts"] == e for r, e in zip(results, torch_experts)]))
    acc = float((c_top == labels).mean())
    print("%s: top-1 agreement %.4f, experts agreement %s, C engine accuracy %.4f on %d images"
          % (os.path.basename(path), agree, experts_agree, acc, len(labels)))
    return agree, experts_agree


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
        agree, experts = check_model(vmoe, path, images, labels)
        if agree < 0.999:
            failures.append("%s: top-1 agreement %.4f < 0.999" % (path, agree))
        if experts is not None and experts < 0.999:
            failures.append("%s: expert agreement %.4f < 0.999" % (path, experts))
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
