"""Mobile V-MoE training: dense baseline -> super-classes -> MoE -> export
-> analysis.  Run with Debian's PyTorch:

    /usr/bin/python3 training/train.py dense --out runs/dense
    /usr/bin/python3 training/train.py superclasses --checkpoint runs/dense/checkpoint.pt \\
        --experts 4 --out runs/superclasses.json
    /usr/bin/python3 training/train.py moe --init runs/dense/checkpoint.pt \\
        --superclasses runs/superclasses.json --out runs/moe
    /usr/bin/python3 training/train.py export --checkpoint runs/moe/checkpoint.pt \\
        --out models/fashion-vmoe.safetensors
    /usr/bin/python3 training/train.py analyze --model models/fashion-vmoe.safetensors \\
        --out runs/analysis

Multi-process training runs through PyTorch's own engine, e.g.
`torchrun --standalone --nproc_per_node 2 --redirects 1 --tee 1
training/train.py dense ...` (gloo on CPU; docs/training.md says why the
--redirects/--tee flags are needed with Debian's torch on Python 3.11).
Every command documents its options with --help; docs/training.md explains
the recipe and its choices.
"""

import argparse
import copy
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import calibration  # noqa: E402
import data  # noqa: E402
import vmoe_torch  # noqa: E402

# The default architecture for Fashion-MNIST: 28x28 gray, patch 4 (49
# patches + class token), 6 blocks of width 64.
FASHION_ARCH = {
    "image_size": [28, 28], "patch_size": 4, "in_channels": 1, "embed_dim": 64,
    "depth": 6, "num_heads": 4, "mlp_dim": 128, "qkv_bias": True, "norm_eps": 1e-6,
    "act": "gelu", "class_token": True, "pool": "token",
    # Fashion-MNIST training-set statistics.
    "mean": [0.2860], "std": [0.3530], "resize": "bilinear", "crop_pct": 1.0,
}


# ----------------------------------------------------------------- helpers

def world():
    """(rank, size) under torchrun, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup_distributed():
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")


def log(*args):
    if world()[0] == 0:
        print(*args, flush=True)


def load_dataset(args):
    """(train_x, train_y, holdout_x, holdout_y, test_x, test_y, labels),
    images as data.Frames.  For an image folder, a new model's `aspect`
    (args.aspect) is resolved here, from the images' sizes."""
    if args.data == "fashion-mnist":
        train_x, train_y, test_x, test_y = data.fashion_mnist(args.data_root)
        train_x, test_x = data.Frames(train_x), data.Frames(test_x)
        labels = data.FASHION_LABELS
    else:
        x, y, labels = data.image_folder(args.data)
        if hasattr(args, "aspect") and args.aspect is None and not args.init:
            choose_folder_aspect(args, x, labels)
        # Users' folders have no test split: hold out a second stratified slice.
        rest, test = data.stratified_split(y, per_class=max(1, len(y) // (10 * len(labels))),
                                           seed=data.SPLIT_SEED + 1)
        train_x, train_y, test_x, test_y = x[rest], y[rest], x[test], y[test]
    tr, ho = data.stratified_split(train_y)
    return (train_x[tr], train_y[tr], train_x[ho], train_y[ho], test_x, test_y, labels)


def choose_folder_aspect(args, frames, labels):
    """Sets args.aspect for a new model on an image folder by
    data.default_aspect's rule, unless the --arch file names one."""
    arch = architecture(args)
    if "aspect" in arch:
        return
    size = vmoe_torch.complete_config(dict(arch, num_classes=len(labels)))["image_size"]
    args.aspect, why = data.default_aspect(frames.sizes, size)
    log("aspect: %s (%s; --aspect overrides)" % (args.aspect, why))


def model_device(model):
    return next(model.parameters()).device


def evaluate(model, images, labels, config, batch=500):
    """Accuracy, predictions, the image-routing experts (member 0's with
    E3; or None) and the log-probabilities [N, K]."""
    model.eval()
    device = model_device(model)
    preds, experts, log_probs = [], [], []
    inputs = images.model_input(config)
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            logits, routing = model(inputs[i:i + batch].to(device))
            preds.append(logits.argmax(-1).cpu())
            log_probs.append(logits.log_softmax(-1).cpu())
            if "experts" in routing:
                experts.append(routing["experts"][:, 0].cpu())
    preds = torch.cat(preds).numpy()
    acc = float((preds == labels).mean())
    return (acc, preds, (torch.cat(experts).numpy() if experts else None),
            torch.cat(log_probs).double().numpy())


def lr_at(step, total, warmup, peak):
    """Linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def router_aux_loss(routing):
    """V-MoE's auxiliary losses (importance and load) summed over the
    layers that recorded them."""
    losses = routing.get("aux_losses", [])
    return sum(losses) if losses else torch.zeros(())


def classification_loss(logits, routing, labels, label_smoothing):
    """Cross-entropy of the logits; with E3, the mean of each member's own
    cross-entropy on its logits, as Allingham et al. train them (a loss on
    the ensemble's averaged prediction would let the members co-adapt)."""
    if "member_logits" not in routing:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    member_logits = routing["member_logits"]                      # [N, M, K]
    members = member_logits.shape[1]
    return F.cross_entropy(member_logits.reshape(-1, member_logits.shape[-1]),
                           labels.repeat_interleave(members), label_smoothing=label_smoothing)


def superclass_router_loss(routing, superclasses, members):
    """Mobile V-MoE's router cross-entropy against each image's super-class
    [N].  With E3 member m's router probabilities are over its own
    partition, whose local expert s (global m*S + s) serves super-class s,
    so every member has the same target; the loss is their mean."""
    probs = routing["router_probs"][0].reshape(len(superclasses) * members, -1)
    return F.nll_loss(torch.log(probs.clamp_min(1e-9)),
                      superclasses.repeat_interleave(members))


def train(model, args, dataset, superclass_of=None):
    """The training loop shared by `dense` and `moe`.  superclass_of maps a
    class to its super-class: the router's cross-entropy target."""
    train_x, train_y, hold_x, hold_y = dataset[:4]
    rank, size = world()
    config = model.config
    model.to(torch.device(args.device))
    net = model
    if size > 1:
        # Experts that no image of a batch chose get no gradient.
        net = torch.nn.parallel.DistributedDataParallel(
            model, find_unused_parameters=model.config["moe"] is not None)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1 or "pos_embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    per_rank = args.batch // size
    steps_per_epoch = len(train_x) // args.batch
    if steps_per_epoch == 0:
        raise SystemExit("%d training images, fewer than one batch (--batch %d)"
                         % (len(train_x), args.batch))
    total = steps_per_epoch * args.epochs
    if args.steps:
        total = min(total, args.steps)
    warmup = min(int(args.warmup_epochs * steps_per_epoch), max(1, total // 5))
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    device = model_device(model)
    target_map = torch.tensor(superclass_of, device=device) if superclass_of is not None else None
    history, step, start = [], 0, time.time()
    inputs = train_x.model_input(config)
    epoch = 0
    while step < total:
        order = np.random.default_rng(args.seed + epoch).permutation(len(train_x))
        model.train()
        seen, running = 0, 0.0
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = order[b * args.batch + rank * per_rank:b * args.batch + (rank + 1) * per_rank]
            x = data.augment(inputs[torch.from_numpy(idx)], gen, erase=args.erase).to(device)
            y = torch.from_numpy(train_y[idx]).to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, total, warmup, args.lr)
            logits, routing = net(x)
            loss = classification_loss(logits, routing, y, args.label_smoothing)
            if target_map is not None and routing["router_probs"]:
                loss = loss + args.router_weight * superclass_router_loss(
                    routing, target_map[y], model.members)
            loss = loss + args.aux_weight * router_aux_loss(routing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            seen += len(idx)
            running += float(loss) * len(idx)
        acc, *_ = evaluate(model, hold_x, hold_y, config)
        history.append({"epoch": epoch + 1, "step": step, "loss": running / max(seen, 1),
                        "holdout_acc": acc, "minutes": (time.time() - start) / 60})
        log("epoch %d step %d/%d loss %.4f holdout %.4f (%.1f min)" % (
            epoch + 1, step, total, running / max(seen, 1), acc, (time.time() - start) / 60))
        epoch += 1
    return history


def save_checkpoint(path, model, extra):
    if world()[0] != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(dict(extra, config=model.config, state=state), path)


def load_checkpoint(path):
    """A training checkpoint (.pt) or an exported model file (.safetensors)."""
    if path.endswith(".safetensors"):
        return vmoe_torch.load_model(path), {}
    ckpt = torch.load(path, map_location="cpu")
    model = vmoe_torch.VisionMoE(ckpt["config"])
    model.load_state_dict(ckpt["state"])
    return model, ckpt


def finish(args, model, dataset, history, extra=None):
    """Test accuracy, NLL and ECE, checkpoint and exported model file of a
    training run."""
    test_x, test_y = dataset[4], dataset[5]
    acc, _, _, log_probs = evaluate(model, test_x, test_y, model.config)
    nll = calibration.negative_log_likelihood(log_probs, test_y)
    ece = calibration.expected_calibration_error(np.exp(log_probs), test_y)
    log("test accuracy %.4f, NLL %.4f, ECE %.4f" % (acc, nll, ece))
    if world()[0] == 0:
        os.makedirs(args.out, exist_ok=True)
        summary = {"test_acc": acc, "test_nll": nll, "test_ece": ece, "history": history,
                   "args": {k: v for k, v in vars(args).items() if k != "func"}}
        summary.update(extra or {})
        with open(os.path.join(args.out, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        save_checkpoint(os.path.join(args.out, "checkpoint.pt"), model, {"summary": summary})
        vmoe_torch.save_model(model, os.path.join(args.out, "model.safetensors"))
    return acc


# ---------------------------------------------------------------- commands

def architecture(args):
    """FASHION_ARCH with the --arch file's overrides; a command that starts
    from a model (--init, --checkpoint, --model) has that model's, which
    its weights fix (a converted ViT's image size and channels)."""
    arch = dict(FASHION_ARCH)
    if getattr(args, "arch", None):
        with open(args.arch) as f:
            arch.update(json.load(f))
    start = getattr(args, "init", None) or getattr(args, "checkpoint", None) \
        or getattr(args, "model", None)
    if start:
        arch.update(load_checkpoint(start)[0].config)
    return arch


def fit_head(model, labels):
    """A model started from another keeps its head only for the same
    labels; otherwise (a converted ImageNet ViT on the user's image folder)
    it gets a new zero head for labels, as ViT fine-tuning does."""
    if list(model.config["labels"]) == list(labels):
        return
    model.head = torch.nn.Linear(model.config["embed_dim"], len(labels))
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    log("new head: %d classes instead of the model's %d"
        % (len(labels), model.config["num_classes"]))
    model.config.update(num_classes=len(labels), labels=list(labels))


def base_config(args, labels):
    """The dense configuration: the architecture, the labels, and --aspect
    (or the one load_dataset chose for an image folder)."""
    config = dict(architecture(args), format="vmoe", version=1, num_classes=len(labels),
                  labels=list(labels))
    if getattr(args, "aspect", None):
        config["aspect"] = args.aspect
    return config


def cmd_dense(args):
    dataset = load_dataset(args)
    torch.manual_seed(args.seed)
    if args.init:
        # Continuing a dense run for as many epochs as `moe` trains on top of
        # it gives the like-for-like baseline of the comparison table.
        model, _ = load_checkpoint(args.init)
        if model.config.get("moe"):
            raise SystemExit("dense --init needs a dense model, not a MoE")
        fit_head(model, dataset[6])
        if args.aspect:
            model.config["aspect"] = args.aspect
    else:
        model = vmoe_torch.VisionMoE(base_config(args, dataset[6]))
    log("dense: %d parameters, %d training images" % (
        sum(p.numel() for p in model.parameters()), len(dataset[0])))
    history = train(model, args, dataset)
    finish(args, model, dataset, history)


def spectral_clusters(affinity, k, seed=0):
    """Normalised spectral clustering (Ng, Jordan & Weiss): the k smallest
    eigenvectors of the normalised Laplacian, rows scaled to unit length,
    then k-means with restarts.  Returns a cluster id per node."""
    from scipy.cluster.vq import kmeans2
    a = np.asarray(affinity, dtype=np.float64)
    d = a.sum(1)
    d_inv = np.where(d > 0, 1 / np.sqrt(np.maximum(d, 1e-12)), 0.0)
    lap = np.eye(len(a)) - d_inv[:, None] * a * d_inv[None, :]
    _, vecs = np.linalg.eigh(lap)
    u = vecs[:, :k]
    u = u / np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    best, best_cost = None, np.inf
    rng = np.random.default_rng(seed)
    for _ in range(50):
        centroids, labels = kmeans2(u, k, minit="++", seed=int(rng.integers(1 << 31)))
        if len(np.unique(labels)) < k:
            continue
        cost = ((u - centroids[labels]) ** 2).sum()
        if cost < best_cost:
            best, best_cost = labels, cost
    if best is None:
        raise SystemExit("spectral clustering found no %d non-empty clusters" % k)
    # Number clusters by their smallest class so the result is canonical.
    order = sorted(range(k), key=lambda c: np.flatnonzero(best == c).min())
    return np.array([order.index(c) for c in best])


def cmd_superclasses(args):
    dataset = load_dataset(args)
    model, _ = load_checkpoint(args.checkpoint)
    labels = model.config["labels"]
    k = len(labels)
    acc, preds, *_ = evaluate(model, dataset[2], dataset[3], model.config)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (dataset[3], preds), 1)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    affinity = (rates + rates.T) / 2
    np.fill_diagonal(affinity, 0)
    clusters = spectral_clusters(affinity, args.experts, args.seed)
    superclasses = []
    for c in range(args.experts):
        members = [int(i) for i in np.flatnonzero(clusters == c)]
        superclasses.append({"name": "+".join(labels[i] for i in members),
                             "classes": members})
    result = {"superclasses": superclasses, "holdout_acc": acc,
              "confusion": confusion.tolist(), "algorithm": "normalised spectral clustering "
              "of the symmetrised confusion-rate graph"}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    for s in superclasses:
        log("super-class: %s" % s["name"])


# The figures of `table`: summary.json key, caption, scale and format for printing.
TABLE_METRICS = (("test_acc", "test accuracy (%)", 100, "%.2f"),
                 ("test_nll", "test NLL (nats)", 1, "%.4f"),
                 ("test_ece", "test ECE, 15 bins (%)", 100, "%.2f"))


def cmd_table(args):
    """Mean and spread of test accuracy, NLL and ECE per kind of run (dense,
    dense-cont, moe, e3, ...) over the seeds found in args.runs, as Markdown
    tables (NLL and ECE for the runs whose summaries have them)."""
    found = {}
    for name in sorted(os.listdir(args.runs)):
        path = os.path.join(args.runs, name, "summary.json")
        kind, sep, seed = name.rpartition("-s")
        if not sep or not seed.isdigit() or not os.path.exists(path):
            continue
        with open(path) as f:
            summary = json.load(f)
        summary["minutes"] = summary["history"][-1]["minutes"] if summary["history"] else 0.0
        found.setdefault(kind, {})[int(seed)] = summary
    if not found:
        raise SystemExit("no <kind>-s<seed>/summary.json under %s" % args.runs)
    seeds = sorted({s for runs in found.values() for s in runs})
    table = {kind: {"minutes": {str(s): runs[s]["minutes"] for s in runs}}
             for kind, runs in found.items()}
    for key, caption, scale, fmt in TABLE_METRICS:
        rows = {kind: {s: r[key] for s, r in runs.items() if key in r}
                for kind, runs in found.items()}
        rows = {kind: values for kind, values in rows.items() if values}
        if not rows:
            continue
        if key != "test_acc":
            print("\n%s:\n" % caption)
        print("| run | " + " | ".join("seed %d" % s for s in seeds) + " | mean | std |")
        print("| --- |" + " ---: |" * (len(seeds) + 2))
        for kind, values in rows.items():
            shown = np.array([values[s] for s in seeds if s in values]) * scale
            cells = [fmt % (values[s] * scale) if s in values else "-" for s in seeds]
            std = shown.std(ddof=1) if len(shown) > 1 else 0.0
            print("| %s | %s | %s | %s |" % (kind, " | ".join(cells), fmt % shown.mean(),
                                              fmt % std))
            figures = {"seeds": {str(s): v for s, v in values.items()},
                       "mean": shown.mean() / scale, "std": std / scale}
            if key == "test_acc":
                table[kind].update(figures)
            else:
                table[kind][key[len("test_"):]] = figures
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)


def moe_config(dense_config, args, superclasses):
    """The MoE configuration.  With super-classes there are as many experts
    per ensemble member as super-classes: expert m*S + s serves super-class
    s in member m (docs/design.md, Ensembles of expert paths)."""
    config = copy.deepcopy(dense_config)
    depth = config["depth"]
    layers = [int(v) for v in args.layers.split(",")] if args.layers else [depth - 2, depth - 1]
    members = args.ensemble
    experts = len(superclasses) * members if superclasses else args.experts
    if members < 1 or experts % members:
        raise SystemExit("--ensemble %d must be at least 1 and divide the %d experts"
                         % (members, experts))
    if not 1 <= args.top_k <= experts // members:
        raise SystemExit("--top-k %d must be within 1..%d, the experts of one member"
                         % (args.top_k, experts // members))
    if args.aspect:
        config["aspect"] = args.aspect
    moe = {"layers": layers, "num_experts": experts, "top_k": args.top_k,
           "routing": args.routing, "router_input": "cls", "normalize_gates": False,
           "expert_mlp_dim": config["mlp_dim"], "shared_expert": args.shared,
           "capacity_ratio": args.capacity_ratio, "bpr": True, "ensemble_members": members}
    if superclasses:
        moe["superclasses"] = superclasses * members
    config["moe"] = moe
    return config


def init_from_dense(model, dense_state, noise, generator):
    """Copies the dense weights; each expert of an MoE block starts as that
    block's dense MLP (plus a little noise so that experts can diverge), and
    a shared expert starts as the MLP too."""
    state = model.state_dict()
    for name in state:
        if name in dense_state:
            state[name] = dense_state[name].clone()
            continue
        parts = name.split(".")
        if len(parts) > 3 and parts[2] == "moe" and parts[3] in ("experts", "shared"):
            tail = parts[5:] if parts[3] == "experts" else parts[4:]
            source = ".".join(parts[:2] + ["mlp"] + tail)
            w = dense_state[source].clone()
            state[name] = w + noise * w.std() * torch.randn(w.shape, generator=generator) \
                if w.dim() > 1 else w
    model.load_state_dict(state)


def cmd_moe(args):
    dataset = load_dataset(args)
    superclasses = None
    if args.superclasses:
        superclasses = json.load(open(args.superclasses))["superclasses"]
    if args.init:
        dense, _ = load_checkpoint(args.init)
        fit_head(dense, dataset[6])
        base = dense.config
    else:
        base = base_config(args, dataset[6])
    config = moe_config({k: v for k, v in base.items() if k != "moe"}, args, superclasses)
    torch.manual_seed(args.seed)
    model = vmoe_torch.VisionMoE(config)
    if args.init:
        init_from_dense(model, dense.state_dict(), 0.01,
                        torch.Generator().manual_seed(args.seed))
    if args.routing == "token":
        # V-MoE's 1/E, E being the experts one softmax is over (a member's).
        model.router_noise = args.ensemble / config["moe"]["num_experts"]
    superclass_of = None
    if superclasses and args.routing == "image" and args.router_weight > 0:
        superclass_of = [0] * config["num_classes"]
        for e, s in enumerate(superclasses):
            for c in s["classes"]:
                superclass_of[c] = e
    log("moe (%s routing, %d experts, %d ensemble members): %d parameters" % (
        args.routing, config["moe"]["num_experts"], args.ensemble,
        sum(p.numel() for p in model.parameters())))
    history = train(model, args, dataset, superclass_of)
    finish(args, model, dataset, history)


def cmd_export(args):
    model, _ = load_checkpoint(args.checkpoint)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    vmoe_torch.save_model(model, args.out, args.dtype)
    log("wrote %s" % args.out)


def cmd_analyze(args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    dataset = load_dataset(args)
    test_x, test_y = dataset[4], dataset[5]
    model = vmoe_torch.load_model(args.model).eval()
    c = model.config
    labels, k = c["labels"], c["num_classes"]
    os.makedirs(args.out, exist_ok=True)
    preds, heat = [], None
    moe = c["moe"]
    inputs = test_x.model_input(c)
    with torch.inference_mode():
        for i in range(0, len(test_x), 500):
            x = inputs[i:i + 500]
            y = test_y[i:i + 500]
            logits, routing = model(x)
            preds.append(logits.argmax(-1).numpy())
            if not moe:
                continue
            e_count = moe["num_experts"]
            if heat is None:
                heat = np.zeros((len(moe["layers"]), e_count, k))
            for layer in range(len(moe["layers"])):
                if moe["routing"] == "image":
                    for j in range(routing["experts"].shape[1]):
                        np.add.at(heat[layer], (routing["experts"][:, j].numpy(), y), 1)
                else:
                    # tokens each image sent to each expert (top-1 choice)
                    top = routing["router_probs"][layer].argmax(-1).numpy()   # [N, T]
                    for n in range(len(y)):
                        np.add.at(heat[layer], (top[n], np.full(top.shape[1], y[n])), 1)
    preds = np.concatenate(preds)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (test_y, preds), 1)
    report = {"model": args.model, "test_acc": float((preds == test_y).mean()),
              "confusion": confusion.tolist()}

    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(confusion / confusion.sum(1, keepdims=True), cmap="Blues")
    ax.set_xticks(range(k), labels, rotation=60, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion (test, accuracy %.2f%%)" % (100 * report["test_acc"]))
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "confusion.png"), dpi=100)
    plt.close(fig)

    if moe:
        report["expert_class_counts"] = heat.tolist()
        names = [s["name"] for s in moe.get("superclasses", [])] or \
            ["expert %d" % e for e in range(moe["num_experts"])]
        for layer, block in enumerate(moe["layers"]):
            fig, ax = plt.subplots(figsize=(8, 1.2 + 0.5 * moe["num_experts"]))
            share = heat[layer] / np.maximum(heat[layer].sum(0, keepdims=True), 1)
            ax.imshow(share, cmap="viridis", aspect="auto", vmin=0, vmax=1)
            ax.set_xticks(range(k), labels, rotation=60, ha="right")
            ax.set_yticks(range(moe["num_experts"]), names)
            ax.set_title("block %d: share of each class routed to each expert" % block)
            fig.tight_layout()
            fig.savefig(os.path.join(args.out, "experts_block%d.png" % block), dpi=100)
            plt.close(fig)
        if moe["routing"] == "image" and moe.get("superclasses"):
            # With E3 every member has an expert of the class's super-class.
            own = {}
            for e, s in enumerate(moe["superclasses"]):
                for cl in s["classes"]:
                    own.setdefault(cl, []).append(e)
            routed = heat[0]
            hits = sum(routed[own[cl], cl].sum() for cl in range(k))
            report["routed_to_own_superclass"] = float(hits / routed.sum())
            report["per_class_own_superclass"] = {
                labels[cl]: float(routed[own[cl], cl].sum() / max(routed[:, cl].sum(), 1))
                for cl in range(k)}
            report["images_per_expert"] = routed.sum(1).tolist()
    with open(os.path.join(args.out, "analysis.json"), "w") as f:
        json.dump(report, f, indent=1)
    log(json.dumps({key: v for key, v in report.items()
                    if key in ("test_acc", "routed_to_own_superclass")}))


# -------------------------------------------------------------------- main

def add_data_options(p):
    p.add_argument("--data", default="fashion-mnist",
                   help="fashion-mnist (Debian's dataset-fashion-mnist) or an image folder "
                        "with one sub-folder per class")
    p.add_argument("--data-root", default=data.FASHION_ROOT)


def add_train_options(p, epochs, lr):
    add_data_options(p)
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--arch", help="JSON file overriding the architecture keys")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--steps", type=int, default=0, help="stop after this many steps (smoke)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--erase", type=float, default=0.25, help="random-erasing probability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--device", default="cpu",
                   help="torch device to train on, e.g. cuda (data stays on the CPU)")
    p.add_argument("--aspect", choices=["crop", "stretch"],
                   help="how the model fits frames of another shape (docs/training.md); "
                        "default for an image folder: stretch if all images share one "
                        "aspect ratio other than the model's, else crop; with --init, the "
                        "model's own")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("dense", help="train the dense ViT baseline")
    add_train_options(p, epochs=30, lr=2e-3)
    p.add_argument("--init", help="dense checkpoint.pt or model file to continue from")
    p.set_defaults(func=cmd_dense, router_weight=0.0, aux_weight=0.0)

    p = sub.add_parser("table", help="test accuracies of seeded runs, with means")
    p.add_argument("runs", help="directory holding <kind>-s<seed>/summary.json runs")
    p.add_argument("--out", help="also write the table as JSON here")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("superclasses", help="cluster the dense model's confusions")
    add_data_options(p)
    p.add_argument("--checkpoint", required=True, help="dense checkpoint.pt or model file")
    p.add_argument("--experts", type=int, default=4, help="super-classes (= experts)")
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--arch")
    p.set_defaults(func=cmd_superclasses)

    p = sub.add_parser("moe", help="train the MoE (Mobile V-MoE by default)")
    add_train_options(p, epochs=30, lr=2e-3)
    p.add_argument("--init", help="dense checkpoint.pt or model file to initialise from")
    p.add_argument("--superclasses", help="JSON from the superclasses command")
    p.add_argument("--routing", choices=["image", "token"], default="image")
    p.add_argument("--experts", type=int, default=4, help="experts without --superclasses")
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--layers", help="MoE blocks, comma-separated (default: the last 2)")
    p.add_argument("--shared", action="store_true", help="add a ViMoE shared expert")
    p.add_argument("--capacity-ratio", type=float, default=1.0)
    p.add_argument("--router-weight", type=float, default=0.3,
                   help="weight of the router's super-class cross-entropy (lambda)")
    p.add_argument("--aux-weight", type=float, default=0.01,
                   help="weight of V-MoE's importance and load losses (token routing)")
    p.add_argument("--ensemble", type=int, default=1, metavar="M",
                   help="E3 ensemble members, each with its own experts (with "
                        "--superclasses: M x super-classes experts; else --experts "
                        "counts all members' experts)")
    p.set_defaults(func=cmd_moe)

    p = sub.add_parser("export", help="write a checkpoint as a vmoe model file")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dtype", choices=["F32", "F16", "BF16"], default="F32")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("analyze", help="heat maps, confusion matrix, routing statistics")
    add_data_options(p)
    p.add_argument("--model", required=True, help="model file (.safetensors)")
    p.add_argument("--out", required=True, help="directory for PNG and JSON")
    p.add_argument("--arch")
    p.set_defaults(func=cmd_analyze)

    args = parser.parse_args(argv)
    threads = getattr(args, "threads", 0)
    setup_distributed()
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world()[1]))
    args.func(args)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
