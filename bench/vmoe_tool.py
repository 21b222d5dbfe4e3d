"""The `vmoe` tool as the bench scripts drive it: JSON out of a command, a
random-weight model from a config, a model's FLOPs, logits of an input."""

import json
import os
import subprocess
import tempfile

import numpy as np


def run_json(cmd, env=None):
    """The JSON object on the last line of cmd's standard output."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                         env=dict(os.environ, **(env or {}))).stdout
    return json.loads(out.strip().splitlines()[-1])


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


def run_logits(vmoe, model_path, images, options=()):
    """Runs float32 images [N, C, H, W] (already normalised) through `vmoe run
    --logits` in one call; returns its per-image JSON objects."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input.npy")
        np.save(path, np.ascontiguousarray(images, dtype=np.float32))
        out = subprocess.run([vmoe, "run", model_path, path, "--logits", "--batch",
                              str(len(images)), *options],
                             check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]
