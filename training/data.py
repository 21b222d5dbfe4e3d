"""Datasets for training: Fashion-MNIST from Debian's dataset-fashion-mnist
(IDX .gz files under /usr/share/datasets/fashion-mnist), an image-folder
loader for users' own data, the fixed stratified held-out split, and
augmentation.  Images stay uint8 [N, H, W, C] until a batch is drawn, and are
then normalised exactly as the C engine pre-processes frames."""

import gzip
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

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


def image_folder(root, size, channels):
    """One sub-folder per class (sorted names are the labels); every image
    is resized to size x size.  Returns (images uint8 [N, H, W, C], labels,
    class names)."""
    from PIL import Image   # matplotlib's dependency, so present with it
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise SystemExit("%s has no class sub-folders" % root)
    images, labels = [], []
    mode = "L" if channels == 1 else "RGB"
    for index, name in enumerate(classes):
        folder = os.path.join(root, name)
        for file in sorted(os.listdir(folder)):
            try:
                with Image.open(os.path.join(folder, file)) as im:
                    im = im.convert(mode).resize((size, size), Image.BILINEAR)
                    a = np.asarray(im, dtype=np.uint8)
            except OSError:
                continue   # not an image
            images.append(a.reshape(size, size, channels))
            labels.append(index)
    if not images:
        raise SystemExit("%s holds no readable images" % root)
    return np.stack(images), np.asarray(labels, dtype=np.int64), classes


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


def normalize(images, mean, std):
    """uint8 [N, H, W, C] -> float32 [N, C, H, W], as the engine does for a
    frame already at the model size."""
    x = torch.from_numpy(np.array(images, dtype=np.float32)).div_(255.0)
    x = x.permute(0, 3, 1, 2)
    m = torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


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
