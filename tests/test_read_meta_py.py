#!/usr/bin/python3
"""Runs pipelines/read-meta.py, which reads GstVmoeMeta through the GstVmoe
typelib of the build folder, and checks every field it prints against the
`vmoe` bus messages of the same pipeline, read here without the typelib
(GstStructure), frame by frame.

    test_read_meta_py.py SOURCE_ROOT BUILD_ROOT VMOE_TOOL
"""
import json
import os
import subprocess
import sys
import tempfile

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

FRAMES = 6
# The configuration of the element test's token_k2_c05_bpr model.
TOKEN_CONFIG = {
    "format": "vmoe", "version": 1, "patch_size": 8, "embed_dim": 32, "depth": 3,
    "num_heads": 4, "mlp_dim": 64, "num_classes": 10, "image_size": [32, 32],
    "in_channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
    "crop_pct": 0.875, "moe": {"layers": [1, 2], "num_experts": 4, "top_k": 2,
                               "routing": "token", "capacity_ratio": 0.5, "bpr": True}}


def fail(text):
    sys.exit("FAIL: " + text)


def bus_messages(model):
    """The `vmoe` messages of the pipeline read-meta.py runs, with messages on."""
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=%d pattern=ball ! video/x-raw,width=320,height=240 ! "
        "vmoeclassify name=classify inference-interval=2 top-k=3 post-messages=true ! "
        "fakesink sync=false" % FRAMES)
    pipeline.get_by_name("classify").set_property("model", model)
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    messages = []
    while True:
        msg = bus.timed_pop_filtered(60 * Gst.SECOND, Gst.MessageType.ELEMENT
                                     | Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg is None:
            fail("no EOS within 60 s")
        if msg.type == Gst.MessageType.ERROR:
            fail("pipeline error: %s" % (msg.parse_error()[0].message,))
        if msg.type == Gst.MessageType.EOS:
            break
        s = msg.get_structure()
        if s.get_name() == "vmoe":
            messages.append({name: s.get_value(name) for name in (
                [s.nth_field_name(i) for i in range(s.n_fields())])})
    pipeline.set_state(Gst.State.NULL)
    return messages


def read_meta(src, build, model):
    env = dict(os.environ, GI_TYPELIB_PATH=build + "/gst", LD_LIBRARY_PATH=build + "/gst",
               GST_PLUGIN_PATH=build + "/gst")
    out = subprocess.run(["/usr/bin/python3", src + "/pipelines/read-meta.py", model,
                          str(FRAMES)], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        fail("read-meta.py exited %d: %s" % (out.returncode, out.stderr))
    return [json.loads(line) for line in out.stdout.splitlines()]


def check(name, got, want):
    if got != want:
        fail("%s: read-meta.py printed %r, the message says %r" % (name, got, want))


def compare(model, probes, messages):
    name = os.path.basename(model)
    if len(probes) != FRAMES or len(messages) != FRAMES:
        fail("%s: %d frames printed, %d messages, for %d frames" % (
            name, len(probes), len(messages), FRAMES))
    for p, m in zip(probes, messages):
        where = "%s frame %d" % (name, m["frame"])
        check(where + " frame", p["frame"], m["frame"])
        check(where + " pts", p["pts"], m["timestamp"])
        check(where + " fresh", p["fresh"], m["fresh"])
        check(where + " fresh by interval", p["fresh"], p["frame"] % 2 == 0)
        check(where + " class", p["class_id"], m["class-id"])
        check(where + " label", p["label"], m["label"])
        check(where + " score", p["score"], m["score"])
        check(where + " top classes", p["top_classes"], list(m["top-classes"]))
        check(where + " top scores", p["top_scores"], list(m["top-scores"]))
        check(where + " top label", p["top_labels"][0], m["label"])
        check(where + " top-k", len(p["top_labels"]), 3)
        check(where + " experts", p["experts"], list(m.get("experts", [])))
        check(where + " gates", p["gates"], list(m.get("gates", [])))
        check(where + " superclass", p["superclass"], m.get("superclass"))
        check(where + " blocks", [layer["block"] for layer in p["layers"]],
              list(m.get("blocks", [])))
        check(where + " tokens per expert", [layer["tokens_per_expert"] for layer in p["layers"]],
              [list(row) for row in m.get("tokens-per-expert", [])])
        check(where + " dropped", [layer["dropped"] for layer in p["layers"]],
              list(m.get("dropped", [])))
        check(where + " model", p["model_name"], m["model"])
        check(where + " element", p["element_name"], m["element"])
        check(where + " roi", p["roi_id"], -1)
        if p["latency"] <= 0:
            fail(where + ": no latency")
    return probes


def main():
    src, build, tool = sys.argv[1:4]
    os.environ["GST_PLUGIN_PATH"] = build + "/gst"
    Gst.init(None)
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "token.json")
        with open(config, "w") as f:
            json.dump(TOKEN_CONFIG, f)
        token_model = os.path.join(tmp, "token_k2_c05_bpr.safetensors")
        subprocess.run([tool, "random-model", "--config", config, "-o", token_model,
                        "--seed", "3"], check=True)
        image_model = src + "/models/fashion-vmoe.safetensors"
        image = compare(image_model, read_meta(src, build, image_model),
                        bus_messages(image_model))
        token = compare(token_model, read_meta(src, build, token_model),
                        bus_messages(token_model))
    # What each kind of routing must show, so that an empty list on both
    # sides cannot pass for agreement.
    if not all(p["experts"] and p["superclass"] and not p["layers"] for p in image):
        fail("fashion-vmoe: image routing without experts or super-class")
    if not all(len(p["layers"]) == 2 and not p["experts"] for p in token):
        fail("token model: not two blocks of statistics")
    for p in token:
        for layer in p["layers"]:
            # 17 tokens (class token, 4x4 patches) times k = 2 per block.
            check("token assignments", sum(layer["tokens_per_expert"]) + layer["dropped"], 34)
    print("read-meta.py agrees with the vmoe messages on %d frames of each model" % FRAMES)


if __name__ == "__main__":
    main()
