"""Replays a rosbag2 written by ``tsa data bag`` on machines without ``ros2 bag``.

Every message goes out on its recorded (absolute) topic, e.g. /camera/image_raw,
/camera/camera_info and /camera/ground_truth, with qos.RESULTS and its original bytes, so
header stamps are exactly the recorded ones and consumers join by stamp as with ``ros2 bag
play``. The messages are timed by their bag times divided by ``rate`` and sent from a
dedicated thread, so the executor is never blocked.

The player publishes the serialised CDR bytes as read from the bag (rclpy's ``publish``
accepts ``bytes``): no deserialisation, no copy of the pixels into Python objects.

``~/done`` (std_msgs/Bool, latched) is False while playing and True once the bag has ended
(never, when looping); ``exit_when_done`` then shuts the node's context down, which ends
``main()`` normally (useful for scripted replays). Diagnostics count the messages published
per topic and the loops completed.

When looping, pass k moves every header stamp by k times the bag's length plus one frame
gap (``stamp_offset_s`` in the diagnostics): consumers join and deduplicate by stamp, so
re-sent stamps would all be "late" after the first pass; moved ones make each pass new
frames to them, in the same order and spacing.

A missing or unreadable bag is an error at construction: the exception names the path.
"""

from __future__ import annotations

import importlib
import math
import threading
import time
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.duration import Duration
from rclpy.publisher import Publisher
from std_msgs.msg import Bool

from tsa_ros.config import ConfigError
from tsa_ros.data.bag import (
    HEADER_FIRST_TYPES,
    TOPIC_GROUND_TRUTH,
    TOPIC_IMAGE,
    BagError,
    BagReader,
    header_stamp_ns,
    shift_header_stamp,
)
from tsa_ros.ros import qos
from tsa_ros.ros.common import run
from tsa_ros.ros.health import Health
from tsa_ros.ros.lifecycle import ManagedNode
from tsa_ros.ros.params import check_overrides, declare_dataclass

#: Seconds between the progress lines of a replay.
_PROGRESS_S = 10.0
#: Longest wait for subscribers' acknowledgements (rate 0 and before exit_when_done).
_ACK_TIMEOUT = Duration(seconds=1)
#: Pause between seeing the wanted subscribers and the first message (see _wait_for_subscribers).
_SETTLE_S = 0.5


@dataclass
class BagPlayerParams:
    """Parameters of the bag player node.

    Attributes:
        bag: Path of the rosbag2 directory to replay (required).
        rate: Playback speed relative to the recording (1.0 = as recorded, 2.0 = twice as
            fast); 0 = as fast as the subscribers take the messages (each message waits
            until reliable subscribers acknowledged the previous one, 1 s at most).
        loop: Start over at the end of the bag.
        start_offset_s: Skip this many seconds from the start of the bag.
        topics: Topics to replay; unset or empty = every topic in the bag.
        wait_for_subscribers: Before playing, wait until this many subscribers match the
            image topic (/camera/image_raw, else the first replayed topic) and, when the bag
            has ground truth, one matches /camera/ground_truth; then 0.5 s for discovery to
            settle; 0 = start at once.
        wait_timeout_s: Stop waiting for subscribers after this many seconds and play
            anyway; 0 = wait as long as it takes.
        exit_when_done: Shut the node down when the bag has ended (ignored when looping).
        drain_topic: With exit_when_done: before shutting down, wait until a
            FusedSegmentation on this topic carries the last camera frame's stamp (the
            frames still queued in the attacker and the networks are then through), or
            until none arrived for drain_timeout_s; '' = shut down at once.
        drain_timeout_s: Longest silence on drain_topic before the player gives up waiting.
    """

    bag: str = ''
    rate: float = 1.0
    loop: bool = False
    start_offset_s: float = 0.0
    topics: tuple[str, ...] | None = None
    wait_for_subscribers: int = 0
    wait_timeout_s: float = 10.0
    exit_when_done: bool = False
    drain_topic: str = ''
    drain_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f'rate must be >= 0 (0 = as fast as possible), got {self.rate}')
        if not (math.isfinite(self.start_offset_s) and self.start_offset_s >= 0):
            raise ValueError(f'start_offset_s must be >= 0, got {self.start_offset_s}')
        if self.wait_for_subscribers < 0:
            raise ValueError(f'wait_for_subscribers must be >= 0, got {self.wait_for_subscribers}')
        if not (math.isfinite(self.wait_timeout_s) and self.wait_timeout_s >= 0):
            raise ValueError(f'wait_timeout_s must be >= 0, got {self.wait_timeout_s}')
        if not (math.isfinite(self.drain_timeout_s) and self.drain_timeout_s > 0):
            raise ValueError(f'drain_timeout_s must be > 0, got {self.drain_timeout_s}')


def message_class(msgtype: str) -> type:
    """The rclpy message class of a rosbag2 type name such as 'sensor_msgs/msg/Image'."""
    package, kind, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.{kind}'), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f'message type {msgtype} is not installed in this environment') from exc


class BagPlayerNode(ManagedNode):
    """Publishes a bag's messages at their recorded times, from a playback thread."""

    def __init__(self, node_name: str = 'bag_player', **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def configure(self) -> None:
        """Parameters, the bag and its topics (lifecycle configure); playing starts on activate."""
        self.reader = None
        self._thread = None
        self.params = declare_dataclass(self, BagPlayerParams())
        check_overrides(self)
        if not self.params.bag:
            raise ConfigError('parameter bag: required, the path of a rosbag2 directory')
        self.reader = BagReader(self.params.bag)  # names the path when it is missing
        self._setup()

    def activate(self) -> None:
        """Start the playback thread (once: a deactivated player does not rewind)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._play, name='bag_player', daemon=True)
            self._thread.start()

    def deactivate(self) -> None:
        """End playback (a replay is not paused and resumed: its clock would jump)."""
        self._stop.set()

    def _setup(self) -> None:
        bag_topics = self.reader.topics
        self.topics = list(self.params.topics or bag_topics)
        if unknown := sorted(set(self.topics) - set(bag_topics)):
            raise BagError(
                f'{self.params.bag}: no topic(s) {unknown}; the bag has {sorted(bag_topics)}'
            )
        # Absolute names from the bag; a node namespace does not move them.
        self.pubs: dict[str, Publisher] = {
            topic: self.create_publisher(message_class(bag_topics[topic][0]), topic, qos.RESULTS)
            for topic in self.topics
        }
        self._wait_topic = TOPIC_IMAGE if TOPIC_IMAGE in self.pubs else self.topics[0]
        self._last_image_ns: int | None = None
        self._drained = threading.Event()
        self._fused_at = time.monotonic()
        if self.params.drain_topic:
            from tsa_msgs.msg import FusedSegmentation

            self.create_subscription(
                FusedSegmentation, self.params.drain_topic, self._on_fused, qos.RESULTS
            )
        self.done_pub = self.create_publisher(Bool, '~/done', qos.LATCHED)
        self.done_pub.publish(Bool(data=False))
        self.health = Health(self)
        self.published = 0
        self.loops = 0
        self.done = threading.Event()
        self._stop = threading.Event()
        summary = self.reader.summary()
        self._frames_per_pass = summary.frames
        # One pass = the bag's length plus one frame gap, so pass k+1 continues pass k.
        gap_ns = summary.duration_s * 1e9 / (summary.frames - 1) if summary.frames > 1 else 1e9
        self._pass_ns = self.reader.duration_ns + round(gap_ns)
        self._shiftable = {t for t in self.topics if bag_topics[t][0] in HEADER_FIRST_TYPES}
        self.get_logger().info(
            f'bag {self.params.bag}: {summary.frames} frames, {summary.duration_s:.1f} s, '
            f'topics {self.topics}, rate {self.params.rate or "max"}'
            + (', looping' if self.params.loop else '')
        )

    # ------------------------------------------------------------------ playback thread
    def _play(self) -> None:
        try:
            if not self._wait_for_subscribers():
                return
            self.get_logger().info('playing')
            start_ns = self.reader.start_ns + round(self.params.start_offset_s * 1e9)
            while not self._stop.is_set():
                offset_ns = self.loops * self._pass_ns
                self.health.set('stamp_offset_s', f'{offset_ns / 1e9:.3f}')
                sent = self._play_once(start_ns, offset_ns)
                if self._stop.is_set():
                    return
                self.loops += 1
                self.health.count('loops')
                if not self.params.loop:
                    break
                if not sent:  # an offset past the end: looping would spin
                    self.get_logger().warning('nothing to replay after start_offset_s')
                    break
            self._finish()
        except Exception as exc:  # the context went away under us, or a broken bag
            if not self._stop.is_set() and self.context.ok():
                self.get_logger().error(f'playback failed: {exc}')
                self.health.status(DiagnosticStatus.ERROR, f'playback failed: {exc}')

    def _wait_for_subscribers(self) -> bool:
        """Wait for `wait_for_subscribers` readers of the image topic; False when stopped."""
        want = self.params.wait_for_subscribers
        if want <= 0:
            return True
        pub = self.pubs[self._wait_topic]
        truth = self.pubs.get(TOPIC_GROUND_TRUTH)
        timeout = self.params.wait_timeout_s
        deadline = time.monotonic() + timeout if timeout > 0 else math.inf
        self.health.status(DiagnosticStatus.OK, f'waiting for {want} subscriber(s)')
        while pub.get_subscription_count() < want or (
            truth is not None and truth.get_subscription_count() < 1
        ):
            if time.monotonic() >= deadline:
                self.get_logger().warning(
                    f'{pub.get_subscription_count()} of {want} subscriber(s) on '
                    f'{self._wait_topic} after {timeout} s: playing anyway'
                )
                return True
            if self._stop.wait(0.05):
                return False
        # We see the reader, but it may not see us yet, and a best-effort reader drops
        # samples of writers it has not discovered: give discovery a moment to finish.
        return not self._stop.wait(_SETTLE_S)

    def _play_once(self, start_ns: int, offset_ns: int = 0) -> int:
        """One pass over the bag from start_ns, stamps moved by offset_ns; returns the count."""
        self.health.status(DiagnosticStatus.OK, 'playing')
        rate = self.params.rate
        sent = frames = 0
        first_ns = t0 = None
        next_report = time.monotonic() + _PROGRESS_S
        for topic, bag_ns, _, raw in self.reader.raw_messages(self.topics, start_ns=start_ns):
            if first_ns is None:
                first_ns, t0 = bag_ns, time.monotonic()
            if rate > 0:
                # Scheduled from the pass's start, so a late message does not delay the rest.
                delay = t0 + (bag_ns - first_ns) / (1e9 * rate) - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return sent
            elif self._stop.is_set():
                return sent
            pub = self.pubs[topic]
            if offset_ns and topic in self._shiftable:
                raw = shift_header_stamp(raw, offset_ns)
            pub.publish(raw if isinstance(raw, bytes) else bytes(raw))
            if rate == 0:
                pub.wait_for_all_acked(_ACK_TIMEOUT)  # flow control instead of a clock
            sent += 1
            self.published += 1
            self.health.count(f'published.{topic}')
            if topic == self._wait_topic:
                frames += 1
                if self.params.drain_topic:
                    self._last_image_ns = header_stamp_ns(raw)
                if time.monotonic() >= next_report:
                    next_report += _PROGRESS_S
                    self._log_progress(frames)
        return sent

    def _log_progress(self, frames: int) -> None:
        """One line every _PROGRESS_S while playing, so a long replay shows where it is."""
        total = self._frames_per_pass
        share = f' ({100 * frames / total:.0f} %)' if total else ''
        loop = f', pass {self.loops + 1}' if self.params.loop else ''
        self.get_logger().info(f'played {frames}/{total} frames{share}{loop}')

    def _finish(self) -> None:
        self.done_pub.publish(Bool(data=True))
        self.done.set()
        self.health.status(DiagnosticStatus.OK, f'done: {self.published} messages')
        self.get_logger().info(
            f'bag ended: {self.published} messages published, {self.loops} pass(es)'
        )
        if self.params.exit_when_done:
            # Let reliable subscribers receive the last messages before the context goes.
            for pub in (*self.pubs.values(), self.done_pub):
                pub.wait_for_all_acked(_ACK_TIMEOUT)
            self._drain()
            self.context.try_shutdown()

    def _on_fused(self, msg) -> None:
        self._fused_at = time.monotonic()
        stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if self._last_image_ns is not None and stamp >= self._last_image_ns:
            self._drained.set()

    def _drain(self) -> None:
        """Wait until the last frame is fused, or drain_timeout_s without a fused mask: a
        graph stopped at the bag's end would lose the frames still in its queues."""
        if not self.params.drain_topic or self._last_image_ns is None:
            return
        self._fused_at = time.monotonic()
        while not self._drained.wait(0.1) and not self._stop.is_set():
            if time.monotonic() - self._fused_at > self.params.drain_timeout_s:
                self.get_logger().warning(
                    f'the last frame was not fused within {self.params.drain_timeout_s} s of '
                    f'the last message on {self.params.drain_topic}: stopping anyway'
                )
                return

    # ------------------------------------------------------------------ lifecycle
    def release(self) -> None:
        """Stop playback, join the thread and close the bag."""
        stop = getattr(self, '_stop', None)
        if stop is not None:
            stop.set()
        thread = getattr(self, '_thread', None)
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._thread = None
        if getattr(self, 'reader', None) is not None:
            self.reader.close()
            self.reader = None


def main(args=None) -> None:
    run(lambda: BagPlayerNode(), args)


if __name__ == '__main__':
    main()
