"""Issue #15 part 2: a model trained on a folder of non-square images scores
the same in the engine and in the element as in training.  Trains briefly
on synthetic shapes (one folder of varied aspect ratios: `crop`; one of 4:3
frames: `stretch`), then compares training's own evaluation (train.evaluate
on data.image_folder) with `vmoe run` on the files' pixels and with
vmoeclassify fed the PNG files as frames.

    /usr/bin/python3 tests/test_training_aspect.py SOURCE_DIR VMOE_TOOL PLUGIN_DIR
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

import numpy as np
import torch
from PIL import Image

SOURCE = VMOE = PLUGIN_DIR = None
CLASSES = ["bar-tall", "bar-wide", "cross", "disc"]
PER_CLASS = 40
ARCH = {"image_size": 32, "patch_size": 8, "in_channels": 3, "embed_dim": 32, "depth": 2,
        "num_heads": 2, "mlp_dim": 64, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
# (h, w): wide and tall frames.  Each shape is centred and sized by the
# shorter side, so that `crop` keeps it whole and undistorted while a
# squash to a square would change its proportions by up to 3x.
VARIED_SIZES = [(24, 72), (72, 24), (32, 64), (64, 32), (40, 60), (60, 40)]
FOUR_THREE_SIZES = [(48, 64), (36, 48)]


def shape_image(rng, name, h, w):
    """A dim noisy background and one bright shape, class `name`."""
    img = rng.integers(0, 60, 3) + rng.normal(0, 8, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    r = min(h, w) * rng.uniform(0.28, 0.36)
    dy = (yy - h / 2 - rng.uniform(-1.5, 1.5)) / r
    dx = (xx - w / 2 - rng.uniform(-1.5, 1.5)) / r
    ax, ay = np.abs(dx), np.abs(dy)
    mask = {"disc": dx ** 2 + dy ** 2 <= 1,
            "bar-wide": (ay <= 0.3) & (ax <= 1.2),
            "bar-tall": (ax <= 0.3) & (ay <= 1.2),
            "cross": ((ax <= 0.22) & (ay <= 1.0)) | ((ay <= 0.22) & (ax <= 1.0))}[name]
    img[mask] = rng.integers(150, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_folder(root, sizes, seed):
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        os.makedirs(os.path.join(root, name))
        for i in range(PER_CLASS):
            h, w = sizes[i % len(sizes)]
            Image.fromarray(shape_image(rng, name, h, w)).save(
                os.path.join(root, name, "%03d.png" % i))


def png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def train_py(*args, check=True):
    return subprocess.run(["/usr/bin/python3", os.path.join(SOURCE, "training", "train.py"),
                           *args], capture_output=True, text=True, timeout=300, check=check)


def vmoe_run(model, frames):
    """`vmoe run` top-1 and logits of every image, one .npy per image size."""
    top1 = np.full(len(frames), -1)
    logits = [None] * len(frames)
    by_size = {}
    for i, size in enumerate(frames.sizes):
        by_size.setdefault(size, []).append(i)
    with tempfile.TemporaryDirectory() as tmp:
        for members in by_size.values():
            npy = os.path.join(tmp, "frames.npy")
            np.save(npy, np.stack([frames.pixels(i) for i in members]))
            out = subprocess.run([VMOE, "run", "--batch", "1", "--logits", model, npy],
                                 capture_output=True, text=True, timeout=120, check=True).stdout
            for i, line in zip(members, out.splitlines()):
                result = json.loads(line)
                top1[i] = result["top"][0]["class"]
                logits[i] = result["logits"]
    return top1, np.array(logits)


def element_top1(model, paths, tmp):
    """vmoeclassify's class-id for each file, fed in order as frames of one
    stream (their sizes change from frame to frame)."""
    from gsttestutil import Gst
    import gsttestutil
    stream = os.path.join(tmp, "stream")
    os.makedirs(stream)
    for i, path in enumerate(paths):
        os.symlink(path, os.path.join(stream, "%05d.png" % i))
    pipeline = Gst.parse_launch(
        "multifilesrc location=%s/%%05d.png caps=image/png ! pngdec ! videoconvert ! "
        "vmoeclassify model=%s post-messages=true ! fakesink sync=false" % (stream, model))
    messages = gsttestutil.run_to_eos(pipeline, timeout_s=120)
    results = [m.get_structure() for m in messages if m.type == Gst.MessageType.ELEMENT
               and m.get_structure().get_name() == "vmoe"]
    assert all(s.get_value("fresh") for s in results)
    return np.array([s.get_value("class-id") for s in results])


class TrainingAspectTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp()
        with open(os.path.join(cls.tmp, "arch.json"), "w") as f:
            json.dump(ARCH, f)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp)

    def train_folder(self, name, sizes, seed):
        """Trains a dense model on a new folder; returns (folder, model
        file, training's log)."""
        folder = os.path.join(self.tmp, name)
        make_folder(folder, sizes, seed)
        out = os.path.join(self.tmp, name + "-run")
        run = train_py("dense", "--data", folder, "--arch", os.path.join(self.tmp, "arch.json"),
                       "--out", out, "--epochs", "40", "--batch", "16", "--erase", "0",
                       "--lr", "3e-3", "--threads", "1", "--seed", str(seed))
        return folder, os.path.join(out, "model.safetensors"), run.stdout

    def check_agreement(self, folder, model_path, aspect):
        import data
        import train
        import vmoe_torch
        model = vmoe_torch.load_model(model_path)
        self.assertEqual(model.config["aspect"], aspect)
        self.assertEqual(model.config["image_size"], [32, 32])
        frames, labels, classes = data.image_folder(folder)
        self.assertEqual(classes, CLASSES)
        acc, trained, *_ = train.evaluate(model, frames, labels, model.config)
        # A model that learnt nothing (one class for every image) would agree
        # with any pre-processing: require one that tells the shapes apart.
        self.assertGreater(acc, 0.8, "training did not learn the shapes")
        ran, ran_logits = vmoe_run(model_path, frames)
        agree = float((ran == trained).mean())
        self.assertGreaterEqual(agree, 0.99, "vmoe run agrees with training on %.1f%%"
                                % (100 * agree))
        # Beyond top-1: the same input gives the parity suite's logits, so a
        # pre-processing that differs slightly (another bilinear filter) fails
        # here even where the shapes are too clear for top-1 to change.
        with torch.inference_mode():
            logits = model.eval()(frames.model_input(model.config))[0].numpy()
        error = np.abs(logits - ran_logits).max() / np.abs(logits).max()
        self.assertLessEqual(error, 1e-4, "relative logit error %.3g" % error)
        with tempfile.TemporaryDirectory() as tmp:
            shown = element_top1(model_path, frames.sources, tmp)
        self.assertEqual(len(shown), len(frames))
        shown_agree = float((shown == trained).mean())
        print("\n%s: training accuracy %.3f; top-1 equal to training's: vmoe run %.3f, "
              "element %.3f; relative logit error %.2g" % (aspect, acc, agree, shown_agree, error),
              file=sys.stderr)
        self.assertGreaterEqual(shown_agree, 0.99, "the element agrees with training on %.1f%%"
                                % (100 * shown_agree))

    def test_varied_aspect_ratios_crop(self):
        folder, model, log = self.train_folder("varied", VARIED_SIZES, 1)
        self.assertIn("aspect: crop (aspect ratios (w/h) vary", log)
        self.check_agreement(folder, model, "crop")

    def test_one_aspect_ratio_stretch(self):
        folder, model, log = self.train_folder("four-three", FOUR_THREE_SIZES, 2)
        self.assertIn("aspect: stretch (every image has aspect ratio w/h 1.33", log)
        self.check_agreement(folder, model, "stretch")

    def test_default_aspect_rule(self):
        """Hand-derived cases of data.default_aspect."""
        import data
        self.assertEqual(data.default_aspect([(480, 640), (240, 320)], [32, 32])[0], "stretch")
        # 427 x 320 is 4:3 rounded: one ratio within the tolerance.
        self.assertEqual(data.default_aspect([(480, 640), (320, 427)], [32, 32])[0], "stretch")
        self.assertEqual(data.default_aspect([(480, 640), (640, 480)], [32, 32])[0], "crop")
        self.assertEqual(data.default_aspect([(50, 50), (20, 20)], [32, 32])[0], "crop")
        self.assertEqual(data.default_aspect([(24, 40), (48, 80)], [24, 40])[0], "crop")
        self.assertEqual(data.default_aspect([(24, 40)], [32, 32])[0], "stretch")

    def test_gray_and_colour_files(self):
        """A folder mixing gray and RGB files of one size: a gray file and
        its RGB copy (R = G = B) give the same model input, as in the
        engine (gray repeated for a 3-channel model, luma for a 1-channel
        one)."""
        import data
        folder = os.path.join(self.tmp, "mixed")
        os.makedirs(os.path.join(folder, "a"))
        rng = np.random.default_rng(5)
        for i in range(3):
            gray = rng.integers(0, 256, (30, 50), dtype=np.uint8)
            Image.fromarray(gray).save(os.path.join(folder, "a", "%d-gray.png" % i))
            Image.fromarray(np.repeat(gray[..., None], 3, axis=2)).save(
                os.path.join(folder, "a", "%d-rgb.png" % i))
        frames, _, _ = data.image_folder(folder)
        self.assertEqual([frames.pixels(i).shape[2] for i in range(6)], [1, 3] * 3)
        for channels in (1, 3):
            config = dict(ARCH, in_channels=channels, num_classes=1, aspect="crop",
                          mean=[0.5] * channels, std=[0.25] * channels)
            x = frames.model_input(config).numpy()
            self.assertEqual(x.shape, (6, channels, 32, 32))
            np.testing.assert_allclose(x[0::2], x[1::2], rtol=0, atol=1e-5)

    def test_bad_input(self):
        folder = os.path.join(self.tmp, "bad")
        make_folder(folder, [(20, 30)], 3)
        # A file whose header reads but whose pixels do not: named, exit 1.
        broken = os.path.join(folder, "disc", "broken.png")
        with open(os.path.join(folder, "disc", "000.png"), "rb") as f:
            whole = f.read()
        with open(broken, "wb") as f:
            f.write(whole[:len(whole) // 2])
        arch = os.path.join(self.tmp, "arch.json")
        run = train_py("dense", "--data", folder, "--arch", arch, "--out",
                       os.path.join(self.tmp, "bad-run"), "--batch", "16", "--steps", "1",
                       check=False)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertIn("broken.png: cannot decode", run.stderr)
        self.assertEqual(len(run.stderr.strip().splitlines()), 1, run.stderr)
        os.remove(broken)
        # A header announcing 60000 x 60000 pixels: refused before decoding.
        bomb = os.path.join(folder, "disc", "huge.png")
        with open(bomb, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(
                ">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)) + png_chunk(b"IEND", b""))
        run = train_py("dense", "--data", folder, "--arch", arch, "--out",
                       os.path.join(self.tmp, "bad-run"), "--batch", "16", "--steps", "1",
                       check=False)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertIn("huge.png: Image size (3600000000 pixels) exceeds limit", run.stderr)
        os.remove(bomb)
        # The default batch of 128 is more than this folder's training images.
        run = train_py("dense", "--data", folder, "--arch", arch, "--out",
                       os.path.join(self.tmp, "bad-run"), check=False)
        self.assertEqual(run.returncode, 1, run.stderr)
        self.assertIn("training images, fewer than one batch (--batch 128)", run.stderr)
        run = train_py("dense", "--data", folder, "--arch", arch, "--aspect", "squash",
                       "--out", os.path.join(self.tmp, "bad-run"), check=False)
        self.assertEqual(run.returncode, 2)
        self.assertIn("--aspect: invalid choice: 'squash'", run.stderr)

    def test_folder_without_images(self):
        import data
        folder = os.path.join(self.tmp, "empty")
        os.makedirs(os.path.join(folder, "a"))
        with self.assertRaisesRegex(SystemExit, "has no class sub-folders"):
            data.image_folder(os.path.join(folder, "a"))
        with open(os.path.join(folder, "a", "notes.txt"), "w") as f:
            f.write("not an image\n")
        with self.assertRaisesRegex(SystemExit, "holds no readable images"):
            data.image_folder(folder)

    def test_aspect_option_and_init(self):
        """--aspect overrides the folder's default; --init keeps the
        model's aspect unless --aspect is given."""
        import vmoe_torch
        folder = os.path.join(self.tmp, "init")
        make_folder(folder, FOUR_THREE_SIZES, 4)   # the default would be stretch
        arch = os.path.join(self.tmp, "arch.json")

        def aspect_of(run):
            path = os.path.join(self.tmp, run, "model.safetensors")
            return vmoe_torch.load_model(path).config["aspect"]

        common = ["--data", folder, "--batch", "16", "--steps", "2", "--threads", "1"]
        train_py("dense", *common, "--arch", arch, "--aspect", "crop",
                 "--out", os.path.join(self.tmp, "r1"))
        self.assertEqual(aspect_of("r1"), "crop")
        first = os.path.join(self.tmp, "r1", "model.safetensors")
        train_py("dense", *common, "--init", first, "--out", os.path.join(self.tmp, "r2"))
        self.assertEqual(aspect_of("r2"), "crop")
        train_py("moe", *common, "--init", first, "--experts", "2", "--aspect", "stretch",
                 "--out", os.path.join(self.tmp, "r3"))
        self.assertEqual(aspect_of("r3"), "stretch")


if __name__ == "__main__":
    SOURCE, VMOE, PLUGIN_DIR = sys.argv[1:4]
    del sys.argv[1:4]
    sys.path.insert(0, os.path.join(SOURCE, "training"))
    sys.path.insert(0, os.path.join(SOURCE, "tests"))
    import gsttestutil
    gsttestutil.init(PLUGIN_DIR)
    unittest.main(verbosity=2)
