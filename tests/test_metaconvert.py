"""vmoemetaconvert: its JSON validated against docs/vmoe-metaconvert.schema.json
and compared with what `vmoe run` prints for the same pixels.

    /usr/bin/python3 tests/test_metaconvert.py PLUGIN_DIR VMOE_TOOL PARITY_DIR SCHEMA
"""

import json
import os
import subprocess
import sys
import tempfile
import unittest

import jsonschema
import numpy as np

import gsttestutil
from gsttestutil import GObject, Gst, GstVideo

PLUGIN_DIR = VMOE = PARITY = SCHEMA = None
W, H, N = 64, 48, 3


def json_messages(messages):
    return [m.get_structure().get_string("json") for m in messages
            if m.type == Gst.MessageType.ELEMENT
            and m.get_structure().get_name() == "vmoe-json"]


def classify_frames(model, convert_props="", classify_props=""):
    """N videotestsrc frames through vmoeclassify and vmoemetaconvert: the
    posted JSON texts and the frames' RGB pixels."""
    pipeline = Gst.parse_launch(
        "videotestsrc num-buffers=%d pattern=ball ! video/x-raw,format=RGB,width=%d,height=%d,"
        "framerate=30/1 ! vmoeclassify model=%s %s ! vmoemetaconvert post-messages=true %s ! "
        "appsink name=sink emit-signals=true sync=false" % (N, W, H, model, classify_props,
                                                            convert_props))
    frames = []

    def on_sample(sink):
        buf = sink.emit("pull-sample").get_buffer()
        frames.append(np.frombuffer(buf.extract_dup(0, buf.get_size()), np.uint8)
                      .reshape(H, W, 3))
        return Gst.FlowReturn.OK

    pipeline.get_by_name("sink").connect("new-sample", on_sample)
    texts = json_messages(gsttestutil.run_to_eos(pipeline))
    return texts, frames


def vmoe_run(model, frames):
    with tempfile.TemporaryDirectory() as tmp:
        npy = os.path.join(tmp, "frames.npy")
        np.save(npy, np.stack(frames))
        # One image per call as in the element: a batch's GEMMs may sum in
        # another order, a last-bit difference in the scores.
        out = subprocess.run([VMOE, "run", "--batch", "1", model, npy], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


class MetaConvertTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(SCHEMA) as f:
            cls.validator = jsonschema.Draft202012Validator(json.load(f))

    def validate(self, text):
        obj = json.loads(text)
        self.validator.validate(obj)
        return obj

    def check_full_frame(self, model_name, routing_keys, classify_props=""):
        model = os.path.join(PARITY, model_name + ".safetensors")
        texts, frames = classify_frames(model, 'source=cam0 tags="{\\"site\\": \\"door\\"}"',
                                        classify_props)
        self.assertEqual(len(texts), N)
        self.assertEqual(len(frames), N)
        expected = vmoe_run(model, frames)
        for i, (text, ref) in enumerate(zip(texts, expected)):
            obj = self.validate(text)
            # 30 frames/s from 0: frame i at i/30 s, truncated to ns.
            self.assertEqual(obj["timestamp"], i * 1000000000 // 30)
            self.assertEqual(obj["resolution"], {"width": W, "height": H})
            self.assertEqual(obj["source"], "cam0")
            self.assertEqual(obj["tags"], {"site": "door"})
            self.assertEqual(len(obj["objects"]), 1)
            box = obj["objects"][0]
            self.assertEqual([box[k] for k in "xywh"], [0, 0, W, H])
            attr = box["vmoe"]
            top = ref["top"][0]
            self.assertEqual(attr["label_id"], top["class"])
            self.assertEqual(attr["label"], top["label"])
            self.assertEqual(np.float32(attr["confidence"]), np.float32(top["score"]))
            self.assertEqual(attr["model"], {"name": model_name})
            for key in routing_keys:
                self.assertEqual(attr[key], ref[key], key)
            moe_keys = {"experts", "gates", "layers", "members", "entropy", "disagreement"}
            self.assertEqual(set(attr) & moe_keys, set(routing_keys))
        return texts

    def test_image_routing_matches_vmoe_run(self):
        self.check_full_frame("image_k1", ["experts", "gates"])

    def test_token_routing_matches_vmoe_run(self):
        self.check_full_frame("token_k2_c05_bpr", ["layers"])

    def test_ensembles_match_vmoe_run(self):
        """E3: members, entropy and disagreement as `vmoe run` writes them,
        layers per block and member; entropy-threshold's mark (here below
        every frame's entropy) as "uncertain": true."""
        ensemble = ["members", "entropy", "disagreement"]
        self.check_full_frame("e3_image_m4_k2_norm_mean", ["experts", "gates"] + ensemble)
        texts = self.check_full_frame("e3_token_m2_shared", ["layers"] + ensemble,
                                      "entropy-threshold=0.001")
        for text in texts:
            self.assertIs(json.loads(text)["objects"][0]["vmoe"]["uncertain"], True)
        for text in classify_frames(os.path.join(PARITY, "image_k1.safetensors"))[0]:
            self.assertNotIn("uncertain", json.loads(text)["objects"][0]["vmoe"])

    def test_json_indent(self):
        model = os.path.join(PARITY, "image_k1.safetensors")
        compact, _ = classify_frames(model)
        pretty, _ = classify_frames(model, "json-indent=4")
        self.assertNotIn("\n", compact[0])
        self.assertIn('\n    "objects"', pretty[0])
        self.assertEqual([json.loads(t) for t in pretty], [json.loads(t) for t in compact])

    def frames_without_results(self, props):
        pipeline = Gst.parse_launch(
            "videotestsrc num-buffers=%d ! video/x-raw,width=%d,height=%d ! "
            "vmoemetaconvert post-messages=true %s ! fakesink" % (N, W, H, props))
        return json_messages(gsttestutil.run_to_eos(pipeline))

    def test_add_empty_results(self):
        self.assertEqual(self.frames_without_results(""), [])
        texts = self.frames_without_results("add-empty-results=true")
        self.assertEqual(len(texts), N)
        for text in texts:
            self.assertEqual(self.validate(text)["objects"], [])

    def test_tags_that_are_not_an_object_are_an_error(self):
        for tags in ["[1, 2]", "{not json"]:
            pipeline = Gst.parse_launch(
                "videotestsrc num-buffers=1 ! vmoemetaconvert name=c ! fakesink")
            pipeline.get_by_name("c").set_property("tags", tags)
            with self.assertRaisesRegex(AssertionError, "tags must be a JSON object"):
                gsttestutil.run_to_eos(pipeline)

    def roi_frames(self, convert_props):
        """One frame with three ROI metas made by hand as #12 will: params
        named "vmoe" (full, and with a wrongly typed field) and "other"."""
        pipeline = Gst.parse_launch(
            "appsrc name=src format=time caps=video/x-raw,format=RGB,width=%d,height=%d,"
            "framerate=30/1 ! vmoemetaconvert post-messages=true %s ! fakesink"
            % (W, H, convert_props))
        src = pipeline.get_by_name("src")
        buf = Gst.Buffer.new_allocate(None, W * H * 3, None)
        buf.pts = 2 * Gst.SECOND
        buf.duration = Gst.SECOND // 30
        rois = [("person", (4, 6, 20, 30), "vmoe", dict(
            label="cat", label_id=3, confidence=0.75, model_name="fashion-vmoe",
            superclass="animals", experts=[2, 0], gates=[0.5, 0.25])),
            ("car", (30, 0, 34, 48), "vmoe", dict(label="dog", label_id="4")),
            ("face", (0, 0, 8, 8), "other", dict(label="x", label_id=1))]
        for i, (roi_type, (x, y, w, h), name, fields) in enumerate(rois):
            meta = GstVideo.buffer_add_video_region_of_interest_meta(buf, roi_type, x, y, w, h)
            meta.id = 10 + i
            param = Gst.Structure.new_empty(name)
            for key, value in fields.items():
                if key == "experts":
                    param.set_value(key, gsttestutil.value_array(GObject.TYPE_INT, value))
                elif key == "gates":
                    param.set_value(key, gsttestutil.value_array(GObject.TYPE_DOUBLE, value))
                else:
                    param.set_value(key, value)
            meta.add_param(param)
        pipeline.set_state(Gst.State.PLAYING)
        src.emit("push-buffer", buf)
        src.emit("end-of-stream")
        texts = json_messages(gsttestutil.run_to_eos(pipeline))
        self.assertEqual(len(texts), 1)
        return self.validate(texts[0])

    def test_roi_params(self):
        obj = self.roi_frames("")
        self.assertEqual(obj["timestamp"], 2000000000)
        self.assertEqual(obj["objects"], [
            {"x": 4, "y": 6, "w": 20, "h": 30, "id": 10, "roi_type": "person",
             "vmoe": {"label": "cat", "label_id": 3, "confidence": 0.75,
                      "model": {"name": "fashion-vmoe"}, "experts": [2, 0],
                      "gates": [0.5, 0.25], "superclass": "animals"}},
            # label_id of the wrong type is left out, not made up.
            {"x": 30, "y": 0, "w": 34, "h": 48, "id": 11, "roi_type": "car",
             "vmoe": {"label": "dog"}},
            # A ROI without the attribute's param keeps its box only.
            {"x": 0, "y": 0, "w": 8, "h": 8, "id": 12, "roi_type": "face"}])

    def test_attribute_name(self):
        obj = self.roi_frames("attribute-name=other")
        self.assertEqual([o.get("other") for o in obj["objects"]],
                         [None, None, {"label": "x", "label_id": 1}])

    def test_classified_regions_match_vmoe_run_roi(self):
        """Regions added upstream (as a detector would), classified by
        vmoeclassify inference-region=roi-list, become one JSON object each,
        with what `vmoe run --roi` computes for the same pixels."""
        model = os.path.join(PARITY, "image_k1.safetensors")
        boxes = [("car", 3, 5, 30, 20), ("person", 40, 10, 20, 36)]
        pipeline = Gst.parse_launch(
            "videotestsrc num-buffers=%d pattern=ball ! video/x-raw,format=RGB,width=%d,"
            "height=%d,framerate=30/1 ! identity name=detector ! vmoeclassify model=%s "
            "inference-region=roi-list ! vmoemetaconvert post-messages=true ! "
            "appsink name=sink emit-signals=true sync=false" % (N, W, H, model))

        def add_boxes(pad, info):
            buf = info.get_buffer()
            # PyGObject holds a reference of its own to the probe's buffer
            # (pipelines/roi-classify.py says why this is discounted).
            buf.mini_object.refcount -= 1
            try:
                for i, (kind, x, y, w, h) in enumerate(boxes):
                    GstVideo.buffer_add_video_region_of_interest_meta(buf, kind, x, y, w, h).id = i
            finally:
                buf.mini_object.refcount += 1
            return Gst.PadProbeReturn.OK

        pipeline.get_by_name("detector").get_static_pad("src").add_probe(
            Gst.PadProbeType.BUFFER, add_boxes)
        frames = []

        def on_sample(sink):
            buf = sink.emit("pull-sample").get_buffer()
            frames.append(np.frombuffer(buf.extract_dup(0, buf.get_size()), np.uint8)
                          .reshape(H, W, 3))
            return Gst.FlowReturn.OK

        pipeline.get_by_name("sink").connect("new-sample", on_sample)
        texts = json_messages(gsttestutil.run_to_eos(pipeline))
        self.assertEqual(len(texts), N)
        for b, (kind, x, y, w, h) in enumerate(boxes):
            with tempfile.TemporaryDirectory() as tmp:
                npy = os.path.join(tmp, "frames.npy")
                np.save(npy, np.stack(frames))
                out = subprocess.run([VMOE, "run", "--batch", "1", "--roi", "%d,%d,%d,%d" % (x, y, w, h),
                                      model, npy], capture_output=True, text=True, timeout=60,
                                     check=True).stdout
            expected = [json.loads(line) for line in out.splitlines()]
            for i, text in enumerate(texts):
                obj = self.validate(text)
                roi = obj["objects"][b]
                self.assertEqual((roi["roi_type"], roi["id"], roi["x"], roi["y"], roi["w"], roi["h"]),
                                 (kind, b, x, y, w, h))
                attr, top = roi["vmoe"], expected[i]["top"][0]
                self.assertEqual(attr["label_id"], top["class"])
                self.assertAlmostEqual(attr["confidence"], top["score"], delta=1e-6)
                self.assertEqual(attr["experts"], expected[i]["experts"])
                self.assertEqual(attr["model"], {"name": "image_k1"})


if __name__ == "__main__":
    PLUGIN_DIR, VMOE, PARITY, SCHEMA = sys.argv[1:5]
    del sys.argv[1:5]
    gsttestutil.init(PLUGIN_DIR)
    unittest.main(verbosity=2)
