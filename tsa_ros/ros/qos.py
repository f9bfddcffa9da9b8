"""The package's QoS profiles, chosen once and named for what they carry."""

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


def camera(admission_hz: float) -> QoSProfile:
    """The camera subscription's profile: SENSOR, or ADMITTED_SENSOR under admission."""
    return ADMITTED_SENSOR if admission_hz > 0 else SENSOR


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
