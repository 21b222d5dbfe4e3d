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
    # Pre-processing: a few frames of each kind of format (its first bytes
    # are the model and frame sizes; see fuzz_preprocess.c).
    for fmt in range(9):
        seed = bytes([fmt % 2, 7 + fmt, 9, 0x3f, 0xec, 0, 0, 0, 0, 0, 0,
                      0, 64, 0, 16, 0, 64, 0, 32, 0, 0, fmt, 0, 20 + fmt, 0, 13, 3, 1, 2])
        write(os.path.join(out, "preprocess"), "format-%d.bin" % fmt,
              seed + rng.integers(0, 256, 64, dtype=np.uint8).tobytes())


if __name__ == "__main__":
    main()
