#!/usr/bin/python3
"""Reads vmoeclassify's bus messages from Python (PyGObject).

Shows an application that only listens to the bus: every frame with a
result posts an element message named "vmoe" whose fields (fresh, class-id,
label, score, top-classes, experts, gates, superclass, for token routing
blocks, tokens-per-expert and dropped, latency, model, element, timestamps)
any language binding can read.

    /usr/bin/python3 pipelines/bus-messages.py MODEL [FRAMES]

Needs python3-gi and gir1.2-gstreamer-1.0; run from the source tree it finds
the plugin in build/gst.
"""
import os
import sys

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_PLUGINS = os.path.join(HERE, "..", "build", "gst")


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: bus-messages.py MODEL [FRAMES]")
    if os.path.isdir(BUILD_PLUGINS):
        os.environ["GST_PLUGIN_PATH"] = BUILD_PLUGINS + os.pathsep + os.environ.get(
            "GST_PLUGIN_PATH", "")
    Gst.init(None)
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=%d pattern=smpte ! video/x-raw,width=320,height=240 ! "
        "vmoeclassify name=classify post-messages=true top-k=3 ! fakesink" % frames)
    pipeline.get_by_name("classify").set_property("model", sys.argv[1])
    pipeline.set_state(Gst.State.PLAYING)
    bus = pipeline.get_bus()
    status = 0
    while True:
        msg = bus.timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.ELEMENT
                                     | Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            print("error: %s (%s)" % (err.message, debug), file=sys.stderr)
            status = 1
            break
        if msg.type == Gst.MessageType.EOS:
            break
        s = msg.get_structure()
        if s.get_name() != "vmoe":
            continue
        line = "frame %d at %.3f s: %s (%.3f), top %s" % (
            s.get_value("frame"), s.get_value("running-time") / 1e9, s.get_value("label"),
            s.get_value("score"), list(s.get_value("top-classes")))
        if s.has_field("experts"):
            line += ", experts %s gates %s" % (
                list(s.get_value("experts")),
                ["%.3f" % g for g in s.get_value("gates")])
        if s.has_field("superclass"):
            line += " [%s]" % s.get_value("superclass")
        if s.has_field("tokens-per-expert"):
            for block, tokens, dropped in zip(s.get_value("blocks"),
                                              s.get_value("tokens-per-expert"),
                                              s.get_value("dropped")):
                line += ", block %d tokens %s dropped %d" % (block, list(tokens), dropped)
        if not s.get_value("fresh"):
            line += " (carried)"
        print(line + ", %.2f ms" % (s.get_value("latency") / 1e6))
    pipeline.set_state(Gst.State.NULL)
    sys.exit(status)


if __name__ == "__main__":
    main()
