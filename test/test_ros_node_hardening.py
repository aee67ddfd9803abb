"""The attacks of issue 10 on the real node over DDS, each reproduced first, then the fixed behaviour.

References: the node's own counters and /diagnostics (every refused input counted, with its reason),
the localizer's output on the same image (for TF after odometry attacks), the process's peak RSS (a
decompression bomb must not be decoded), thread names (never two workers).
"""

from __future__ import annotations

import resource
import threading
import time

import numpy as np
import pytest
from nav_msgs.msg import Odometry
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.qos import QoSProfile, ReliabilityPolicy
from ros_helpers import TINY_CAMERA, blocking_localizer, tiny_frames
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger
from test_ros_node import Session as NodeSession

from visloc_core.data import messages as rosmsg
from visloc_core.geometry import PinholeCamera
from visloc_core.localizers.base import Status
from visloc_ros import conversions as conv
from visloc_ros.bench_robustness import png_bomb


class Session(NodeSession):
    """test_ros_node's node-under-test + probe, with a faster /diagnostics and a wait for bad input."""

    def __init__(self, artifact, compressed: bool = False, **params) -> None:
        super().__init__(artifact, compressed=compressed, **{"diagnostics_period_s": 0.1, **params})

    def camera_info(self, camera=TINY_CAMERA) -> None:
        self.send_camera_info(camera)

    def bad_after(self, n: int, what: str) -> str:
        self.probe.wait_for(lambda: self.node.counters()["bad_input"] >= n, what=what)
        return self.node.counters()["last_error"]


@pytest.fixture
def session(ros, tiny_artifact):
    made = []

    def make(**kw) -> Session:
        made.append(Session(tiny_artifact, **kw))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------- 10a bomb
def test_a_png_decompression_bomb_is_refused_from_its_header(session):
    """A 20000x20000 PNG of ~60 KB decodes to 1.2 GB (RGB): the node must refuse it before decoding."""
    bomb = png_bomb(20000, 20000)
    assert len(bomb) < 200_000
    s = session(compressed=True)
    s.camera_info()
    msg = CompressedImage(format="png", data=bomb)
    msg.header.stamp = conv.ns_to_stamp(1_000_000_000_000)
    rss0 = _peak_rss_mb()
    s.probe.image_pub.publish(msg)
    err = s.bad_after(1, "the bomb refused")
    assert "image too large" in err and "20000x20000" in err and "max_image_pixels" in err
    assert _peak_rss_mb() - rss0 < 300  # decoding it would take >= 400 MB (1 bit) to 1.2 GB (RGB)
    img, _ = tiny_frames([0.5])[0]
    s.probe.publish_frame(conv.rgb_to_compressed(img, "png", 1_000_000_000_001), wait_topic="pose")
    assert s.node.counters()["errors"] == 0


def test_the_decoder_reads_the_size_before_decoding(monkeypatch):
    """From-bag and the node share this decoder: with OpenCV's decoder disabled, a bomb is still refused
    (so nothing was decoded), and a limit can be raised for a real big camera."""
    import cv2

    bomb = CompressedImage(format="png", data=png_bomb(8000, 6000))  # 48 Mpx
    monkeypatch.setattr(cv2, "imdecode", lambda *a, **k: pytest.fail("decoded before the size check"))
    for fn in (rosmsg.compressed_image, rosmsg.image_rgb8):
        with pytest.raises(rosmsg.MalformedMessageError, match="image too large: 8000x6000"):
            fn(bomb)
    assert rosmsg.compressed_header(bomb, max_pixels=50_000_000)[2:] == (8000, 6000)


# ------------------------------------------------------------------------------------ 10b odometry
def _odom(stamp_ns: int, x: float) -> Odometry:
    m = Odometry()
    m.header.stamp = conv.ns_to_stamp(stamp_ns)
    m.header.frame_id, m.child_frame_id = "odom", "base_link"
    T = np.eye(4)
    T[0, 3] = x
    m.pose.pose = conv.T_to_pose(T)
    return m


@pytest.mark.parametrize("when", ["after images", "before any image"])
def test_one_odometry_message_from_2038_does_not_switch_map_to_odom_off(session, when):
    s = session(odom_frame="odom", base_frame="base_link")
    s.camera_info()
    img, _ = tiny_frames([0.5])[0]
    t0 = 1_000_000_000_000
    year_2038 = 2_147_483_000 * 1_000_000_000

    def odom_around(t: int) -> None:
        for k in (-2, -1, 0, 1, 2):
            s.probe.odom_pub.publish(_odom(t + k * 50_000_000, 0.01 * k))

        def stored() -> bool:  # the node holds the newest of these samples (not only earlier ones: a race)
            items = s.node._odom._items
            return bool(items) and items[-1][0] == t + 2 * 50_000_000

        s.probe.wait_for(stored, what="odometry stored")

    if when == "after images":
        odom_around(t0)
        s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t0, "cam_opt"), wait_topic="/tf")
    s.probe.odom_pub.publish(_odom(year_2038, 0.0))
    if when == "after images":  # judged against the image clock: refused and counted with the reason
        assert (
            "odometry stamped" in s.bad_after(1, "2038 odometry refused")
            and "image clock" in s.node.counters()["last_error"]
        )
    else:  # no image yet to judge by: stored, and the next normal sample restarts the buffer
        s.probe.wait_for(lambda: len(s.node._odom) == 1, what="2038 sample stored")
    t1 = t0 + 1_000_000_000
    odom_around(t1)
    n_tf = s.probe.count("/tf")
    for k in range(3):
        s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t1 + k, "cam_opt"), wait_topic="/tf")
    assert s.probe.count("/tf") == n_tf + 3 and s.node.counters()["tf_skipped"] == 0
    tf = s.probe.get("/tf")[-1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "odom")
    d = s.probe.fresh_diagnostics()
    assert int(d["odom_ignored"]) == 1 and int(d["bad_input"]) == 1
    # relocalize also clears the odometry buffer (anything a bad stamp left behind)
    fut = s.probe.relocalize.call_async(Trigger.Request())
    s.probe.wait_for(fut.done, what="relocalize")
    assert fut.result().success and len(s.node._odom) == 0
    odom_around(t1 + 2_000_000_000)
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t1 + 2_000_000_000, "cam_opt"), wait_topic="/tf")


# ----------------------------------------------------------------------------------------- 10c QoS
def test_default_qos_delivers_a_large_raw_image_and_a_best_effort_camera_is_reported(session):
    s = session()  # defaults: image_qos reliable
    assert s.node.get_parameter("image_qos").value == "reliable"
    big = np.zeros((720, 1280, 3), np.uint8)
    big[::7] = 200  # content does not matter here: the frame must ARRIVE (it is refused later by size)
    s.probe.image_pub.publish(conv.rgb_to_image(big, "rgb8", 1_000_000_000_000))
    s.probe.wait_for(lambda: s.node.counters()["received"] == 1, what="a 1280x720 raw image received")
    # a best-effort camera publisher cannot reach a reliable subscription: said in /diagnostics
    pub = s.probe.node.create_publisher(Image, "image", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    s.probe.wait_for(
        lambda: (
            "image_qos:=sensor_data"
            in (s.probe.get("/diagnostics")[-1].status[0].message if s.probe.get("/diagnostics") else "")
        ),
        what="QoS mismatch reported",
    )
    s.probe.node.destroy_publisher(pub)


def test_publishers_without_images_are_reported(session):
    s = session(image_qos="sensor_data")
    s.probe.wait_for(lambda: s.node.count_publishers("/image") >= 1, what="publisher seen")
    s.node._activated_mono -= 10.0  # as if activated 10 s ago, nothing received since
    s.probe.wait_for(
        lambda: (
            "but no image received"
            in (s.probe.get("/diagnostics")[-1].status[0].message if s.probe.get("/diagnostics") else "")
        ),
        what="no images reported",
    )
    d = s.probe.last_diagnostics()
    assert d["image_publishers"] == "1" and s.probe.get("/diagnostics")[-1].status[0].level == b"\x01"


# --------------------------------------------------------------------------------- 10d deactivate
def test_deactivate_with_a_frame_in_flight_never_gives_two_workers(session):
    s = session(transition_timeout_s=0.3)
    s.camera_info()
    release = blocking_localizer(s.node)  # a model call that takes "forever"
    img, _ = tiny_frames([0.5])[0]
    t0 = 2_000_000_000_000
    s.probe.image_pub.publish(conv.rgb_to_image(img, "rgb8", t0))
    s.probe.wait_for(lambda: s.node._worker.mailbox._item is None and s.node.counters()["received"] == 1)
    s.probe.wait_for(lambda: s.node._worker._busy_since, what="frame in flight")
    # deactivate returns although the frame is still in flight (it would hang here if it waited)
    assert s.node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert s.node._worker.lingering_s() > 0
    n_diag = s.probe.count("/diagnostics")
    s.probe.wait_for(lambda: s.probe.count("/diagnostics") > n_diag + 2, what="diagnostics keep coming")
    assert "still being localized" in s.probe.get("/diagnostics")[-1].status[0].message
    # activate while it still runs: refused with the reason, so never two workers
    assert s.node.trigger_activate() != TransitionCallbackReturn.SUCCESS
    assert "still localizing a frame" in s.node._problems.last_text
    assert sum(t.name == "visloc-localizer" and t.is_alive() for t in threading.enumerate()) == 1
    release.set()
    s.probe.wait_for(lambda: s.node._worker.lingering_s() == 0 and not s.node._worker._busy_since, what="frame done")
    assert s.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    s.probe.wait_for(lambda: sum(t.name == "visloc-localizer" and t.is_alive() for t in threading.enumerate()) == 1)
    s.probe.wait_connected()
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t0 + 1), wait_topic="pose")
    # the frame that finished after deactivate was discarded: only the new one was published
    assert [rosmsg.stamp_ns(m.header) for m in s.probe.get("localization")] == [t0 + 1]


# ------------------------------------------------------------------------------ 10f / 10j inputs
def _info(**change):
    info = conv.camera_to_camera_info(TINY_CAMERA, 0, "cam_opt")
    for k, v in change.items():
        setattr(info, k, v)
    return info


def _k(fx=50.0, fy=50.0, cx=31.5, cy=23.5, row3=(0.0, 0.0, 1.0)):
    return [fx, 0.0, cx, 0.0, fy, cy, *row3]


BAD_CAMERA_INFOS = [
    (_info(k=_k(fx=1e-300, fy=1e-300)), "focal length is absurd"),
    (_info(k=_k(fx=1e300, fy=1e300)), "focal length is absurd"),
    (_info(k=_k(cx=-1e9)), "principal point far outside"),
    (_info(k=_k(row3=(0.0, 0.1, 1.0))), "not a pinhole matrix"),
    (_info(k=_k(row3=(0.0, 0.0, 2.0))), "not a pinhole matrix"),
    (_info(d=[0.1, 0.01, 0.0]), "D has 3 coefficients for plumb_bob"),
    (_info(d=[0.01] * 100), "D has 100 coefficients for plumb_bob"),
    (_info(distortion_model="equidistant", d=[0.1, 0.01, 0.0, 0.0]), "unsupported distortion model 'equidistant'"),
]


def test_bad_images_and_camera_infos_are_refused_with_a_reason_and_diagnostics_recover(session):
    s = session(diagnostics_window_s=1.0)
    n = 0
    for info, text in BAD_CAMERA_INFOS:
        s.probe.info_pub.publish(info)
        n += 1
        assert text in s.bad_after(n, text)
    s.camera_info()
    img, _ = tiny_frames([0.5])[0]
    t0 = 3_000_000_000_000
    rng = np.random.default_rng(0)
    frames = [
        (np.zeros_like(img), t0, "image is blank"),
        (np.full_like(img, 255), t0 + 1, "image is blank"),
        (rng.integers(0, 256, img.shape, dtype=np.uint8), t0 + 2, "image looks like noise"),
        (img, -5_000_000_000, "negative image stamp"),
        (img, 0, "image stamp is zero"),
    ]
    for pixels, stamp, text in frames:
        msg = conv.rgb_to_image(pixels, "rgb8", max(stamp, 0))
        if stamp < 0:
            msg.header.stamp.sec = stamp // 1_000_000_000
        s.probe.image_pub.publish(msg)
        n += 1
        assert text in s.bad_after(n, text)
    # a 1x1 image with a matching 1x1 camera_info
    s.probe.info_pub.publish(conv.camera_to_camera_info(PinholeCamera(1, 1, 1.0, 1.0, 0.0, 0.0), 0, "cam_opt"))
    s.probe.wait_for(lambda: s.node._camera is not None and s.node._camera.width == 1)
    s.probe.image_pub.publish(conv.rgb_to_image(img[:1, :1].copy(), "rgb8", t0 + 3))
    n += 1
    assert "image is 1x1 pixels" in s.bad_after(n, "1x1")
    # never LOCALIZED: the decoded-but-empty frames went out as REJECTED with the reason, nothing on pose/TF
    # (the bad_input counter rises before the REJECTED result is published: wait for the 4th to arrive)
    s.probe.wait_for(lambda: s.probe.count("localization") >= 4, what="4 REJECTED results")
    results = s.probe.get("localization")
    assert [m.status for m in results] == [Status.REJECTED] * 4
    assert {m.status_reason.split(" (")[0] for m in results} >= {
        "image is blank",
        "image is 1x1 pixels; need at least 16x16",
    }
    assert s.probe.count("pose") == 0 and s.probe.count("/tf") == 0
    c = s.node.counters()
    assert (c["bad_input"], c["errors"], c["localized"]) == (n, 0, 0)
    s.probe.wait_for(lambda: s.probe.last_diagnostics().get("bad_input") == str(n), what="diagnostics up to date")
    d = s.probe.last_diagnostics()
    assert "focal length is absurd" in d["problems_by_reason"] and "image is blank" in d["problems_by_reason"]
    # bad input stops: /diagnostics goes back to OK after the window, and good frames are localized
    s.camera_info()
    s.probe.publish_frame(conv.rgb_to_image(img, "rgb8", t0 + 10), wait_topic="pose")
    s.probe.wait_for(lambda: s.probe.get("/diagnostics")[-1].status[0].level == b"\x00", what="OK again")
    assert s.probe.last_diagnostics()["bad_input"] == str(n)  # the totals stay


def test_a_stopped_worker_never_publishes():
    """(unit) the worker of an older activation is not current: its results are never published."""
    from visloc_ros.frame_worker import FrameWorker

    seen = []
    gate = threading.Event()
    w = FrameWorker(lambda item: (gate.wait(30), seen.append(w.is_current())), lambda e: None)
    w.start()
    w.put("frame")
    deadline = time.monotonic() + 30
    while not w._busy_since and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not w.stop(0.05)
    gate.set()
    w.start(30.0)  # waits for the lingering one
    assert seen == [False]
    assert w.stop(5.0)
