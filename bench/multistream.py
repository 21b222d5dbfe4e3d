"""Many streams, one model: N independent vmoeclassify elements against N
elements sharing one model instance (model-instance-id, batch-size N).

ViT-Tiny Mobile V-MoE (bench/vit_tiny_mobile_vmoe.json, random weights from
`vmoe random-model`) on the CPU backend; each stream is
`videotestsrc ! video/x-raw,format=RGB,224x224 ! vmoeclassify ! fakesink
sync=false`.  For N = 1, 2, 4, 8 it reports the aggregate frames/s and the
peak RSS of the process, each configuration in a fresh child process (so
ru_maxrss is its own).  A detector-like case follows: one 1280x720 stream
with 8 regions of interest per frame (inference-region=roi-list,
batch-size 8).

    /usr/bin/python3 bench/multistream.py [--build build] [--frames 64] [--streams 1,2,4,8]

Prints one JSON object; bench/RESULTS.md records the figures.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROIS = [(x * 300 + 40, y * 330 + 30, 200 + 20 * x, 220 + 10 * y)
        for x in range(4) for y in range(2)]


def child(model, streams, frames, shared, roi):
    """Runs one configuration in this process; prints frames/s."""
    import gi
    gi.require_version("Gst", "1.0")
    gi.require_version("GstVideo", "1.0")
    from gi.repository import Gst, GstVideo
    Gst.init(None)
    size = "width=1280,height=720" if roi else "width=224,height=224"
    extra = ""
    if shared:
        extra = " model-instance-id=bench batch-size=%d batch-timeout=20000" % (
            8 if roi else streams)
    if roi:
        extra += " inference-region=roi-list"
    desc = " ".join(
        "videotestsrc num-buffers=%d pattern=ball ! video/x-raw,format=RGB,%s,framerate=30/1 ! "
        "vmoeclassify name=c%d model=%s backend=cpu queue-size=%d%s ! fakesink sync=false"
        % (frames, size, i, model, 8 if roi else max(streams, 4), extra)
        for i in range(streams))
    pipeline = Gst.parse_launch(desc)
    if roi:
        def add_rois(pad, info):
            buf = info.get_buffer()
            # PyGObject's own reference makes the buffer look shared (see
            # pipelines/roi-classify.py).
            buf.mini_object.refcount -= 1
            try:
                for i, (x, y, w, h) in enumerate(ROIS):
                    GstVideo.buffer_add_video_region_of_interest_meta(
                        buf, "object", x, y, w, h).id = i
            finally:
                buf.mini_object.refcount += 1
            return Gst.PadProbeReturn.OK
        for i in range(streams):
            pipeline.get_by_name("c%d" % i).get_static_pad("sink").add_probe(
                Gst.PadProbeType.BUFFER, add_rois)
    pipeline.set_state(Gst.State.PAUSED)
    pipeline.get_state(Gst.CLOCK_TIME_NONE)
    t0 = time.monotonic()
    pipeline.set_state(Gst.State.PLAYING)
    msg = pipeline.get_bus().timed_pop_filtered(
        Gst.CLOCK_TIME_NONE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    elapsed = time.monotonic() - t0
    pipeline.set_state(Gst.State.NULL)
    if msg.type == Gst.MessageType.ERROR:
        sys.exit("error: %s" % msg.parse_error()[0].message)
    print(json.dumps({"images_per_s": streams * frames * (len(ROIS) if roi else 1) / elapsed,
                      "frames_per_s": streams * frames / elapsed}))


def run(args, model, streams, shared, roi=False):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model, str(streams),
           str(args.frames), "1" if shared else "0", "1" if roi else "0"]
    env = dict(os.environ, GST_PLUGIN_PATH=os.path.join(args.build, "gst"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit("child failed: %s" % " ".join(cmd))
    result = json.loads(out)
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)
    result["frames_per_s"] = round(result["frames_per_s"], 2)
    result["images_per_s"] = round(result["images_per_s"], 2)
    return result


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model, streams, frames, shared, roi = sys.argv[2:7]
        child(model, int(streams), int(frames), shared == "1", roi == "1")
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    parser.add_argument("--config", default=os.path.join(HERE, "vit_tiny_mobile_vmoe.json"))
    parser.add_argument("--frames", type=int, default=64, help="frames per stream")
    parser.add_argument("--streams", default="1,2,4,8")
    args = parser.parse_args()
    args.build = os.path.abspath(args.build)
    vmoe = os.path.join(args.build, "tools", "vmoe")
    results = {"machine": "%d cores, %s" % (os.cpu_count(), os.uname().machine),
               "frames_per_stream": args.frames, "streams": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "vit_tiny_mobile_vmoe.safetensors")
        subprocess.run([vmoe, "random-model", "--config", args.config, "-o", model],
                       check=True)
        for n in (int(s) for s in args.streams.split(",")):
            independent = run(args, model, n, shared=False)
            shared = run(args, model, n, shared=True)
            results["streams"].append({
                "n": n, "independent": independent, "shared": shared,
                "shared_speedup": round(shared["frames_per_s"]
                                        / independent["frames_per_s"], 2)})
            print(json.dumps(results["streams"][-1]), file=sys.stderr)
        results["roi_1280x720_8_per_frame"] = {
            "independent": run(args, model, 1, shared=False, roi=True),
            "batched": run(args, model, 1, shared=True, roi=True)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
