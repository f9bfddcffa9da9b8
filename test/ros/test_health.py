"""Health: rejection log lines are throttled per reason, not per call site."""

import pytest

pytest.importorskip('rclpy')
from tsa_ros.ros.health import ReasonThrottle


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_each_reason_has_its_own_clock():
    clock = FakeClock()
    throttle = ReasonThrottle(5.0, clock)
    assert throttle.allow('image')
    assert not throttle.allow('image')  # frequent rejections of one reason are quiet ...
    assert throttle.allow('weights')  # ... and do not hide the first line of another
    clock.now += 4.9
    assert not throttle.allow('image') and not throttle.allow('weights')
    clock.now += 0.2
    assert throttle.allow('image') and throttle.allow('weights')


def test_node_logs_the_first_line_of_every_reason(ros, capfd):
    from tsa_ros.ros.health import Health

    health = Health(ros.node('health_probe'))
    for _ in range(3):
        health.reject('image', 'bad encoding')
    health.reject('weights', 'bad signature')
    assert health.counters['rejected.image'] == 3 and health.counters['rejected.weights'] == 1
    err = capfd.readouterr().err  # rcutils logs to the process's stderr
    assert err.count('rejected input (image): bad encoding') == 1
    assert err.count('rejected input (weights): bad signature') == 1
