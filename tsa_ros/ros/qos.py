"""The package's QoS profiles, chosen once and named for what they carry."""

from dataclasses import dataclass

from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)

#: Camera frames in: keep only the newest, so a busy node drops old frames instead of queueing.
#: Best effort matches camera drivers; it also accepts reliable publishers (e.g. a bag player).
SENSOR = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=QoSReliabilityPolicy.BEST_EFFORT,
    durability=QoSDurabilityPolicy.VOLATILE,
)

#: Camera frames in under admission (tsa_ros.admission): half a second of a 30 Hz camera in
#: the queue, so no frame (above all not the first of the next slot) is lost while the node
#: segments one or swaps weights; frames that are not admitted leave it in microseconds.
ADMITTED_SENSOR = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=15,
    reliability=QoSReliabilityPolicy.BEST_EFFORT,
    durability=QoSDurabilityPolicy.VOLATILE,
)

#: The attacker's camera input: a short queue, not the latest frame only. The attacker is a
#: serial stage in front of the triplet (one frame at a time, with all the process's
#: threads): a frame it drops is lost to every network, a ground-truth frame of a replay
#: among them, and a replay frame that arrives while it attacks the previous one must wait.
ATTACKER_INPUT = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=3,
    reliability=QoSReliabilityPolicy.BEST_EFFORT,
    durability=QoSDurabilityPolicy.VOLATILE,
)


def camera(admission_hz: float) -> QoSProfile:
    """The camera subscription's profile: SENSOR, or ADMITTED_SENSOR under admission."""
    return ADMITTED_SENSOR if admission_hz > 0 else SENSOR


RELIABILITY = {
    'best_effort': QoSReliabilityPolicy.BEST_EFFORT,
    'reliable': QoSReliabilityPolicy.RELIABLE,
}


@dataclass
class InputQoS:
    """QoS of a node's camera subscription (parameters ``input_qos.*``).

    Attributes:
        reliability: 'best_effort' (sensor data: matches every camera driver and also
            reliable publishers) or 'reliable' (only reliable publishers match; frames
            lost on the network are sent again).
        depth: Frames the subscription queues (keep last); 0 = automatic: 1 (only the
            newest frame), or 15 under admission (half a second of a 30 Hz camera).
    """

    reliability: str = 'best_effort'
    depth: int = 0

    def __post_init__(self) -> None:
        if self.reliability not in RELIABILITY:
            raise ValueError(
                f'reliability must be one of {list(RELIABILITY)}, got {self.reliability!r}'
            )
        if self.depth < 0:
            raise ValueError(f'depth must be >= 0 (0 = automatic), got {self.depth}')

    def profile(self, admission_hz: float) -> QoSProfile:
        """The subscription's profile: :func:`camera`'s with this reliability and depth."""
        auto = camera(admission_hz)
        return QoSProfile(
            history=QoSHistoryPolicy.KEEP_LAST,
            depth=self.depth or auto.depth,
            reliability=RELIABILITY[self.reliability],
            durability=QoSDurabilityPolicy.VOLATILE,
        )


#: Camera frames into fusion, kept for fused/overlay: a few queued, so frames that arrive
#: while results are being fused are not lost (each is small work: a stamp and a view).
OVERLAY_CAMERA = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=QoSReliabilityPolicy.BEST_EFFORT,
    durability=QoSDurabilityPolicy.VOLATILE,
)


#: Images and results we publish: reliable, so both reliable and best-effort readers match.
RESULTS = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.VOLATILE,
)

#: Latched data (weight snapshots, label info): a late subscriber gets the last message.
LATCHED = QoSProfile(
    history=QoSHistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=QoSReliabilityPolicy.RELIABLE,
    durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
)
