"""ONNX Runtime through node, for bench/cpu_vs_onnxruntime.py.

ONNX Runtime comes from the npm registry as onnxruntime-node, installed
with --ignore-scripts into a cache folder: its install script would fetch
GPU binaries from outside the registry, and the package already holds the
CPU library.  bench/onnxruntime_runner.js runs the graphs.
"""

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np

VERSION = "1.30.0"
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CACHE = os.path.join(HERE, ".cache")
RUNNER = os.path.join(HERE, "onnxruntime_runner.js")


class Unavailable(Exception):
    """ONNX Runtime cannot be installed or run here; the message says why."""


def node_modules(cache=DEFAULT_CACHE, install=True):
    """The node_modules folder holding onnxruntime-node VERSION, installed
    into cache first if missing (install=False: Unavailable instead)."""
    prefix = os.path.join(cache, "onnxruntime-node-" + VERSION)
    modules = os.path.join(prefix, "node_modules")
    package = os.path.join(modules, "onnxruntime-node", "package.json")
    if not shutil.which("node"):
        raise Unavailable("node is not installed (Debian: apt-get install nodejs)")
    if os.path.exists(package):
        with open(package) as f:
            if json.load(f).get("version") == VERSION:
                return modules
    if not install:
        raise Unavailable("onnxruntime-node %s is not in %s" % (VERSION, prefix))
    if not shutil.which("npm"):
        raise Unavailable("npm is not installed (Debian: apt-get install npm)")
    os.makedirs(prefix, exist_ok=True)
    done = subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund",
                           "--prefix", prefix, "onnxruntime-node@" + VERSION],
                          capture_output=True, text=True)
    if done.returncode != 0 or not os.path.exists(package):
        # npm's first error line with a message, not its "code"/"errno" lines.
        errors = [line[len("npm error "):] for line in done.stderr.splitlines()
                  if line.startswith("npm error ")] or ["no error message"]
        reason = next((e for e in errors if "Error" in e), errors[0])
        raise Unavailable("npm install onnxruntime-node@%s failed: %s" % (VERSION, reason))
    return modules


def _run(modules, args, spin=True):
    done = subprocess.run(["node", RUNNER, *([] if spin else ["--no-spin"]), modules,
                           *map(str, args)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise Unavailable(done.stderr.strip() or "node exited with %d" % done.returncode)
    return json.loads(done.stdout.strip().splitlines()[-1])


def logits(modules, onnx_path, images):
    """Runs float32 images [N, C, H, W] through the graph in one call:
    {"logits": [[...]], "experts": [[...]] (MoE graphs)}."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input.f32")
        images.tofile(path)
        return _run(modules, [onnx_path, "logits", path, *images.shape])


def bench(modules, onnx_path, shape, seconds, spin=True):
    """Times the graph on an input of shape [N, C, H, W]: `vmoe bench --json`'s
    images_per_s and latency_ms, plus threads and version.  spin=False: its
    threads block instead of spinning while they wait for work."""
    return _run(modules, [onnx_path, "bench", *shape, seconds], spin)
