"""``tsa view``: the graph live in Foxglove or Lichtblick, through a Foxglove WebSocket server.

A relay node subscribes to the graph's topics as raw (serialized CDR) messages and logs the
bytes unchanged on one Foxglove channel per topic, with message encoding ``cdr`` and the
``ros2msg`` schema that ``tsa record`` writes (:mod:`tsa_ros.ros.schemas`), so the app
decodes every message itself: images in the Image panel, FusedSegmentation's fields in Raw
Messages and Plot. Nothing is decoded or re-encoded here. Topics that appear later are
advertised when they get a publisher (the same discovery as the recorder's).

Connect with Foxglove or Lichtblick: "Open connection" -> "Foxglove WebSocket" ->
``ws://HOST:PORT``. The server (``foxglove-sdk``) only serves; it takes no client
publishing, parameters or services.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from tsa_ros.errors import ConfigError
from tsa_ros.ros.record import RawTopics, resolve_topics, run_node, stop_on_signals

#: What a live view shows by default; relative names are under the graph's namespace.
VIEW_TOPICS = (
    '/camera/image_raw',
    '/camera/ground_truth',
    'teacher/labels',
    'student/labels',
    'adaptive/labels',
    'teacher/color',
    'student/color',
    'adaptive/color',
    'fused/labels',
    'fused/color',
    'fused/overlay',
    'fused/disagreement',
    'fused/segmentation',
    'learner/status',
    'evaluator/status',
    'label_info',
)


class Relay:
    """Relays ``topics`` seen by ``node`` (which the caller spins) to Foxglove clients.

    ``start()`` opens the WebSocket server (``port`` 0 picks a free one: see :attr:`port`)
    and starts watching for the topics; ``stop()`` closes both. Also a context manager.
    """

    def __init__(
        self,
        node: Any,
        *,
        host: str = '127.0.0.1',
        port: int = 8765,
        topics: Iterable[str] = VIEW_TOPICS,
        namespace: str = 'tsa',
        discovery_period_s: float = 0.5,
    ) -> None:
        if not 0 <= int(port) <= 65535:
            raise ConfigError(f'--port must be in 0..65535, got {port}')
        self.node = node
        self.host = host
        self.requested_port = int(port)
        self.topics = resolve_topics(topics, namespace)
        self.discovery_period_s = discovery_period_s
        self.server: Any = None
        self._context: Any = None
        self._channels: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.taps: RawTopics | None = None
        self._relayed: dict[str, int] = {}

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return int(self.server.port) if self.server is not None else self.requested_port

    @property
    def url(self) -> str:
        return f'ws://{self.host}:{self.port}'

    def counts(self) -> dict[str, int]:
        """Messages relayed so far, per topic."""
        with self._lock:
            return dict(self._relayed)

    def start(self) -> Relay:
        import foxglove

        # A context of its own: channels of two relays in one process must not mix.
        self._context = foxglove.Context()
        try:
            self.server = foxglove.start_server(
                name='tsa_ros', host=self.host, port=self.requested_port, context=self._context
            )
        except (RuntimeError, OSError, ValueError) as exc:
            reason = str(exc).removeprefix('FoxgloveError: ')
            raise ConfigError(
                f'cannot serve Foxglove WebSocket on {self.host}:{self.requested_port}: {reason}'
            ) from None
        self.taps = RawTopics(
            self.node,
            self.topics,
            self._add_channel,
            self._relay,
            period_s=self.discovery_period_s,
            what='relayed',
        )
        self.taps.discover()
        return self

    def _add_channel(self, topic: str, msgtype: str, offered: list[Any]) -> None:
        import foxglove

        from tsa_ros.ros.schemas import MESSAGE_ENCODING, SCHEMA_ENCODING, message_definition

        schema = foxglove.Schema(
            name=msgtype, encoding=SCHEMA_ENCODING, data=message_definition(msgtype).encode()
        )
        channel = foxglove.Channel(
            topic, message_encoding=MESSAGE_ENCODING, schema=schema, context=self._context
        )
        with self._lock:
            self._channels[topic] = channel
            self._relayed[topic] = 0

    def _relay(self, topic: str, data: bytes, stamp_ns: int) -> None:
        with self._lock:
            channel = self._channels.get(topic)
            if channel is None:
                return
            self._relayed[topic] += 1
        channel.log(data, log_time=stamp_ns)

    def stop(self) -> dict[str, int]:
        """Close the subscriptions, channels and server (idempotent); messages per topic."""
        if self.taps is not None:
            self.taps.close()
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
        if self.server is not None:
            self.server.stop()
            self.server = None
        return self.counts()

    def __enter__(self) -> Relay:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ------------------------------------------------------------------------- command line
def add_arguments(parser: Any) -> None:
    parser.add_argument(
        '--host',
        default='127.0.0.1',
        help='address to listen on (0.0.0.0: every interface; no authentication, so only on '
        'a network you trust)',
    )
    parser.add_argument('--port', type=int, default=8765, help='WebSocket port (0 = any free)')
    parser.add_argument(
        '--topics',
        nargs='+',
        metavar='TOPIC',
        default=list(VIEW_TOPICS),
        help='topics to relay; relative names are under --namespace; topics that do not exist '
        'yet are relayed once they appear (default: camera, ground truth, masks, fused '
        'outputs, learner and evaluator status, label info)',
    )
    parser.add_argument(
        '--namespace', default='tsa', help='namespace of the graph (tsa up --namespace)'
    )


def main_from_args(args: Any) -> int:
    from tsa_ros.ros.env import ros_problem

    if problem := ros_problem():
        raise ConfigError(f'tsa view needs ROS 2: {problem}')
    try:
        import foxglove  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f'tsa view needs foxglove-sdk (pip install -r requirements.txt): {exc}'
        ) from None

    def started(relay: Relay) -> None:
        print(
            f'tsa view: Foxglove WebSocket on {relay.url} — in Foxglove or Lichtblick: '
            f'Open connection > Foxglove WebSocket > {relay.url}; Ctrl-C stops',
            flush=True,
        )

    stop = threading.Event()
    with stop_on_signals(stop):
        counts = run_node(
            'tsa_view',
            lambda node: Relay(
                node,
                host=args.host,
                port=args.port,
                topics=args.topics,
                namespace=args.namespace,
            ),
            stop=stop,
            started=started,
        )
    total = sum(counts.values())
    print(f'tsa view: relayed {total} messages on {len(counts)} topics')
    return 0
