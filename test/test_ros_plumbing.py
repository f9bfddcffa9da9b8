"""Two separate processes exchange the package's own custom message over real DDS."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip('rclpy')
import rclpy
from rclpy.node import Node
from tsa_msgs.msg import Segmentation

PEER = Path(__file__).with_name('ros_peer_publisher.py')


def test_custom_message_crosses_process_boundary(ros_domain_id):
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=ros_domain_id)
    node = Node('tsa_test_receiver', context=context)
    received = []
    node.create_subscription(Segmentation, 'tsa_test/segmentation', received.append, 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=context)
    executor.add_node(node)
    peer = subprocess.Popen([sys.executable, str(PEER), '400'])
    try:
        deadline = time.monotonic() + 30.0
        while len(received) < 3 and time.monotonic() < deadline and peer.poll() is None:
            executor.spin_once(timeout_sec=0.1)
    finally:
        peer.kill()
        peer.wait()
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)

    assert len(received) >= 3, 'no tsa_msgs/Segmentation arrived from the other process'
    msg = received[-1]
    index = msg.model_version
    assert msg.header.stamp.sec == 1000 + index
    assert (msg.role, msg.arch, msg.header.frame_id) == ('student', 'erfnet', 'camera')
    assert (msg.labels.height, msg.labels.width, msg.labels.encoding) == (48, 64, 'mono8')
    expected = ((np.arange(48 * 64, dtype=np.uint32) * 7 + index) % 19).astype(np.uint8)
    np.testing.assert_array_equal(np.frombuffer(bytes(msg.labels.data), np.uint8), expected)
    posteriors = np.frombuffer(bytes(msg.posteriors), np.float16).reshape(19, 4, 8)
    np.testing.assert_allclose(posteriors.sum(axis=0), 1.0, atol=1e-2)
    assert msg.posteriors_encoding == Segmentation.POSTERIORS_FLOAT16
