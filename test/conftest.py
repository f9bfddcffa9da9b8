"""Shared pytest fixtures."""

import fcntl
import os
import tempfile

import pytest

# Each test that talks DDS gets its own domain so tests (also of concurrent pytest runs on the
# machine) cannot cross-talk: an id is claimed with an exclusive lock file for the test's
# duration. 1-101 are the ids ROS 2 recommends; start high to keep off a user's domain 0.
_DOMAINS = range(40, 101)


def _claim_domain():
    for offset in range(len(_DOMAINS)):
        domain_id = _DOMAINS[(os.getpid() + offset) % len(_DOMAINS)]
        path = os.path.join(tempfile.gettempdir(), f'tsa_ros_domain_{domain_id}.lock')
        handle = open(path, 'w')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return domain_id, handle
        except BlockingIOError:
            handle.close()
    raise RuntimeError('no free ROS domain id for the test')


@pytest.fixture(scope='session', autouse=True)
def weights_key_file(tmp_path_factory):
    """A real key file (tsa keys init) for every node and `tsa up` the suite starts.

    Exported as TSA_WEIGHTS_KEY_FILE so child processes find it too; the user's own key file
    is never read or created by the tests.
    """
    from tsa_ros.keys import KEY_FILE_ENV, init_key

    path, _ = init_key(tmp_path_factory.mktemp('keys') / 'weights.key')
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_FILE_ENV, str(path))
        yield path


@pytest.fixture(autouse=True)
def _torch_threads():
    """Nodes built in the test process set its torch threads (a segmenter takes its share
    of the cores, the learner one thread): later tests get torch's count back."""
    import torch

    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def ros_domain_id(monkeypatch):
    """A ROS_DOMAIN_ID no other running test uses, exported to children, localhost only."""
    domain_id, lock = _claim_domain()
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    yield domain_id
    lock.close()


@pytest.fixture(scope='module')
def module_ros_env():
    """Environment for child processes of a module-scoped fixture: its own domain, localhost."""
    domain_id, lock = _claim_domain()
    yield os.environ | {
        'ROS_DOMAIN_ID': str(domain_id),
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
    }
    lock.close()


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


@pytest.fixture(scope='session')
def tiny_root(tmp_path_factory):
    """The tiny synthetic data set (seed 3), generated once per test session."""
    from tsa_ros.data.generate import generate

    root = tmp_path_factory.mktemp('synth') / 'tiny'
    generate(root, 'tiny', seed=3, workers=2, progress=False)
    return root
