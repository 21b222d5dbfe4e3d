#!/usr/bin/python3
"""The demo: classify a clip of Fashion-MNIST test images with vmoeclassify.

Makes the clip from Debian's dataset-fashion-mnist (the first --frames test
images, as raw GRAY8 video at 25 frames/s), plays it through

    filesrc ! rawvideoparse ! vmoeclassify post-messages=true ! fakesink

prints each frame's label, score, expert and super-class beside the true
label, and ends with the accuracy over the clip.  scripts/demo.sh installs
what is missing, builds, and runs this.

--uncertain NATS sets vmoeclassify's entropy-threshold, prints each frame's
predictive entropy and the element's `uncertain` mark, and compares the
accuracy of the marked frames with the others'.  It defaults the model to
the E3 ensemble (models/fashion-e3.safetensors), whose entropy is the
calibrated one.

    /usr/bin/python3 pipelines/demo.py [--model models/fashion-vmoe.safetensors] [--frames 200]
        [--uncertain NATS]
"""
import argparse
import collections
import os
import sys
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, os.path.join(ROOT, "training"))
import data  # noqa: E402


def make_clip(path, frames):
    """Writes the first `frames` test images as raw GRAY8 frames; returns labels."""
    _, _, images, labels = data.fashion_mnist()
    frames = min(frames, len(images))
    with open(path, "wb") as f:
        f.write(images[:frames].tobytes())
    return labels[:frames], images.shape[2], images.shape[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model file (default: models/fashion-vmoe.safetensors, "
                        "with --uncertain models/fashion-e3.safetensors)")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--quiet", action="store_true", help="only the summary")
    parser.add_argument("--uncertain", type=float, metavar="NATS",
                        help="mark frames whose predictive entropy is above NATS "
                             "(vmoeclassify's entropy-threshold)")
    args = parser.parse_args()
    if args.uncertain is not None and not 0 < args.uncertain <= 1000:
        sys.exit("demo: --uncertain takes an entropy in nats, above 0 (at most 1000)")
    if args.model is None:
        args.model = os.path.join(ROOT, "models", "fashion-e3.safetensors"
                                  if args.uncertain is not None else "fashion-vmoe.safetensors")
    if not os.path.exists(args.model):
        sys.exit("demo: no model at %s" % args.model)

    os.environ["GST_PLUGIN_PATH"] = os.path.join(args.build, "gst") + os.pathsep + \
        os.environ.get("GST_PLUGIN_PATH", "")
    Gst.init(None)
    clip_dir = os.path.join(args.build, "demo")
    os.makedirs(clip_dir, exist_ok=True)
    clip = os.path.join(clip_dir, "fashion-mnist-test.gray")
    truth, width, height = make_clip(clip, args.frames)

    pipeline = Gst.parse_launch(
        "filesrc name=src ! rawvideoparse format=gray8 width=%d height=%d framerate=25/1 ! "
        "vmoeclassify name=classify post-messages=true ! fakesink" % (width, height))
    pipeline.get_by_name("src").set_property("location", clip)
    classify = pipeline.get_by_name("classify")
    classify.set_property("model", args.model)
    if args.uncertain is not None:
        if classify.find_property("entropy-threshold") is None:
            sys.exit("demo: --uncertain needs vmoeclassify's entropy-threshold property, "
                     "which this build's element lacks")
        classify.set_property("entropy-threshold", args.uncertain)
    labels = data.FASHION_LABELS
    print("classifying %d Fashion-MNIST test images with %s\n" % (len(truth),
                                                                   os.path.relpath(args.model)))
    print("frame  predicted     score  expert  super-class                      truth" +
          ("  entropy" if args.uncertain is not None else ""))
    bus = pipeline.get_bus()
    start = time.monotonic()
    pipeline.set_state(Gst.State.PLAYING)
    correct, seen, latency = 0, 0, 0
    per_expert = collections.Counter()
    uncertain = collections.Counter()   # (above the threshold, right) -> frames
    while True:
        msg = bus.timed_pop_filtered(Gst.CLOCK_TIME_NONE, Gst.MessageType.ELEMENT
                                     | Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg.type == Gst.MessageType.ERROR:
            err, debug = msg.parse_error()
            pipeline.set_state(Gst.State.NULL)
            sys.exit("demo: %s\n%s" % (err.message, debug))
        if msg.type == Gst.MessageType.EOS:
            break
        s = msg.get_structure()
        if s.get_name() != "vmoe":
            continue
        i = s.get_value("frame")
        ok = s.get_value("class-id") == truth[i]
        correct += ok
        seen += 1
        latency += s.get_value("latency")
        expert = list(s.get_value("experts"))[0] if s.has_field("experts") else -1
        superclass = s.get_value("superclass") if s.has_field("superclass") else "-"
        per_expert[(expert, superclass)] += 1
        entropy_column, notes = "", [] if ok else ["<- wrong"]
        if args.uncertain is not None:
            above = s.get_value("uncertain")
            uncertain[(above, bool(ok))] += 1
            entropy_column = "  %7.3f" % s.get_value("entropy")
            notes += ["<- uncertain"] if above else []
        if not args.quiet:
            print(("%5d  %-12s  %5.3f  %6s  %-31s  %-12s%s  %s" % (
                i, s.get_value("label"), s.get_value("score"),
                expert if expert >= 0 else "-", superclass[:31], labels[truth[i]],
                entropy_column, " ".join(notes))).rstrip())
    elapsed = time.monotonic() - start
    pipeline.set_state(Gst.State.NULL)
    if seen == 0:
        sys.exit("demo: no frame was classified")
    print("\nexperts used:")
    for (expert, superclass), count in sorted(per_expert.items()):
        print("  expert %2d %-40s %4d frames" % (expert, superclass, count))
    print("\naccuracy over the clip: %d/%d = %.1f%%  (mean inference %.2f ms/frame, "
          "%.0f frames/s through the pipeline)" % (correct, seen, 100.0 * correct / seen,
                                                    latency / seen / 1e6, seen / elapsed))
    if args.uncertain is not None:
        for above, what in ((True, "uncertain (entropy above"), (False, "confident (at most")):
            frames = uncertain[(above, True)] + uncertain[(above, False)]
            print("%s %.3f nats): %d frames, %s" % (
                what, args.uncertain, frames, "accuracy %.1f%%" % (
                    100.0 * uncertain[(above, True)] / frames) if frames else "none"))


if __name__ == "__main__":
    main()
