"""The bag player replays a tsa bag over real DDS: bytes, stamps, timing, offset, loop, exit."""

import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool

from tsa_ros.config import ConfigError
from tsa_ros.data.bag import (
    TOPIC_CAMERA_INFO,
    TOPIC_GROUND_TRUTH,
    TOPIC_IMAGE,
    BagError,
    BagFrame,
    BagReader,
    sequence_stamps,
    write_bag,
)
from tsa_ros.data.camera import CameraModel
from tsa_ros.ros import qos
from tsa_ros.ros.bag_player_node import BagPlayerNode

H, W = 32, 48
START_NS = 1_500_000_000_123_456_789
TYPES = {TOPIC_IMAGE: Image, TOPIC_CAMERA_INFO: CameraInfo, TOPIC_GROUND_TRUTH: Image}


@pytest.fixture
def bag(tmp_path):
    """6 frames at 17 Hz, ground truth on frames 1 and 4."""
    rng = np.random.default_rng(0)
    camera = CameraModel.cityscapes_default(W, H)
    frames = [
        BagFrame(
            stamp,
            rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            camera,
            ground_truth=rng.integers(0, 19, (H, W), dtype=np.uint8) if i in (1, 4) else None,
            frame_id='cam_left',
        )
        for i, stamp in enumerate(sequence_stamps(6, START_NS))
    ]
    path = tmp_path / 'seq'
    write_bag(frames, path)
    return path


def recorded(path, topic):
    """(bag time, raw CDR bytes) of every message of ``topic``, in bag order."""
    with BagReader(path) as reader:
        return [(t, bytes(raw)) for _, t, _, raw in reader.raw_messages([topic])]


def stamp_ns(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


class Probe:
    """Raw subscriptions to the bag's topics, recording bytes and arrival times."""

    def __init__(self, ros, topics):
        self.node = ros.node('probe')
        self.got = {topic: [] for topic in topics}
        self.subs = {
            topic: self.node.create_subscription(
                TYPES[topic],
                topic,
                lambda raw, t=topic: self.got[t].append((time.monotonic(), raw)),
                qos.RESULTS,
                raw=True,
            )
            for topic in topics
        }

    def messages(self, topic):
        """The received messages of ``topic`` deserialised, in arrival order."""
        from rclpy.serialization import deserialize_message

        return [deserialize_message(raw, TYPES[topic]) for _, raw in self.got[topic]]


def player(ros, path, **params):
    overrides = [Parameter('bag', value=str(path))]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(BagPlayerNode(context=ros.context, parameter_overrides=overrides))


def test_replays_every_message_with_recorded_bytes_stamps_and_rate(ros, bag):
    topics = [TOPIC_IMAGE, TOPIC_CAMERA_INFO, TOPIC_GROUND_TRUTH]
    node = player(ros, bag, rate=1.0, wait_for_subscribers=1, wait_timeout_s=30.0)
    # Subscribe to the image topic last: it starts playback, so the others are matched by then.
    probe = Probe(ros, topics[1:])
    assert ros.wait_for(lambda: all(s.get_publisher_count() for s in probe.subs.values()))
    assert not node.published, 'playback started before anyone subscribed to the image'
    probe.got[TOPIC_IMAGE] = []
    probe.subs[TOPIC_IMAGE] = probe.node.create_subscription(
        Image,
        TOPIC_IMAGE,
        lambda raw: probe.got[TOPIC_IMAGE].append((time.monotonic(), raw)),
        qos.RESULTS,
        raw=True,
    )
    done = []
    probe.node.create_subscription(Bool, '/bag_player/done', done.append, qos.LATCHED)

    assert ros.wait_for(lambda: done and done[-1].data, timeout=20)
    assert ros.wait_for(lambda: all(len(probe.got[t]) == len(recorded(bag, t)) for t in topics))
    for topic in topics:
        expected = recorded(bag, topic)
        # Identical CDR bytes (so identical stamps and pixels), in bag order.
        assert [raw for _, raw in probe.got[topic]] == [raw for _, raw in expected], topic
        assert [stamp_ns(m) for m in probe.messages(topic)] == [t for t, _ in expected]
    assert len(probe.got[TOPIC_GROUND_TRUTH]) == 2
    # 6 frames at 17 Hz span 5/17 = 0.29 s at rate 1; allow for scheduling, not for "as fast".
    arrivals = [t for t, _ in probe.got[TOPIC_IMAGE]]
    assert arrivals[-1] - arrivals[0] >= 0.22
    assert node.published == 14 and node.loops == 1


def test_start_offset_and_topics_select_messages(ros, bag):
    stamps = sequence_stamps(6, START_NS)
    probe = Probe(ros, [TOPIC_IMAGE, TOPIC_GROUND_TRUTH])
    done = []
    probe.node.create_subscription(Bool, '/bag_player/done', done.append, qos.LATCHED)
    # Start 2.5 frame periods in: frames 3, 4 and 5 remain.
    player(
        ros, bag, rate=0.0, start_offset_s=2.5 / 17, topics=[TOPIC_IMAGE], wait_for_subscribers=1
    )
    assert ros.wait_for(lambda: done and done[-1].data and len(probe.got[TOPIC_IMAGE]) == 3)
    assert [stamp_ns(m) for m in probe.messages(TOPIC_IMAGE)] == stamps[3:]
    time.sleep(0.2)
    assert probe.got[TOPIC_GROUND_TRUTH] == [], 'a topic left out of `topics` was replayed'


def test_loop_replays_the_bag_again(ros, bag):
    stamps = sequence_stamps(6, START_NS)
    probe = Probe(ros, [TOPIC_IMAGE])
    node = player(ros, bag, rate=4.0, loop=True, topics=[TOPIC_IMAGE], wait_for_subscribers=1)
    assert ros.wait_for(lambda: len(probe.got[TOPIC_IMAGE]) >= 14, timeout=20)
    messages = probe.messages(TOPIC_IMAGE)
    got = [stamp_ns(m) for m in messages]
    # Reliable and paced: every pass delivers the frames in bag order; pass k has its stamps
    # moved by k x (5 frame gaps + 1), so the stream goes on at 17 Hz instead of repeating.
    period = stamps[-1] - stamps[0] + round((stamps[-1] - stamps[0]) / 5)
    want = [s + k * period for k in range(3) for s in stamps][:14]
    assert all(abs(a - b) <= 1 for a, b in zip(got[:14], want, strict=True)), (got, want)
    assert len(set(got)) == len(got), 'a stamp was sent twice'
    # Only the stamp moved: the pixels of pass 2 are those of pass 1.
    assert bytes(messages[6].data) == bytes(messages[0].data)
    assert node.loops >= 2 and not node.done.is_set()


def test_exit_when_done_shuts_the_context_down(ros_domain_id, bag):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    # Nobody subscribes: the wait for a subscriber times out and the player plays anyway.
    node = BagPlayerNode(
        context=context,
        parameter_overrides=[
            Parameter('bag', value=str(bag)),
            Parameter('rate', value=0.0),
            Parameter('wait_for_subscribers', value=1),
            Parameter('wait_timeout_s', value=0.2),
            Parameter('exit_when_done', value=True),
        ],
    )
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    deadline = time.monotonic() + 20
    try:
        while context.ok() and time.monotonic() < deadline:
            try:
                executor.spin_once(timeout_sec=0.05)
            except ExternalShutdownException:  # what main() sees, and treats as a normal exit
                break
        assert not context.ok(), 'the context is still up after the bag ended'
        assert node.done.is_set() and node.published == 14
    finally:
        node.close()
        node.destroy_node()
        executor.shutdown()
        context.try_shutdown()


def test_missing_or_bad_bag_is_a_clear_error(ros, tmp_path, bag):
    missing = tmp_path / 'no_such_bag'
    with pytest.raises(FileNotFoundError, match='no_such_bag'):
        BagPlayerNode(
            context=ros.context, parameter_overrides=[Parameter('bag', value=str(missing))]
        )
    with pytest.raises(ConfigError, match='bag'):
        BagPlayerNode(context=ros.context)
    with pytest.raises(BagError, match='/camera/nope'):
        BagPlayerNode(
            context=ros.context,
            parameter_overrides=[
                Parameter('bag', value=str(bag)),
                Parameter('topics', value=['/camera/nope']),
            ],
        )
    with pytest.raises(ConfigError, match='rate'):
        BagPlayerNode(
            context=ros.context,
            parameter_overrides=[Parameter('bag', value=str(bag)), Parameter('rate', value=-1.0)],
        )
