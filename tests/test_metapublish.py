"""vmoemetapublish: file output parsed back, and MQTT against a real
broker (Debian's mosquitto on a free loopback port with its own config,
never the system service): every message once and in order, a broker
restart mid-stream, no broker at all.

    /usr/bin/python3 tests/test_metapublish.py PLUGIN_DIR
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import gsttestutil
from gsttestutil import Gst

PLUGIN_DIR = None
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
W, H = 32, 24


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def frame_ns(i, fps):
    return i * 1000000000 // fps


def source(n, fps, live=False):
    """n frames, each with an (empty) result object from vmoemetaconvert:
    the publisher sees the same metas as behind vmoeclassify, without a
    model's cost."""
    return ("videotestsrc num-buffers=%d is-live=%s ! video/x-raw,width=%d,height=%d,"
            "framerate=%d/1 ! vmoemetaconvert add-empty-results=true source=test"
            % (n, "true" if live else "false", W, H, fps))


class Broker:
    def __init__(self, tmp, port):
        self.port = port
        self.conf = os.path.join(tmp, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\npersistence false\n" % port)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("mosquitto did not listen on port %d" % self.port)

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


class Subscriber:
    """mosquitto_sub on `topic`, its lines gathered by a thread."""

    def __init__(self, port, topic):
        self.port, self.topic = port, topic
        self.lines = []
        self.proc = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1"],
            stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read)
        self.thread.start()
        self.wait_subscribed()

    def _read(self):
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))

    def wait_subscribed(self):
        """Publishes probes until one comes back: the subscription stands."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(self.port),
                            "-t", self.topic, "-m", "probe"], timeout=10)
            time.sleep(0.1)
            if "probe" in self.lines:
                return
        raise AssertionError("the subscriber did not get its probe")

    def messages(self):
        return [json.loads(line) for line in self.lines if line != "probe"]

    def close(self):
        self.proc.terminate()
        self.thread.join(timeout=10)
        self.proc.wait(timeout=10)


def texts(messages, kind):
    out = []
    for m in messages:
        if m.type == kind:
            err, _ = m.parse_warning() if kind == Gst.MessageType.WARNING else m.parse_info()
            out.append(err.message)
    return out


class FileTest(unittest.TestCase):
    def publish(self, n, props):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.json")
            pipeline = Gst.parse_launch("%s ! vmoemetapublish file-path=%s %s ! fakesink"
                                        % (source(n, 30), path, props))
            gsttestutil.run_to_eos(pipeline)
            with open(path) as f:
                return f.read()

    def test_json_array(self):
        out = self.publish(5, "file-format=json")
        objs = json.loads(out)
        self.assertEqual([o["timestamp"] for o in objs], [frame_ns(i, 30) for i in range(5)])
        self.assertTrue(all(o["source"] == "test" and o["objects"] == [] for o in objs))

    def test_json_array_without_messages(self):
        self.assertEqual(json.loads(self.publish(0, "file-format=json")), [])

    def test_json_lines(self):
        # Pretty-printed objects are written one per line all the same.
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "out.jsonl")
            pipeline = Gst.parse_launch(
                "%s json-indent=2 ! vmoemetapublish file-path=%s file-format=json-lines ! "
                "fakesink" % (source(4, 30), path))
            gsttestutil.run_to_eos(pipeline)
            with open(path) as f:
                lines = f.read().splitlines()
        self.assertEqual([json.loads(l)["timestamp"] for l in lines],
                         [frame_ns(i, 30) for i in range(4)])

    def test_unwritable_path_is_an_error(self):
        pipeline = Gst.parse_launch("%s ! vmoemetapublish file-path=/nonexistent/dir/x.json ! "
                                    "fakesink" % source(1, 30))
        with self.assertRaisesRegex(AssertionError, "could not open '/nonexistent/dir/x.json'"):
            gsttestutil.run_to_eos(pipeline)


class MqttTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.port = free_port()
        self.broker = Broker(self.tmp.name, self.port)

    def tearDown(self):
        self.broker.stop()
        self.tmp.cleanup()

    def pipeline(self, src, props=""):
        p = Gst.parse_launch("%s ! vmoemetapublish name=pub method=mqtt address=127.0.0.1:%d "
                             "topic=vmoe/test mqtt-client-id=test-%d %s ! fakesink sync=%s"
                             % (src, self.port, os.getpid(), props,
                                "true" if "is-live=true" in src else "false"))
        return p, p.get_by_name("pub")

    def test_every_message_once_in_order(self):
        self.broker.start()
        sub = Subscriber(self.port, "vmoe/test")
        n = 50
        pipeline, pub = self.pipeline(source(n, 30))
        gsttestutil.run_to_eos(pipeline)
        time.sleep(0.3)
        sub.close()
        got = [m["timestamp"] for m in sub.messages()]
        self.assertEqual(got, [frame_ns(i, 30) for i in range(n)])
        self.assertEqual(pub.get_property("published"), n)
        self.assertEqual(pub.get_property("dropped"), 0)

    def test_broker_restart_mid_stream(self):
        self.broker.start()
        sub = Subscriber(self.port, "vmoe/test")
        fps, n = 20, 100                  # 5 s of live frames
        pipeline, pub = self.pipeline(source(n, fps, live=True))

        def outage():
            time.sleep(1.5)
            self.broker.stop()
            time.sleep(1.0)
            self.broker.start()

        t = threading.Thread(target=outage)
        t.start()
        start = time.monotonic()
        messages = gsttestutil.run_to_eos(pipeline, timeout_s=30)
        t.join()
        # The pipeline kept its pace: no frame waited for the broker.
        self.assertLess(time.monotonic() - start, n / fps + 3)
        time.sleep(0.3)
        sub.close()
        got = [m["timestamp"] for m in sub.messages()]
        self.assertEqual(got, sorted(set(got)), "duplicated or out of order")
        # A live source's timestamps start at its running time: frame i is
        # at got[0] + i / fps.  After the restart (and the subscriber's own
        # reconnect) every frame arrives, up to the last.
        tail = [got[0] + frame_ns(i, fps) for i in range(n - fps, n)]
        self.assertEqual(got[-len(tail):], tail)
        self.assertTrue(any("lost the MQTT broker" in w
                            for w in texts(messages, Gst.MessageType.WARNING)))
        self.assertEqual(len([i for i in texts(messages, Gst.MessageType.INFO)
                              if i.startswith("connected")]), 2)

    def test_no_broker(self):
        # Nothing listens on self.port: a warning, retries, the stream runs
        # to its end, and what could not be sent is counted as dropped.
        # Live, so that the refused connect is reported before the stream ends.
        n, fps = 30, 30
        pipeline, pub = self.pipeline(source(n, fps, live=True), "max-queue-size=10")
        start = time.monotonic()
        messages = gsttestutil.run_to_eos(pipeline)
        self.assertLess(time.monotonic() - start, n / fps + 3)
        warnings = texts(messages, Gst.MessageType.WARNING)
        self.assertTrue(any(w.startswith("could not connect to the MQTT broker at 127.0.0.1:%d"
                                         % self.port) for w in warnings), warnings)
        self.assertTrue(any("queue is full (10 messages)" in w for w in warnings), warnings)
        self.assertEqual(pub.get_property("dropped"), n)
        self.assertEqual(pub.get_property("published"), 0)

    def test_bad_address_is_an_error(self):
        for address in ["localhost", "localhost:0", "localhost:99999", ":1883"]:
            p = Gst.parse_launch("%s ! vmoemetapublish method=mqtt address=%s ! fakesink"
                                 % (source(1, 30), address))
            with self.assertRaisesRegex(AssertionError, "is not host:port|has no host"):
                gsttestutil.run_to_eos(p)


if __name__ == "__main__":
    PLUGIN_DIR = sys.argv[1]
    del sys.argv[1]
    gsttestutil.init(PLUGIN_DIR)
    unittest.main(verbosity=2)
