"""Writes the PyTorch parity suite for the C engine: random models (as model
files), inputs (.npy) and the reference outputs of training/vmoe_torch.py
(expected.json).  Run by meson at build time with /usr/bin/python3:

    /usr/bin/python3 tests/parity/make_references.py OUTDIR [--stamp FILE]
"""

import argparse

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "training"))
import vmoe_torch  # noqa: E402

BASE = {
    "format": "vmoe", "version": 1, "image_size": [32, 32], "patch_size": 8,
    "in_channels": 3, "embed_dim": 32, "depth": 3, "num_heads": 4,
    "mlp_dim": 64, "num_classes": 10, "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225], "crop_pct": 0.875,
}

# (name, config overrides, file dtype, uint8 input shape [N, H, W, C])
CASES = [
    ("dense", {}, "F32", (5, 40, 30, 3)),
    ("avg_pool_no_cls", {"class_token": False, "pool": "avg", "qkv_bias": False},
     "F32", (5, 32, 32, 4)),
    ("gray_nonsquare_tanh", {"image_size": [24, 40], "in_channels": 1, "mean": [0.3],
                             "std": [0.4], "act": "gelu_tanh", "crop_pct": 1.0},
     "F32", (5, 50, 70, 3)),
    ("image_k1", {"moe": {"layers": [1, 2], "num_experts": 4, "top_k": 1,
                          "routing": "image"}}, "F32", (6, 64, 48, 1)),
    ("image_k2_norm_mean", {"moe": {"layers": [2], "num_experts": 4, "top_k": 2,
                                    "routing": "image", "normalize_gates": True,
                                    "router_input": "mean", "expert_mlp_dim": 48}},
     "F32", (6, 20, 20, 3)),
    ("image_shared", {"moe": {"layers": [1, 2], "num_experts": 3, "top_k": 1,
                              "routing": "image", "shared_expert": True}},
     "F32", (6, 33, 31, 3)),
    ("token_k2_c05_bpr", {"moe": {"layers": [1, 2], "num_experts": 4, "top_k": 2,
                                  "routing": "token", "capacity_ratio": 0.5,
                                  "bpr": True}}, "F32", (4, 36, 36, 3)),
    ("token_nobpr_shared", {"moe": {"layers": [0, 2], "num_experts": 4, "top_k": 1,
                                    "routing": "token", "capacity_ratio": 1.0,
                                    "bpr": False, "shared_expert": True}},
     "F32", (4, 32, 32, 3)),
    ("image_k1_f16", {"moe": {"layers": [1, 2], "num_experts": 4, "top_k": 1,
                              "routing": "image"}}, "F16", (4, 48, 48, 3)),
    ("token_k2_bf16", {"moe": {"layers": [1, 2], "num_experts": 4, "top_k": 2,
                               "routing": "token", "capacity_ratio": 0.75}},
     "BF16", (4, 28, 40, 3)),
    # crop_pct stays 0.875 from BASE: stretch must ignore it.
    ("stretch_image_k2", {"aspect": "stretch",
                          "moe": {"layers": [1, 2], "num_experts": 4, "top_k": 2,
                                  "routing": "image"}}, "F32", (5, 40, 30, 3)),
    # E3 ensembles (docs/design.md): member copies from the first MoE block
    # on, dense blocks after it included; the image router once, the token
    # router per copy within its partition.
    ("e3_image_m2_shared", {"moe": {"layers": [1], "num_experts": 4, "top_k": 1,
                                    "routing": "image", "shared_expert": True,
                                    "ensemble_members": 2}}, "F32", (5, 36, 44, 3)),
    ("e3_image_m4_k2_norm_mean", {"moe": {"layers": [1, 2], "num_experts": 8, "top_k": 2,
                                          "routing": "image", "normalize_gates": True,
                                          "router_input": "mean",
                                          "ensemble_members": 4}},
     "F32", (5, 32, 32, 3)),
    ("e3_token_m2_shared", {"moe": {"layers": [1, 2], "num_experts": 4, "top_k": 1,
                                    "routing": "token", "shared_expert": True,
                                    "ensemble_members": 2}}, "F32", (4, 30, 34, 3)),
    ("e3_token_m4_k2_c075", {"moe": {"layers": [0, 2], "num_experts": 12, "top_k": 2,
                                     "routing": "token", "capacity_ratio": 0.75,
                                     "ensemble_members": 4}}, "F32", (4, 40, 40, 3)),
]

# YUV frames per case: (pixel format, matrix, range, frame width, height,
# with regions): encodings other than BT.601 limited range, odd sizes
# (chroma rounded up) and regions; each on CPU and Vulkan via test_parity.
YUV_INPUTS = {
    "dense": [("I420", "bt709", "limited", 41, 31, False),
              ("NV12", "bt601", "full", 30, 40, True)],
    "gray_nonsquare_tanh": [("NV12", "bt709", "full", 70, 50, False),
                            ("I420", "bt2020", "limited", 57, 43, True)],
    "image_k1": [("I420", "bt601", "full", 48, 64, True),
                 ("NV12", "bt2020", "full", 33, 35, False)],
}


def yuv_frames(rng, n, pixel_format, w, h):
    """n random frames as one uint8 array [n, h + ceil(h/2), 2 ceil(w/2)]:
    the Y plane in the top h rows (stride 2 ceil(w/2)), below it the
    chroma rows, as I420 (U in the left half, V in the right) or NV12 (U, V
    pairs); and the planes (Y, U, V) for vmoe_torch."""
    cw, ch = (w + 1) // 2, (h + 1) // 2
    y = (rng.integers(16, 96, size=(n, 1, 1)) + rng.random((n, h, w)) * rng.integers(
        40, 140, size=(n, 1, 1))).astype(np.uint8)
    u, v = ((128 + rng.integers(-60, 40, size=(n, 1, 1)) + rng.random((n, ch, cw)) * 60)
            .astype(np.uint8) for _ in range(2))
    packed = np.zeros((n, h + ch, 2 * cw), np.uint8)
    packed[:, :h, :w] = y
    if pixel_format == "I420":
        packed[:, h:, :cw], packed[:, h:, cw:] = u, v
    else:
        packed[:, h:, 0::2], packed[:, h:, 1::2] = u, v
    return packed, (y, u, v)


def regions_for(n, h, w, ht, wt):
    """One region per frame (x, y, w, h), cycling through the shapes the
    engine must get right: odd offsets, clamping on every side, a 1-pixel
    wide crop, the whole frame, and (where it fits) a crop of exactly the
    model size at an offset, which is used without resampling."""
    shapes = [(1, 3, w - 4, h - 5), (-5, h // 2, w // 2 + 3, h),
              (w // 2, 1, 1, h - 2), (w - 7, h - 9, 20, 30), (0, 0, 0, 0),
              (3, -2, w // 3, h // 2 + 1)]
    if h >= ht + 3 and w >= wt + 3:
        shapes[4] = (3, 1, wt, ht)
    return [shapes[i % len(shapes)] for i in range(n)]


def randomize(model, seed):
    """Random weights with well separated router choices: routers get a
    larger scale so that no top-k decision is a float-rounding coin toss."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.rand(p.shape, generator=g) - 0.1)
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.rand(p.shape, generator=g) - 0.1)
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                scale = (8.0 if "router" in name else 1.0) / fan_in ** 0.5
                p.copy_(scale * (2 * torch.rand(p.shape, generator=g) - 1))


def routing_summary(routing, config):
    """What the engine reports per image.  Token routing's layers are one
    entry per MoE block and E3 member (the member's E/M experts), as the
    engine's layers are."""
    moe = config.get("moe")
    out = {}
    if moe and moe["routing"] == "image":
        out["experts"] = routing["experts"].tolist()
        out["gates"] = routing["gates"].tolist()
    if moe and moe["routing"] == "token":
        members = moe["ensemble_members"]
        counts = torch.stack(routing["tokens_per_expert"], 1)      # [N, L, E]
        n, layers, e = counts.shape
        out["tokens_per_expert"] = counts.reshape(n, layers * members, e // members).tolist()
        out["dropped"] = torch.stack(routing["dropped"], 1).reshape(n, -1).tolist()
    if "member_classes" in routing:
        out["member_classes"] = routing["member_classes"].tolist()
        out["entropy"] = routing["entropy"].tolist()
        out["disagreement"] = routing["disagreement"].tolist()
    return out


def run_case(outdir, index, name, overrides, dtype, u8_shape):
    config = dict(BASE, **overrides)
    model = vmoe_torch.VisionMoE(config).eval()
    randomize(model, 1000 + index)
    path = os.path.join(outdir, name + ".safetensors")
    vmoe_torch.save_model(model, path, dtype, config)
    # The engine computes with the file's weights: round-trip them.
    model = vmoe_torch.load_model(path).eval()
    c = model.config
    rng = np.random.default_rng(index)
    h, w = c["image_size"]
    # Per-image offsets and contrasts make images differ enough to be routed
    # to different experts.
    n = 4
    f32 = (rng.standard_normal((n, c["in_channels"], h, w)) * rng.uniform(0.3, 2, (n, 1, 1, 1))
           + rng.uniform(-2, 2, (n, c["in_channels"], 1, 1))).astype(np.float32)
    low = rng.integers(0, 128, size=(u8_shape[0], 1, 1, u8_shape[3]))
    span = rng.integers(16, 128, size=(u8_shape[0], 1, 1, 1))
    u8 = (low + rng.random(u8_shape) * span).astype(np.uint8)
    regions = regions_for(u8_shape[0], u8_shape[1], u8_shape[2], h, w)
    inputs = []
    for kind, array, tensor, extra in (
            ("f32", f32, torch.from_numpy(f32), {}),
            ("u8", u8, vmoe_torch.preprocess_uint8(u8, config), {}),
            ("u8_roi", u8, vmoe_torch.preprocess_uint8(u8, config, regions),
             {"regions": regions})):
        npy = "%s.%s.npy" % (name, kind)
        np.save(os.path.join(outdir, npy), array)
        with torch.no_grad():
            logits, routing = model(tensor)
        entry = {"file": npy, "kind": kind, "logits": logits.tolist()}
        entry.update(extra)
        entry.update(routing_summary(routing, c))
        inputs.append(entry)
    # Kept apart from "inputs", which check_backend.py and test_tool.py also
    # run through `vmoe run`: it reads packed frames only.
    yuv_inputs = []
    for k, (pixel_format, matrix, yuv_range, w, h, with_regions) in enumerate(
            YUV_INPUTS.get(name, [])):
        packed, planes = yuv_frames(rng, 4, pixel_format, w, h)
        frame_regions = regions_for(4, h, w, *c["image_size"]) if with_regions else None
        tensor = vmoe_torch.preprocess_uint8(planes, config, frame_regions, matrix, yuv_range)
        npy = "%s.yuv%d.npy" % (name, k)
        np.save(os.path.join(outdir, npy), packed)
        with torch.no_grad():
            logits, routing = model(tensor)
        entry = {"file": npy, "kind": "%s_%s_%s" % (pixel_format, matrix, yuv_range),
                 "format": pixel_format, "yuv_matrix": matrix, "yuv_range": yuv_range,
                 "width": w, "height": h, "logits": logits.tolist()}
        if frame_regions:
            entry["regions"] = frame_regions
        entry.update(routing_summary(routing, c))
        yuv_inputs.append(entry)
    return {"name": name, "model": name + ".safetensors", "inputs": inputs,
            "yuv_inputs": yuv_inputs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--stamp", help="file to touch when the suite is written")
    args = parser.parse_args()
    outdir = args.outdir
    os.makedirs(outdir, exist_ok=True)
    torch.manual_seed(0)
    cases = [run_case(outdir, i, *case) for i, case in enumerate(CASES)]
    with open(os.path.join(outdir, "expected.json"), "w") as f:
        json.dump({"cases": cases}, f)
    if args.stamp:
        open(args.stamp, "w").close()


if __name__ == "__main__":
    main()
