"""Shared pytest fixtures."""

import itertools
import os

import pytest

# Each test that talks DDS gets its own domain so parallel runs and other tests cannot cross-talk.
# 0-101 are the ids ROS 2 recommends; start high to stay away from a user's default domain 0.
_domain_ids = itertools.count(60 + os.getpid() % 20)


@pytest.fixture
def ros_domain_id(monkeypatch):
    """A fresh ROS_DOMAIN_ID, exported to this process and its children, localhost only."""
    domain_id = next(_domain_ids) % 101 or 1
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return domain_id


class RosHarness:
    """One rclpy context on its own domain, spun by a background executor thread.

    Nodes under test and probe nodes live in the same process but talk over real DDS
    (rclpy has no intra-process shortcut). ``wait_for`` polls a condition while the executor
    spins in its thread.
    """

    def __init__(self, domain_id):
        import threading

        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.nodes = []
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def add(self, node):
        """Spin ``node`` (built with ``context=harness.context``) until the harness closes."""
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def node(self, name, **kwargs):
        """A plain probe node in this context."""
        from rclpy.node import Node

        return self.add(Node(name, context=self.context, **kwargs))

    def wait_for(self, condition, timeout=30.0, interval=0.02):
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(interval)
        return condition()

    def close(self):
        for node in reversed(self.nodes):
            self.executor.remove_node(node)
            close = getattr(node, 'close', None)
            if close is not None:
                close()
            node.destroy_node()
        self.executor.shutdown()
        self.rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5)


@pytest.fixture
def ros(ros_domain_id):
    """A RosHarness on a fresh domain; nodes get ``context=ros.context``."""
    pytest.importorskip('rclpy')
    harness = RosHarness(ros_domain_id)
    yield harness
    harness.close()
