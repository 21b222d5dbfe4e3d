"""A vmoe model file as an ONNX graph (torch.onnx.export, opset 17), for
running the same model in ONNX Runtime.

training/vmoe_torch.py picks experts with data-dependent indexing (a loop
over experts, index_add_), which tracing would freeze to the experts of
the example input.  Here image routing picks each image's expert weights
with a gather instead: the experts' weights are stacked into [E, ...]
tensors, indexed by the router's top-k choices, and applied with batched
matmuls, so that one static graph serves every input.  Only image routing
(Mobile V-MoE) and dense models are exported; token routing has
per-image capacities that do not fit a static graph this simply.

The graph has one input, "images" (float32 [batch, C, H, W], normalised),
and the outputs "logits" and, for MoE models, "experts" (int64 [batch, k]).
The batch is fixed at export time: each batch size gets a graph of its own,
with static shapes for ONNX Runtime to optimise.
"""

import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training"))
import vmoe_torch  # noqa: E402

OPSET = 17


class GatheredExperts(nn.Module):
    """vmoe_torch.MoE.forward_image with each image's expert weights gathered."""

    def __init__(self, moe):
        super().__init__()
        experts = moe.experts
        # Stored transposed ([E, in, out]) so that the batched matmuls need none.
        self.w1 = nn.Parameter(torch.stack([e.fc1.weight.t() for e in experts]).contiguous())
        self.b1 = nn.Parameter(torch.stack([e.fc1.bias for e in experts]))
        self.w2 = nn.Parameter(torch.stack([e.fc2.weight.t() for e in experts]).contiguous())
        self.b2 = nn.Parameter(torch.stack([e.fc2.bias for e in experts]))
        self.approximate = experts[0].approximate
        if hasattr(moe, "shared"):
            self.shared = moe.shared

    def forward_image(self, z, experts, gates):
        # z [N, T, D]; experts, gates [N, k]; every token of image i goes
        # through its k experts.
        h = z[:, None] @ self.w1[experts] + self.b1[experts][:, :, None]   # [N, k, T, H]
        h = F.gelu(h, approximate=self.approximate)
        y = h @ self.w2[experts] + self.b2[experts][:, :, None]            # [N, k, T, D]
        out = (y * gates[:, :, None, None]).sum(dim=1)
        if hasattr(self, "shared"):
            out = out + self.shared(z)
        return out


class Exportable(nn.Module):
    """A VisionMoE whose forward returns tensors only: logits, and the
    experts chosen for MoE models."""

    def __init__(self, model):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        moe = self.model.config["moe"]
        self.has_experts = moe is not None
        if moe and moe["routing"] != "image":
            raise ValueError("ONNX export handles image routing only, not %s routing"
                             % moe["routing"])
        for block in self.model.blocks:
            if hasattr(block, "moe"):
                block.moe = GatheredExperts(block.moe)

    def forward(self, images):
        logits, routing = self.model(images)
        if self.has_experts:
            return logits, routing["experts"]
        return logits


def export(model_path, onnx_path, batch):
    """Exports the vmoe model file model_path for a batch of `batch` images.
    Returns the exported module, whose outputs the graph reproduces."""
    module = Exportable(vmoe_torch.load_model(model_path))
    c = module.model.config
    h, w = c["image_size"]
    example = torch.zeros(batch, c["in_channels"], h, w)
    outputs = ["logits", "experts"] if module.has_experts else ["logits"]
    with torch.inference_mode():
        torch.onnx.export(module, (example,), onnx_path, opset_version=OPSET,
                          input_names=["images"], output_names=outputs,
                          do_constant_folding=True)
    return module
