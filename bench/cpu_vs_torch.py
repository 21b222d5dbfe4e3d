"""CPU backend against PyTorch eager on the same model, side by side in one run.

Builds the benchmark model (bench/vit_tiny_mobile_vmoe.json: Mobile V-MoE
ViT-Tiny, 224x224, patch 16, 12 x 192, 3 heads, MLP 768, 10 experts, k=1, MoE
in blocks 10-11) with `vmoe random-model`, loads the same file into
training/vmoe_torch.py, and alternates `vmoe bench --json` with PyTorch eager
(torch.inference_mode, all cores) for several rounds at each batch size, so
that both see the same machine noise.  Also measures OpenBLAS sgemm on the
model's largest GEMM at batch 8 (1576x192 by 192x768) right after every
vmoe run, and reports the median of the per-round shares of that rate.  Prints a table and,
with --json, one object.

    /usr/bin/python3 bench/cpu_vs_torch.py [--build build] [--seconds 5] [--rounds 3]
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
from vmoe_tool import gflop_per_image, random_model, run_json  # noqa: E402


def torch_rate(model, batch, seconds, config):
    h, w = config["image_size"]
    x = torch.randn(batch, config.get("in_channels", 3), h, w)
    with torch.inference_mode():
        model(x)
        calls, start = 0, time.perf_counter()
        while True:
            model(x)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and calls >= 3:
                return calls * batch / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    parser.add_argument("--config", default=os.path.join(HERE, "vit_tiny_mobile_vmoe.json"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    vmoe = os.path.join(args.build, "tools", "vmoe")
    sgemm = os.path.join(args.build, "bench", "vmoe-sgemm")
    torch.set_num_threads(os.cpu_count())
    with open(args.config) as f:
        config = vmoe_torch.complete_config(json.load(f))   # image_size may be one int
    results = {"machine": "%d cores, %s" % (os.cpu_count(), os.uname().machine),
               "torch": torch.__version__, "batches": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.safetensors")
        random_model(vmoe, args.config, path)
        model = vmoe_torch.load_model(path).eval()
        gflop = gflop_per_image(vmoe, path)
        results["gflop_per_image"] = gflop
        # The model's largest GEMM at batch 8: (8 * tokens) x D by D x MLP.
        h, w = config["image_size"]
        tokens = (h // config["patch_size"]) * (w // config["patch_size"]) \
            + (1 if config.get("class_token", True) else 0)
        shape = (8 * tokens, config["mlp_dim"], config["embed_dim"])
        results["sgemm_shape"] = shape
        sgemm_cmd = [sgemm, *map(str, shape), str(min(args.seconds, 2.0))]
        sgemm_rates = []
        for batch in [int(b) for b in args.batches.split(",")]:
            ours, theirs, shares = [], [], []
            for _ in range(args.rounds):
                ours.append(run_json([vmoe, "bench", path, "--batch", str(batch),
                                      "--seconds", str(args.seconds), "--json"]))
                # sgemm right after vmoe, so that each share compares two
                # rates taken under the same machine load.
                sgemm_rates.append(run_json(sgemm_cmd)["gflops"])
                shares.append(ours[-1]["images_per_s"] * gflop / sgemm_rates[-1])
                theirs.append(torch_rate(model, batch, args.seconds, config))
            rate = statistics.median(r["images_per_s"] for r in ours)
            torch_ips = statistics.median(theirs)
            results["batches"].append({
                "batch": batch, "vmoe_images_per_s": rate, "torch_images_per_s": torch_ips,
                "ratio": rate / torch_ips, "vmoe_gflops": rate * gflop,
                "share_of_sgemm": statistics.median(shares), "shares": shares,
                "vmoe_p50_ms": statistics.median(r["latency_ms"]["p50"] for r in ours)})
        results["sgemm"] = {"gflops": statistics.median(sgemm_rates), "all": sgemm_rates}
    if args.json:
        print(json.dumps(results))
        return
    print("model: %s, %.3f GFLOP/image as routed; %s; torch %s"
          % (os.path.basename(args.config), results["gflop_per_image"],
             results["machine"], results["torch"]))
    print("batch  vmoe img/s  torch img/s  ratio  vmoe GFLOP/s  share of sgemm  vmoe p50 ms")
    for b in results["batches"]:
        print("%5d  %10.2f  %11.2f  %5.2f  %12.2f  %13.0f%%  %11.2f" % (
            b["batch"], b["vmoe_images_per_s"], b["torch_images_per_s"], b["ratio"],
            b["vmoe_gflops"], 100 * b["share_of_sgemm"], b["vmoe_p50_ms"]))
    m, n, k = results["sgemm_shape"]
    print("sgemm %dx%d by %dx%d: %.2f GFLOP/s (median; share = median of the "
          "per-round ratios, each against the sgemm run right after it)"
          % (m, k, k, n, results["sgemm"]["gflops"]))


if __name__ == "__main__":
    main()
