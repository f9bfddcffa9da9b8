"""Whether the ROS 2 side of the package can run in this Python environment."""

from __future__ import annotations


def ros_problem() -> str | None:
    """None when rclpy and the package's messages import, else why not."""
    import importlib

    try:
        importlib.import_module('rclpy')
        importlib.import_module('tsa_msgs.msg')
    except ImportError as exc:
        return f'{exc} (run `make setup`, or source a ROS 2 workspace that has tsa_msgs)'
    return None
