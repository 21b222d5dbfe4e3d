"""The `vmoe` tool as the bench scripts drive it: JSON out of a command (and
its peak RSS), a random-weight model from a config, a model's FLOPs and
stored weight bytes, logits of an input."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def run_json(cmd, env=None):
    """The JSON object on the last line of cmd's standard output."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, **(env or {}))).stdout
    return json.loads(out.strip().splitlines()[-1])


# Linux carries a process's RSS high-water mark across exec, so a child
# forked from this Python (torch loaded: 240 MB) would report at least that
# as its ru_maxrss.  The command runs instead as the only child of a fresh,
# small interpreter (about 10 MB) that reports the child's ru_maxrss.
_PEAK_RSS_RUNNER = """import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d %d" % (os.waitstatus_to_exitcode(status), usage.ru_maxrss))
"""


def run_json_peak_rss(cmd):
    """run_json, and the command's peak RSS in bytes (its own ru_maxrss)."""
    with tempfile.TemporaryDirectory() as tmp:
        peak_path = os.path.join(tmp, "peak")
        out = subprocess.run([sys.executable, "-I", "-S", "-c", _PEAK_RSS_RUNNER, peak_path,
                              *cmd], check=True, capture_output=True, text=True)
        with open(peak_path) as f:
            returncode, max_rss_kb = (int(v) for v in f.read().split())
    if returncode != 0:
        raise subprocess.CalledProcessError(returncode, cmd, out.stdout, out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1]), max_rss_kb * 1024


def stored_weight_bytes(model_path):
    """Bytes of a safetensors file's tensors as stored: its data section,
    everything after the 8-byte header length and the header."""
    with open(model_path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    return os.path.getsize(model_path) - 8 - header_len


def random_model(vmoe, config_path, out_path):
    """Writes a model with `vmoe random-model`'s random weights for config_path."""
    subprocess.run([vmoe, "random-model", "--config", config_path, "-o", out_path],
                   check=True)


def info(vmoe, model_path):
    """`vmoe info`'s lines as a dict, keyed by the text before each colon."""
    out = subprocess.run([vmoe, "info", model_path], capture_output=True, text=True,
                         check=True).stdout
    return {key.strip(): value.strip() for key, _, value in
            (line.partition(":") for line in out.splitlines()) if value}


def gflop_per_image(vmoe, model_path):
    """GFLOP per image as routed (every image through its top-k experts)."""
    return float(info(vmoe, model_path)["GFLOPs/image"].split()[0])


def run_logits(vmoe, model_path, images, options=(), batch=None):
    """Runs images through `vmoe run --logits` in one call, `batch` images
    per engine call (default all); returns its per-image JSON objects.
    images: float32 [N, C, H, W] already normalised, or uint8 frames
    [N, H, W, C], which the engine pre-processes as the model says."""
    if images.dtype != np.uint8:
        images = np.asarray(images, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input.npy")
        np.save(path, np.ascontiguousarray(images))
        out = subprocess.run([vmoe, "run", model_path, path, "--logits", "--batch",
                              str(batch or len(images)), *options],
                             check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def relative_error(got, ref):
    """Per image max |got - ref| / max |ref| (the parity suite's measure)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.abs(got - ref).max(axis=1) / np.maximum(np.abs(ref).max(axis=1), 1e-12)


def bf16_unavailable(vmoe, model_path):
    """None where `vmoe run/bench --precision bf16` works here, else why not
    (a vmoe without the option, or a CPU the engine refuses bf16 on)."""
    helps = [subprocess.run([vmoe, cmd, "--help"], capture_output=True, text=True).stdout
             for cmd in ("run", "bench")]
    if not all("--precision" in h for h in helps):
        return "this vmoe has no --precision"
    trial = subprocess.run([vmoe, "bench", model_path, "--backend", "cpu", "--precision",
                            "bf16", "--seconds", "0.01", "--json"], capture_output=True, text=True)
    if trial.returncode != 0:
        return (trial.stderr.strip().splitlines() or ["vmoe bench failed"])[-1]
    return None
