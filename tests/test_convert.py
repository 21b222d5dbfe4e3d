"""training/convert.py: torchvision's VisionTransformer and timm-named state
dicts (written by the project's PyTorch model) at small sizes with random
weights, converted and run by the C engine, whose logits must match the
source model's own forward pass on the same float input (1e-4 of the
largest logit); each refused variant, with one line naming the tensor; and
sparse upcycling (convert, fine-tune on an image folder, super-classes,
Mobile V-MoE) as a smoke run.

    /usr/bin/python3 tests/test_convert.py VMOE_BINARY

Exits 77 (skipped) where python3-torchvision is missing.
"""

import contextlib
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
TRAINING = os.path.join(HERE, "..", "training")
sys.path.insert(0, TRAINING)
import convert  # noqa: E402
import vmoe_torch  # noqa: E402

VMOE = None
try:
    import torchvision.models.vision_transformer as tv_vit
    from torchvision.models._meta import _IMAGENET_CATEGORIES
except ImportError:
    tv_vit = None


def randomize(model, seed):
    """Weights with some spread everywhere (torchvision zeroes its head):
    LayerNorm scales around 1, matrices at 1/sqrt(fan-in), embeddings 0.5,
    biases 0.1."""
    g = torch.Generator().manual_seed(seed)
    norms = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g)
            if id(p) in norms:
                p.copy_(1 + 0.2 * noise)
            elif p.dim() == 1:
                p.copy_(0.1 * noise)
            elif p.dim() == 3:      # position embeddings and class token
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return model.eval()


def engine_run(model_path, images, *extra):
    """The C engine's JSON results (with logits) for images: float32
    [N, C, H, W] already normalised, or uint8 frames [N, H, W, C]."""
    with tempfile.TemporaryDirectory() as tmp:
        npy = os.path.join(tmp, "images.npy")
        np.save(npy, images)
        result = subprocess.run([VMOE, "run", model_path, npy, "--logits", *extra],
                                capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError("vmoe run: " + result.stderr)
    return [json.loads(line) for line in result.stdout.splitlines()]


def run_convert(*argv):
    """convert.py in-process: (exit message or None, stdout)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            convert.main([str(a) for a in argv])
    except SystemExit as e:
        return str(e.code), out.getvalue()
    return None, out.getvalue()


def read_config(path):
    return json.loads(vmoe_torch.load_safetensors(path)[1]["vmoe.config"])


class ConvertTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def assert_engine_matches(self, model_path, reference_model, x):
        """The engine's logits against reference_model(x) (its logits, or
        (logits, routing) for the project's model)."""
        with torch.inference_mode():
            want = reference_model(x)
        want = (want[0] if isinstance(want, tuple) else want).numpy()
        self.assertGreater(want.std(), 0.05, "reference logits without spread")
        results = engine_run(model_path, x.numpy(), "--batch", str(len(x)))
        got = np.array([r["logits"] for r in results])
        self.assertEqual(got.shape, want.shape)
        err = np.abs(got - want).max()
        self.assertLessEqual(err, 1e-4 * np.abs(want).max(), "max |error| %g" % err)
        return results

    # -------------------------------------------------------- torchvision

    def torchvision_vit(self, seed, image, patch, depth, heads, width, mlp, classes, **kw):
        torch.manual_seed(seed)
        model = tv_vit.VisionTransformer(image_size=image, patch_size=patch, num_layers=depth,
                                         num_heads=heads, hidden_dim=width, mlp_dim=mlp,
                                         num_classes=classes, **kw)
        return randomize(model, seed)

    def test_torchvision_logits(self):
        cases = [  # image, patch, depth, heads, width, mlp, classes, dtype, file
            (32, 8, 2, 2, 32, 64, 7, "F32", "pth"),
            (24, 4, 3, 4, 48, 80, 13, "F16", "safetensors"),
            (28, 14, 1, 1, 24, 40, 1000, "BF16", "pth"),
            (16, 16, 2, 3, 36, 72, 5, "F32", "wrapped"),
        ]
        for i, (image, patch, depth, heads, width, mlp, classes, dtype, kind) in enumerate(cases):
            with self.subTest(case=i):
                model = self.torchvision_vit(i, image, patch, depth, heads, width, mlp, classes)
                state = model.state_dict()
                src = self.path("tv%d.%s" % (i, "safetensors" if kind == "safetensors" else "pth"))
                if kind == "safetensors":
                    vmoe_torch.save_safetensors(src, state, {})
                elif kind == "wrapped":
                    # A training script's checkpoint of a DistributedDataParallel
                    # model, from before torchvision 0.13 (mlp.linear_1/2).
                    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."):
                           v for k, v in state.items()}
                    self.assertNotEqual(set(old), set(state))
                    torch.save({"model": {"module." + k: v for k, v in old.items()},
                                "epoch": 3}, src)
                else:
                    torch.save(state, src)
                out = self.path("tv%d.vmoe.safetensors" % i)
                error, summary = run_convert(src, out, "--num-heads", heads, "--dtype", dtype)
                self.assertIsNone(error)
                self.assertIn("torchvision ViT", summary)
                # The reference sees the weights as the file holds them.
                storage = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
                model = model.to(storage[dtype]).float()
                x = torch.randn(3, 3, image, image, generator=torch.Generator().manual_seed(i))
                results = self.assert_engine_matches(out, model, x)
                config = read_config(out)
                self.assertEqual(config["image_size"], [image, image])
                self.assertEqual((config["patch_size"], config["depth"], config["num_heads"],
                                  config["embed_dim"], config["mlp_dim"],
                                  config["num_classes"]),
                                 (patch, depth, heads, width, mlp, classes))
                if classes == 1000:
                    self.assertEqual(config["labels"], list(_IMAGENET_CATEGORIES))
                    for r in results:
                        top = r["top"][0]
                        self.assertEqual(top["label"], _IMAGENET_CATEGORIES[top["class"]])
                else:
                    self.assertNotIn("labels", config)

    def test_torchvision_preprocessing_defaults(self):
        """torchvision's own ImageNet preset: mean, std, resize 256 -> crop 224."""
        preset = tv_vit.ViT_B_16_Weights.IMAGENET1K_V1.transforms()
        model = self.torchvision_vit(0, 16, 8, 1, 2, 16, 32, 4)
        torch.save(model.state_dict(), self.path("tv.pth"))
        labels = self.path("labels.txt")
        with open(labels, "w") as f:
            f.write("cat\ndog\nbird\nfish\n\n")
        error, _ = run_convert(self.path("tv.pth"), self.path("out.safetensors"),
                               "--num-heads", 2, "--labels", labels)
        self.assertIsNone(error)
        config = read_config(self.path("out.safetensors"))
        self.assertEqual(config["mean"], preset.mean)
        self.assertEqual(config["std"], preset.std)
        self.assertEqual(config["crop_pct"], preset.crop_size[0] / preset.resize_size[0])
        self.assertEqual(config["resize"], preset.interpolation.value)
        self.assertEqual(config["labels"], ["cat", "dog", "bird", "fish"])
        info = subprocess.run([VMOE, "info", self.path("out.safetensors")],
                              capture_output=True, text=True, check=True).stdout
        self.assertIn("cat, dog, bird, fish", info)
        # 8-bit frames at the model size, as the element gets them: the
        # engine normalises them as torchvision's preset does.
        from torchvision.transforms import functional as TF
        frames = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
        got = np.array([r["logits"] for r in engine_run(self.path("out.safetensors"), frames)])
        x = TF.normalize(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255,
                         preset.mean, preset.std)
        with torch.inference_mode():
            want = model(x).numpy()
        self.assertLessEqual(np.abs(got - want).max(), 1e-4 * np.abs(want).max())

    def test_standard_heads_match_torchvision_builders(self):
        """STANDARD_HEADS against the head counts of torchvision's own
        vit_* builders (recorded, not built: ViT-H has 632M parameters)."""
        built = []
        real = tv_vit.VisionTransformer
        tv_vit.VisionTransformer = lambda **kw: built.append(kw)
        try:
            for name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14"):
                getattr(tv_vit, name)()
        finally:
            tv_vit.VisionTransformer = real
        self.assertEqual(len(built), 5)
        for kw in built:
            key = (kw["hidden_dim"], kw["num_layers"], kw["mlp_dim"])
            self.assertEqual(convert.STANDARD_HEADS[key][0], kw["num_heads"], key)

    def test_standard_shape_needs_no_num_heads(self):
        model = self.torchvision_vit(5, 32, 16, 12, 3, 192, 768, 6)   # ViT-Ti's shape
        torch.save(model.state_dict(), self.path("ti.pth"))
        error, summary = run_convert(self.path("ti.pth"), self.path("ti.safetensors"))
        self.assertIsNone(error)
        self.assertIn("3 heads (ViT-Ti)", summary)
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
        self.assert_engine_matches(self.path("ti.safetensors"), model, x)

    # --------------------------------------------------------------- timm

    def project_vit(self, seed, **config):
        """A dense model of training/vmoe_torch.py: timm's names."""
        torch.manual_seed(seed)
        c = dict(format="vmoe", version=1, **config)
        return randomize(vmoe_torch.VisionMoE(c), seed)

    def test_timm_logits(self):
        cases = [
            # Non-square, no qkv bias, token pooling, named explicitly.
            (dict(image_size=[24, 32], patch_size=8, in_channels=3, embed_dim=32, depth=2,
                  num_heads=4, mlp_dim=48, num_classes=6, qkv_bias=False),
             ["--source", "timm", "--image-size", 24, 32, "--num-heads", 4], "pth"),
            # No class token (avg pooling), gray, recognised from the names.
            (dict(image_size=20, patch_size=5, in_channels=1, embed_dim=20, depth=3,
                  num_heads=5, mlp_dim=30, num_classes=3, class_token=False, pool="avg"),
             ["--num-heads", 5, "--mean", 0.3, "--std", 0.4], "safetensors"),
            # Class token and average pooling without fc_norm (timm's fc_norm=False).
            (dict(image_size=16, patch_size=4, in_channels=3, embed_dim=24, depth=2,
                  num_heads=2, mlp_dim=24, num_classes=11, pool="avg"),
             ["--num-heads", 2, "--pool", "avg"], "pth"),
        ]
        for i, (config, options, kind) in enumerate(cases):
            with self.subTest(case=i):
                model = self.project_vit(10 + i, **config)
                src = self.path("timm%d.%s" % (i, kind))
                state = model.state_dict()
                if kind == "pth":
                    torch.save(state, src)
                else:
                    vmoe_torch.save_safetensors(src, state, {})
                out = self.path("timm%d.vmoe.safetensors" % i)
                error, summary = run_convert(src, out, *options)
                self.assertIsNone(error)
                self.assertIn("timm ViT", summary)
                h, w = model.config["image_size"]
                x = torch.randn(4, config["in_channels"], h, w,
                                generator=torch.Generator().manual_seed(i))
                self.assert_engine_matches(out, model, x)
                written = read_config(out)
                for key in ("image_size", "class_token", "pool", "qkv_bias", "in_channels"):
                    self.assertEqual(written[key], model.config[key], key)
        self.assertEqual((written["mean"], written["std"]), (convert.IMAGENET_MEAN,
                                                             convert.IMAGENET_STD))

    # ----------------------------------------------------------- refusals

    def timm_state(self, **config):
        base = dict(image_size=16, patch_size=4, in_channels=3, embed_dim=16, depth=2,
                    num_heads=2, mlp_dim=32, num_classes=5)
        base.update(config)
        return {k: v.clone() for k, v in self.project_vit(0, **base).state_dict().items()}

    def assert_refused(self, state, needle, *options):
        """convert.py refuses state in one line that names needle, and
        writes nothing."""
        src = self.path("bad.pth")
        if isinstance(state, dict):
            torch.save(state, src)
        else:
            src = state
        out = self.path("bad.safetensors")
        error, stdout = run_convert(src, out, *options)
        self.assertIsNotNone(error, "accepted; wanted a refusal naming " + needle)
        self.assertTrue(error.startswith("convert.py: "), error)
        self.assertEqual(len(error.splitlines()), 1, error)
        self.assertIn(needle, error)
        self.assertEqual(stdout, "")
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".partial"))
        return error

    def test_timm_variants_refused(self):
        heads = ("--num-heads", 2)
        state = self.timm_state()
        state["blocks.1.ls1.gamma"] = torch.ones(16)
        self.assertIn("layer scale", self.assert_refused(state, "blocks.1.ls1.gamma", *heads))
        state = self.timm_state()
        state["reg_token"] = torch.zeros(1, 4, 16)
        self.assertIn("register", self.assert_refused(state, "reg_token", *heads))
        state = self.timm_state()
        state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), \
            state.pop("norm.bias")
        self.assert_refused(state, "fc_norm.", *heads)
        state = self.timm_state()
        state["pos_embed"] = state["pos_embed"][:, 1:]     # no_embed_class
        self.assertIn("no_embed_class", self.assert_refused(state, "pos_embed", *heads))
        self.assertIn("--image-size H W", self.assert_refused(state, "pos_embed", *heads))
        self.assertIn("no_embed_class", self.assert_refused(state, "pos_embed", *heads,
                                                            "--image-size", 16, 16))
        state = self.timm_state()
        state["blocks.0.attn.q_norm.weight"] = torch.ones(8)
        self.assert_refused(state, "blocks.0.attn.q_norm.weight", *heads)
        state = self.timm_state()
        state["blocks.0.attn.q_bias"] = torch.zeros(16)
        self.assertIn("not part of", self.assert_refused(state, "blocks.0.attn.q_bias", *heads))
        state = self.timm_state()
        del state["head.weight"], state["head.bias"]
        self.assert_refused(state, "head.weight", *heads)
        state = self.timm_state()
        state["blocks.0.mlp.fc1.weight"] = torch.zeros(40, 16)
        self.assert_refused(state, "blocks.0.mlp.fc1.bias: shape [32], expected [40]", *heads)
        state = self.timm_state()
        del state["blocks.1.norm2.weight"]
        self.assert_refused(state, "blocks.1.norm2.weight: missing", *heads)
        state = self.timm_state(image_size=[16, 20])
        self.assertNotIn("no_embed_class", self.assert_refused(state, "--image-size H W", *heads))
        self.assert_refused(state, "pos_embed: 20 patch positions", *heads, "--image-size", 16, 16)
        self.assert_refused(state, "--image-size: 16x18 is not a multiple of patch 4", *heads,
                            "--image-size", 16, 18)
        self.assert_refused(self.timm_state(), "--num-heads: required")
        self.assert_refused(self.timm_state(), "--num-heads: 3 does not divide", "--num-heads", 3)
        self.assert_refused(self.timm_state(in_channels=1), "--mean and --std", *heads)
        self.assert_refused(self.timm_state(class_token=False, pool="avg"), "cls_token",
                            *heads, "--pool", "token")
        self.assert_refused(self.timm_state(), "--mean: 1 values for 3 channels", *heads,
                            "--mean", 0.5, "--std", 0.5, 0.5, 0.5)
        self.assert_refused(self.timm_state(in_channels=1), "--std: [0.0]: must be finite, and "
                            "above 0", *heads, "--mean", 0.5, "--std", 0)
        self.assert_refused(self.timm_state(in_channels=1), "--mean: [nan]: must be finite",
                            *heads, "--mean", "nan", "--std", 0.5)

    def test_torchvision_refusals(self):
        heads = ("--num-heads", 2)

        def state(**kw):
            return self.torchvision_vit(0, 16, 4, 3, 2, 16, 32, 5, **kw).state_dict()
        s = state()
        s["conv_proj.weight"] = torch.zeros(16, 3, 4, 2)
        self.assertIn("non-square patch 4x2",
                      self.assert_refused(s, "conv_proj.weight", *heads))
        s = state()
        del s["heads.head.weight"]
        self.assert_refused(s, "heads.head.weight: missing", *heads)
        self.assert_refused(state(representation_size=8), "heads.pre_logits.", *heads)
        s = state()
        for k in [k for k in s if k.startswith("encoder.layers.encoder_layer_1.")]:
            del s[k]
        self.assert_refused(s, "encoder.layers.encoder_layer_1.self_attention.in_proj_weight: "
                            "missing", *heads)
        s = state()
        s["encoder.layers.encoder_layer_0.mlp.0.weight"][3, 4] = float("nan")
        self.assert_refused(s, "encoder.layers.encoder_layer_0.mlp.0.weight: nan at [3, 4]",
                            *heads)
        s = state()
        s["heads.head.weight"][1, 2] = 1e5
        self.assert_refused(s, "heads.head.weight: 100000.0 at [1, 2] once rounded to F16",
                            *heads, "--dtype", "F16")
        labels = self.path("labels.txt")
        with open(labels, "w") as f:
            f.write("a\nb\n")
        self.assert_refused(state(), "2 labels for the head's 5 classes", *heads,
                            "--labels", labels)
        self.assert_refused({"encoder.layers.x": torch.zeros(1)}, "encoder.layers.x: not part "
                            "of torchvision's", *heads)
        self.assert_refused({"fc.weight": torch.zeros(2, 2)}, "neither a torchvision nor a timm")

    def test_unreadable_files_refused(self):
        self.assert_refused(self.path("absent.pth"), "no such file")
        garbage = self.path("garbage.pth")
        with open(garbage, "wb") as f:
            f.write(os.urandom(300))
        self.assert_refused(garbage, "not a PyTorch state dict")
        truncated = self.path("truncated.safetensors")
        vmoe_torch.save_safetensors(truncated, self.timm_state(), {})
        with open(truncated, "r+b") as f:
            f.truncate(os.path.getsize(truncated) - 4)
        self.assert_refused(truncated, "data_offsets")
        with open(truncated, "wb") as f:
            f.write(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
        self.assert_refused(truncated, "not JSON")
        self.assert_refused({"a": 1}, "not a tensor")

    def test_imagenet_labels_without_torchvision(self):
        state = self.timm_state(num_classes=1000)
        saved = sys.modules.get("torchvision.models._meta")
        sys.modules["torchvision.models._meta"] = None     # import raises ImportError
        try:
            self.assert_refused(state, "head.weight: 1000 classes: give --labels",
                                "--num-heads", 2)
        finally:
            sys.modules["torchvision.models._meta"] = saved

    def test_missing_output_folder(self):
        torch.save(self.timm_state(), self.path("ok.pth"))
        out = self.path("absent/out.safetensors")
        error, _ = run_convert(self.path("ok.pth"), out, "--num-heads", 2)
        self.assertEqual(error, "convert.py: %s: no folder %s" % (out, self.path("absent")))

    def test_command_line(self):
        """The script as a user runs it: exit 1, one line, nothing on stdout."""
        state = self.timm_state()
        state["blocks.0.ls2.gamma"] = torch.ones(16)
        torch.save(state, self.path("ls.pth"))
        result = subprocess.run([sys.executable, os.path.join(TRAINING, "convert.py"),
                                 self.path("ls.pth"), self.path("ls.safetensors"),
                                 "--num-heads", "2"],
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 1)
        self.assertEqual(result.stdout, "")
        self.assertEqual(result.stderr.strip().splitlines(),
                         ["convert.py: blocks.0.ls2.gamma: timm's layer scale (ls1/ls2) is not "
                          "in the vmoe model"])

    # ---------------------------------------------------------- upcycling

    def test_sparse_upcycling(self):
        """docs/training.md's path: a converted ImageNet ViT, fine-tuned on an
        image folder with a new head, super-classes from its confusions, then
        a Mobile V-MoE initialised from it; the engine runs the result as
        PyTorch does."""
        import train
        from PIL import Image
        model = self.torchvision_vit(7, 32, 8, 2, 2, 32, 64, 1000)
        torch.save(model.state_dict(), self.path("imagenet.pth"))
        converted = self.path("imagenet.safetensors")
        self.assertIsNone(run_convert(self.path("imagenet.pth"), converted, "--num-heads", 2)[0])
        folder = self.path("folder")
        rng = np.random.default_rng(0)
        for c, name in enumerate(("blue", "green", "red")):
            os.makedirs(os.path.join(folder, name))
            for i in range(10):
                a = rng.integers(0, 80, (40, 48, 3))
                a[..., 2 - c] += 170
                Image.fromarray(a.astype(np.uint8)).save(os.path.join(folder, name, "%d.png" % i))
        common = ["--data", folder, "--batch", "8", "--threads", "1"]
        with contextlib.redirect_stdout(io.StringIO()):
            train.main(["dense", "--init", converted, "--out", self.path("dense"), "--steps", "6",
                        *common])
            train.main(["superclasses", "--checkpoint", self.path("dense/checkpoint.pt"),
                        "--experts", "2", "--out", self.path("sc.json"), "--data", folder])
            train.main(["moe", "--init", self.path("dense/checkpoint.pt"), "--superclasses",
                        self.path("sc.json"), "--out", self.path("moe"), "--steps", "4",
                        *common])
        dense = vmoe_torch.load_model(self.path("dense/model.safetensors"))
        self.assertEqual(dense.config["labels"], ["blue", "green", "red"])
        # Fine-tuning moved the converted backbone a little, not from scratch.
        before = vmoe_torch.load_model(converted).state_dict()
        for name in ("patch_embed.proj.weight", "blocks.1.mlp.fc2.weight"):
            change = (dense.state_dict()[name] - before[name]).norm() / before[name].norm()
            self.assertLess(float(change), 0.3, name)
        moe_path = self.path("moe/model.safetensors")
        moe = vmoe_torch.load_model(moe_path).eval()
        self.assertEqual(moe.config["moe"]["num_experts"], 2)
        self.assertEqual(sorted(c for s in moe.config["moe"]["superclasses"]
                                for c in s["classes"]), [0, 1, 2])
        self.assertEqual(moe.config["image_size"], [32, 32])
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        results = self.assert_engine_matches(moe_path, moe, x)
        with torch.inference_mode():
            experts = moe(x)[1]["experts"].tolist()
        self.assertEqual([r["experts"] for r in results], experts)


def main():
    global VMOE
    if tv_vit is None:
        print("test_convert: python3-torchvision is missing")
        sys.exit(77)
    VMOE = sys.argv.pop(1)
    torch.set_num_threads(1)
    unittest.main(verbosity=2)


if __name__ == "__main__":
    main()
