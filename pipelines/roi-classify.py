#!/usr/bin/python3
"""Classifies regions of interest, as after a detector (PyGObject).

A pad probe before vmoeclassify adds GstVideoRegionOfInterestMeta boxes to
each frame, the way a detector (DL Streamer's gvadetect, DeepStream's
nvinfer) would; vmoeclassify inference-region=roi-list classifies each box
and adds to its meta a param named after attribute-name ("vmoe") with
label, label_id, confidence, model_name, experts and gates.  A probe after
it reads the params back.  The third box is smaller than
input-object-min-width and gets no result; the fourth lies partly outside
the frame and is clamped to it.

    /usr/bin/python3 pipelines/roi-classify.py MODEL [FRAMES]

Needs python3-gi, gir1.2-gstreamer-1.0 and gir1.2-gst-plugins-base-1.0; run
from the source tree it finds the plugin in build/gst.
"""
import os
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import Gst, GstVideo  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_PLUGINS = os.path.join(HERE, "..", "build", "gst")

# (type, x, y, w, h): what a detector might find in a 320x240 frame.
BOXES = [("car", 10, 20, 120, 90), ("person", 200, 40, 60, 150),
         ("person", 5, 5, 8, 8), ("car", 250, 180, 100, 100)]


def add_boxes(pad, info):
    buf = info.get_buffer()
    # PyGObject (3.42, GStreamer 1.22) holds a reference of its own to the
    # probe's buffer, so the buffer looks shared and refuses new metas; the
    # usual workaround is to discount that reference while adding them.
    buf.mini_object.refcount -= 1
    try:
        for i, (kind, x, y, w, h) in enumerate(BOXES):
            roi = GstVideo.buffer_add_video_region_of_interest_meta(buf, kind, x, y, w, h)
            roi.id = i
    finally:
        buf.mini_object.refcount += 1
    return Gst.PadProbeReturn.OK


def read_params(pad, info):
    buf = info.get_buffer()
    for i, (kind, *_box) in enumerate(BOXES):
        roi = GstVideo.buffer_get_video_region_of_interest_meta_id(buf, i)
        param = roi.get_param("vmoe") if roi else None
        if param is None:
            print("frame at %.3f s: roi %d (%s) %dx%d: no result"
                  % (buf.pts / Gst.SECOND, i, kind, roi.w, roi.h))
            continue
        experts = param.get_value("experts")   # a GValueArray: a list in Python
        print("frame at %.3f s: roi %d (%s): %s (label_id %d, confidence %.3f, model %s, "
              "experts %s)" % (buf.pts / Gst.SECOND, i, kind, param.get_string("label"),
                               param.get_int("label_id")[1],
                               param.get_double("confidence")[1],
                               param.get_string("model_name"),
                               list(experts)))
    return Gst.PadProbeReturn.OK


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: roi-classify.py MODEL [FRAMES]")
    if os.path.isdir(BUILD_PLUGINS):
        os.environ["GST_PLUGIN_PATH"] = BUILD_PLUGINS + os.pathsep + os.environ.get(
            "GST_PLUGIN_PATH", "")
    Gst.init(None)
    frames = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=%d pattern=smpte ! video/x-raw,width=320,height=240 ! "
        "vmoeclassify name=classify inference-region=roi-list input-object-min-width=16 "
        "input-object-min-height=16 ! fakesink" % frames)
    classify = pipeline.get_by_name("classify")
    classify.set_property("model", sys.argv[1])
    classify.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, add_boxes)
    classify.get_static_pad("src").add_probe(Gst.PadProbeType.BUFFER, read_params)
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(
        Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    status = 0
    if msg.type == Gst.MessageType.ERROR:
        err, debug = msg.parse_error()
        print("error: %s (%s)" % (err.message, debug), file=sys.stderr)
        status = 1
    pipeline.set_state(Gst.State.NULL)
    sys.exit(status)


if __name__ == "__main__":
    main()
