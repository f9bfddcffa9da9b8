"""A separate process for test_ros_plumbing: publishes tsa_msgs/Segmentation until killed."""

import sys

import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import Image
from tsa_msgs.msg import Segmentation


def build_message(index: int) -> Segmentation:
    """A deterministic message whose content the receiver can check."""
    height, width = 48, 64
    labels = (np.arange(height * width, dtype=np.uint32) * 7 + index) % 19
    msg = Segmentation()
    msg.header.stamp.sec = 1000 + index
    msg.header.frame_id = 'camera'
    msg.role = 'student'
    msg.arch = 'erfnet'
    msg.model_version = index
    msg.labels = Image(height=height, width=width, encoding='mono8', step=width)
    msg.labels.data = labels.astype(np.uint8).tobytes()
    msg.posteriors_encoding = Segmentation.POSTERIORS_FLOAT16
    msg.num_classes, msg.posteriors_height, msg.posteriors_width = 19, 4, 8
    msg.posteriors = np.full(19 * 4 * 8, 1 / 19, np.float16).tobytes()
    msg.inference_time_ms = 12.5
    return msg


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rclpy.init()
    node = Node('tsa_test_peer_publisher')
    pub = node.create_publisher(Segmentation, 'tsa_test/segmentation', 10)
    sent = 0

    def tick():
        nonlocal sent
        pub.publish(build_message(sent))
        sent += 1

    node.create_timer(0.05, tick)
    try:
        while rclpy.ok() and sent < count:
            rclpy.spin_once(node, timeout_sec=0.1)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
