#!/usr/bin/python3
"""Reads GstVmoeMeta in a pad probe from Python, through the GstVmoe typelib.

A probe on fakesink's sink pad gets every buffer and reads its meta with
GstVmoe.buffer_get_vmoe_meta (buffer): the top class, the top-k lists, the
experts and gates (image routing), the per-block statistics (token
routing), who made it, and whether it is fresh or carried from an earlier
frame (inference-interval=2: every other frame is carried).  One JSON
object per frame and line.

    /usr/bin/python3 pipelines/read-meta.py MODEL [FRAMES]

Needs python3-gi, gir1.2-gstreamer-1.0 and the GstVmoe typelib.  Installed,
they are found on their own; from a build folder:

    GI_TYPELIB_PATH=build/gst LD_LIBRARY_PATH=build/gst GST_PLUGIN_PATH=build/gst \\
        /usr/bin/python3 pipelines/read-meta.py models/fashion-vmoe.safetensors 4
"""
import json
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVmoe", "1.0")
from gi.repository import Gst, GstVmoe  # noqa: E402


def meta_as_dict(meta):
    """Every field of a GstVmoeMeta; the arrays through their accessors,
    which carry the lengths that plain struct fields cannot."""
    result = {
        "frame": meta.frame,
        "fresh": bool(meta.fresh),
        "latency": meta.latency,
        "class_id": meta.class_id,
        "label": meta.label,
        "score": meta.score,
        "top_classes": list(meta.get_top_classes()),
        "top_scores": list(meta.get_top_scores()),
        "top_labels": list(meta.get_top_labels()),
        "experts": list(meta.get_experts()),
        "gates": list(meta.get_gates()),
        "superclass": meta.superclass,
        "layers": [],
        "model_name": meta.model_name,
        "element_name": meta.element_name,
        "roi_id": meta.roi_id,
    }
    for index in range(meta.n_layers):
        layer = meta.get_layer(index)
        result["layers"].append({
            "block": layer.block,
            "tokens_per_expert": list(layer.get_tokens_per_expert()),
            "dropped": layer.dropped,
        })
    return result


def print_meta(pad, info):
    buffer = info.get_buffer()
    meta = GstVmoe.buffer_get_vmoe_meta(buffer)
    if meta is None:
        print(json.dumps({"pts": buffer.pts, "meta": None}), flush=True)
    else:
        print(json.dumps(dict(pts=buffer.pts, **meta_as_dict(meta))), flush=True)
    return Gst.PadProbeReturn.OK


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: read-meta.py MODEL [FRAMES]")
    Gst.init(None)
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    # sync=false: no clock, so no QoS either; every other frame is carried
    # because of inference-interval alone.
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=%d pattern=ball ! video/x-raw,width=320,height=240 ! "
        "vmoeclassify name=classify inference-interval=2 top-k=3 ! "
        "fakesink name=sink sync=false" % frames)
    if pipeline.get_by_name("classify") is None:
        sys.exit("read-meta.py: no vmoeclassify element (is GST_PLUGIN_PATH set?)")
    pipeline.get_by_name("classify").set_property("model", sys.argv[1])
    pad = pipeline.get_by_name("sink").get_static_pad("sink")
    pad.add_probe(Gst.PadProbeType.BUFFER, print_meta)
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(
        Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    status = 0
    if msg.type == Gst.MessageType.ERROR:
        err, debug = msg.parse_error()
        print("read-meta.py: %s (%s)" % (err.message, debug), file=sys.stderr)
        status = 1
    pipeline.set_state(Gst.State.NULL)
    sys.exit(status)


if __name__ == "__main__":
    main()
