"""CPU backend against ONNX Runtime on the same models, side by side in one run (issue #11).

Models: ViT-Tiny 224x224 dense and Mobile V-MoE (bench/vit_tiny_mobile_vmoe.json
without and with its "moe" section, random weights from `vmoe random-model`),
at batch 1 and 8, and the shipped 28x28 model (models/fashion-vmoe.safetensors)
at batch 1.  Each is exported with PyTorch (bench/onnx_export.py, opset 17, a
graph per batch size) and run by ONNX Runtime 1.30 from npm through node
(bench/onnxruntime_node.py: all cores, full graph optimisation).

1. Same model: the logits of `vmoe run` and of ONNX Runtime on one random
   input must agree (max |vmoe - ort| / max |ort| per image <= --tolerance)
   and so must the experts chosen; bf16, where the tool has it, is reported
   against the same fp32 logits.
2. Timing: rounds that alternate ONNX Runtime (twice: its threads spinning
   while they wait, its default, and not), `vmoe bench` fp32 and, where
   the tool lists --precision, `vmoe bench --precision bf16`, first with the
   cores free ("free"), then with a second process spinning on one core
   ("busy").  Each round also measures the FMA peak on all cores
   (build/bench/vmoe-fma-peak, FLOPs over the threads' CPU time).
3. Memory: the peak RSS of `vmoe bench --batch 8` (fp32 and bf16), each
   run alone, against the model's stored weight bytes + 50 MB.
4. Output: per case the median images/s and p50/p99 latency of each engine,
   the median of the per-round ratios to the faster ONNX Runtime setting
   of the round, GFLOP/s (FLOPs as routed, from `vmoe info`) and its share
   of the FMA peak, the peak RSS, and the issue's targets, met or not.

    /usr/bin/python3 bench/cpu_vs_onnxruntime.py [--build build] [--seconds 4]
        [--rounds 3] [--batches 1,8] [--quick] [--check-only] [--memory-only]
        [--no-busy] [--json]

--check-only runs step 1 alone; it needs no network once ONNX Runtime is in
the cache (bench/.cache by default).  --memory-only runs step 3 alone, in
seconds, without ONNX Runtime.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import onnx_export  # noqa: E402
import onnxruntime_node  # noqa: E402
from vmoe_tool import (bf16_unavailable, gflop_per_image, info, random_model,  # noqa: E402
                       relative_error, run_json, run_json_peak_rss, run_logits,
                       stored_weight_bytes)

ROOT = os.path.dirname(HERE)
ORT = "onnxruntime"
ORT_NO_SPIN = "ort no-spin"
VMOE = "vmoe fp32"
VMOE_BF16 = "vmoe bf16"
# Issue #11's targets for both ViT-Tiny models: (what, engine, batch, load,
# the figure compared, its least value).
TARGETS = [
    ("fp32 >= 1.6x ONNX Runtime", VMOE, 1, "free", "vs_onnxruntime", 1.6),
    ("fp32 >= 1.6x ONNX Runtime", VMOE, 8, "free", "vs_onnxruntime", 1.6),
    ("fp32 >= 60% of the FMA peak", VMOE, 8, "free", "peak_share", 0.6),
    ("bf16 >= 2x ONNX Runtime fp32", VMOE_BF16, 1, "free", "vs_onnxruntime", 2.0),
    ("bf16 >= 2.5x ONNX Runtime fp32", VMOE_BF16, 8, "free", "vs_onnxruntime", 2.5),
    ("busy core: fp32 >= 1.3x ONNX Runtime", VMOE, 1, "busy", "vs_onnxruntime", 1.3),
]
# Issue #11's memory target: peak RSS at this batch <= the stored weight
# bytes + this margin (MB: 10^6 bytes).
MEMORY_BATCH = 8
MEMORY_MARGIN = 50e6


def fail(message):
    print("cpu_vs_onnxruntime: %s" % message, file=sys.stderr)
    sys.exit(1)


def machine():
    """CPU model, cores, architecture and the vector extensions that matter here."""
    cpu = "unknown CPU"
    flags = set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    isa = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return "%s, %d cores, %s, %s" % (cpu, os.cpu_count(), platform.machine(), " ".join(isa))


@contextlib.contextmanager
def load(name):
    """"free": nothing of ours beside the engine measured.  "busy": another
    process spins on one core meanwhile (a plain busy loop, as a decoder or
    converter beside the pipeline would keep it busy)."""
    if name != "busy":
        yield
        return
    spinner = subprocess.Popen(["/bin/sh", "-c", "while :; do :; done"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def make_models(vmoe, config_path, tmp, batches):
    """The benchmark's models, the smallest last: [{"name", "path", "batches",
    "chw" (input channels, height, width), "gflop" (per image, as routed)}]."""
    with open(config_path) as f:
        config = json.load(f)
    dense = {k: v for k, v in config.items() if k != "moe"}
    dense_path = os.path.join(tmp, "vit_tiny_dense.json")
    with open(dense_path, "w") as f:
        json.dump(dense, f)
    models = []
    for name, cfg in (("vit_tiny_dense", dense_path), ("vit_tiny_mobile_vmoe", config_path)):
        path = os.path.join(tmp, name + ".safetensors")
        random_model(vmoe, cfg, path)
        models.append({"name": name, "path": path, "batches": batches})
    models.append({"name": "fashion_vmoe_28x28",
                   "path": os.path.join(ROOT, "models", "fashion-vmoe.safetensors"),
                   "batches": [1]})
    for m in models:
        # "image: 224x224, 3 channel(s), patch 16, 197 tokens"
        size, channels = info(vmoe, m["path"])["image"].split(",")[:2]
        h, w = (int(v) for v in size.split("x"))
        m["chw"] = [int(channels.split()[0]), h, w]
        m["gflop"] = gflop_per_image(vmoe, m["path"])
    return models


def check_same_model(vmoe, modules, model, batch, onnx_path, bf16, tolerance):
    """Step 1 for one exported graph; returns its findings."""
    rng = np.random.default_rng(11)
    images = rng.uniform(-2, 2, size=[batch] + model["chw"]).astype(np.float32)
    ort = onnxruntime_node.logits(modules, onnx_path, images)
    ours = run_logits(vmoe, model["path"], images, ["--backend", "cpu"])
    found = {"error": float(relative_error([r["logits"] for r in ours], ort["logits"]).max())}
    if "experts" in ort:
        found["same_experts"] = [r["experts"] for r in ours] == ort["experts"]
    found["ok"] = found["error"] <= tolerance and found.get("same_experts", True)
    if bf16:
        low = run_logits(vmoe, model["path"], images,
                         ["--backend", "cpu", "--precision", "bf16"])
        found["bf16_error"] = float(relative_error([r["logits"] for r in low],
                                                   ort["logits"]).max())
        if "experts" in ort:
            found["bf16_same_experts"] = sum(
                r["experts"] == e for r, e in zip(low, ort["experts"])) / batch
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--config", default=os.path.join(HERE, "vit_tiny_mobile_vmoe.json"))
    parser.add_argument("--cache", default=onnxruntime_node.DEFAULT_CACHE,
                        help="where onnxruntime-node is installed (default bench/.cache)")
    parser.add_argument("--seconds", type=float, help="per measurement (default 4, --quick 1)")
    parser.add_argument("--rounds", type=int, help="(default 3, --quick 1)")
    parser.add_argument("--batches", default="1,8", help="for the ViT-Tiny models")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest relative logit error accepted (fp32)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 s, 1 round")
    parser.add_argument("--check-only", action="store_true",
                        help="export and compare logits, no timing")
    parser.add_argument("--memory-only", action="store_true",
                        help="peak RSS at batch %d against the memory target, nothing else"
                        % MEMORY_BATCH)
    parser.add_argument("--no-busy", action="store_true", help="skip the busy-core runs")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    args = parser.parse_args()
    seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 4.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1 or not seconds > 0 or rounds < 1:
        fail("--batches must list positive integers, --seconds and --rounds be positive")

    vmoe = os.path.join(args.build, "tools", "vmoe")
    fma_peak = os.path.join(args.build, "bench", "vmoe-fma-peak")
    for exe in (vmoe,) if args.memory_only else (vmoe, fma_peak):
        if not os.access(exe, os.X_OK):
            fail("%s not found: build first (meson setup build && meson compile -C build;"
                 " vmoe-fma-peak is built for x86 only)" % exe)
    if args.memory_only:
        memory_only(vmoe, args.config, args.json)
        return
    try:
        modules = onnxruntime_node.node_modules(args.cache)
    except onnxruntime_node.Unavailable as e:
        fail(str(e))
    torch.set_num_threads(os.cpu_count())
    warnings.filterwarnings("ignore")   # the tracer's notes on shapes taken as constants

    results = {"machine": machine(), "date": datetime.date.today().isoformat(),
               "onnxruntime": onnxruntime_node.VERSION, "torch": torch.__version__,
               "opset": onnx_export.OPSET, "seconds": seconds,
               "rounds": rounds, "checks": [], "cases": []}
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(vmoe, args.config, tmp, batches)
        # The smallest model makes the quickest trial.
        results["bf16_unavailable"] = bf16_unavailable(vmoe, models[-1]["path"])
        bf16 = results["bf16_unavailable"] is None
        # What `vmoe info` says of the GEMM path and instruction set, where it does.
        results["gemm"] = {k: v for k, v in info(vmoe, models[0]["path"]).items()
                           if any(w in k.lower() for w in ("gemm", "precision", "isa",
                                                           "instruction"))}
        print("machine: %s" % results["machine"], flush=True)
        print("onnxruntime-node %s, torch %s (opset %d); vmoe %s; bf16: %s"
              % (onnxruntime_node.VERSION, torch.__version__, onnx_export.OPSET,
                 ", ".join("%s %s" % kv for kv in results["gemm"].items()) or "-",
                 "--precision bf16" if bf16 else "not available (%s)" % results[
                     "bf16_unavailable"]), flush=True)

        graphs, failed = {}, False
        for m in models:
            for batch in m["batches"]:
                onnx_path = os.path.join(tmp, "%s_b%d.onnx" % (m["name"], batch))
                try:
                    onnx_export.export(m["path"], onnx_path, batch)
                except ValueError as e:
                    fail("%s: %s" % (m["name"], e))
                graphs[m["name"], batch] = onnx_path
                try:
                    found = check_same_model(vmoe, modules, m, batch, onnx_path, bf16,
                                             args.tolerance)
                except onnxruntime_node.Unavailable as e:
                    fail(str(e))
                found.update(model=m["name"], batch=batch)
                results["checks"].append(found)
                failed |= not found["ok"]
                print("same model: %-22s batch %d: relative logit error %.2g%s%s%s" % (
                    m["name"], batch, found["error"],
                    "" if "same_experts" not in found else
                    (", same experts" if found["same_experts"] else ", EXPERTS DIFFER"),
                    "" if not bf16 else ", bf16 error %.2g%s" % (
                        found["bf16_error"], "" if "bf16_same_experts" not in found else
                        " with %.0f%% same experts" % (100 * found["bf16_same_experts"])),
                    "" if found["ok"] else "  FAILED (tolerance %g)" % args.tolerance),
                    flush=True)
        if failed:
            fail("vmoe and ONNX Runtime disagree; not timing different models")
        if args.check_only:
            if args.json:
                print(json.dumps(results))
            return

        engines = [ORT, ORT_NO_SPIN, VMOE] + ([VMOE_BF16] if bf16 else [])
        loads = ["free"] + ([] if args.no_busy else ["busy"])
        runs, peaks = time_rounds(vmoe, fma_peak, modules, models, graphs, engines, loads,
                                  rounds, seconds)
        results["memory"] = measure_memory(vmoe, models[:2], bf16)
    # The peak is the rate on the threads' own CPU time: the cores' peak even
    # where other processes take turns on them.
    peak = statistics.median(p["gflops_on_cpu"] for p in peaks)
    results["fma_peak"] = {"gflops": peak, "isa": peaks[0]["isa"], "runs": peaks}
    for m in models:
        for batch in m["batches"]:
            for load_name in loads:
                results["cases"] += summarise(runs, m, batch, load_name, engines, peak)
    report(results)
    if args.json:
        print(json.dumps(results))


def memory_only(vmoe, config_path, as_json):
    """Step 3 alone, on the two ViT-Tiny models."""
    with tempfile.TemporaryDirectory() as tmp:
        models = make_models(vmoe, config_path, tmp, [MEMORY_BATCH])[:2]
        bf16 = bf16_unavailable(vmoe, models[0]["path"]) is None
        results = {"machine": machine(), "date": datetime.date.today().isoformat(),
                   "memory": measure_memory(vmoe, models, bf16)}
    print("machine: %s" % results["machine"])
    report_memory(results["memory"])
    if as_json:
        print(json.dumps(results))


def measure_memory(vmoe, models, bf16):
    """Step 3: the peak RSS of one `vmoe bench` process per model and
    precision, each run alone (ru_maxrss of that child)."""
    rows = []
    for m in models:
        for engine in [VMOE] + ([VMOE_BF16] if bf16 else []):
            precision = ["--precision", "bf16"] if engine == VMOE_BF16 else []
            _, peak = run_json_peak_rss([vmoe, "bench", m["path"], "--backend", "cpu",
                                         "--batch", str(MEMORY_BATCH), "--seconds", "1",
                                         "--json", *precision])
            rows.append({"model": m["name"], "engine": engine, "batch": MEMORY_BATCH,
                         "peak_rss_bytes": peak,
                         "stored_weight_bytes": stored_weight_bytes(m["path"])})
    return rows


def report_memory(rows):
    for r in rows:
        limit = r["stored_weight_bytes"] + MEMORY_MARGIN
        print("peak RSS %-20s batch %d, %-9s: %6.1f MB (stored weights %.1f MB + %.0f MB "
              "= %.1f MB)" % (r["model"], r["batch"], r["engine"], r["peak_rss_bytes"] / 1e6,
                              r["stored_weight_bytes"] / 1e6, MEMORY_MARGIN / 1e6, limit / 1e6))
    for r in rows:
        limit = r["stored_weight_bytes"] + MEMORY_MARGIN
        print("target %-38s batch %d, %-20s: %7s  %s" % (
            "%s peak RSS <= weights + %.0f MB" % (r["engine"].split()[-1], MEMORY_MARGIN / 1e6),
            r["batch"], r["model"], "%.1f MB" % (r["peak_rss_bytes"] / 1e6),
            "met" if r["peak_rss_bytes"] <= limit else "NOT met"))


def time_rounds(vmoe, fma_peak, modules, models, graphs, engines, loads, rounds, seconds):
    """Step 2: {(model name, batch, load, engine): [one bench result per
    round]} and the FMA peak runs, one per round."""
    runs, peaks = {}, []
    for round_index in range(rounds):
        peaks.append(run_json([fma_peak, "0", "1"]))
        # Alternate the order so that no engine always runs first.
        order = engines if round_index % 2 == 0 else engines[::-1]
        for load_name in loads:
            with load(load_name):
                for m in models:
                    for batch in m["batches"]:
                        for engine in order:
                            runs.setdefault((m["name"], batch, load_name, engine), []).append(
                                measure(engine, vmoe, modules, m, batch,
                                        graphs[m["name"], batch], seconds))
        print("round %d of %d done" % (round_index + 1, rounds), file=sys.stderr, flush=True)
    return runs, peaks


def summarise(runs, model, batch, load_name, engines, peak):
    """One case's rows: medians over the rounds, ratios to ONNX Runtime."""
    def key(engine):
        return model["name"], batch, load_name, engine
    # Against the faster ONNX Runtime setting of each round: a user would pick it.
    best = [max(a["images_per_s"], b["images_per_s"])
            for a, b in zip(runs[key(ORT)], runs[key(ORT_NO_SPIN)])]
    rows = []
    for engine in engines:
        rs = runs[key(engine)]
        ips = statistics.median(r["images_per_s"] for r in rs)
        ratios = [r["images_per_s"] / b for r, b in zip(rs, best)]
        rows.append({
            "model": model["name"], "batch": batch, "load": load_name, "engine": engine,
            "images_per_s": ips,
            "p50_ms": statistics.median(r["latency_ms"]["p50"] for r in rs),
            "p99_ms": statistics.median(r["latency_ms"]["p99"] for r in rs),
            "vs_onnxruntime": statistics.median(ratios), "ratios": ratios,
            "gflops": ips * model["gflop"], "peak_share": ips * model["gflop"] / peak})
    return rows


def measure(engine, vmoe, modules, model, batch, onnx_path, seconds):
    if engine in (ORT, ORT_NO_SPIN):
        return onnxruntime_node.bench(modules, onnx_path, [batch] + model["chw"], seconds,
                                      spin=engine == ORT)
    precision = ["--precision", "bf16"] if engine == VMOE_BF16 else []
    return run_json([vmoe, "bench", model["path"], "--backend", "cpu", "--batch", str(batch),
                     "--seconds", str(seconds), "--json", *precision])


def report(results):
    peak = results["fma_peak"]
    print("FMA peak (fp32, %s, all cores): %.1f GFLOP/s on the threads' CPU time (median of "
          "%s; over wall time %s)" % (
              peak["isa"], peak["gflops"], ", ".join("%.1f" % p["gflops_on_cpu"]
                                                     for p in peak["runs"]),
              ", ".join("%.1f" % p["gflops"] for p in peak["runs"])))
    print("(vs ORT: median of the per-round ratios to the faster ONNX Runtime setting of the "
          "round, its threads spinning (its default) or not; of peak: GFLOP/s as a share of the "
          "fp32 FMA peak, for bf16 too)")
    print("%-22s %5s %4s  %-11s %9s %8s %8s %7s %8s %7s" % (
        "model", "batch", "load", "engine", "img/s", "p50 ms", "p99 ms", "vs ORT",
        "GFLOP/s", "of peak"))
    for c in results["cases"]:
        print("%-22s %5d %4s  %-11s %9.2f %8.2f %8.2f %6.2fx %8.1f %6.0f%%" % (
            c["model"], c["batch"], c["load"], c["engine"], c["images_per_s"], c["p50_ms"],
            c["p99_ms"], c["vs_onnxruntime"], c["gflops"], 100 * c["peak_share"]))
    if results["bf16_unavailable"]:
        print("vmoe bf16: not available (%s)" % results["bf16_unavailable"])
    cases = {(c["model"], c["batch"], c["load"], c["engine"]): c for c in results["cases"]}
    for what, engine, batch, load_name, key, least in TARGETS:
        for model in ("vit_tiny_dense", "vit_tiny_mobile_vmoe"):
            c = cases.get((model, batch, load_name, engine))
            if c is None:
                got, verdict = "n/a", "n/a"
            else:
                got = "%.0f%%" % (100 * c[key]) if key == "peak_share" else "%.2fx" % c[key]
                verdict = "met" if c[key] >= least else "NOT met"
            print("target %-38s batch %d, %-20s: %7s  %s" % (what, batch, model, got, verdict))
    report_memory(results["memory"])

if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as e:
        detail = (e.stderr or "").strip().splitlines()
        fail("%s failed%s" % (" ".join(map(str, e.cmd[:2])), ": " + detail[-1] if detail else ""))
