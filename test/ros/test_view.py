"""tsa view over real DDS: a Foxglove WebSocket client gets the graph's raw CDR messages."""

import json
import struct
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('foxglove')
from rclpy.serialization import deserialize_message
from std_msgs.msg import Header
from tsa_msgs.msg import FusedSegmentation
from websockets.sync.client import connect

from tsa_ros.errors import ConfigError
from tsa_ros.ros import convert, qos
from tsa_ros.ros.view import Relay

H, W = 6, 8
FUSED = '/tsa/fused/segmentation'


def labels(i):
    return np.random.default_rng(200 + i).integers(0, 19, (H, W), dtype=np.uint8)


def fused_msg(i):
    header = Header(frame_id='camera')
    header.stamp.sec, header.stamp.nanosec = 500 + i, 9
    msg = FusedSegmentation(header=header, fusion_mode='majority', tie_rule='teacher')
    msg.labels = convert.image_msg(labels(i), 'mono8', header)
    msg.roles, msg.disagreement = ['teacher', 'student', 'adaptive'], [0.0, 0.5, 0.25]
    msg.quorum, msg.suspected_role = 2, 'student'
    return msg


def advertised(ws, topic, timeout=20.0):
    """The channel the server advertises for ``topic`` (serverInfo and others pass by)."""
    deadline = time.monotonic() + timeout
    ops = []
    while time.monotonic() < deadline:
        frame = ws.recv(timeout=deadline - time.monotonic())
        if isinstance(frame, bytes):
            continue
        message = json.loads(frame)
        ops.append(message['op'])
        if message['op'] == 'advertise':
            for channel in message['channels']:
                if channel['topic'] == topic:
                    return ops, channel
    raise AssertionError(f'{topic} was never advertised (ops seen: {ops})')


def test_a_foxglove_client_receives_the_fused_segmentation_as_cdr(ros):
    probe = ros.node('probe')
    relay = Relay(
        ros.node('view'),
        port=0,
        topics=['fused/segmentation', 'fused/labels'],
        discovery_period_s=0.1,
    ).start()
    try:
        assert relay.port > 0
        # The topic appears after the relay started: it is picked up when it has a writer.
        fused = probe.create_publisher(FusedSegmentation, FUSED, qos.RESULTS)
        assert ros.wait_for(
            lambda: fused.get_subscription_count() and relay.taps.publisher_count(FUSED),
            timeout=20,
        )
        with connect(relay.url, subprotocols=['foxglove.sdk.v1'], open_timeout=10) as ws:
            assert ws.subprotocol == 'foxglove.sdk.v1'
            ops, channel = advertised(ws, FUSED)
            assert ops[0] == 'serverInfo'
            assert (channel['encoding'], channel['schemaName'], channel['schemaEncoding']) == (
                'cdr',
                'tsa_msgs/msg/FusedSegmentation',
                'ros2msg',
            )
            assert f'{"=" * 80}\nMSG: sensor_msgs/Image\n' in channel['schema']
            subscription = 7
            subscribe = {'id': subscription, 'channelId': channel['id']}
            ws.send(json.dumps({'op': 'subscribe', 'subscriptions': [subscribe]}))
            # The subscription takes effect asynchronously: publish until a frame comes back.
            frame, sent, deadline = None, 0, time.monotonic() + 20
            while frame is None and time.monotonic() < deadline:
                fused.publish(fused_msg(sent))
                sent += 1
                try:
                    reply = ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                frame = reply if isinstance(reply, bytes) else None
    finally:
        counts = relay.stop()
    assert frame is not None, f'no message data after {sent} messages'
    # Message data: opcode 0x01, subscription id u32 LE, log time u64 LE, then the payload.
    opcode, sub_id, log_time = struct.unpack_from('<BIQ', frame)
    assert (opcode, sub_id) == (0x01, subscription)
    assert abs(log_time - time.time_ns()) < 60 * 10**9  # receive time, not the header stamp
    msg = deserialize_message(frame[13:], FusedSegmentation)
    index = msg.header.stamp.sec - 500
    assert 0 <= index < sent and msg.suspected_role == 'student'
    np.testing.assert_array_equal(convert.labels_from_image(msg.labels), labels(index))
    assert counts[FUSED] >= 1 and '/tsa/fused/labels' not in counts


def test_a_port_in_use_is_a_one_line_error(ros):
    node = ros.node('view')
    first = Relay(node, port=0, topics=['/x']).start()
    try:
        with pytest.raises(ConfigError, match=f'127.0.0.1:{first.port}: .*in use'):
            Relay(node, port=first.port, topics=['/y']).start()
    finally:
        first.stop()
    with pytest.raises(ConfigError, match='--port'):
        Relay(node, port=70000)
