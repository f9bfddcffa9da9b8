"""Camera sequences as rosbag2 bags that ``ros2 bag play`` accepts, without ROS.

A bag holds three topics, all stamped with the frame's header stamp, which is also each
message's bag (receive) time:

* :data:`TOPIC_IMAGE` ``sensor_msgs/msg/Image`` (rgb8),
* :data:`TOPIC_CAMERA_INFO` ``sensor_msgs/msg/CameraInfo`` (plumb_bob, zero distortion,
  R = identity, P = K|0 as for the left camera of a stereo pair),
* :data:`TOPIC_GROUND_TRUTH` ``sensor_msgs/msg/Image`` (mono8 Cityscapes trainIds) for the
  frames that have a label map; its header stamp is identical to the image's, so a subscriber
  joins the two by stamp.

Writing and reading use the pure-Python ``rosbags`` library (CDR with the ROS 2 Kilted type
store, rosbag2 metadata version 9, ``sqlite3`` or ``mcap`` storage), so this module works on a
machine without ROS. Every topic offers one explicit QoS profile (reliable, volatile, keep
last 10, default deadline/lifespan/liveliness), which ``ros2 bag play`` re-offers when it
publishes; reliable + volatile is the offer that both reliable and best-effort (sensor data)
subscribers accept.

What CameraInfo cannot carry (the camera's mounting pose and stereo baseline) and the frames'
human-readable names go into the bag's ``custom_data`` (plain strings in ``metadata.yaml``
that ROS tools keep and ignore), so :class:`BagReader` gives back the :class:`BagFrame` that
was written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rosbags.interfaces import (
    MessageDefinitionFormat,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from tsa_ros import image_codec
from tsa_ros.data.camera import CameraModel
from tsa_ros.sync import split_ns, stamp_ns

TOPIC_IMAGE = '/camera/image_raw'
TOPIC_CAMERA_INFO = '/camera/camera_info'
TOPIC_GROUND_TRUTH = '/camera/ground_truth'

#: Frame rate of Cityscapes' 30-frame sequence snippets.
CITYSCAPES_RATE_HZ = 17.0

IMAGE_TYPE = 'sensor_msgs/msg/Image'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'

#: Storage plugins by the name rosbag2 uses for them (``metadata.yaml``'s storage_identifier).
STORAGES = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}

#: rosbag2 metadata version written: 9 (rosbags' newest, the format since Jazzy; Kilted reads it).
BAG_VERSION = 9

#: Image encodings this module decodes and encodes, with their channel count.
ENCODINGS = {'rgb8': 3, 'bgr8': 3, 'mono8': 1}

# custom_data keys (rosbag2 custom_data is a str -> str map).
_KEY_EXTRINSICS = 'tsa_ros.camera_extrinsics'
_KEY_NAMES = 'tsa_ros.frame_names'
_EXTRINSIC_FIELDS = ('mount_height', 'pitch', 'roll', 'yaw', 'baseline')

# builtin_interfaces/Time has an int32 sec field.
_MAX_STAMP_NS = 2**31 * 10**9 - 1

_QOS = Qos(
    QosHistory.KEEP_LAST,
    10,
    QosReliability.RELIABLE,
    QosDurability.VOLATILE,
    QosTime(0, 0),  # 0/0 is RMW's "default", i.e. no deadline
    QosTime(0, 0),  # no lifespan
    QosLiveliness.AUTOMATIC,
    QosTime(0, 0),
    False,
)


class BagError(ValueError):
    """A path is not a readable rosbag2 bag, or a bag lacks what was asked of it."""


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare fields
class BagFrame:
    """One camera frame: image, intrinsics and optionally its label map, at one stamp."""

    stamp_ns: int  # header stamp, also the bag receive time
    image: np.ndarray  # uint8 (H, W, 3) RGB
    camera: CameraModel  # intrinsics for this image size
    ground_truth: np.ndarray | None = None  # uint8 (H, W) trainIds (255 = ignore)
    frame_id: str = 'camera'
    name: str = ''  # e.g. the Cityscapes file stem, for humans


@dataclass
class BagSummary:
    """What a bag holds."""

    path: Path
    storage: str
    frames: int  # camera frames (image messages)
    ground_truth: int  # frames with a label map
    topics: dict[str, int] = field(default_factory=dict)  # message count per topic
    start_ns: int = 0  # first message's bag time
    end_ns: int = 0  # last message's bag time
    duration_s: float = 0.0  # end - start


# --------------------------------------------------------------------------- type store


@lru_cache(maxsize=1)
def _typestore():
    return get_typestore(_store_name())


def _store_name() -> Stores:
    kilted = getattr(Stores, 'ROS2_KILTED', None)
    if kilted is not None:
        return kilted
    # An older rosbags: the newest ROS 2 store it has (Stores lists them oldest first).
    return [s for s in Stores if s.name.startswith('ROS2_')][-1]


def _stamp(stamp_ns: int) -> Any:
    types = _typestore().types
    sec, nanosec = split_ns(stamp_ns)
    return types['builtin_interfaces/msg/Time'](sec=sec, nanosec=nanosec)


def _header(stamp_ns: int, frame_id: str) -> Any:
    return _typestore().types['std_msgs/msg/Header'](stamp=_stamp(stamp_ns), frame_id=frame_id)


# --------------------------------------------------------------------------- image codec


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(
            f'unsupported image encoding {encoding!r}; expected one of {sorted(ENCODINGS)}'
        )


def rgb_to_image_msg(
    image: np.ndarray, stamp_ns: int, frame_id: str = 'camera', encoding: str = 'rgb8'
) -> Any:
    """A ``sensor_msgs/msg/Image`` (rosbags message) from a uint8 array (:mod:`image_codec`).

    ``rgb8`` and ``bgr8`` take an (H, W, 3) RGB array (bgr8 swaps the channels); ``mono8``
    takes an (H, W) array. Rows are written unpadded (step = W * channels).
    """
    _check_encoding(encoding)
    fields = image_codec.encode(image, encoding)
    return _typestore().types[IMAGE_TYPE](
        header=_header(stamp_ns, frame_id),
        height=fields.height,
        width=fields.width,
        encoding=encoding,
        is_bigendian=0,
        step=fields.step,
        data=np.frombuffer(fields.data, np.uint8),
    )


def image_to_array(msg: Any) -> np.ndarray:
    """The pixels of an Image message: (H, W, 3) RGB for rgb8/bgr8, (H, W) for mono8.

    Honours ``step`` (rows may be padded); returns a writable, C-contiguous copy (deserialised
    data is a read-only view into the raw message).
    """
    encoding = str(msg.encoding)
    _check_encoding(encoding)
    pixels = image_codec.to_mono8(msg) if encoding == 'mono8' else image_codec.to_rgb(msg)
    return np.array(pixels, dtype=np.uint8, order='C', copy=True)


def image_to_rgb(msg: Any) -> np.ndarray:
    """An Image message (rgb8, bgr8 or mono8) as a uint8 (H, W, 3) RGB array."""
    pixels = image_to_array(msg)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def image_to_mono(msg: Any) -> np.ndarray:
    """A mono8 Image message (a label map) as a uint8 (H, W) array."""
    if str(msg.encoding) != 'mono8':
        raise ValueError(f'expected a mono8 image, got encoding {str(msg.encoding)!r}')
    return image_to_array(msg)


# --------------------------------------------------------------------------- camera info


def camera_info_msg(camera: CameraModel, stamp_ns: int, frame_id: str = 'camera') -> Any:
    """A ``sensor_msgs/msg/CameraInfo`` for ``camera`` (the left camera of the stereo pair)."""
    types = _typestore().types
    k = camera.K
    p = np.zeros((3, 4))
    p[:, :3] = k  # left camera: no baseline term
    return types[CAMERA_INFO_TYPE](
        header=_header(stamp_ns, frame_id),
        height=int(camera.height),
        width=int(camera.width),
        distortion_model='plumb_bob',
        d=np.zeros(5),
        k=k.reshape(-1).astype(np.float64),
        r=np.eye(3).reshape(-1),
        p=p.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=types['sensor_msgs/msg/RegionOfInterest'](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
        ),
    )


def camera_from_info(msg: Any, extrinsics: dict[str, float] | None = None) -> CameraModel:
    """The CameraModel of a CameraInfo message; ``extrinsics`` fills in what it cannot carry."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if k.size != 9:
        raise ValueError(f'CameraInfo.k has {k.size} values, expected 9')
    return CameraModel(
        int(msg.width),
        int(msg.height),
        fx=float(k[0]),
        fy=float(k[4]),
        cx=float(k[2]),
        cy=float(k[5]),
        **(extrinsics or {}),
    )


def _extrinsics(camera: CameraModel) -> dict[str, float]:
    return {name: float(getattr(camera, name)) for name in _EXTRINSIC_FIELDS}


# --------------------------------------------------------------------------- writing


def sequence_stamps(
    num_frames: int, start_ns: int, rate_hz: float = CITYSCAPES_RATE_HZ
) -> list[int]:
    """``num_frames`` evenly spaced stamps (ns) from ``start_ns`` at ``rate_hz``."""
    if num_frames < 0:
        raise ValueError(f'num_frames must be >= 0, got {num_frames}')
    if not (math.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f'rate_hz must be a positive number, got {rate_hz}')
    if start_ns < 0:
        raise ValueError(f'start_ns must be >= 0, got {start_ns}')
    # From the start each time rather than accumulating a rounded period: no drift.
    return [int(start_ns) + round(i * 1e9 / rate_hz) for i in range(num_frames)]


def _check_frame(index: int, frame: BagFrame, previous_ns: int | None) -> None:
    where = f'frame {index}'
    if not isinstance(frame, BagFrame):
        raise ValueError(f'{where}: expected a BagFrame, got {type(frame).__name__}')
    stamp = frame.stamp_ns
    if not isinstance(stamp, int | np.integer) or isinstance(stamp, bool):
        raise ValueError(f'{where}: stamp_ns must be an int, got {type(stamp).__name__}')
    if not 0 <= stamp <= _MAX_STAMP_NS:
        raise ValueError(f'{where}: stamp_ns {stamp} outside [0, {_MAX_STAMP_NS}]')
    if previous_ns is not None and stamp <= previous_ns:
        raise ValueError(
            f'{where}: stamps must be strictly increasing, got {stamp} after {previous_ns}'
        )
    image = frame.image
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f'{where}: image must be a uint8 numpy array, got {kind}')
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'{where}: image must be (H, W, 3) RGB, got shape {image.shape}')
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f'{where}: image is empty ({image.shape})')
    camera = frame.camera
    if not isinstance(camera, CameraModel):
        raise ValueError(f'{where}: camera must be a CameraModel, got {type(camera).__name__}')
    if (camera.width, camera.height) != (width, height):
        raise ValueError(
            f'{where}: camera is {camera.width}x{camera.height} but the image is '
            f'{width}x{height}; scale the camera with CameraModel.scaled()'
        )
    gt = frame.ground_truth
    if gt is not None:
        if not isinstance(gt, np.ndarray) or gt.dtype != np.uint8:
            kind = gt.dtype if isinstance(gt, np.ndarray) else type(gt).__name__
            raise ValueError(f'{where}: ground_truth must be a uint8 numpy array, got {kind}')
        if gt.shape != (height, width):
            raise ValueError(
                f'{where}: ground_truth shape {gt.shape} does not match the image '
                f'({height}, {width})'
            )
    if not isinstance(frame.frame_id, str):
        raise ValueError(f'{where}: frame_id must be a str, got {type(frame.frame_id).__name__}')


def _check_target(out: Path, overwrite: bool) -> None:
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise FileExistsError(
            f'{out} already exists; not overwriting it (pass overwrite=True to replace a bag)'
        )
    # overwrite=True replaces a bag, never some other file or directory.
    replaceable = (
        out.is_dir()
        and not out.is_symlink()
        and ((out / 'metadata.yaml').is_file() or not any(out.iterdir()))
    )
    if not replaceable:
        raise FileExistsError(
            f'{out} exists and is not a rosbag2 directory (no metadata.yaml); '
            'refusing to replace it even with overwrite=True'
        )


def write_bag(
    frames: Iterable[BagFrame],
    out: str | Path,
    *,
    storage: str = 'sqlite3',
    overwrite: bool = False,
) -> BagSummary:
    """Write ``frames`` (streamed, in stamp order) as a rosbag2 directory at ``out``.

    The bag is built in a hidden temporary directory next to ``out`` and renamed into place
    at the end, so an interrupted or failed write leaves no partial bag at ``out`` (and an
    existing bag there untouched). ``overwrite=True`` replaces an existing bag directory;
    anything else at ``out`` is refused.
    """
    if storage not in STORAGES:
        raise ValueError(f'unknown bag storage {storage!r}; expected one of {sorted(STORAGES)}')
    out = Path(out)
    if not out.name or out.name in ('.', '..'):
        raise ValueError(f'bag path {out} has no directory name')
    _check_target(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)

    store = _typestore()
    tmp = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.partial', dir=out.parent))
    try:
        # The bag directory inside tmp already has its final name, so the storage file
        # (<name>.db3 / <name>.mcap) and metadata.yaml's paths are right after the rename.
        staged = tmp / out.name
        writer = Writer(staged, version=BAG_VERSION, storage_plugin=STORAGES[storage])
        counts: dict[str, int] = {}
        first_ns = last_ns = None
        names: dict[str, str] = {}
        extrinsics: dict[str, float] | None = None
        same_extrinsics = True
        with writer:
            connections: dict[str, Any] = {}

            def put(topic: str, msgtype: str, msg: Any, stamp_ns: int) -> None:
                if topic not in connections:
                    # Topics appear on first use: a bag without labels has no gt topic.
                    connections[topic] = writer.add_connection(
                        topic, msgtype, typestore=store, offered_qos_profiles=[_QOS]
                    )
                writer.write(connections[topic], stamp_ns, store.serialize_cdr(msg, msgtype))
                counts[topic] = counts.get(topic, 0) + 1

            for index, frame in enumerate(frames):
                _check_frame(index, frame, last_ns)
                stamp, frame_id = int(frame.stamp_ns), frame.frame_id
                put(TOPIC_IMAGE, IMAGE_TYPE, rgb_to_image_msg(frame.image, stamp, frame_id), stamp)
                put(
                    TOPIC_CAMERA_INFO,
                    CAMERA_INFO_TYPE,
                    camera_info_msg(frame.camera, stamp, frame_id),
                    stamp,
                )
                if frame.ground_truth is not None:
                    gt = rgb_to_image_msg(frame.ground_truth, stamp, frame_id, encoding='mono8')
                    put(TOPIC_GROUND_TRUTH, IMAGE_TYPE, gt, stamp)
                if frame.name:
                    names[str(stamp)] = str(frame.name)
                this = _extrinsics(frame.camera)
                if extrinsics is None:
                    extrinsics = this
                same_extrinsics = same_extrinsics and this == extrinsics
                first_ns = stamp if first_ns is None else first_ns
                last_ns = stamp
            if first_ns is None:
                raise ValueError('no frames to write: a bag needs at least one frame')
            if extrinsics is not None and same_extrinsics:
                writer.set_custom_data(_KEY_EXTRINSICS, json.dumps(extrinsics))
            if names:
                writer.set_custom_data(_KEY_NAMES, json.dumps(names, separators=(',', ':')))
        _replace(staged, out, tmp, overwrite)
    except WriterError as exc:
        raise OSError(f'cannot write bag {out}: {exc}') from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    return BagSummary(
        path=out,
        storage=storage,
        frames=counts.get(TOPIC_IMAGE, 0),
        ground_truth=counts.get(TOPIC_GROUND_TRUTH, 0),
        topics=dict(counts),
        start_ns=first_ns,
        end_ns=last_ns,
        duration_s=(last_ns - first_ns) / 1e9,
    )


def _replace(staged: Path, out: Path, tmp: Path, overwrite: bool) -> None:
    """Move the finished bag to ``out``; an old bag there goes into ``tmp`` (deleted later)."""
    old = None
    if os.path.lexists(out):
        _check_target(out, overwrite)  # again: something may have appeared meanwhile
        old = tmp / '.replaced'
        os.rename(out, old)
    try:
        os.rename(staged, out)
    except BaseException:
        if old is not None:
            os.rename(old, out)  # put the old bag back rather than lose it
        raise


# --------------------------------------------------------------------------- reading


#: Message types whose first field is a std_msgs/Header (what tsa bags record).
HEADER_FIRST_TYPES = frozenset(
    {'sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo', 'sensor_msgs/msg/CompressedImage'}
)


def _cdr_order(data: bytes | bytearray | memoryview) -> str:
    """struct byte order of plain CDR bytes (after checking the encapsulation header)."""
    if len(data) < 12 or data[0] != 0 or data[1] not in (0, 1):
        raise BagError('not a plain CDR message: cannot read its header stamp')
    return '<' if data[1] == 1 else '>'


def header_stamp_ns(raw: bytes | memoryview) -> int:
    """The header stamp of a header-first message's CDR bytes, in ns, without deserialising.

    The stamp (int32 sec, uint32 nanosec) directly follows the 4-byte encapsulation header.
    """
    sec, nanosec = struct.unpack_from(f'{_cdr_order(raw)}iI', raw, 4)
    return sec * 1_000_000_000 + nanosec


def shift_header_stamp(raw: bytes | memoryview, offset_ns: int) -> bytes:
    """CDR bytes of a header-first message with its header stamp moved by ``offset_ns``.

    The stamp is rewritten in place of a copy, without deserialising the pixels.
    """
    data = bytearray(raw)
    order = _cdr_order(data)
    stamp = header_stamp_ns(data) + int(offset_ns)
    if stamp < 0 or stamp // 1_000_000_000 >= 2**31:
        raise BagError(f'stamp {stamp} ns out of range after an offset of {offset_ns} ns')
    struct.pack_into(f'{order}iI', data, 4, *divmod(stamp, 1_000_000_000))
    return bytes(data)


class BagReader:
    """Read a rosbag2 directory (``sqlite3`` or ``mcap``), e.g. one :func:`write_bag` wrote.

    Opens on construction; use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f'no bag at {self.path}: the path does not exist')
        meta_path = self.path / 'metadata.yaml'
        if not self.path.is_dir() or not meta_path.is_file():
            raise BagError(
                f'{self.path} is not a rosbag2 bag: expected a directory with metadata.yaml'
            )
        try:
            loader = getattr(yaml, 'CSafeLoader', yaml.SafeLoader)  # libyaml when available
            meta = yaml.load(meta_path.read_text(), Loader=loader)
            info = meta['rosbag2_bagfile_information']
            self.storage = str(info['storage_identifier'])
        except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
            raise BagError(f'{self.path}: unreadable metadata.yaml ({exc})') from exc
        if self.storage not in STORAGES:
            raise BagError(
                f'{self.path}: unsupported storage {self.storage!r}; '
                f'expected one of {sorted(STORAGES)}'
            )
        self.custom_data: dict[str, str] = dict(info.get('custom_data') or {})
        self._reader = Reader(self.path)
        try:
            self._reader.open()
        except (ReaderError, OSError, ValueError) as exc:
            raise BagError(f'cannot open bag {self.path}: {exc}') from exc
        try:
            self._store = self._typestore_for(self._reader.connections)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _typestore_for(connections: list[Any]) -> Any:
        """The Kilted store, plus the bag's own definitions of any types it does not know."""
        store = _typestore()
        missing = {}
        for conn in connections:
            if conn.msgtype in store.types or conn.msgdef.format != MessageDefinitionFormat.MSG:
                continue
            try:
                missing.update(get_types_from_msg(conn.msgdef.data, conn.msgtype))
            except Exception:  # a broken definition is reported when such a message is read
                continue
        if not missing:
            return store
        # A private store: registering into the shared one would leak across bags.
        store = get_typestore(_store_name())
        store.register(missing)
        return store

    # ---- context manager

    def close(self) -> None:
        if self._reader.is_open:
            self._reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- metadata

    @property
    def topics(self) -> dict[str, tuple[str, int]]:
        """``{topic: (msgtype, message count)}``."""
        return {
            name: (str(info.msgtype), int(info.msgcount))
            for name, info in self._reader.topics.items()
        }

    @property
    def message_count(self) -> int:
        return int(self._reader.message_count)

    @property
    def start_ns(self) -> int:
        """Bag time of the first message (0 for an empty bag)."""
        return int(self._reader.start_time) if self.message_count else 0

    @property
    def end_ns(self) -> int:
        """Bag time of the last message (rosbags' end_time is one past it)."""
        return int(self._reader.end_time) - 1 if self.message_count else 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def summary(self) -> BagSummary:
        topics = {name: count for name, (_, count) in self.topics.items()}
        return BagSummary(
            path=self.path,
            storage=self.storage,
            frames=topics.get(TOPIC_IMAGE, 0),
            ground_truth=topics.get(TOPIC_GROUND_TRUTH, 0),
            topics=topics,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            duration_s=self.duration_ns / 1e9,
        )

    # ---- messages

    def _connections(self, topics: Iterable[str] | None) -> list[Any]:
        if topics is None:
            return list(self._reader.connections)
        wanted = {topics} if isinstance(topics, str) else set(topics)
        if unknown := wanted - set(self._reader.topics):
            raise BagError(
                f'{self.path}: no topic(s) {sorted(unknown)}; the bag has '
                f'{sorted(self._reader.topics)}'
            )
        return [c for c in self._reader.connections if c.topic in wanted]

    def raw_messages(
        self, topics: Iterable[str] | None = None, start_ns: int | None = None
    ) -> Iterator[tuple[str, int, str, bytes]]:
        """``(topic, bag time ns, msgtype, CDR bytes)`` in bag-time order, undeserialised."""
        connections = self._connections(topics)
        if not connections:
            return
        for conn, stamp, raw in self._reader.messages(connections, start=start_ns):
            yield conn.topic, int(stamp), conn.msgtype, raw

    def messages(
        self, topics: Iterable[str] | None = None, start_ns: int | None = None
    ) -> Iterator[tuple[str, int, object]]:
        """``(topic, bag time ns, message)`` in bag-time order, messages deserialised."""
        for topic, stamp, msgtype, raw in self.raw_messages(topics, start_ns):
            yield topic, stamp, self._deserialize(raw, msgtype, topic)

    def _deserialize(self, raw: bytes, msgtype: str, topic: str) -> object:
        try:
            return self._store.deserialize_cdr(raw, msgtype)
        except KeyError as exc:
            raise BagError(f'{self.path}: unknown message type {msgtype} on {topic}') from exc

    def frames(self, start_offset_s: float = 0.0) -> Iterator[BagFrame]:
        """The bag's camera frames in stamp order, from ``start_offset_s`` after its start.

        Joins image, camera info and (where present) ground truth by header stamp. A frame
        whose camera info is missing uses the latest camera info seen before it.
        """
        if not (math.isfinite(start_offset_s) and start_offset_s >= 0):
            raise ValueError(f'start_offset_s must be >= 0, got {start_offset_s}')
        if TOPIC_IMAGE not in self._reader.topics:
            raise BagError(f'{self.path}: no {TOPIC_IMAGE} topic, so no camera frames')
        if TOPIC_CAMERA_INFO not in self._reader.topics:
            raise BagError(f'{self.path}: no {TOPIC_CAMERA_INFO} topic, so no intrinsics')
        topics = [TOPIC_IMAGE, TOPIC_CAMERA_INFO]
        if TOPIC_GROUND_TRUTH in self._reader.topics:
            topics.append(TOPIC_GROUND_TRUTH)
        first_ns = self.start_ns + round(start_offset_s * 1e9)
        extrinsics = self._custom_json(_KEY_EXTRINSICS)
        if extrinsics is not None:
            extrinsics = {k: float(v) for k, v in extrinsics.items() if k in _EXTRINSIC_FIELDS}
        names = self._custom_json(_KEY_NAMES) or {}

        pending: dict[int, dict[str, Any]] = {}  # header stamp -> {topic: message}
        last_info: Any = None

        def complete(stamp: int, parts: dict[str, Any]) -> BagFrame | None:
            nonlocal last_info
            info = parts.get(TOPIC_CAMERA_INFO)
            if info is not None:
                last_info = info
            image_msg = parts.get(TOPIC_IMAGE)
            if image_msg is None:
                return None  # camera info or labels without an image: nothing to show
            info = info if info is not None else last_info
            if info is None:
                raise BagError(f'{self.path}: no camera info at or before stamp {stamp}')
            gt_msg = parts.get(TOPIC_GROUND_TRUTH)
            return BagFrame(
                stamp_ns=stamp,
                image=image_to_rgb(image_msg),
                camera=camera_from_info(info, extrinsics),
                ground_truth=None if gt_msg is None else image_to_mono(gt_msg),
                frame_id=str(image_msg.header.frame_id),
                name=str(names.get(str(stamp), '')),
            )

        for topic, _, msg in self.messages(topics, start_ns=first_ns):
            stamp = stamp_ns(msg.header)
            if stamp < first_ns:
                continue
            # The stream has moved past every pending stamp below this one: emit those.
            for done in sorted(s for s in pending if s < stamp):
                frame = complete(done, pending.pop(done))
                if frame is not None:
                    yield frame
            pending.setdefault(stamp, {})[topic] = msg
        for done in sorted(pending):
            frame = complete(done, pending.pop(done))
            if frame is not None:
                yield frame

    def _custom_json(self, key: str) -> Any:
        text = self.custom_data.get(key)
        if text is None:
            return None
        try:
            return json.loads(text)
        except (TypeError, json.JSONDecodeError):
            return None  # someone else's custom_data: not ours to interpret


def summarize(path: str | Path) -> BagSummary:
    """Counts, storage and time span of the bag at ``path`` (from its metadata, fast)."""
    with BagReader(path) as reader:
        return reader.summary()
