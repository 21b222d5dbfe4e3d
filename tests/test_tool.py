"""Tests of the `vmoe` command line as a user runs it: output formats of
docs/design.md, --help for every sub-command, one-line errors with a non-zero exit.

    /usr/bin/python3 tests/test_tool.py VMOE_BINARY PARITY_DIR
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

VMOE = PARITY = None
COMMANDS = ["info", "run", "classify", "bench", "random-model"]


def vmoe(*args, env=None):
    return subprocess.run([VMOE, *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, **(env or {})))


def vmoe_vulkan(*args, env=None):
    """vmoe for commands that may open lavapipe.  Under ASan, lavapipe's JIT
    threads deadlock with the slow unwinder that the GStreamer tests ask for
    (ASAN_OPTIONS fast_unwind_on_malloc=0); these commands start no
    GStreamer, so they run with the fast one."""
    fast = ":".join(o for o in os.environ.get("ASAN_OPTIONS", "").split(":")
                    if o and not o.startswith("fast_unwind_on_malloc"))
    return vmoe(*args, env=dict(env or {}, ASAN_OPTIONS=fast))


def npy_bytes(descr, shape, data):
    """A version 1.0 .npy file written by hand, so that the shape can be
    anything, whatever the data."""
    header = "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }" % (
        descr, "".join("%d, " % d for d in shape))
    header += " " * (63 - (10 + len(header)) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + data


def scaled_tensor_copy(model, out, name, factor):
    """Copies a model with one F32 tensor multiplied by `factor`."""
    import numpy as np
    with open(model, "rb") as f:
        raw = bytearray(f.read())
    n = int.from_bytes(raw[:8], "little")
    entry = json.loads(raw[8:8 + n])[name]
    assert entry["dtype"] == "F32"
    begin, end = (8 + n + o for o in entry["data_offsets"])
    values = np.frombuffer(bytes(raw[begin:end]), dtype="<f4") * np.float32(factor)
    assert np.isfinite(values).all()
    raw[begin:end] = values.astype("<f4").tobytes()
    with open(out, "wb") as f:
        f.write(raw)


class ToolTest(unittest.TestCase):
    def assert_one_line_error(self, result, needle):
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(result.stdout, "")
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(needle, lines[0])

    def test_help(self):
        for command in COMMANDS:
            result = vmoe(command, "--help")
            self.assertEqual(result.returncode, 0, command)
            self.assertIn("vmoe " + command, result.stdout)
        self.assertEqual(vmoe("--help").returncode, 0)

    def test_unknown_command_and_option(self):
        self.assert_one_line_error(vmoe("frobnicate"), "unknown command")
        self.assert_one_line_error(vmoe("run", "--nope"), "--nope")

    def test_run_matches_reference(self):
        with open(os.path.join(PARITY, "expected.json")) as f:
            cases = {c["name"]: c for c in json.load(f)["cases"]}
        for name in ("image_k2_norm_mean", "token_k2_c05_bpr", "dense"):
            case = cases[name]
            # Inputs with a region per frame are test_parity's: --roi takes one.
            for entry in (e for e in case["inputs"] if "regions" not in e):
                result = vmoe("run", os.path.join(PARITY, case["model"]),
                              os.path.join(PARITY, entry["file"]), "--logits",
                              "--batch", "3", "--top-k", "2")
                self.assertEqual(result.returncode, 0, result.stderr)
                lines = [json.loads(line) for line in result.stdout.splitlines()]
                self.assertEqual(len(lines), len(entry["logits"]))
                for i, obj in enumerate(lines):
                    self.assertEqual(obj["index"], i)
                    want = entry["logits"][i]
                    best = max(range(len(want)), key=lambda k: (want[k], -k))
                    self.assertEqual(obj["top"][0]["class"], best)
                    self.assertEqual(len(obj["top"]), 2)
                    self.assertEqual(set(obj["top"][0]), {"class", "label", "score"})
                    self.assertGreaterEqual(obj["top"][0]["score"], obj["top"][1]["score"])
                    err = max(abs(a - b) for a, b in zip(obj["logits"], want))
                    self.assertLess(err, 1e-4 * max(abs(x) for x in want))
                    if "experts" in entry:
                        self.assertEqual(obj["experts"], entry["experts"][i])
                        self.assertEqual(len(obj["gates"]), len(obj["experts"]))
                        self.assertNotIn("layers", obj)
                    elif "tokens_per_expert" in entry:
                        self.assertEqual([l["tokens_per_expert"] for l in obj["layers"]],
                                         entry["tokens_per_expert"][i])
                        self.assertEqual([l["dropped"] for l in obj["layers"]],
                                         entry["dropped"][i])
                        self.assertEqual([l["block"] for l in obj["layers"]], [1, 2])
                    else:
                        self.assertNotIn("experts", obj)
                        self.assertNotIn("layers", obj)
        # Without --logits there are none.
        case = cases["dense"]
        result = vmoe("run", os.path.join(PARITY, case["model"]),
                      os.path.join(PARITY, case["inputs"][0]["file"]))
        self.assertNotIn("logits", json.loads(result.stdout.splitlines()[0]))

    def test_run_ensemble_json(self):
        """E3 (docs/design.md): members (their experts and gates the slices of
        the concatenated top level, their top-1 classes), entropy and
        disagreement as PyTorch computes them; token layers per block and
        member; none of it for a single model."""
        with open(os.path.join(PARITY, "expected.json")) as f:
            cases = {c["name"]: c for c in json.load(f)["cases"]}
        for name, members in (("e3_image_m4_k2_norm_mean", 4), ("e3_token_m2_shared", 2)):
            case = cases[name]
            entry = case["inputs"][0]
            lines = self.run_json(os.path.join(PARITY, case["model"]),
                                  os.path.join(PARITY, entry["file"]), "--backend", "cpu")
            for i, obj in enumerate(lines):
                self.assertEqual([m["class"] for m in obj["members"]],
                                 entry["member_classes"][i])
                self.assertAlmostEqual(obj["entropy"], entry["entropy"][i], places=4)
                self.assertAlmostEqual(obj["disagreement"], entry["disagreement"][i])
                if "experts" in entry:
                    k = len(obj["experts"]) // members
                    self.assertEqual(obj["experts"], entry["experts"][i])
                    for m, member in enumerate(obj["members"]):
                        self.assertEqual(member["experts"], obj["experts"][m * k:(m + 1) * k])
                        self.assertEqual(member["gates"], obj["gates"][m * k:(m + 1) * k])
                        self.assertTrue(all(m * 2 <= e < (m + 1) * 2 for e in member["experts"]))
                else:
                    self.assertEqual([(l["block"], l["member"]) for l in obj["layers"]],
                                     [(1, 0), (1, 1), (2, 0), (2, 1)])
                    self.assertEqual([l["tokens_per_expert"] for l in obj["layers"]],
                                     entry["tokens_per_expert"][i])
                    self.assertTrue(all(set(m) == {"class"} for m in obj["members"]))
        single = cases["token_k2_c05_bpr"]
        obj = self.run_json(os.path.join(PARITY, single["model"]),
                            os.path.join(PARITY, single["inputs"][0]["file"]))[0]
        for key in ("members", "entropy", "disagreement"):
            self.assertNotIn(key, obj)
        self.assertNotIn("member", obj["layers"][0])
        info = vmoe("info", os.path.join(PARITY, "e3_image_m4_k2_norm_mean.safetensors"))
        self.assertIn("ensemble:     E3, 4 members of 2 experts each", info.stdout)

    def run_json(self, *args):
        result = vmoe("run", *args)
        self.assertEqual(result.returncode, 0, result.stderr)
        return [json.loads(line) for line in result.stdout.splitlines()]

    def test_run_roi_is_the_cropped_array(self):
        """--roi classifies the region of every frame as the tool classifies
        the same pixels cut out with numpy; a region past the edges is
        clamped first."""
        import numpy as np
        frames = np.load(os.path.join(PARITY, "dense.u8.npy"))      # 5 x 40 x 30 x 3
        with tempfile.TemporaryDirectory() as tmp:
            for model in ("dense", "stretch_image_k2"):
                path = os.path.join(PARITY, model + ".safetensors")
                for roi, rows, cols in (("3,5,20,17", slice(5, 22), slice(3, 23)),
                                        ("-4,30,100,100", slice(30, 40), slice(0, 30)),
                                        ("29,0,1,40", slice(0, 40), slice(29, 30))):
                    cropped = os.path.join(tmp, "cropped.npy")
                    np.save(cropped, np.ascontiguousarray(frames[:, rows, cols]))
                    got = self.run_json(path, os.path.join(PARITY, "dense.u8.npy"),
                                        "--roi", roi, "--logits", "--batch", "2")
                    want = self.run_json(path, cropped, "--logits", "--batch", "2")
                    self.assertEqual(len(got), len(frames))
                    self.assertEqual(got, want, "%s --roi %s" % (model, roi))
                    whole = self.run_json(path, os.path.join(PARITY, "dense.u8.npy"),
                                          "--logits", "--batch", "2")
                    self.assertNotEqual(got, whole)

    def test_run_roi_errors(self):
        model = os.path.join(PARITY, "dense.safetensors")
        frames = os.path.join(PARITY, "dense.u8.npy")
        for bad in ("1,2,3", "1,2,3,4,5", "a,b,c,d", "1,2,0,4", "1,2,4,-1", "",
                    "1,2,3,99999999999", "1.5,2,3,4"):
            self.assert_one_line_error(vmoe("run", model, frames, "--roi", bad),
                                       "must be x,y,w,h")
        self.assert_one_line_error(
            vmoe("run", model, os.path.join(PARITY, "dense.f32.npy"), "--roi", "0,0,8,8"),
            "uint8")
        self.assert_one_line_error(vmoe("run", model, frames, "--roi", "30,0,5,5"),
                                   "image 0: region x 30, y 0, width 5, height 5 is empty")

    def test_info_prints_aspect(self):
        info = vmoe("info", os.path.join(PARITY, "stretch_image_k2.safetensors"))
        self.assertIn("aspect:       stretch\n", info.stdout)
        info = vmoe("info", os.path.join(PARITY, "dense.safetensors"))
        self.assertIn("aspect:       crop, crop_pct 0.875\n", info.stdout)

    def test_run_errors(self):
        model = os.path.join(PARITY, "dense.safetensors")
        self.assert_one_line_error(vmoe("run", "/no/such.safetensors", "x.npy"),
                                   "/no/such.safetensors")
        self.assert_one_line_error(vmoe("run", model, "/no/such.npy"), "/no/such.npy")
        # A float input of the wrong size says which size it needs.
        wrong = os.path.join(PARITY, "gray_nonsquare_tanh.f32.npy")
        self.assert_one_line_error(vmoe("run", model, wrong), "[N, 3, 32, 32]")
        self.assert_one_line_error(vmoe("run", model, model), "not a supported .npy")
        self.assert_one_line_error(
            vmoe("run", model, os.path.join(PARITY, "dense.f32.npy"), "--backend", "tpu"),
            "unknown backend")

    def test_precision(self):
        """--precision: bf16 runs where `vmoe info` says it can, and is a
        one-line error where it cannot (a CPU without avx512_bf16, emulated
        with DNNL_MAX_CPU_ISA; the OpenBLAS build; the Vulkan backend)."""
        model = os.path.join(PARITY, "image_k1.safetensors")
        data = os.path.join(PARITY, "image_k1.f32.npy")
        info = vmoe("info", model)
        self.assertEqual(info.returncode, 0, info.stderr)
        lines = dict(l.split(":", 1) for l in info.stdout.splitlines() if l.startswith("cpu "))
        fp32, bf16 = lines["cpu fp32"].strip(), lines["cpu bf16"].strip()
        onednn = fp32.startswith("oneDNN ")
        self.assertTrue(onednn or fp32.startswith("OpenBLAS "), fp32)
        self.assert_one_line_error(vmoe("run", model, data, "--precision", "bf17"),
                                   "unknown precision 'bf17' (fp32 or bf16)")
        hidden = vmoe("run", model, data, "--backend", "cpu", "--precision", "bf16",
                      env={"DNNL_MAX_CPU_ISA": "AVX512_CORE"})
        self.assert_one_line_error(hidden, "needs a CPU with avx512_bf16" if onednn
                                   else "built without it")
        self.assert_one_line_error(vmoe_vulkan("run", model, data, "--backend", "vulkan",
                                               "--device", "cpu", "--precision", "bf16"),
                                   "vulkan backend")
        if not bf16.startswith("oneDNN "):
            self.assertIn("use fp32", bf16)
            return
        self.assertIn("bf16", bf16)
        # auto passes over Vulkan to the CPU; the classes match fp32's.
        runs = [vmoe("run", model, data, *p) for p in ([], ["--precision", "bf16"])]
        for r in runs:
            self.assertEqual(r.returncode, 0, r.stderr)
        top = lambda out: [json.loads(l)["top"][0]["class"] for l in out.splitlines()]
        self.assertEqual(top(runs[0].stdout), top(runs[1].stdout))

    def test_vulkan_choice_and_errors(self):
        model = os.path.join(PARITY, "image_k1.safetensors")
        data = os.path.join(PARITY, "image_k1.f32.npy")
        bench = ("bench", model, "--seconds", "0.1", "--json")
        # No loader: backend vulkan is a one-line error, auto runs on the CPU.
        no_loader = {"VMOE_VULKAN_LOADER": "/nonexistent/libvulkan.so.1"}
        self.assert_one_line_error(vmoe_vulkan("run", model, data, "--backend", "vulkan",
                                        env=no_loader), "no Vulkan loader")
        auto = vmoe_vulkan(*bench, env=no_loader)
        self.assertEqual(auto.returncode, 0, auto.stderr)
        self.assertEqual(json.loads(auto.stdout)["backend"], "cpu")
        probe = vmoe_vulkan(*bench, "--backend", "vulkan", "--device", "cpu")
        if probe.returncode != 0:
            self.assertIn("vulkan", probe.stderr)
            self.skipTest("no Vulkan device: " + probe.stderr.strip())
        self.assertEqual(json.loads(probe.stdout)["backend"], "vulkan")
        self.assert_one_line_error(vmoe_vulkan("run", model, data, "--backend", "vulkan",
                                        "--device", "no-such-gpu"), "no matching device")
        # auto never takes a CPU device, even when it is the one named.
        auto = vmoe_vulkan(*bench, env={"VMOE_VULKAN_DEVICE": "cpu"})
        self.assertEqual(json.loads(auto.stdout)["backend"], "cpu")
        # The same classes from both backends through the tool.
        cpu = vmoe_vulkan("run", model, data, "--backend", "cpu")
        gpu = vmoe_vulkan("run", model, data, "--backend", "vulkan", "--device", "cpu")
        self.assertEqual(gpu.returncode, 0, gpu.stderr)
        top = lambda out: [json.loads(l)["top"][0]["class"] for l in out.splitlines()]
        self.assertEqual(top(cpu.stdout), top(gpu.stdout))
        # A device lost mid-run is a one-line error, not a crash or a hang.
        self.assert_one_line_error(vmoe_vulkan(
            "run", model, data, "--backend", "vulkan", "--device", "cpu",
            env={"VMOE_VULKAN_LOSE_DEVICE_AFTER": "0"}), "the device was lost")

    def test_classify_matches_run(self):
        """classify decodes through GStreamer; the scores equal `run` on the
        same pixels given as a uint8 array."""
        import numpy as np
        from PIL import Image
        model = os.path.join(PARITY, "image_k1.safetensors")
        rng = np.random.default_rng(5)
        with tempfile.TemporaryDirectory() as tmp:
            files, arrays = [], []
            for i, (h, w) in enumerate([(40, 52), (33, 33)]):
                a = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                path = os.path.join(tmp, "img%d.png" % i)
                Image.fromarray(a).save(path)
                files.append(path)
                arrays.append(a)
            result = vmoe("classify", model, *files)
            self.assertEqual(result.returncode, 0, result.stderr)
            lines = result.stdout.splitlines()
            self.assertEqual(len(lines), 2)
            for path, a, line in zip(files, arrays, lines):
                name, label, score = line.split("\t")
                self.assertEqual(name, path)
                npy = os.path.join(tmp, "one.npy")
                np.save(npy, a[None])
                ref = json.loads(vmoe("run", model, npy).stdout)["top"][0]
                self.assertEqual(label, ref["label"])
                self.assertAlmostEqual(float(score), ref["score"], places=4)
            bad = os.path.join(tmp, "not-an-image.png")
            with open(bad, "w") as f:
                f.write("hello")
            self.assert_one_line_error(vmoe("classify", model, bad), "not-an-image.png")

    def test_random_model_info_bench(self):
        config = {"format": "vmoe", "version": 1, "image_size": [32, 32], "patch_size": 8,
                  "embed_dim": 16, "depth": 2, "num_heads": 2, "mlp_dim": 32,
                  "num_classes": 4, "labels": ["w", "x", "y", "z"],
                  "moe": {"layers": [1], "num_experts": 4, "top_k": 1,
                          "superclasses": [{"name": "sc%d" % e, "classes": [e]}
                                           for e in range(4)]}}
        with tempfile.TemporaryDirectory() as tmp:
            cfg = os.path.join(tmp, "c.json")
            out = os.path.join(tmp, "m.safetensors")
            with open(cfg, "w") as f:
                json.dump(config, f)
            self.assertEqual(vmoe("random-model", "--config", cfg, "-o", out,
                                  "--seed", "3").returncode, 0)
            info = vmoe("info", out)
            self.assertEqual(info.returncode, 0)
            self.assertIn("image (Mobile V-MoE)", info.stdout)
            self.assertIn("superclass 3: sc3 (z)", info.stdout)
            # Parameters: patch 16*3*64+16, cls 16, pos 17*16, router 4*16+4,
            # per block LN 4*16, qkv 48*16+48, proj 16*16+16, MLP 2*16*32+32+16;
            # block 1 has 4 experts; final LN 32, head 4*16+4.
            mlp = 2 * 16 * 32 + 32 + 16
            block = 4 * 16 + 48 * 16 + 48 + 16 * 16 + 16
            params = (16 * 3 * 64 + 16) + 16 + 17 * 16 + (4 * 16 + 4) \
                + (block + mlp) + (block + 4 * mlp) + 32 + (4 * 16 + 4)
            self.assertIn("parameters:   %d\n" % params, info.stdout)
            bench = vmoe("bench", out, "--batch", "2", "--seconds", "0.2", "--json")
            self.assertEqual(bench.returncode, 0, bench.stderr)
            obj = json.loads(bench.stdout)
            self.assertEqual(set(obj), {"backend", "device", "batch", "images_per_s",
                                        "latency_ms", "gflops"})
            self.assertEqual(set(obj["latency_ms"]), {"p50", "p90", "p99"})
            self.assertEqual(obj["batch"], 2)
            self.assertEqual(obj["backend"], "cpu")
            self.assertEqual(obj["device"], "cpu")
            self.assertGreater(obj["images_per_s"], 0)
            # Same seed, same bytes; another seed, other bytes.
            again = os.path.join(tmp, "again.safetensors")
            other = os.path.join(tmp, "other.safetensors")
            vmoe("random-model", "--config", cfg, "-o", again, "--seed", "3")
            vmoe("random-model", "--config", cfg, "-o", other, "--seed", "4")
            with open(out, "rb") as a, open(again, "rb") as b, open(other, "rb") as c:
                first = a.read()
                self.assertEqual(first, b.read())
                self.assertNotEqual(first, c.read())
            bad = os.path.join(tmp, "bad.json")
            with open(bad, "w") as f:
                json.dump(dict(config, num_heads=3), f)
            self.assert_one_line_error(
                vmoe("random-model", "--config", bad, "-o", out), "num_heads")

    def test_overflowing_weights_are_an_error(self):
        """Weights of ~1e31 (a flipped exponent bit) are finite and load, but
        the activations overflow: no classes from NaN logits."""
        with tempfile.TemporaryDirectory() as tmp:
            for case in ("dense", "image_k1"):
                model = os.path.join(tmp, case + ".safetensors")
                scaled_tensor_copy(os.path.join(PARITY, case + ".safetensors"), model,
                                   "blocks.0.attn.qkv.weight", 1e31)
                data = os.path.join(PARITY, case + ".f32.npy")
                self.assertEqual(vmoe("info", model).returncode, 0)
                self.assert_one_line_error(vmoe("run", model, data, "--logits"),
                                           "non-finite logits for image 0")
                probe = vmoe_vulkan("run", model, data, "--backend", "vulkan",
                                    "--device", "cpu")
                if "Vulkan" not in probe.stderr and "vulkan" not in probe.stderr:
                    self.assert_one_line_error(probe, "non-finite logits")

    def test_non_finite_float_input_is_an_error(self):
        import numpy as np
        model = os.path.join(PARITY, "dense.safetensors")
        good = np.load(os.path.join(PARITY, "dense.f32.npy"))
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "bad.npy")
            for bad in (np.nan, np.inf, -np.inf):
                a = good.copy()
                a[1, 2, 3, 4] = bad
                np.save(path, a)
                self.assert_one_line_error(vmoe("run", model, path),
                                           "input image 1 holds a non-finite value")
            # Batch by batch, the images before the bad one are reported.
            result = vmoe("run", model, path, "--batch", "1")
            self.assertNotEqual(result.returncode, 0)
            self.assertEqual([json.loads(l)["index"] for l in result.stdout.splitlines()], [0])
            self.assertIn("images 1 to 1: input image 0 holds a non-finite value",
                          result.stderr)

    def test_npy_shape_must_fit_int_and_data(self):
        """Dimensions were cast to int: (1, 2^32 + 40, 30, 3) ran as a 40-row
        frame, (1, 2^31, 1, 1) had a negative height."""
        model = os.path.join(PARITY, "dense.safetensors")
        cases = [("|u1", (1, 2 ** 32 + 40, 30, 3), b"\0" * 3600, "2147483647"),
                 ("|u1", (1, 2 ** 31, 1, 1), b"\0" * 16, "2147483647"),
                 ("|u1", (2 ** 31, 1, 1, 1), b"\0" * 16, "2147483647"),
                 ("|u1", (2 ** 40, 2 ** 40, 1, 1), b"", "2147483647"),
                 ("|u1", (2 ** 31 - 1,) * 3 + (1,), b"", "element count overflows"),
                 ("|u1", (1, 8, 8, 3), b"\0" * 191, "192 bytes"),
                 ("|u1", (1, 8, 8, 3), b"\0" * 193, "192 bytes"),
                 ("<f4", (1, 3, 32, 32), b"\0" * (4 * 3 * 32 * 32 + 4), "12288 bytes")]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "a.npy")
            for descr, shape, data, needle in cases:
                with open(path, "wb") as f:
                    f.write(npy_bytes(descr, shape, data))
                self.assert_one_line_error(vmoe("run", model, path), needle)
            # The writer itself is right: the same array with its exact data runs.
            with open(path, "wb") as f:
                f.write(npy_bytes("|u1", (2, 8, 8, 3), b"\7" * 384))
            result = vmoe("run", model, path)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(len(result.stdout.splitlines()), 2)

    def test_huge_batch_options(self):
        """--batch allocated its size up front: 2^31 - 1 aborted in GLib."""
        model = os.path.join(PARITY, "dense.safetensors")
        data = os.path.join(PARITY, "dense.f32.npy")
        want = vmoe("run", model, data, "--batch", "8").stdout
        result = vmoe("run", model, data, "--batch", "2147483647")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout, want)
        self.assert_one_line_error(
            vmoe("bench", model, "--batch", "2147483647", "--seconds", "0.1"), "--batch")
        # --threads started that many threads, until GLib aborted.
        for command in (("bench", model, "--seconds", "0.1"), ("run", model, data)):
            self.assert_one_line_error(vmoe(*command, "--threads", "100000"), "threads")

    def test_deeply_nested_json_is_an_error(self):
        """80,000 levels of [[[...]]] overflowed json-glib's recursion."""
        deep = b"[" * 80000 + b"]" * 80000
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "deep.safetensors")
            with open(path, "wb") as f:
                f.write(len(deep).to_bytes(8, "little") + deep)
            self.assert_one_line_error(vmoe("info", path), "nests deeper than 64")
            self.assert_one_line_error(
                vmoe("run", path, os.path.join(PARITY, "dense.f32.npy")), "nests deeper")


if __name__ == "__main__":
    VMOE, PARITY = sys.argv[1], sys.argv[2]
    unittest.main(argv=sys.argv[:1], verbosity=2)
