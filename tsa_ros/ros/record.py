"""``tsa record``: the graph's topics into one MCAP file, the way ``ros2 bag record`` writes it.

The recorder subscribes to each topic as raw (serialized CDR) messages and writes the bytes
unchanged, with the topic's ``ros2msg`` schema (:mod:`tsa_ros.ros.schemas`) and the QoS
profiles its publishers offer, through ``rosbags``' rosbag2 writer with the mcap storage. The
result is what ``ros2 bag record -s mcap -o OUT`` gives: a directory ``OUT`` holding
``metadata.yaml`` and one ``OUT.mcap``. Foxglove and Lichtblick open the ``.mcap``; ``ros2 bag
play OUT`` and :class:`tsa_ros.data.bag.BagReader` read the directory.

Topics that do not exist yet are subscribed to when a publisher appears, with a QoS that
matches its offer: transient local when every publisher latches (label info, weights), so
the latched message is recorded even if it was published before the recorder started; best
effort for the camera topics (a recorder must not hold back a camera); reliable otherwise
when every publisher is reliable.

From other code: :class:`Recorder` records through a node the caller already spins (an
existing rclpy context); :func:`record` runs on its own context until a duration passes or
an event is set.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tsa_ros.errors import ConfigError

#: The graph's topics recorded by default; relative names are under the graph's namespace.
DEFAULT_TOPICS = (
    '/camera/image_raw',
    '/camera/ground_truth',
    'teacher/labels',
    'teacher/segmentation',
    'student/labels',
    'student/segmentation',
    'adaptive/labels',
    'adaptive/segmentation',
    'fused/segmentation',
    'fused/labels',
    'fused/color',
    'fused/overlay',
    'fused/disagreement',
    'learner/status',
    'label_info',
    'evaluator/status',
    '/diagnostics',
)

#: Topics under these prefixes are sensor data: subscribed best effort.
SENSOR_PREFIXES = ('/camera/',)

#: Depth of every subscription's queue: a few frames of slack while the writer flushes.
QUEUE_DEPTH = 10

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def resolve_topics(topics: Iterable[str], namespace: str = 'tsa') -> list[str]:
    """Absolute topic names: relative ones go under ``/namespace``; duplicates dropped."""
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_full_topic_name import validate_full_topic_name

    ns = namespace.strip('/')
    names: list[str] = []
    for topic in topics:
        topic = topic.strip()
        if not topic:
            continue
        name = topic if topic.startswith('/') else '/'.join(['', *([ns] if ns else []), topic])
        name = name.rstrip('/') or '/'
        try:
            validate_full_topic_name(name)
        except InvalidTopicNameException as exc:
            reason = str(exc).splitlines()[0].removeprefix('Invalid topic name: ').rstrip(':')
            raise ConfigError(f'invalid topic name {topic!r}: {reason}') from None
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError('no topics given')
    return names


def is_sensor_topic(topic: str) -> bool:
    return topic.startswith(SENSOR_PREFIXES)


def subscription_qos(topic: str, offered: Sequence[Any]) -> Any:
    """The profile that matches every offered profile (rclpy QoSProfiles) of ``topic``."""
    from rclpy.qos import (
        QoSDurabilityPolicy,
        QoSHistoryPolicy,
        QoSProfile,
        QoSReliabilityPolicy,
    )

    latched = bool(offered) and all(
        p.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL for p in offered
    )
    reliable = bool(offered) and all(
        p.reliability == QoSReliabilityPolicy.RELIABLE for p in offered
    )
    # A reliable or transient-local reader matches only writers that are so too. History
    # comes only over a reliable link, so a latched topic stays reliable even if it is a
    # sensor's.
    reliable = reliable and (latched or not is_sensor_topic(topic))
    if reliable:
        reliability = QoSReliabilityPolicy.RELIABLE
    else:
        reliability = QoSReliabilityPolicy.BEST_EFFORT
    return QoSProfile(
        history=QoSHistoryPolicy.KEEP_LAST,
        depth=QUEUE_DEPTH,
        reliability=reliability,
        durability=(
            QoSDurabilityPolicy.TRANSIENT_LOCAL if latched else QoSDurabilityPolicy.VOLATILE
        ),
    )


class RawTopics:
    """Raw (CDR bytes) subscriptions to ``topics`` through ``node``, each made when the topic
    has a publisher; the recorder and the Foxglove relay share it.

    ``on_topic(topic, msgtype, offered_qos)`` is called once per topic before its
    subscription exists; a ConfigError from it (e.g. a type without a definition) skips the
    topic with one error line. ``on_message(topic, data, receive_time_ns)`` gets every message.
    """

    def __init__(
        self,
        node: Any,
        topics: Sequence[str],
        on_topic: Callable[[str, str, list[Any]], None],
        on_message: Callable[[str, bytes, int], None],
        *,
        period_s: float = 0.5,
        what: str = 'recorded',
    ) -> None:
        self.node = node
        self.topics = list(topics)
        self.types: dict[str, str] = {}  # subscribed topic -> message type
        self.skipped: dict[str, str] = {}  # topic -> why it is not subscribed
        self._on_topic = on_topic
        self._on_message = on_message
        self._what = what
        self._subscriptions: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._timer = node.create_timer(period_s, self.discover)

    def discover(self) -> None:
        """Subscribe to the wanted topics that have a publisher now."""
        from tsa_ros.ros.schemas import message_class

        with self._lock:
            if self._closed:
                return
            available = dict(self.node.get_topic_names_and_types())
            for topic in self.topics:
                if topic in self._subscriptions or topic in self.skipped:
                    continue
                if topic not in available:
                    continue
                offered = [i.qos_profile for i in self.node.get_publishers_info_by_topic(topic)]
                if not offered:
                    continue  # only readers know the topic yet: wait for a writer's offer
                msgtype = available[topic][0]
                if len(available[topic]) > 1:
                    self.node.get_logger().warning(
                        f'{topic} has several types {available[topic]}; taking {msgtype}'
                    )
                try:
                    msg_class = message_class(msgtype)
                    self._on_topic(topic, msgtype, offered)
                except ConfigError as exc:
                    self.skipped[topic] = str(exc)
                    self.node.get_logger().error(f'{topic} is not {self._what}: {exc}')
                    continue
                self._subscriptions[topic] = self.node.create_subscription(
                    msg_class,
                    topic,
                    partial(self._receive, topic),
                    subscription_qos(topic, offered),
                    raw=True,
                )
                self.types[topic] = msgtype
                self.node.get_logger().info(f'{self._what}: {topic} ({msgtype})')

    def publisher_count(self, topic: str) -> int:
        """Writers matched by ``topic``'s subscription (0 before it exists)."""
        with self._lock:
            subscription = self._subscriptions.get(topic)
            return 0 if subscription is None else subscription.get_publisher_count()

    def _receive(self, topic: str, data: bytes) -> None:
        self._on_message(topic, data, self.node.get_clock().now().nanoseconds)

    def close(self) -> None:
        """Stop discovering and drop the subscriptions (the node stays the caller's)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.node.destroy_timer(self._timer)
            for subscription in self._subscriptions.values():
                self.node.destroy_subscription(subscription)
            self._subscriptions.clear()


def bag_qos(profile: Any) -> Any:
    """An rclpy QoSProfile as a rosbags Qos (what rosbag2 metadata stores per topic)."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    def time(duration: Any) -> Any:
        return QosTime(*divmod(int(duration.nanoseconds), 1_000_000_000))

    return Qos(
        QosHistory(int(profile.history)),
        int(profile.depth),
        QosReliability(int(profile.reliability)),
        QosDurability(int(profile.durability)),
        time(profile.deadline),
        time(profile.lifespan),
        QosLiveliness(int(profile.liveliness)),
        time(profile.liveliness_lease_duration),
        bool(profile.avoid_ros_namespace_conventions),
    )


@dataclass
class RecordSummary:
    """What a recording holds."""

    path: Path  # the rosbag2 directory
    mcap: Path  # the MCAP file in it
    topics: dict[str, tuple[str, int]] = field(default_factory=dict)  # topic -> (type, count)
    skipped: dict[str, str] = field(default_factory=dict)  # topic -> why not recorded
    errors: int = 0  # messages that could not be written

    @property
    def messages(self) -> int:
        return sum(count for _, count in self.topics.values())


def _open_bag(out: Path) -> Any:
    from rosbags.rosbag2 import StoragePlugin, Writer, WriterError

    from tsa_ros.data.bag import BAG_VERSION

    if out.exists() or out.is_symlink():
        raise ConfigError(f'{out} already exists; not overwriting it (choose a new --out)')
    if not out.name or out.name in ('.', '..'):
        raise ConfigError(f'--out {out} has no directory name')
    writer = Writer(out, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
    try:
        writer.open()
    except (OSError, WriterError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise ConfigError(f'cannot write a recording at {out}: {reason}') from None
    return writer


class Recorder:
    """Records ``topics`` through ``node`` (which the caller spins) into a bag at ``out``.

    ``start()`` creates the bag and starts watching for the topics; ``stop()`` closes the
    file (summary, index, metadata.yaml) and returns what was recorded. Also a context
    manager. Thread-safe: messages arrive on executor threads, stop() may come from any.
    """

    def __init__(
        self,
        node: Any,
        out: str | Path,
        *,
        topics: Iterable[str] = DEFAULT_TOPICS,
        namespace: str = 'tsa',
        discovery_period_s: float = 0.5,
    ) -> None:
        self.node = node
        self.out = Path(out)
        self.topics = resolve_topics(topics, namespace)
        self.discovery_period_s = discovery_period_s
        self._lock = threading.Lock()
        self._writer: Any = None
        self._connections: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._types: dict[str, str] = {}
        self._errors = 0
        self.taps: RawTopics | None = None
        self._summary: RecordSummary | None = None

    @property
    def mcap_path(self) -> Path:
        return self.out / f'{self.out.name}.mcap'

    def counts(self) -> dict[str, int]:
        """Messages written so far, per topic."""
        with self._lock:
            return dict(self._counts)

    def start(self) -> Recorder:
        if self._writer is not None or self._summary is not None:
            raise RuntimeError('a Recorder records once')
        self._writer = _open_bag(self.out)
        self.taps = RawTopics(
            self.node,
            self.topics,
            self._add_topic,
            self._write,
            period_s=self.discovery_period_s,
        )
        self.taps.discover()
        return self

    def _add_topic(self, topic: str, msgtype: str, offered: list[Any]) -> None:
        from tsa_ros.ros.schemas import definition_and_hash

        text, digest = definition_and_hash(msgtype)
        with self._lock:
            if self._writer is None:
                return
            self._connections[topic] = self._writer.add_connection(
                topic,
                msgtype,
                msgdef=text,
                rihs01=digest,
                offered_qos_profiles=[bag_qos(p) for p in offered],
            )
            self._counts[topic] = 0
            self._types[topic] = msgtype

    def _write(self, topic: str, data: bytes, stamp_ns: int) -> None:
        with self._lock:
            if self._writer is None or topic not in self._connections:
                return
            try:
                self._writer.write(self._connections[topic], stamp_ns, data)
            except OSError as exc:
                # A full disk must not take the executor down: count, say so once.
                self._errors += 1
                if self._errors == 1:
                    self.node.get_logger().error(f'cannot write to {self.out}: {exc}')
                return
            self._counts[topic] += 1

    def stop(self) -> RecordSummary:
        """Close the recording (idempotent) and return what it holds."""
        if self._summary is not None:
            return self._summary
        if self.taps is not None:
            self.taps.close()
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except OSError as exc:
                raise ConfigError(f'cannot finish the recording {self.out}: {exc}') from None
        self._summary = RecordSummary(
            path=self.out,
            mcap=self.mcap_path,
            topics={t: (self._types[t], self._counts[t]) for t in self._counts},
            skipped=dict(self.taps.skipped) if self.taps is not None else {},
            errors=self._errors,
        )
        return self._summary

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_node(
    node_name: str,
    make: Callable[[Any], Any],
    *,
    stop: threading.Event | None = None,
    duration_s: float = 0.0,
    domain_id: int | None = None,
    started: Callable[[Any], None] | None = None,
) -> Any:
    """Run ``make(node)``'s object (start/stop) on a node of a context of its own.

    Spins until ``duration_s`` passes (0 = no limit) or ``stop`` is set, then returns what
    the object's ``stop()`` returns. ``started(obj)`` is called once it runs.
    """
    from tsa_ros.ros.background import background_node

    if not (math.isfinite(duration_s) and duration_s >= 0):
        raise ConfigError(f'--duration must be >= 0 seconds (0 = until stopped), got {duration_s}')
    stop = stop if stop is not None else threading.Event()
    # The caller decides what a signal means (tsa record: stop and close the file).
    with background_node(node_name, domain_id=domain_id, start_parameter_services=False) as node:
        worker = make(node)
        worker.start()
        try:
            if started is not None:
                started(worker)
            stop.wait(duration_s if duration_s > 0 else None)
        finally:
            result = worker.stop()
        return result


def record(
    out: str | Path,
    *,
    topics: Iterable[str] = DEFAULT_TOPICS,
    namespace: str = 'tsa',
    duration_s: float = 0.0,
    stop: threading.Event | None = None,
    domain_id: int | None = None,
    started: Callable[[Recorder], None] | None = None,
) -> RecordSummary:
    """Record on a context of its own until ``duration_s`` passes (0 = no limit) or ``stop``
    is set; returns once the file is closed. For a script or a thread beside a graph run."""
    topics = resolve_topics(topics, namespace)  # bad names fail before DDS starts
    return run_node(
        'tsa_recorder',
        lambda node: Recorder(node, out, topics=topics, namespace=namespace),
        stop=stop,
        duration_s=duration_s,
        domain_id=domain_id,
        started=started,
    )


# ------------------------------------------------------------------------- command line
def add_arguments(parser: Any) -> None:
    parser.add_argument(
        '--out',
        required=True,
        help='rosbag2 directory to create: OUT/metadata.yaml and the MCAP file OUT/OUT.mcap '
        '(what ros2 bag record -s mcap -o OUT writes)',
    )
    parser.add_argument(
        '--duration',
        type=float,
        default=0.0,
        help='seconds to record; 0 = until Ctrl-C or SIGTERM (the file is closed cleanly)',
    )
    parser.add_argument(
        '--topics',
        nargs='+',
        metavar='TOPIC',
        default=list(DEFAULT_TOPICS),
        help='topics to record; relative names are under --namespace; topics that do not '
        "exist yet are recorded once they appear (default: the graph's camera, masks, fused "
        'outputs, learner and evaluator status, label info, /diagnostics)',
    )
    parser.add_argument(
        '--namespace', default='tsa', help='namespace of the graph (tsa up --namespace)'
    )


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM set ``stop`` (so files get closed) while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install handlers
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main_from_args(args: Any) -> int:
    from tsa_ros.ros.env import ros_problem

    if problem := ros_problem():
        raise ConfigError(f'tsa record needs ROS 2: {problem}')
    stop = threading.Event()
    how_long = f'{args.duration:g} s' if args.duration > 0 else 'until Ctrl-C'

    def started(recorder: Recorder) -> None:
        print(f'tsa record: recording into {recorder.mcap_path} ({how_long})', flush=True)

    with stop_on_signals(stop):
        summary = record(
            args.out,
            topics=args.topics,
            namespace=args.namespace,
            duration_s=args.duration,
            stop=stop,
            started=started,
        )
    for topic, (msgtype, count) in sorted(summary.topics.items()):
        print(f'  {topic:<32} {msgtype:<36} {count:>7}')
    for topic, why in sorted(summary.skipped.items()):
        print(f'  {topic:<32} not recorded: {why}')
    seen = set(summary.topics) | set(summary.skipped)
    if missing := [t for t in resolve_topics(args.topics, args.namespace) if t not in seen]:
        print(f'  no publisher seen: {", ".join(missing)}')
    print(
        f'tsa record: {summary.messages} messages on {len(summary.topics)} topics in '
        f'{summary.mcap}'
    )
    if summary.errors:
        print(f'tsa record: {summary.errors} messages could not be written', file=sys.stderr)
    return 1 if summary.errors else 0
