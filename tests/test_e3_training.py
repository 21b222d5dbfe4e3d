"""E3 training and its evaluation figures (training/train.py moe --ensemble,
training/calibration.py), against hand-derived values and explicit loops.

    /usr/bin/python3 tests/test_e3_training.py SOURCE_DIR
"""
import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(sys.argv[1] if len(sys.argv) > 1 else
                                os.path.join(os.path.dirname(__file__), ".."), "training"))
import calibration  # noqa: E402
import train  # noqa: E402
import vmoe_torch  # noqa: E402

failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL:", what)


def close(a, b, tol=1e-9):
    return abs(a - b) <= tol * max(1.0, abs(b))


def test_calibration():
    # Confidences 0.9 (right), 0.6 (wrong), 0.8 (right) fall in three bins
    # of width 1/15: (|1 - 0.9| + |0 - 0.6| + |1 - 0.8|) / 3 = 0.3.
    probs = [[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]
    ece = calibration.expected_calibration_error(probs, [0, 1, 1])
    check(close(ece, 0.3), "ECE of three bins: %r, want 0.3" % ece)
    # One bin (14/15, 1] holding 0.95 (right) and 0.97 (wrong): the bin's
    # accuracy 0.5 against its mean confidence 0.96, not image by image.
    ece = calibration.expected_calibration_error([[0.95, 0.05], [0.03, 0.97]], [0, 0])
    check(close(ece, 0.46), "ECE within one bin: %r, want 0.46" % ece)
    # Calibrated: 10 images at confidence 0.8, 8 right.
    probs = np.tile([0.8, 0.2], (10, 1))
    ece = calibration.expected_calibration_error(probs, [0] * 8 + [1] * 2)
    check(close(ece, 0.0), "ECE of a calibrated set: %r, want 0" % ece)
    # A tie predicts the lower index (as the engine's top-k): 0.5 right.
    ece = calibration.expected_calibration_error([[0.5, 0.5]], [0])
    check(close(ece, 0.5), "ECE of a tie: %r, want 0.5" % ece)
    # Confidence exactly 8/15 belongs to the bin it closes, (7/15, 8/15], so
    # it does not share a bin with 0.54 (wrong: a tie-free argmax of 0).
    ece = calibration.expected_calibration_error([[8 / 15, 7 / 15], [0.54, 0.46]], [0, 1])
    check(close(ece, (1 - 8 / 15 + 0.54) / 2), "ECE at a bin edge: %r" % ece)
    nll = calibration.negative_log_likelihood(np.log([[0.9, 0.1], [0.6, 0.4]]), [0, 1])
    want = -(math.log(0.9) + math.log(0.4)) / 2
    check(close(nll, want), "NLL %r, want %r" % (nll, want))


def test_member_loss():
    # Each member's own cross-entropy, averaged: member logits [N=2, M=2, K=3].
    member_logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                                  [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    want = 0.0
    for n in range(2):
        for m in range(2):
            z = member_logits[n, m].tolist()
            want += -(z[labels[n]] - math.log(sum(math.exp(v) for v in z))) / 4
    # The ensemble's log-probabilities (which the loss must not use).
    ensemble = torch.logsumexp(member_logits.log_softmax(-1), 1) - math.log(2)
    got = float(train.classification_loss(ensemble, {"member_logits": member_logits},
                                          labels, 0.0))
    check(close(got, want, 1e-12), "members' mean cross-entropy %r, want %r" % (got, want))
    # Label smoothing eps: (1 - eps) CE + eps * mean over classes of -log p.
    eps, want_s = 0.1, 0.0
    for n in range(2):
        for m in range(2):
            logp = member_logits[n, m].log_softmax(-1)
            want_s += ((1 - eps) * -float(logp[labels[n]]) + eps * -float(logp.mean())) / 4
    got = float(train.classification_loss(ensemble, {"member_logits": member_logits},
                                          labels, eps))
    check(close(got, want_s, 1e-12), "smoothed member loss %r, want %r" % (got, want_s))
    single = float(train.classification_loss(ensemble, {}, labels, 0.0))
    check(not close(single, want, 1e-6), "the member loss differs from the ensemble's")


def moe_args(**kw):
    a = dict(layers=None, ensemble=2, experts=4, top_k=1, routing="image", shared=False,
             capacity_ratio=1.0, aspect=None)
    a.update(kw)
    return argparse.Namespace(**a)


def dense_config():
    return {"format": "vmoe", "version": 1, "image_size": [8, 8], "patch_size": 4,
            "in_channels": 1, "embed_dim": 8, "depth": 3, "num_heads": 2, "mlp_dim": 16,
            "num_classes": 5, "mean": [0.5], "std": [0.5]}


SUPERCLASSES = [{"name": "a", "classes": [0, 3]}, {"name": "b", "classes": [1]},
                {"name": "c", "classes": [2, 4]}]


def test_config_and_router_loss():
    config = train.moe_config(dense_config(), moe_args(), SUPERCLASSES)
    moe = config["moe"]
    check(moe["num_experts"] == 6 and moe["ensemble_members"] == 2,
          "M = 2 with 3 super-classes: %d experts, %d members"
          % (moe["num_experts"], moe["ensemble_members"]))
    # Expert m*S + s serves super-class s in member m.
    check(all(moe["superclasses"][m * 3 + s] == SUPERCLASSES[s]
              for m in range(2) for s in range(3)), "expert m*S+s names super-class s")
    for kw, why in ((dict(ensemble=3), "3 members of 4 experts"),
                    (dict(ensemble=0), "0 members"),
                    (dict(ensemble=2, top_k=3), "top-k 3 of 2 experts per member")):
        try:
            train.moe_config(dense_config(), moe_args(**kw), None)
            check(False, "moe_config accepted %s" % why)
        except SystemExit as e:
            check("--ensemble" in str(e) or "--top-k" in str(e), "message for %s: %s" % (why, e))

    # The router loss on the model's own routing output: member m's target
    # is the local index of the image's super-class within its partition.
    torch.manual_seed(0)
    model = vmoe_torch.VisionMoE(config)
    with torch.no_grad():
        model.router.weight.normal_(0, 1.0)
    images = torch.randn(4, 1, 8, 8)
    targets = torch.tensor([0, 2, 1, 2])
    _, routing = model(images)
    probs = routing["router_probs"][0]
    check(tuple(probs.shape) == (4, 2, 3), "router probabilities per member %s"
          % (tuple(probs.shape),))
    want = 0.0
    for n in range(4):
        for m in range(2):
            # Member m's probabilities from the router's logits by hand.
            logits = model.router(routing_input(model, images[n:n + 1]))[0]
            part = logits[m * 3:(m + 1) * 3].softmax(-1)
            want += -math.log(float(part[targets[n]])) / 8
    got = float(train.superclass_router_loss(routing, targets, 2))
    check(close(got, want, 1e-5), "router loss %r, want %r" % (got, want))


def routing_input(model, images):
    """The class token entering the first MoE block's FFN, recomputed."""
    x = model.patch_embed(images)
    x = torch.cat([model.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + model.pos_embed
    first = model.config["moe"]["layers"][0]
    for i, block in enumerate(model.blocks):
        x = x + block.attn(block.norm1(x))
        if i == first:
            return x[:, 0]
        x = x + block.mlp(block.norm2(x))
    raise AssertionError("no MoE block")


def test_init_from_dense():
    torch.manual_seed(1)
    dense = vmoe_torch.VisionMoE(dense_config())
    config = train.moe_config(dense_config(), moe_args(), SUPERCLASSES)
    model = vmoe_torch.VisionMoE(config)
    train.init_from_dense(model, dense.state_dict(), 0.01, torch.Generator().manual_seed(0))
    state, dstate = model.state_dict(), dense.state_dict()
    for block in config["moe"]["layers"]:
        for e in range(6):
            for tail in ("fc1.weight", "fc2.weight", "fc1.bias", "fc2.bias"):
                w = state["blocks.%d.moe.experts.%d.%s" % (block, e, tail)]
                d = dstate["blocks.%d.mlp.%s" % (block, tail)]
                err = float((w - d).abs().max() / d.abs().max())
                check(err < 0.1, "expert %d of block %d starts as the dense MLP (%s: %g)"
                      % (e, block, tail, err))
    a = state["blocks.2.moe.experts.0.fc1.weight"]
    b = state["blocks.2.moe.experts.3.fc1.weight"]
    check(not torch.equal(a, b), "members' experts start apart (noise)")


test_calibration()
test_member_loss()
test_config_and_router_loss()
test_init_from_dense()
if failures:
    sys.exit("%d failure(s)" % len(failures))
print("e3 training: calibration figures, member losses, super-class experts, init: ok")
