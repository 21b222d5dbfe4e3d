"""Element overhead: vmoeclassify in a pipeline against `vmoe bench` on the
same model, side by side in one run.

The pipeline is `videotestsrc pattern=black ! video/x-raw,format=RGB,<model
size> ! vmoeclassify ! fakesink sync=false`: frames already at the model's
size, so the element's work beyond the forward pass is mapping the frame,
the 8-bit pre-processing, the meta and the pipeline itself.  Rounds
alternate between the two; the medians give the overhead per frame.

    /usr/bin/python3 bench/element_overhead.py [--model M] [--frames 300] [--rounds 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def pipeline_seconds_per_frame(model, frames, width, height):
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=%d pattern=black ! "
        "video/x-raw,format=RGB,width=%d,height=%d,framerate=1000/1 ! "
        "vmoeclassify name=c ! fakesink sync=false" % (frames, width, height))
    pipeline.get_by_name("c").set_property("model", model)
    pipeline.set_state(Gst.State.PAUSED)
    pipeline.get_state(Gst.CLOCK_TIME_NONE)       # model loaded, warm-up done
    start = time.perf_counter()
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(Gst.CLOCK_TIME_NONE,
                                                Gst.MessageType.EOS | Gst.MessageType.ERROR)
    elapsed = time.perf_counter() - start
    pipeline.set_state(Gst.State.NULL)
    if msg.type == Gst.MessageType.ERROR:
        sys.exit("pipeline error: %s" % msg.parse_error()[0].message)
    return elapsed / frames


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    parser.add_argument("--model", help="model file (default: the bench ViT-Tiny, random)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ["GST_PLUGIN_PATH"] = os.path.join(args.build, "gst")
    Gst.init(None)
    vmoe = os.path.join(args.build, "tools", "vmoe")
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if not model:
            model = os.path.join(tmp, "model.safetensors")
            subprocess.run([vmoe, "random-model", "--config",
                            os.path.join(HERE, "vit_tiny_mobile_vmoe.json"), "-o", model],
                           check=True)
        info = subprocess.run([vmoe, "info", model], capture_output=True, text=True,
                              check=True).stdout
        size = next(l for l in info.splitlines() if l.startswith("image:")).split()[1]
        width, height = (int(v) for v in size.rstrip(",").split("x"))
        element, engine = [], []
        for _ in range(args.rounds):
            element.append(pipeline_seconds_per_frame(model, args.frames, width, height))
            per_frame = element[-1]
            out = subprocess.run([vmoe, "bench", model, "--batch", "1", "--seconds",
                                  str(max(2.0, per_frame * args.frames)), "--json"],
                                 capture_output=True, text=True, check=True).stdout
            engine.append(1.0 / json.loads(out)["images_per_s"])
    e, b = statistics.median(element), statistics.median(engine)
    # Each round pairs an element run with the engine run right after it;
    # the median of the paired ratios is the least noisy estimate.
    paired = statistics.median(x / y - 1 for x, y in zip(element, engine))
    result = {"paired_overhead": paired,"model": args.model or "bench/vit_tiny_mobile_vmoe.json (random)",
              "frames": args.frames, "rounds": args.rounds,
              "element_ms_per_frame": e * 1e3, "engine_ms_per_image": b * 1e3,
              "overhead": e / b - 1, "element_rounds_ms": [x * 1e3 for x in element],
              "engine_rounds_ms": [x * 1e3 for x in engine]}
    if args.json:
        print(json.dumps(result))
    else:
        print("element %.3f ms/frame, vmoe bench %.3f ms/image (medians): overhead %+.2f%%; "
              "median of paired rounds %+.2f%%" % (e * 1e3, b * 1e3, 100 * (e / b - 1),
                                                  100 * paired))
        print("rounds: element %s, bench %s" % (
            ["%.2f" % (x * 1e3) for x in element], ["%.2f" % (x * 1e3) for x in engine]))


if __name__ == "__main__":
    main()
