"""The one PyTorch definition of the docs/design.md model.

Module names are the model file's tensor names (timm's ViT naming), and the
forward pass follows docs/design.md's "The forward pass" step by step, so a state_dict
exported from here loads into the C engine unchanged and the two agree to
float32 rounding.  It serves three masters: training (training/train.py),
export, and the parity references of tests/parity.

Run with Debian's /usr/bin/python3 (python3-torch, python3-numpy).
"""

import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Defaults of optional config keys; docs/model-format.md lists the same.
CONFIG_DEFAULTS = {
    "in_channels": 3, "qkv_bias": True, "norm_eps": 1e-6, "act": "gelu",
    "class_token": True, "pool": "token", "resize": "bilinear", "crop_pct": 1.0,
    "aspect": "crop",
}
MOE_DEFAULTS = {
    "top_k": 1, "routing": "image", "router_input": "cls",
    "normalize_gates": False, "shared_expert": False, "capacity_ratio": 1.0,
    "bpr": True, "ensemble_members": 1,
}


def complete_config(config):
    """Returns config with every optional key filled in with its default."""
    c = dict(CONFIG_DEFAULTS)
    c.update(config)
    if isinstance(c["image_size"], int):
        c["image_size"] = [c["image_size"], c["image_size"]]
    ch = c["in_channels"]
    c.setdefault("mean", [0.5] * ch)
    c.setdefault("std", [0.5] * ch)
    c.setdefault("labels", ["class %d" % i for i in range(c["num_classes"])])
    if c.get("moe"):
        moe = dict(MOE_DEFAULTS)
        moe.update(c["moe"])
        moe.setdefault("expert_mlp_dim", c["mlp_dim"])
        moe["layers"] = sorted(moe["layers"])
        c["moe"] = moe
    else:
        c["moe"] = None
    return c


def token_capacity(top_k, tokens, capacity_ratio, num_experts, members=1):
    """Per-image (per member copy) expert capacity; the same expression, in
    the same order, as the C engine: a member routes among E/M experts."""
    c = math.ceil(top_k * tokens * capacity_ratio * members / num_experts)
    return int(min(max(c, 1), top_k * tokens))


def topk_stable(p, k):
    """The k largest along the last axis, ties to the lower index."""
    if torch.onnx.is_in_onnx_export():
        # ONNX has no stable sort; its TopK puts the lower index first on ties.
        return torch.topk(p, k, dim=-1)
    values, index = torch.sort(p, dim=-1, descending=True, stable=True)
    return values[..., :k], index[..., :k]


def auxiliary_loss(clean, noisy, noise_std, top_k):
    """V-MoE's importance and load losses (training only), summed.
    Importance: squared coefficient of variation of the summed gate
    probabilities per expert.  Load: the same of each expert's expected
    token count, P(e stays in the noisy top-k under fresh noise) =
    Phi((clean_e - threshold) / noise_std), the threshold being the k-th
    largest noisy logit of the other experts."""
    e = clean.shape[-1]
    clean, noisy = clean.reshape(-1, e), noisy.reshape(-1, e)
    importance = noisy.softmax(-1).sum(0)
    loss = (importance.std() / importance.mean()) ** 2
    if top_k < e:
        top = noisy.topk(top_k + 1, dim=-1).values
        kth, next_kth = top[:, top_k - 1:top_k], top[:, top_k:top_k + 1]
        threshold = torch.where(noisy >= kth, next_kth, kth)
        normal = torch.distributions.Normal(0.0, 1.0)
        load = normal.cdf((clean - threshold) / noise_std).sum(0)
        loss = loss + (load.std() / load.mean()) ** 2
    return loss


class Mlp(nn.Module):
    def __init__(self, dim, hidden, act):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.approximate = "tanh" if act == "gelu_tanh" else "none"

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, t, d = x.shape
        # qkv rows: q for all heads, then k, then v; head h owns Dh columns.
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class PatchEmbed(nn.Module):
    def __init__(self, channels, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class MoE(nn.Module):
    """The experts of one MoE block, with a router of its own for token
    routing and an optional shared expert (ViMoE)."""

    def __init__(self, c):
        super().__init__()
        moe = c["moe"]
        d, e = c["embed_dim"], moe["num_experts"]
        self.experts = nn.ModuleList(
            Mlp(d, moe["expert_mlp_dim"], c["act"]) for _ in range(e))
        if moe["routing"] == "token":
            self.router = nn.Linear(d, e)
        if moe["shared_expert"]:
            # docs/design.md: the shared expert has the dense MLP's shape.
            self.shared = Mlp(d, c["mlp_dim"], c["act"])

    def combine(self, z, rows, weights, expert):
        """Adds weights x expert(z[rows]) into a zero tensor shaped like z
        flattened to rows; rows index z.reshape(-1, D)."""
        flat = z.reshape(-1, z.shape[-1])
        out = torch.zeros_like(flat)
        for e, mlp in enumerate(self.experts):
            sel = expert == e
            if sel.any():
                r = rows[sel]
                out.index_add_(0, r, weights[sel, None] * mlp(flat[r]))
        return out.reshape(z.shape)

    def forward_image(self, z, experts, gates):
        """Image routing: experts, gates are [N, k]; every token of image i
        goes through its k experts."""
        n, t, _ = z.shape
        k = experts.shape[1]
        token_rows = torch.arange(n * t, device=z.device).reshape(n, 1, t).expand(n, k, t)
        rows = token_rows.reshape(-1)
        expert = experts[:, :, None].expand(n, k, t).reshape(-1)
        weights = gates[:, :, None].expand(n, k, t).reshape(-1)
        out = self.combine(z, rows, weights, expert)
        if hasattr(self, "shared"):
            out = out + self.shared(z)
        return out

    def member_router_logits(self, z, members):
        """The router's logits restricted to each copy's partition: z is
        [N*M, T, D] with member m = row % M; returns [N*M, T, E/M], member m's
        being those of experts P_m = [m*E/M, (m+1)*E/M)."""
        if members == 1:
            return self.router(z)
        rows, t, d = z.shape
        weight = self.router.weight.reshape(members, -1, d)          # [M, E/M, D]
        bias = self.router.bias.reshape(members, 1, -1)              # [M, 1, E/M]
        zm = z.reshape(rows // members, members, t, d)
        return (torch.einsum("nmtd,med->nmte", zm, weight) + bias).reshape(rows, t, -1)

    def forward_token(self, z, top_k, capacity_ratio, bpr, router_noise=0.0, members=1):
        """Token routing (V-MoE) with per-image capacity and optional BPR.
        With E3 (members > 1) z holds M copies per image (row n*M + m) and
        copy m routes among its partition's E/M experts.  Returns the output,
        the router probabilities [N*M, T, E/M], the per-copy statistics
        tokens_per_expert [N*M, E/M] (local indices) and dropped [N*M], and
        (training with router_noise > 0 only, else None) V-MoE's auxiliary
        loss."""
        n, t, _ = z.shape
        clean = self.member_router_logits(z, members)
        logits, aux = clean, None
        if router_noise > 0:
            logits = clean + router_noise * torch.randn_like(clean)
            aux = auxiliary_loss(clean, logits, router_noise, top_k)
        probs = logits.softmax(dim=-1)
        e_count = probs.shape[-1]
        top_p, top_e = topk_stable(probs, top_k)            # [N, T, k]
        capacity = token_capacity(top_k, t, capacity_ratio, e_count * members, members)
        if bpr:
            _, order = torch.sort(top_p[..., 0], dim=1, descending=True, stable=True)
        else:
            order = torch.arange(t, device=z.device).expand(n, t)
        counts = torch.zeros(n, e_count, dtype=torch.long, device=z.device)
        keep = torch.zeros(n, t, top_k, dtype=torch.bool, device=z.device)
        for j in range(top_k):
            # Choice j of each token, in priority order.
            e_ordered = torch.gather(top_e[..., j], 1, order)          # [N, T]
            onehot = F.one_hot(e_ordered, e_count)                    # [N, T, E]
            position = counts[:, None, :] + onehot.cumsum(dim=1)      # 1-based
            taken = (position * onehot).sum(-1) <= capacity            # [N, T]
            counts = counts + (onehot * taken[..., None]).sum(dim=1)
            keep[..., j].scatter_(1, order, taken)
        dropped = (~keep).sum(dim=(1, 2))
        rows = torch.arange(n * t, device=z.device).reshape(n, t, 1).expand(n, t, top_k)
        # Local expert indices to global ones: copy m's partition starts at m*E/M.
        first = (torch.arange(n, device=z.device) % members * e_count).reshape(n, 1, 1)
        out = self.combine(z, rows[keep], top_p[keep], (top_e + first)[keep])
        if hasattr(self, "shared"):
            out = out + self.shared(z)
        return out, probs, counts, dropped, aux


class Block(nn.Module):
    def __init__(self, c, is_moe):
        super().__init__()
        d = c["embed_dim"]
        self.norm1 = nn.LayerNorm(d, eps=c["norm_eps"])
        self.attn = Attention(d, c["num_heads"], c["qkv_bias"])
        self.norm2 = nn.LayerNorm(d, eps=c["norm_eps"])
        if is_moe:
            self.moe = MoE(c)
        else:
            self.mlp = Mlp(d, c["mlp_dim"], c["act"])


class VisionMoE(nn.Module):
    """ViT with optional Mixture-of-Experts blocks (dense, Mobile V-MoE,
    V-MoE, ViMoE).  forward() returns (logits, routing), routing being a dict
    with the decisions the C engine reports."""

    def __init__(self, config):
        super().__init__()
        c = self.config = complete_config(config)
        d, p = c["embed_dim"], c["patch_size"]
        h, w = c["image_size"]
        self.num_patches = (h // p) * (w // p)
        tokens = self.num_patches + (1 if c["class_token"] else 0)
        self.patch_embed = PatchEmbed(c["in_channels"], d, p)
        if c["class_token"]:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        moe = c["moe"]
        layers = set(moe["layers"]) if moe else set()
        self.blocks = nn.ModuleList(Block(c, i in layers) for i in range(c["depth"]))
        if moe and moe["routing"] == "image":
            self.router = nn.Linear(d, moe["num_experts"])
        self.norm = nn.LayerNorm(d, eps=c["norm_eps"])
        self.head = nn.Linear(d, c["num_classes"])
        # Routing knobs that a session may override, as the C engine allows.
        self.top_k = moe["top_k"] if moe else 0
        self.capacity_ratio = moe["capacity_ratio"] if moe else 0.0
        self.router_noise = 0.0   # training only (V-MoE's noisy top-k)

    @property
    def members(self):
        """E3's ensemble members M (1: no ensemble)."""
        moe = self.config["moe"]
        return moe["ensemble_members"] if moe else 1

    def route_images(self, x):
        """Mobile V-MoE's router on the residual stream entering the first
        MoE block's FFN, evaluated once per image.  With E3, member m takes
        the softmax and top-k over its partition's E/M logits.  Returns
        router probabilities [N, E] ([N, M, E/M] with M > 1), and experts
        (global indices) and gates [N*M, k], row n*M + m for member m."""
        moe = self.config["moe"]
        m = self.members
        r = x[:, 0] if moe["router_input"] == "cls" else x.mean(dim=1)
        logits = self.router(r)
        if self.training and self.router_noise > 0:
            logits = logits + self.router_noise * torch.randn_like(logits)
        n, e = logits.shape
        probs = logits.reshape(n, m, e // m).softmax(dim=-1)
        gates, experts = topk_stable(probs, self.top_k)              # [N, M, k]
        if moe["normalize_gates"]:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        experts = experts + (torch.arange(m, device=x.device) * (e // m)).reshape(1, m, 1)
        k = gates.shape[-1]
        return (probs.reshape(n, e) if m == 1 else probs,
                experts.reshape(n * m, k), gates.reshape(n * m, k))

    def forward(self, images):
        """Returns (logits [N, K], routing).  routing holds router_probs
        (one entry per MoE block; one in all for image routing), and for
        image routing experts and gates [N, M*k] (the members' concatenated
        in member order, global indices), for token routing per MoE block
        tokens_per_expert [N, E] (member m's E/M experts at m*E/M) and
        dropped ([N], or [N, M] per member with M > 1).  With E3 (M > 1)
        the logits are log(probs), probs being the mean of the members'
        softmax, and routing adds member_logits [N, M, K], member_classes
        [N, M] (each member's top-1), entropy [N] (nats) and disagreement
        [N] (the fraction of members whose top-1 is not the ensemble's)."""
        c, moe = self.config, self.config["moe"]
        m = self.members
        x = self.patch_embed(images)
        n = x.shape[0]
        if c["class_token"]:
            x = torch.cat([self.cls_token.expand(n, -1, -1), x], dim=1)
        x = x + self.pos_embed
        routing = {"router_probs": [], "tokens_per_expert": [], "dropped": []}
        copied = False
        for block in self.blocks:
            x = x + block.attn(block.norm1(x))
            if not hasattr(block, "moe"):
                x = x + block.mlp(block.norm2(x))
                continue
            if moe["routing"] == "image" and "experts" not in routing:
                probs, routing["experts"], routing["gates"] = self.route_images(x)
                routing["router_probs"].append(probs)
            if not copied:
                # E3: the M copies are equal until the first MoE FFN, so
                # copying after the block's attention gives what copying
                # the stream entering the block would, for one attention.
                x = x.repeat_interleave(m, dim=0)                    # row n*M + m
                copied = True
            if moe["routing"] == "image":
                x = x + block.moe.forward_image(block.norm2(x), routing["experts"],
                                                routing["gates"])
            else:
                noise = self.router_noise if self.training else 0.0
                out, probs, counts, dropped, aux = block.moe.forward_token(
                    block.norm2(x), self.top_k, self.capacity_ratio, moe["bpr"], noise, m)
                x = x + out
                if aux is not None:
                    routing.setdefault("aux_losses", []).append(aux)
                if m > 1:
                    probs = probs.reshape(n, m, *probs.shape[1:])
                    dropped = dropped.reshape(n, m)
                routing["router_probs"].append(probs)
                routing["tokens_per_expert"].append(counts.reshape(n, -1))
                routing["dropped"].append(dropped)
        if c["pool"] == "token":
            pooled = self.norm(x[:, 0])
        else:
            first = 1 if c["class_token"] else 0
            pooled = self.norm(x[:, first:]).mean(dim=1)
        logits = self.head(pooled)
        if "experts" in routing:
            routing["experts"] = routing["experts"].reshape(n, -1)
            routing["gates"] = routing["gates"].reshape(n, -1)
        if m == 1:
            return logits, routing
        return ensemble_outputs(logits.reshape(n, m, -1), routing)


def ensemble_outputs(member_logits, routing):
    """E3's ensemble of member_logits [N, M, K]: log of the mean of the
    members' softmax, computed as a log-sum-exp of their log-softmax so
    that it stays finite where a probability underflows; fills routing's
    ensemble entries (see VisionMoE.forward)."""
    m = member_logits.shape[1]
    log_probs = torch.logsumexp(member_logits.log_softmax(dim=-1), dim=1) - math.log(m)
    probs = log_probs.exp()
    top1 = topk_stable(log_probs, 1)[1]                                  # [N, 1]
    member_classes = topk_stable(member_logits, 1)[1][..., 0]            # [N, M]
    routing["member_logits"] = member_logits
    routing["member_classes"] = member_classes
    routing["entropy"] = -(probs * log_probs).sum(dim=-1)
    routing["disagreement"] = (member_classes != top1).float().mean(dim=-1)
    return log_probs, routing


def clamp_region(region, h0, w0):
    """docs/design.md, Regions of interest: region (x, y, w, h) in frame
    pixels clamped to an h0 x w0 frame, as (x, y, w, h); a w or h of 0 is
    the whole frame.  ValueError for a region empty once clamped."""
    x, y, w, h = (int(v) for v in region)
    if w == 0 or h == 0:
        return 0, 0, w0, h0
    x0, x1 = min(max(x, 0), w0), min(max(x + w, 0), w0)
    y0, y1 = min(max(y, 0), h0), min(max(y + h, 0), h0)
    if x1 <= x0 or y1 <= y0:
        raise ValueError("region %r is empty once clamped to the %dx%d frame"
                         % (region, w0, h0))
    return x0, y0, x1 - x0, y1 - y0


def resize_to_model(x, config):
    """docs/design.md step 1 (resize and crop) and Aspect handling for float
    frames [N, C, h0, w0] -> [N, C, Ht, Wt]."""
    c = complete_config(config)
    ht, wt = c["image_size"]
    h0, w0 = x.shape[2:]
    if (h0, w0) == (ht, wt):
        return x
    if c["aspect"] == "stretch":
        return F.interpolate(x, size=(ht, wt), mode="bilinear", align_corners=False)
    s = max(ht / h0, wt / w0) / c["crop_pct"]
    rh = max(ht, math.floor(h0 * s + 0.5))
    rw = max(wt, math.floor(w0 * s + 0.5))
    x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False)
    top, left = (rh - ht) // 2, (rw - wt) // 2
    return x[:, :, top:top + ht, left:left + wt]


# docs/design.md step 1: the luma weights (Kr, Kb) of each YUV matrix.
YUV_MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722),
                "bt2020": (0.2627, 0.0593)}


def yuv420_to_rgb(y, u, v, yuv_matrix="bt601", yuv_range="limited"):
    """docs/design.md step 1: 8-bit planes Y [N, H, W] and U, V
    [N, ceil(H/2), ceil(W/2)] -> uint8 RGB [N, H, W, 3].  Pixel (x, y) takes
    the chroma of its 2x2 block; the float32 result is rounded half up and
    clamped to 8 bits, as the engine does."""
    if yuv_matrix not in YUV_MATRICES or yuv_range not in ("limited", "full"):
        raise ValueError("YUV matrix %r or range %r is not one of %s, limited, full"
                         % (yuv_matrix, yuv_range, ", ".join(YUV_MATRICES)))
    kr, kb = YUV_MATRICES[yuv_matrix]
    kg = 1 - kr - kb
    full = yuv_range == "full"
    y_scale, c_scale, y_offset = (1.0, 1.0, 0.0) if full else (255 / 219, 255 / 224, 16.0)
    h, w = np.shape(y)[1:]

    def f32(value):
        return torch.tensor(value, dtype=torch.float32)

    def centred_chroma(plane):
        subsampled = torch.from_numpy(np.asarray(plane, dtype=np.float32))
        return subsampled.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w] - 128

    luma = f32(y_scale) * (torch.from_numpy(np.asarray(y, dtype=np.float32)) - f32(y_offset))
    d, e = centred_chroma(u), centred_chroma(v)
    r = luma + f32(2 * (1 - kr) * c_scale) * e
    g = (luma - f32(2 * kb * (1 - kb) / kg * c_scale) * d
         - f32(2 * kr * (1 - kr) / kg * c_scale) * e)
    b = luma + f32(2 * (1 - kb) * c_scale) * d
    rgb = torch.stack([r, g, b], -1)
    return torch.where(rgb <= 0, 0.0, torch.where(rgb >= 255, 255.0, torch.floor(rgb + 0.5))
                       ).to(torch.uint8).numpy()


def preprocess_uint8(frames, config, regions=None, yuv_matrix="bt601", yuv_range="limited"):
    """docs/design.md, Step 1 for uint8 frames [N, H, W, C], or I420/NV12
    frames as planes (Y, U, V) for yuv420_to_rgb with the given encoding,
    -> float32 [N, C, Ht, Wt].  regions: None, or one (x, y, w, h) per
    frame; each clamped crop is then pre-processed as a frame of its own."""
    c = complete_config(config)
    if isinstance(frames, tuple):
        frames = yuv420_to_rgb(*frames, yuv_matrix=yuv_matrix, yuv_range=yuv_range)
    x = torch.from_numpy(np.array(frames, dtype=np.float32)) / 255.0
    x = x.permute(0, 3, 1, 2)                          # N, C, H, W
    if x.shape[1] == 4:
        x = x[:, :3]
    if c["in_channels"] == 1 and x.shape[1] == 3:
        x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    elif c["in_channels"] == 3 and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if regions is None:
        x = resize_to_model(x, c)
    else:
        h0, w0 = x.shape[2:]
        crops = []
        for i, region in enumerate(regions):
            rx, ry, rw, rh = clamp_region(region, h0, w0)
            crops.append(resize_to_model(x[i:i + 1, :, ry:ry + rh, rx:rx + rw], c))
        x = torch.cat(crops)
    mean = torch.tensor(c["mean"]).reshape(1, -1, 1, 1)
    std = torch.tensor(c["std"]).reshape(1, -1, 1, 1)
    return ((x - mean) / std).contiguous()


# ------------------------------------------------------------ safetensors

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def save_model(model, path, dtype="F32", config=None):
    """Writes model's state_dict with its config as a vmoe model file."""
    config = config if config is not None else model.config
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(path, tensors, {"vmoe.config": json.dumps(config)}, dtype)


def save_safetensors(path, tensors, metadata, dtype="F32"):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name, t in tensors.items():
        t = t.to(_DTYPES[dtype])
        raw = t.view(torch.int16).numpy().tobytes() if dtype == "BF16" else t.numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)   # data section 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in blobs:
            f.write(raw)


def load_safetensors(path):
    """Reads any safetensors file of F32, F16 or BF16 tensors: (tensors as
    float32, the __metadata__ dict).  ValueError for a file that is not
    one."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("%s: too short for a safetensors file" % path)
        n = struct.unpack("<Q", head)[0]
        if n > 100 << 20:
            raise ValueError("%s: a safetensors header of %d bytes, over 100 MB" % (path, n))
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError("%s: safetensors header is not JSON (%s)" % (path, e)) from None
        data = f.read()
    if not isinstance(header, dict):
        raise ValueError("%s: safetensors header is not a JSON object" % path)
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in header.items():
        try:
            dtype, shape, (a, b) = info["dtype"], [int(d) for d in info["shape"]], \
                info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ValueError("%s: not a safetensors tensor entry: %.200s" % (name, info)) from None
        if dtype not in _DTYPES:
            raise ValueError("%s: dtype %s (F32, F16 or BF16 are read)" % (name, dtype))
        storage = torch.int16 if dtype == "BF16" else _DTYPES[dtype]
        raw = bytearray(data[a:b])
        size = torch.empty(0, dtype=storage).element_size() * math.prod(shape)
        if not 0 <= a <= b <= len(data) or len(raw) != size:
            raise ValueError("%s: its data_offsets do not hold shape %s of %s" % (name, shape, dtype))
        t = torch.frombuffer(raw, dtype=storage) if raw else torch.zeros(0, dtype=storage)
        tensors[name] = t.view(_DTYPES[dtype]).float().reshape(shape)
    return tensors, metadata


def load_model(path):
    """Reads a vmoe model file back into a VisionMoE (weights as float32)."""
    state, metadata = load_safetensors(path)
    config = json.loads(metadata["vmoe.config"])
    model = VisionMoE(config)
    model.load_state_dict(state)
    return model
