"""Datasets for training: Fashion-MNIST from Debian's dataset-fashion-mnist
(IDX .gz files under /usr/share/datasets/fashion-mnist), an image-folder
loader for users' own data, the fixed stratified held-out split, and
augmentation.  Images stay as decoded (uint8, any size) in Frames, whose
model inputs are what the C engine computes from the same pixels: the
pre-processing of training/vmoe_torch.py, for the model's configuration."""

import gzip
import json
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

import vmoe_torch

FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                  "Shirt", "Sneaker", "Bag", "Ankle boot"]
# The held-out split: HOLDOUT_PER_CLASS training images of every class,
# drawn with numpy's default_rng(SPLIT_SEED).  Written down here, used by
# every command, never trained on.
HOLDOUT_PER_CLASS = 500
SPLIT_SEED = 20261123


def read_idx(path):
    """Reads an IDX file (.gz or plain): uint8 images [N, H, W] or labels [N]."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError("%s: not an unsigned-byte IDX file" % path)
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError("%s: %d bytes of data, shape %s needs %d"
                         % (path, body.size, shape, int(np.prod(shape))))
    return body.reshape(shape)


def fashion_mnist(root=FASHION_ROOT):
    """Returns (train_images, train_labels, test_images, test_labels) with
    images uint8 [N, 28, 28, 1]."""
    def part(name):
        return read_idx(os.path.join(root, name))
    try:
        train_x = part("train-images-idx3-ubyte.gz")[..., None]
        train_y = part("train-labels-idx1-ubyte.gz").astype(np.int64)
        test_x = part("t10k-images-idx3-ubyte.gz")[..., None]
        test_y = part("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    except FileNotFoundError as e:
        raise SystemExit("Fashion-MNIST not found (%s): apt-get install dataset-fashion-mnist"
                         % e.filename)
    return train_x, train_y, test_x, test_y


class Frames:
    """Images as decoded, of any size (uint8 [H, W, C], C = 1 or 3), and the
    model inputs the engine computes from them.  `sources` is a uint8 array
    [N, H, W, C] or a list of image files (decoded when needed, so that a
    folder of large photos is not held in memory at full size)."""

    def __init__(self, sources, sizes=None):
        self.sources = sources
        if sizes is None:
            sizes = [tuple(sources.shape[1:3])] * len(sources)
        self.sizes = list(sizes)     # (h, w) of each image
        self._inputs = {}

    def __len__(self):
        return len(self.sizes)

    def __getitem__(self, index):
        """The frames at `index` (an array of indices), as Frames."""
        index = np.asarray(index, dtype=np.int64)
        if isinstance(self.sources, np.ndarray):
            sources = self.sources[index]
        else:
            sources = [self.sources[i] for i in index]
        return Frames(sources, [self.sizes[i] for i in index])

    def pixels(self, i):
        """Image i, uint8 [H, W, C]."""
        if isinstance(self.sources, np.ndarray):
            return self.sources[i]
        return read_image(self.sources[i])

    def model_input(self, config, chunk_bytes=1 << 26):
        """float32 [N, C, Ht, Wt]: every image pre-processed for `config`
        exactly as the engine pre-processes a frame (docs/design.md, step 1
        and Aspect handling), by vmoe_torch.preprocess_uint8.  Made once per
        pre-processing configuration; same-sized images go through it
        together, in chunks of about chunk_bytes of float pixels."""
        c = vmoe_torch.complete_config(config)
        key = json.dumps([c[k] for k in PREPROCESS_KEYS])
        if key not in self._inputs:
            ht, wt = c["image_size"]
            out = torch.empty(len(self), c["in_channels"], ht, wt)
            by_size = {}
            for i, size in enumerate(self.sizes):
                by_size.setdefault(size, []).append(i)
            for (h, w), members in by_size.items():
                step = max(1, chunk_bytes // (4 * h * w * 3))
                for a in range(0, len(members), step):
                    part = members[a:a + step]
                    pixels = [self.pixels(i) for i in part]
                    # A folder may mix gray and colour files of one size.
                    for channels in sorted({p.shape[2] for p in pixels}):
                        same = [k for k, p in enumerate(pixels) if p.shape[2] == channels]
                        frames = np.stack([pixels[k] for k in same])
                        out[torch.as_tensor([part[k] for k in same])] = \
                            vmoe_torch.preprocess_uint8(frames, c)
            self._inputs[key] = out
        return self._inputs[key]


# The configuration keys that step 1 reads: what a model input depends on.
PREPROCESS_KEYS = ("image_size", "in_channels", "mean", "std", "resize", "crop_pct", "aspect")


def read_image(path):
    """An image file as uint8 [H, W, C]: gray images keep one channel, every
    other mode becomes RGB (alpha dropped, as the engine ignores it), so
    that channel conversion is the engine's, not PIL's."""
    from PIL import Image   # matplotlib's dependency, so present with it
    try:
        with Image.open(path) as im:
            gray = im.mode in ("1", "L", "LA")
            a = np.asarray(im.convert("L" if gray else "RGB"), dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise SystemExit("%s: cannot decode: %s" % (path, e))
    return a.reshape(a.shape[0], a.shape[1], 1 if gray else 3)


def image_folder(root):
    """One sub-folder per class (sorted names are the labels); files that
    are not images are skipped.  Returns (Frames, labels, class names);
    images are decoded, at their own size, when a model input is made."""
    from PIL import Image
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise SystemExit("%s has no class sub-folders" % root)
    paths, sizes, labels = [], [], []
    for index, name in enumerate(classes):
        folder = os.path.join(root, name)
        for file in sorted(os.listdir(folder)):
            path = os.path.join(folder, file)
            try:
                with Image.open(path) as im:   # reads the header only
                    w, h = im.size
            except OSError:
                continue   # not an image
            except Image.DecompressionBombError as e:
                raise SystemExit("%s: %s" % (path, e))
            paths.append(path)
            sizes.append((h, w))
            labels.append(index)
    if not paths:
        raise SystemExit("%s holds no readable images" % root)
    return Frames(paths, sizes), np.asarray(labels, dtype=np.int64), classes


def default_aspect(sizes, image_size, tolerance=0.01):
    """The `aspect` that matches how a folder's images were made, and why
    (docs/training.md): "stretch" when they all share one aspect ratio that
    is not the model's (frames of one source, like the stream the element
    will see: stretching keeps the whole view, distorted the same way in
    training and in the element), otherwise "crop" (shapes are kept; with
    varied ratios, stretching would distort each image differently).
    Ratios within `tolerance` count as one, for rounded sizes."""
    ht, wt = image_size
    ratios = [w / h for h, w in sizes]
    lo, hi = min(ratios), max(ratios)
    if hi / lo > 1 + tolerance:
        return "crop", "aspect ratios (w/h) vary from %.3g to %.3g" % (lo, hi)
    if abs(lo / (wt / ht) - 1) <= tolerance and abs(hi / (wt / ht) - 1) <= tolerance:
        return "crop", "every image has the model's aspect ratio (w/h %.3g)" % (wt / ht)
    return "stretch", "every image has aspect ratio w/h %.3g, the model %.3g" % (lo, wt / ht)


def stratified_split(labels, per_class=HOLDOUT_PER_CLASS, seed=SPLIT_SEED):
    """Indices (train, holdout): per_class of each class go to holdout (fewer
    for a class too small to keep half of it for training)."""
    rng = np.random.default_rng(seed)
    holdout = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        take = min(per_class, len(members) // 2)
        holdout.extend(rng.choice(members, size=take, replace=False))
    holdout = np.sort(np.asarray(holdout, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), holdout)
    return train, holdout


def augment(x, generator, pad=2, flip=True, erase=0.25):
    """Augmentation for small grayscale objects on a black background:
    random translation by up to `pad` pixels (zero fill, i.e. background),
    horizontal flip (garments and shoes stay themselves mirrored), and with
    probability `erase` a random erased rectangle (random erasing).  x is
    normalised [N, C, H, W]; the background value is x's per-image minimum."""
    n, _, h, w = x.shape
    background = x.amin(dim=(1, 2, 3), keepdim=True)
    padded = F.pad(x - background, (pad, pad, pad, pad)) + background
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])            # [N, H]
    cols = (dx[:, None] + torch.arange(w)[None, :])            # [N, W]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out[mirror] = out[mirror].flip(-1)
    if erase > 0:
        for i in torch.nonzero(torch.rand(n, generator=generator) < erase).flatten().tolist():
            eh = int(torch.randint(h // 6, h // 2 + 1, (1,), generator=generator))
            ew = int(torch.randint(w // 6, w // 2 + 1, (1,), generator=generator))
            y0 = int(torch.randint(0, h - eh + 1, (1,), generator=generator))
            x0 = int(torch.randint(0, w - ew + 1, (1,), generator=generator))
            out[i, :, y0:y0 + eh, x0:x0 + ew] = background[i]
    return out
