"""Per-node counters, timings and rejections, published on ``/diagnostics``.

Bad input is rejected with one rate-limited log line and a counter here; the node keeps
running. Nodes call :meth:`Health.reject`, :meth:`Health.count` and :meth:`Health.timing`;
a 1 Hz timer publishes a ``diagnostic_msgs/DiagnosticArray``.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node

from tsa_ros.ros import qos

#: Seconds between two log lines of one rejection reason.
LOG_EVERY_S = 5.0


class ReasonThrottle:
    """Lets one event per key through every ``period_s`` seconds, each key on its own clock.

    rclpy's ``throttle_duration_sec`` keys on the call site, so one frequent reason would
    hide the first line of every other reason logged from the same line of code.
    """

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._last: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            return False
        self._last[key] = now
        return True


class Health:
    """Diagnostics of one node: counters, a running mean of timings and a status line."""

    def __init__(self, node: Node, period_s: float = 1.0) -> None:
        self.node = node
        self._lock = threading.Lock()
        self._log_throttle = ReasonThrottle(LOG_EVERY_S)
        self.counters: dict[str, int] = defaultdict(int)
        self._timings: dict[str, tuple[float, float]] = {}  # key -> (last, mean)
        self._values: dict[str, str] = {}
        self.level = DiagnosticStatus.OK
        self.message = 'ok'
        self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', qos.RESULTS)
        self._timer = node.create_timer(period_s, self.publish)

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def reject(self, reason: str, detail: str) -> None:
        """Count a rejected input and log one line at most every 5 s per reason."""
        with self._lock:
            self.counters[f'rejected.{reason}'] += 1
            log = self._log_throttle.allow(reason)
        if log:
            self.node.get_logger().warning(f'rejected input ({reason}): {detail}')

    def timing(self, key: str, ms: float) -> None:
        with self._lock:
            _, mean = self._timings.get(key, (ms, ms))
            self._timings[key] = (ms, 0.9 * mean + 0.1 * ms)

    def set(self, key: str, value: object) -> None:
        with self._lock:
            self._values[key] = str(value)

    def status(self, level: int, message: str) -> None:
        with self._lock:
            self.level, self.message = level, message

    def snapshot(self) -> DiagnosticStatus:
        with self._lock:
            values = [KeyValue(key=k, value=str(v)) for k, v in sorted(self.counters.items())]
            for key, (last, mean) in sorted(self._timings.items()):
                values += [
                    KeyValue(key=f'{key}.last_ms', value=f'{last:.2f}'),
                    KeyValue(key=f'{key}.mean_ms', value=f'{mean:.2f}'),
                ]
            values += [KeyValue(key=k, value=v) for k, v in sorted(self._values.items())]
            return DiagnosticStatus(
                level=self.level,
                name=self.node.get_fully_qualified_name(),
                message=self.message,
                hardware_id='tsa_ros',
                values=values,
            )

    def publish(self) -> None:
        array = DiagnosticArray(status=[self.snapshot()])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self._pub.publish(array)
