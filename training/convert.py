"""Converts a pretrained ViT checkpoint from torchvision or timm into a vmoe
model file (docs/model-format.md).  Run with Debian's PyTorch:

    /usr/bin/python3 training/convert.py SRC OUT.safetensors \\
        [--source torchvision|timm] [--num-heads N] [--labels FILE] [--dtype F32|F16|BF16]

SRC is a state dict saved with torch.save (.pth/.pt) or a .safetensors file.
Everything the weights determine is read from their shapes: patch size,
channels, width, depth, MLP size, class count, class token, and the image
size from the position embeddings (square unless --image-size says
otherwise).  The head count is not in any shape: --num-heads gives it, and
only the published ViT-Ti/S/B/L/H shapes go without it.  Variants that the
vmoe model cannot express (layer scale, register tokens, fc_norm, ...) are
refused with one line naming the tensor.  docs/training.md, "Converting a
pretrained ViT", has the recipe and the sparse-upcycling path that follows.
"""

import argparse
import json
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vmoe_torch  # noqa: E402

# Both sources' ImageNet pre-processing: torchvision's ImageClassification
# preset (resize 256, centre crop 224, bilinear) and timm's library defaults
# (IMAGENET_DEFAULT_MEAN/STD, DEFAULT_CROP_PCT).  timm's own ViT weights
# often differ (mean = std = 0.5, crop 0.9, bicubic): --mean, --std and
# --crop-pct take the values of the checkpoint's pretrained_cfg.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
IMAGENET_CROP_PCT = 0.875

# The published ViT shapes (Dosovitskiy et al. Table 1; Ti and S from DeiT):
# (embed_dim, depth, mlp_dim) -> (num_heads, name).  Any other shape needs
# --num-heads.
STANDARD_HEADS = {
    (192, 12, 768): (3, "ViT-Ti"),
    (384, 12, 1536): (6, "ViT-S"),
    (768, 12, 3072): (12, "ViT-B"),
    (1024, 24, 4096): (16, "ViT-L"),
    (1280, 32, 5120): (16, "ViT-H"),
}

# torchvision's VisionTransformer names and the model file's (timm's): {i}
# is a block, {p} weight or bias.  mlp.linear_1/2 are the names before
# torchvision 0.13 (MLPBlock version 1).
TORCHVISION_NAMES = [
    ("conv_proj.{p}", "patch_embed.proj.{p}"),
    ("class_token", "cls_token"),
    ("encoder.pos_embedding", "pos_embed"),
    ("encoder.ln.{p}", "norm.{p}"),
    ("heads.head.{p}", "head.{p}"),
    ("encoder.layers.encoder_layer_{i}.ln_1.{p}", "blocks.{i}.norm1.{p}"),
    ("encoder.layers.encoder_layer_{i}.self_attention.in_proj_{p}", "blocks.{i}.attn.qkv.{p}"),
    ("encoder.layers.encoder_layer_{i}.self_attention.out_proj.{p}", "blocks.{i}.attn.proj.{p}"),
    ("encoder.layers.encoder_layer_{i}.ln_2.{p}", "blocks.{i}.norm2.{p}"),
    ("encoder.layers.encoder_layer_{i}.mlp.0.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("encoder.layers.encoder_layer_{i}.mlp.3.{p}", "blocks.{i}.mlp.fc2.{p}"),
    ("encoder.layers.encoder_layer_{i}.mlp.linear_1.{p}", "blocks.{i}.mlp.fc1.{p}"),
    ("encoder.layers.encoder_layer_{i}.mlp.linear_2.{p}", "blocks.{i}.mlp.fc2.{p}"),
]
TORCHVISION_REFUSED = [
    (r"heads\.pre_logits\.", "torchvision's representation layer (representation_size: "
     "pre_logits and tanh before the head) is not in the vmoe model"),
    (r"conv_proj\.conv_", "a convolutional stem (conv_stem_configs) is not in the vmoe model"),
]

TIMM_REFUSED = [
    (r"blocks\.\d+\.ls[12]\.", "timm's layer scale (ls1/ls2) is not in the vmoe model"),
    (r"reg_token", "register tokens are not in the vmoe model"),
    (r"fc_norm\.", "timm's avg-pool head normalises the pooled token (fc_norm); the vmoe "
     "model's pool \"avg\" normalises each token before pooling, so it cannot express it"),
    (r"norm_pre\.", "a norm before the blocks (pre_norm, CLIP-style) is not in the vmoe model"),
    (r"attn_pool\.", "attention pooling (global_pool 'map') is not in the vmoe model"),
    (r"blocks\.\d+\.attn\.[qk]_norm\.", "qk-norm is not in the vmoe model"),
    (r"blocks\.\d+\.(attn|mlp)\.norm\.",
     "a norm inside attention or the MLP is not in the vmoe model"),
    (r"(dist_token|head_dist\.)", "DeiT's distillation token and head are not in the vmoe model"),
    (r"patch_embed\.norm\.", "a norm after the patch embedding is not in the vmoe model"),
    (r"pre_logits\.", "a representation layer before the head is not in the vmoe model"),
]


class ConvertError(Exception):
    """Input the vmoe model cannot hold: what (a tensor in the model file's
    naming, a file or an option) and why."""

    def __init__(self, what, why):
        super().__init__("%s: %s" % (what, why))
        self.what, self.why = what, why


def template_regex(template):
    return re.compile(re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)")
                      .replace(r"\{p\}", r"(?P<p>weight|bias)"))


def rename(name, pairs):
    """name through the first (from, to) template pair whose from matches
    it, or None."""
    for source, target in pairs:
        m = template_regex(source).fullmatch(name)
        if m:
            return target.format(**m.groupdict())
    return None


# ------------------------------------------------------------------ reading

def read_checkpoint(path):
    """The state dict in path (.safetensors, or a torch.save'd state dict,
    possibly under "model", "state_dict" or "state" and with DDP's "module."
    prefix) as float32 tensors."""
    if not os.path.isfile(path):
        raise ConvertError(path, "no such file")
    if path.endswith(".safetensors"):
        try:
            state, _ = vmoe_torch.load_safetensors(path)
        except (OSError, ValueError) as e:
            raise ConvertError(path, "not a readable safetensors file (%s)" % e) from None
    else:
        try:
            # weights_only: a checkpoint from the internet runs no pickled code.
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:   # torch.load raises many kinds for a bad file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConvertError(path, "not a PyTorch state dict (%s)" % first) from None
        if isinstance(state, dict):
            for wrapper in ("model", "state_dict", "state"):
                if isinstance(state.get(wrapper), dict):
                    state = state[wrapper]
                    break
    if not isinstance(state, dict) or not state:
        raise ConvertError(path, "holds no state dict of tensors")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConvertError(name, "%s, not a tensor" % type(value).__name__)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v.detach().float() for k, v in state.items()}


def detect_source(state):
    if "conv_proj.weight" in state or any(k.startswith("encoder.layers.") for k in state):
        return "torchvision"
    if "patch_embed.proj.weight" in state or any(k.startswith("blocks.") for k in state):
        return "timm"
    raise ConvertError(next(iter(state)), "neither a torchvision nor a timm ViT: no "
                       "conv_proj.weight or patch_embed.proj.weight among %d tensors" % len(state))


def torchvision_to_timm(state):
    """A torchvision VisionTransformer state dict in timm's names."""
    out = {}
    for name, value in state.items():
        for pattern, why in TORCHVISION_REFUSED:
            if re.match(pattern, name):
                raise ConvertError(name, why)
        target = rename(name, TORCHVISION_NAMES)
        if target is None:
            raise ConvertError(name, "not part of torchvision's VisionTransformer")
        out[target] = value
    return out


def refuse_timm_variants(state):
    for name in state:
        for pattern, why in TIMM_REFUSED:
            if re.match(pattern, name):
                raise ConvertError(name, why)


# ---------------------------------------------------------------- inferring

def image_grid(positions, patch, image_size, class_token):
    """(grid_h, grid_w) of the patch positions in pos_embed's `positions`."""
    patches = positions - (1 if class_token else 0)
    no_embed_class = ("timm's no_embed_class (no position for the class token) is not in "
                      "the vmoe model")
    if image_size:
        h, w = image_size
        if h < 1 or w < 1 or h % patch or w % patch:
            raise ConvertError("--image-size", "%dx%d is not a multiple of patch %d"
                               % (h, w, patch))
        grid = (h // patch, w // patch)
        if class_token and positions == grid[0] * grid[1]:
            raise ConvertError("pos_embed", "%d positions for %d patches and a class token: %s"
                               % (positions, positions, no_embed_class))
        if grid[0] * grid[1] != patches:
            raise ConvertError("pos_embed", "%d patch positions, but --image-size %dx%d with "
                               "patch %d has %d" % (patches, h, w, patch, grid[0] * grid[1]))
        return grid
    side = math.isqrt(max(patches, 0))
    if side > 0 and side * side == patches:
        return side, side
    why = "%d patch positions are not a square grid: give --image-size H W" % patches
    side = math.isqrt(positions)
    if class_token and side * side == positions:
        why += ("; or they are a %dx%d grid without a position for the class token: %s"
                % (side, side, no_embed_class))
    raise ConvertError("pos_embed", why)


def block_count(state):
    indices = {int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", k) for k in state) if m}
    if not indices:
        raise ConvertError("blocks.0.attn.qkv.weight", "missing (no transformer blocks)")
    depth = max(indices) + 1
    for i in range(depth):
        if i not in indices:
            raise ConvertError("blocks.%d.attn.qkv.weight" % i, "missing (block %d of %d)"
                               % (i, depth))
    return depth


def tensor_shape(state, name, dims):
    if name not in state:
        raise ConvertError(name, "missing")
    shape = list(state[name].shape)
    if len(shape) != dims:
        raise ConvertError(name, "shape %s, not %d-D" % (shape, dims))
    return shape


def expected_shapes(d, channels, patch, positions, depth, mlp_dim, num_classes, class_token,
                    qkv_bias):
    """Every tensor of the dense vmoe model and its shape."""
    shapes = {"patch_embed.proj.weight": [d, channels, patch, patch],
              "patch_embed.proj.bias": [d], "pos_embed": [1, positions, d],
              "norm.weight": [d], "norm.bias": [d],
              "head.weight": [num_classes, d], "head.bias": [num_classes]}
    if class_token:
        shapes["cls_token"] = [1, 1, d]
    for i in range(depth):
        b = "blocks.%d." % i
        shapes.update({b + "norm1.weight": [d], b + "norm1.bias": [d],
                       b + "attn.qkv.weight": [3 * d, d], b + "attn.proj.weight": [d, d],
                       b + "attn.proj.bias": [d], b + "norm2.weight": [d], b + "norm2.bias": [d],
                       b + "mlp.fc1.weight": [mlp_dim, d], b + "mlp.fc1.bias": [mlp_dim],
                       b + "mlp.fc2.weight": [d, mlp_dim], b + "mlp.fc2.bias": [d]})
        if qkv_bias:
            shapes[b + "attn.qkv.bias"] = [3 * d]
    return shapes


def infer_config(state, args):
    """The vmoe config that the weights determine, args filling in the
    rest.  Checks every tensor's shape against it and adds the biases that a
    checkpoint may leave out as zeros (which is what no bias computes)."""
    d, channels, ph, pw = tensor_shape(state, "patch_embed.proj.weight", 4)
    if ph != pw:
        raise ConvertError("patch_embed.proj.weight", "non-square patch %dx%d (the vmoe "
                           "model's patches are square)" % (ph, pw))
    if channels not in (1, 3):
        raise ConvertError("patch_embed.proj.weight", "%d input channels (1 or 3)" % channels)
    class_token = "cls_token" in state
    positions = tensor_shape(state, "pos_embed", 3)[1]
    grid = image_grid(positions, ph, args.image_size, class_token)
    depth = block_count(state)
    mlp_dim = tensor_shape(state, "blocks.0.mlp.fc1.weight", 2)[0]
    if "head.weight" not in state:
        raise ConvertError("head.weight", "missing (a checkpoint without its classifier head, "
                           "num_classes=0, has no logits to convert)")
    num_classes = tensor_shape(state, "head.weight", 2)[0]
    qkv_bias = any(k.endswith("attn.qkv.bias") for k in state)
    expected = expected_shapes(d, channels, ph, positions, depth, mlp_dim, num_classes,
                               class_token, qkv_bias)
    for name in state:
        if name not in expected:
            raise ConvertError(name, "not part of a plain %d-block ViT" % depth)
    for name, shape in expected.items():
        if name not in state and name.endswith(".bias"):
            state[name] = torch.zeros(shape)
        elif name not in state:
            raise ConvertError(name, "missing")
        elif list(state[name].shape) != shape:
            raise ConvertError(name, "shape %s, expected %s" % (list(state[name].shape), shape))

    heads, standard = args.num_heads, None
    if heads is None:
        heads, standard = STANDARD_HEADS.get((d, depth, mlp_dim), (None, None))
        if heads is None:
            raise ConvertError("--num-heads", "required: no tensor's shape holds the head "
                               "count, and width %d, depth %d, MLP %d is no published ViT size"
                               % (d, depth, mlp_dim))
    if heads < 1 or d % heads:
        raise ConvertError("--num-heads", "%d does not divide the width %d" % (heads, d))
    pool = args.pool or ("token" if class_token else "avg")
    if pool == "token" and not class_token:
        raise ConvertError("cls_token", "missing, so --pool token has no token to pool")
    if channels == 1 and not (args.mean and args.std):
        raise ConvertError("patch_embed.proj.weight", "1 input channel, and ImageNet's mean "
                           "and std are per RGB channel: give --mean and --std")
    mean, std = args.mean or IMAGENET_MEAN, args.std or IMAGENET_STD
    for option, values in (("--mean", mean), ("--std", std)):
        if len(values) != channels:
            raise ConvertError(option, "%d values for %d channels" % (len(values), channels))
        if not all(math.isfinite(v) for v in values) or (option == "--std" and min(values) <= 0):
            raise ConvertError(option, "%s: must be finite%s" % (
                values, ", and above 0" if option == "--std" else ""))
    config = {
        "format": "vmoe", "version": 1,
        "image_size": [grid[0] * ph, grid[1] * ph], "patch_size": ph, "in_channels": channels,
        "embed_dim": d, "depth": depth, "num_heads": heads, "mlp_dim": mlp_dim,
        "num_classes": num_classes, "qkv_bias": qkv_bias,
        # Both sources' ViTs use LayerNorm(eps=1e-6) and the exact GELU.
        "norm_eps": 1e-6, "act": "gelu", "class_token": class_token, "pool": pool,
        "mean": mean, "std": std, "resize": "bilinear", "crop_pct": args.crop_pct,
        "aspect": "crop",
    }
    return config, standard


def read_labels(args, num_classes):
    """--labels (one per line), torchvision's ImageNet list for a
    1000-class head, or None (the format's default "class N")."""
    if args.labels:
        try:
            with open(args.labels, encoding="utf-8") as f:
                labels = f.read().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConvertError("--labels", "%s: %s" % (args.labels, e)) from None
        while labels and not labels[-1].strip():
            labels.pop()
        if len(labels) != num_classes:
            raise ConvertError("--labels", "%s has %d labels for the head's %d classes"
                               % (args.labels, len(labels), num_classes))
        return labels
    if num_classes == 1000:
        try:
            from torchvision.models._meta import _IMAGENET_CATEGORIES
        except ImportError:
            raise ConvertError("head.weight", "1000 classes: give --labels, or install "
                               "python3-torchvision for its ImageNet list") from None
        return list(_IMAGENET_CATEGORIES)
    return None


def check_finite(state, dtype):
    """Every weight finite, as read and once rounded to dtype (F16 tops
    out at 65504): the engine refuses a non-finite weight at load."""
    for name, t in state.items():
        checks = [(t, "")]
        if dtype != "F32":
            checks.append((t.to(vmoe_torch._DTYPES[dtype]), " once rounded to " + dtype))
        for values, after in checks:
            if not torch.isfinite(values).all():
                index = [int(i) for i in (~torch.isfinite(values)).nonzero()[0]]
                raise ConvertError(name, "%s at %s%s" % (
                    float(t[tuple(index)]), index, after))


def convert(args):
    """Reads args.src, writes args.out; returns a one-line summary."""
    state = read_checkpoint(args.src)
    source = args.source or detect_source(state)
    try:
        if source == "torchvision":
            state = torchvision_to_timm(state)
        else:
            refuse_timm_variants(state)
        config, standard = infer_config(state, args)
        labels = read_labels(args, config["num_classes"])
        check_finite(state, args.dtype)
    except ConvertError as e:
        # Name the tensor as the checkpoint does.
        if source == "torchvision":
            original = rename(e.what, [(b, a) for a, b in TORCHVISION_NAMES])
            if original:
                raise ConvertError(original, e.why) from None
        raise
    if labels is not None:
        config["labels"] = labels
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise ConvertError(args.out, "no folder %s" % out_dir)
    # A partial file never takes OUT's name.
    partial = args.out + ".partial"
    try:
        vmoe_torch.save_safetensors(partial, state, {"vmoe.config": json.dumps(config)}, args.dtype)
        os.replace(partial, args.out)
    except OSError as e:
        raise ConvertError(args.out, e.strerror or str(e)) from None
    h, w = config["image_size"]
    return "%s: %s ViT, %dx%d, patch %d, width %d, depth %d, %d heads%s, MLP %d, %d classes, %s" % (
        args.out, source, h, w, config["patch_size"], config["embed_dim"], config["depth"],
        config["num_heads"], " (%s)" % standard if standard else "", config["mlp_dim"],
        config["num_classes"], args.dtype)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="convert.py", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("src", help="state dict (.pth/.pt) or .safetensors")
    p.add_argument("out", help="vmoe model file to write (.safetensors)")
    p.add_argument("--source", choices=["torchvision", "timm"],
                   help="tensor naming (default: recognised from the names)")
    p.add_argument("--num-heads", type=int,
                   help="attention heads (required unless a published ViT-Ti/S/B/L/H shape)")
    p.add_argument("--labels", help="text file, one class label per line (default for a "
                   "1000-class head: torchvision's ImageNet categories)")
    p.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    p.add_argument("--image-size", type=int, nargs="+", metavar="SIDE",
                   help="H W (or one side) for a non-square grid; default: the square that "
                   "pos_embed holds")
    p.add_argument("--pool", choices=["token", "avg"],
                   help="default: token with a class token, avg without one")
    p.add_argument("--mean", type=float, nargs="+", help="per channel (default: ImageNet's)")
    p.add_argument("--std", type=float, nargs="+", help="per channel (default: ImageNet's)")
    p.add_argument("--crop-pct", type=float, default=IMAGENET_CROP_PCT,
                   help="centre-crop share (default 0.875: resize 256, crop 224)")
    args = p.parse_args(argv)
    if args.image_size and len(args.image_size) == 1:
        args.image_size = args.image_size * 2
    if args.image_size and len(args.image_size) != 2:
        p.error("--image-size takes H W or one side")
    if not 0 < args.crop_pct <= 1:
        p.error("--crop-pct must lie in (0, 1]")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        print(convert(args))
    except ConvertError as e:
        raise SystemExit("convert.py: %s" % e) from None


if __name__ == "__main__":
    main()
