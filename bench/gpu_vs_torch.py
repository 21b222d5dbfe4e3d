"""Vulkan backend against PyTorch CUDA eager on one GPU, side by side in one run.

The model is #2's bench config (bench/vit_tiny_mobile_vmoe.json, random
weights from `vmoe random-model`), loaded into training/vmoe_torch.py for
PyTorch.  For each batch size it alternates `vmoe bench --backend vulkan`
(fp32, fp16 weights, and fp32 with the older query-block attention kernel
of VMOE_VULKAN_ATTENTION=blocks) with PyTorch eager under torch.inference_mode
on CUDA, several rounds, and prints batch-1 latency and batch-64 throughput with
the ratios.  Run it on a machine with a GPU and its Vulkan driver:

    python3 bench/gpu_vs_torch.py [--build build-gpu] [--seconds 4] [--rounds 3] [--json]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "training"))
import vmoe_torch  # noqa: E402
from vmoe_tool import random_model, run_json  # noqa: E402


def torch_cuda(model, batch, seconds, config):
    """images/s and per-call latency percentiles (ms), synchronised per call
    as a frame-by-frame user would wait for each result."""
    h, w = config["image_size"]
    x = torch.randn(batch, config.get("in_channels", 3), h, w, device="cuda")
    latencies = []
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            logits, _ = model(x)
            logits.cpu()                      # the result reaches the host, as vmoe's does
            latencies.append((time.perf_counter() - t0) * 1000)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and len(latencies) >= 3:
                break
    latencies.sort()
    return {"images_per_s": len(latencies) * batch / elapsed,
            "latency_ms": {"p50": latencies[len(latencies) // 2],
                           "p90": latencies[int(0.9 * (len(latencies) - 1))]}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    parser.add_argument("--config", default=os.path.join(HERE, "vit_tiny_mobile_vmoe.json"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    vmoe = os.path.join(args.build, "tools", "vmoe")
    with open(args.config) as f:
        config = vmoe_torch.complete_config(json.load(f))   # image_size may be one int
    results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        random_model(vmoe, args.config, path)
        model = vmoe_torch.load_model(path).eval().cuda()
        for batch in [int(b) for b in args.batches.split(",")]:
            variants = (("vulkan", [], {}), ("vulkan_fp16", ["--fp16"], {}),
                        ("vulkan_blocks", [], {"VMOE_VULKAN_ATTENTION": "blocks"}))
            runs = {name: [] for name, _, _ in variants}
            runs["torch_cuda"] = []
            for _ in range(args.rounds):
                for name, extra, env in variants:
                    runs[name].append(run_json([vmoe, "bench", path, "--backend", "vulkan",
                                                "--batch", str(batch), "--seconds",
                                                str(args.seconds), "--json"] + extra, env))
                runs["torch_cuda"].append(torch_cuda(model, batch, args.seconds, config))
            row = {"batch": batch}
            for name, rs in runs.items():
                row[name] = {"images_per_s": statistics.median(r["images_per_s"] for r in rs),
                             "latency_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rs)}
                if name != "torch_cuda":
                    row["device"] = rs[0]["device"]
            t = row["torch_cuda"]
            for name, _, _ in variants:
                row[name]["latency_vs_torch"] = row[name]["latency_p50_ms"] / t["latency_p50_ms"]
                row[name]["throughput_vs_torch"] = row[name]["images_per_s"] / t["images_per_s"]
            results["batches"].append(row)
            print("batch %d on %s:" % (batch, row["device"]))
            for name in runs:
                r = row[name]
                extra = "" if name == "torch_cuda" else " | latency x%.2f, throughput x%.2f of torch" % (
                    r["latency_vs_torch"], r["throughput_vs_torch"])
                print("  %-12s %9.1f images/s  p50 %8.3f ms%s" % (
                    name, r["images_per_s"], r["latency_p50_ms"], extra), flush=True)
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
