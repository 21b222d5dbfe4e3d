"""Helpers shared by the Python element tests: GStreamer with the build's
plugin, and pipelines run to EOS with a bound on time."""

import os
import warnings

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GObject, Gst, GstVideo  # noqa: E402,F401


def init(plugin_dir):
    os.environ["GST_PLUGIN_PATH"] = plugin_dir
    Gst.init(None)
    for name in ("vmoemetaconvert", "vmoemetapublish"):
        assert Gst.ElementFactory.find(name), "%s not found in %s" % (name, plugin_dir)


def run_to_eos(pipeline, timeout_s=30, on_message=None):
    """Plays `pipeline` until EOS; returns the element messages and warnings
    it posted.  An error fails the caller with its text."""
    bus = pipeline.get_bus()
    pipeline.set_state(Gst.State.PLAYING)
    messages = []
    try:
        while True:
            msg = bus.timed_pop_filtered(timeout_s * Gst.SECOND, Gst.MessageType.ANY)
            if msg is None:
                raise AssertionError("no EOS within %d s" % timeout_s)
            if on_message:
                on_message(msg)
            if msg.type == Gst.MessageType.ERROR:
                err, dbg = msg.parse_error()
                raise AssertionError("pipeline error: %s (%s)" % (err.message, dbg))
            if msg.type == Gst.MessageType.EOS:
                return messages
            if msg.type in (Gst.MessageType.ELEMENT, Gst.MessageType.WARNING,
                            Gst.MessageType.INFO):
                messages.append(msg)
    finally:
        pipeline.set_state(Gst.State.NULL)


def value_array(gtype, items):
    """A GValueArray, the list type the ROI params of #12 use (deprecated
    in GLib, hence the silenced warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        array = GObject.ValueArray.new(len(items))
        for x in items:
            array.append(GObject.Value(gtype, x))
        return GObject.Value(GObject.ValueArray, array)
