#!/usr/bin/python3
"""Writes the seed corpus of the fuzz harnesses (tests/fuzz/README.md).

    /usr/bin/python3 tests/fuzz/make_corpus.py build/tools/vmoe tests/fuzz/corpus

Models come from `vmoe random-model` (which writes float32) and are then
rewritten in F16 and BF16, so that the loader's seeds cover every dtype a
model file may hold.  Everything is tiny and deterministic: re-running it
gives the same files.
"""
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np

BASE = {
    "format": "vmoe", "version": 1, "image_size": [16, 16], "patch_size": 8,
    "in_channels": 3, "embed_dim": 8, "depth": 2, "num_heads": 2, "mlp_dim": 16,
    "num_classes": 3, "labels": ["a", "b", "c"],
}

CONFIGS = {
    "dense": {},
    "dense-gray-avg": {"in_channels": 1, "class_token": False, "pool": "avg",
                       "act": "gelu_tanh", "qkv_bias": False, "mean": [0.5],
                       "std": [0.25], "crop_pct": 0.875, "image_size": [8, 16]},
    "image": {"moe": {"layers": [1], "num_experts": 3, "top_k": 1,
                      "superclasses": [{"name": "x", "classes": [0]},
                                       {"name": "y", "classes": [1]},
                                       {"name": "z", "classes": [2]}]}},
    "image-mean-k2": {"moe": {"layers": [0, 1], "num_experts": 4, "top_k": 2,
                              "router_input": "mean", "normalize_gates": True,
                              "expert_mlp_dim": 8}},
    "token-shared": {"moe": {"layers": [0, 1], "num_experts": 4, "top_k": 2,
                             "routing": "token", "shared_expert": True,
                             "capacity_ratio": 0.5}},
    "token-nobpr": {"moe": {"layers": [1], "num_experts": 2, "top_k": 1,
                            "routing": "token", "bpr": False, "capacity_ratio": 2.0}},
}


def config_text(name):
    config = dict(BASE)
    config.update(CONFIGS[name])
    return json.dumps(config)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def convert(header, data, dtype):
    """The same model with every tensor stored as F16 or BF16."""
    out_header, chunks, offset = {}, [], 0
    for name, entry in header.items():
        if name == "__metadata__":
            out_header[name] = entry
            continue
        begin, end = entry["data_offsets"]
        values = np.frombuffer(data[begin:end], dtype="<f4")
        if dtype == "F16":
            raw = values.astype("<f2").tobytes()
        else:  # BF16: the top half of float32, rounded to nearest even
            bits = values.view("<u4").astype(np.uint64)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
            raw = bits.astype("<u2").tobytes()
        out_header[name] = {"dtype": dtype, "shape": entry["shape"],
                            "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(out_header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def npy(array):
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (
        array.dtype.descr[0][1] if array.dtype != np.uint8 else "|u1",
        str(tuple(array.shape)))
    header += " " * (-(len(header) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() \
        + array.tobytes()


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def main():
    tool, out = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(17)
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(CONFIGS):
            text = config_text(name)
            write(os.path.join(out, "config"), name + ".json", text.encode())
            config_path = os.path.join(tmp, name + ".json")
            model_path = os.path.join(tmp, name + ".safetensors")
            with open(config_path, "w") as f:
                f.write(text)
            subprocess.run([tool, "random-model", "--config", config_path,
                            "-o", model_path, "--seed", str(i)], check=True)
            header, data = read_safetensors(model_path)
            with open(model_path, "rb") as f:
                write(os.path.join(out, "model"), name + "-F32.safetensors", f.read())
            # One dtype each beyond F32 keeps the corpus small; together
            # they cover F16 and BF16 in dense and both routings.
            dtype = ["F16", "BF16"][i % 2]
            write(os.path.join(out, "model"), "%s-%s.safetensors" % (name, dtype),
                  convert(header, data, dtype))
            # Inference: config, NUL, seed, top-k, experts_k, capacity ratio,
            # frame width and height, then pixels.
            frame = bytes([3, 1, 16, 16 + i, 12 + i]) + rng.integers(
                0, 256, 48, dtype=np.uint8).tobytes()
            write(os.path.join(out, "inference"), name + ".bin",
                  text.encode() + b"\0" + struct.pack(">Q", i + 1) + frame)
    write(os.path.join(out, "npy"), "u8-nhwc.npy",
          npy(rng.integers(0, 256, (2, 5, 4, 3), dtype=np.uint8)))
    write(os.path.join(out, "npy"), "f32-nchw.npy",
          npy(rng.standard_normal((1, 3, 4, 4)).astype("<f4")))
    write(os.path.join(out, "npy"), "f32-scalar.npy", npy(np.array(1.5, dtype="<f4")))
    v2 = npy(rng.integers(0, 256, (3, 2), dtype=np.uint8))
    header_len = struct.unpack("<H", v2[8:10])[0]
    write(os.path.join(out, "npy"), "u8-v2.npy", b"\x93NUMPY\x02\x00"
          + struct.pack("<I", header_len) + v2[10:])
    # Pre-processing: a frame of each pixel format, whole, then regions.
    for fmt in range(9):
        write(os.path.join(out, "preprocess"), "format-%d.bin" % fmt, preprocess_input(
            rng, channels=1 + 2 * (fmt % 2), model=(7 + fmt, 9), fmt=fmt,
            frame=(20 + fmt, 13), aspect="stretch" if fmt == 4 else "crop"))
    regions = {
        # An odd offset: chroma pairs with the frame's 2x2 blocks.
        "i420-odd-offset": (7, (40, 30), (3, 5, 17, 11), "crop"),
        "nv12-clamped-stretch": (8, (33, 21), (30, 20, 100, 100), "stretch"),
        "rgb-negative-xy": (1, (24, 16), (-5, -2, 20, 10), "crop"),
        "bgra-int-max-side": (4, (17, 19), (2, 3, 2**31 - 1, 5), "crop"),
        "gray-model-size-at-offset": (0, (30, 20), (5, 4, 9, 12), "crop"),
        "rgb-one-column": (1, (12, 12), (11, 0, 1, 12), "stretch"),
        "argb-empty": (5, (10, 10), (10, 0, 4, 4), "crop"),
    }
    for name, (fmt, frame, region, aspect) in regions.items():
        write(os.path.join(out, "preprocess"), name + ".bin", preprocess_input(
            rng, channels=3, model=(12, 9), fmt=fmt, frame=frame, aspect=aspect,
            region=region))
    # Batches: three regions of an NV12 frame (one the whole frame), and an
    # RGB one whose second region is empty.
    write(os.path.join(out, "preprocess"), "batch-nv12-three.bin", preprocess_input(
        rng, channels=3, model=(12, 9), fmt=8, frame=(31, 23), aspect="crop",
        region=(3, 5, 17, 11), batch=[(0, 0, 0, 0), (29, 1, 9, 9)]))
    write(os.path.join(out, "preprocess"), "batch-rgb-second-empty.bin", preprocess_input(
        rng, channels=1, model=(7, 5), fmt=0, frame=(20, 16), aspect="stretch",
        region=(2, 2, 10, 10), batch=[(-50, -50, 10, 10)]))


def region_int(v):
    """fuzz_region_int's encoding: a small value, an extreme or any int."""
    if v == 0:
        return b"\0"
    if -16 <= v <= 316:
        return b"\1" + struct.pack(">H", v + 16)
    if v == 2**31 - 1:
        return b"\2\7"
    return b"\3" + struct.pack(">i", v)


def preprocess_input(rng, channels, model, fmt, frame, aspect, region=(0, 0, 0, 0),
                     batch=()):
    """An input of fuzz_preprocess.c, in the order it reads: model channels
    and size (height, width), crop_pct, mean and std, pixel format, frame
    width and height, stride padding per plane, aspect, region, the batch
    (a flag byte, then the other regions of a batch of 2 or 3), pixels."""
    data = bytes([channels == 3, model[0] - 1, model[1] - 1]) + struct.pack(">d", 0.875)
    for _ in range(channels):  # mean 0.5, std 0.25
        data += struct.pack(">HB", 31, 0) + struct.pack(">HB", 15, 0)
    planes = 3 if fmt == 7 else 2 if fmt == 8 else 1
    data += bytes([fmt]) + struct.pack(">HH", frame[0] - 1, frame[1] - 1)
    data += bytes(range(1, planes + 1)) + bytes([aspect == "stretch"])
    data += b"".join(region_int(v) for v in region)
    data += bytes([(1 | (len(batch) - 1) << 1) if batch else 0])
    data += b"".join(region_int(v) for r in batch for v in r)
    return data + rng.integers(0, 256, 64, dtype=np.uint8).tobytes()

if __name__ == "__main__":
    main()
