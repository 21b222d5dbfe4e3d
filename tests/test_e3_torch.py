"""E3 in the PyTorch reference (training/vmoe_torch.py) against its own
definition in docs/design.md: member m of an ensemble is exactly the
single-member model whose experts and router rows are partition P_m, and the
ensemble's logits, entropy and disagreement are those of the members' mean
softmax.  Covers image and token routing, M = 2 and 4, a shared expert,
top-k 2 and a capacity below 1, and that training gets gradients.

    /usr/bin/python3 tests/test_e3_torch.py SOURCE_DIR
"""

import copy
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(sys.argv[1], "training"))
import vmoe_torch  # noqa: E402


def member_model(model, m):
    """The ensemble's member m as a model of its own: E/M experts, the
    router's rows of P_m, everything else shared."""
    members = model.members
    config = copy.deepcopy(model.config)
    per_member = config["moe"]["num_experts"] // members
    config["moe"]["num_experts"] = per_member
    config["moe"]["ensemble_members"] = 1
    state = {}
    for name, value in model.state_dict().items():
        if ".experts." in name:
            head, tail = name.split(".experts.")
            e, rest = tail.split(".", 1)
            local = int(e) - m * per_member
            if 0 <= local < per_member:
                state["%s.experts.%d.%s" % (head, local, rest)] = value
        elif "router" in name:
            state[name] = value[m * per_member:(m + 1) * per_member]
        else:
            state[name] = value
    single = vmoe_torch.VisionMoE(config)
    single.load_state_dict(state)
    single.top_k, single.capacity_ratio = model.top_k, model.capacity_ratio
    return single.eval()


def check(routing, members, top_k, capacity_ratio):
    config = {"format": "vmoe", "version": 1, "image_size": 16, "patch_size": 4,
              "embed_dim": 16, "depth": 4, "num_heads": 2, "mlp_dim": 32,
              "num_classes": 6,
              "moe": {"layers": [1, 3], "num_experts": 8, "top_k": top_k,
                      "routing": routing, "shared_expert": True,
                      "capacity_ratio": capacity_ratio, "ensemble_members": members}}
    torch.manual_seed(members * 10 + top_k)
    model = vmoe_torch.VisionMoE(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "router" in name:
                p.mul_(8.0)   # routers that differ between images
    x = torch.randn(5, 3, 16, 16) * torch.rand(5, 1, 1, 1) * 3
    with torch.no_grad():
        logits, got = model(x)
        singles = [member_model(model, m)(x) for m in range(members)]
    name = "%s M=%d k=%d" % (routing, members, top_k)
    member_logits = torch.stack([s[0] for s in singles], 1)
    assert torch.allclose(got["member_logits"], member_logits, atol=1e-5, rtol=1e-5), name
    probs = member_logits.softmax(-1).mean(1)
    assert torch.allclose(logits, probs.log(), atol=1e-5, rtol=1e-5), name
    entropy = -(probs * probs.log()).sum(-1)
    assert torch.allclose(got["entropy"], entropy, atol=1e-5), name
    member_top1 = member_logits.argmax(-1)
    assert torch.equal(got["member_classes"], member_top1), name
    disagreement = (member_top1 != probs.argmax(-1)[:, None]).float().mean(-1)
    assert torch.equal(got["disagreement"], disagreement), name
    per_member = 8 // members
    if routing == "image":
        experts = torch.cat([s[1]["experts"] + m * per_member
                             for m, s in enumerate(singles)], 1)
        gates = torch.cat([s[1]["gates"] for s in singles], 1)
        assert torch.equal(got["experts"], experts), name
        assert torch.allclose(got["gates"], gates, atol=1e-6), name
        assert got["router_probs"][0].shape == (5, members, per_member), name
    else:
        for layer in range(2):
            counts = torch.cat([s[1]["tokens_per_expert"][layer] for s in singles], 1)
            dropped = torch.stack([s[1]["dropped"][layer] for s in singles], 1)
            assert torch.equal(got["tokens_per_expert"][layer], counts), name
            assert torch.equal(got["dropped"][layer], dropped), name
        if capacity_ratio < 1:
            assert sum(int(d.sum()) for d in got["dropped"]) > 0, name + ": no drops"
    # Members must not all agree everywhere, or the member checks above
    # would not tell members apart.
    assert not all(torch.equal(member_logits[:, 0], member_logits[:, m])
                   for m in range(1, members)), name

    model.train()
    model.router_noise = 0.1
    out, routing_train = model(x)
    loss = out.logsumexp(-1).sum() + sum(routing_train.get("aux_losses", []))
    loss.backward()
    router = model.router if routing == "image" else model.blocks[1].moe.router
    assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0, name
    print("ok", name)


def main():
    # The capacity is ceil(k*T*ratio*M/E) in this order (17 tokens, E=8).
    assert vmoe_torch.token_capacity(2, 17, 0.5, 8, 2) == math.ceil(2 * 17 * 0.5 * 2 / 8) == 5
    assert vmoe_torch.token_capacity(1, 17, 1.0, 8, 4) == 9
    for routing in ("image", "token"):
        for members in (2, 4):
            check(routing, members, 2, 0.5)
    check("token", 2, 1, 1.0)


if __name__ == "__main__":
    main()
