"""rosbag2 out and in (tsa_ros.data.bag): round trips, safety, codec, ROS 2 compatibility."""

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.rosbag2 import Reader

from tsa_ros.data.bag import (
    CITYSCAPES_RATE_HZ,
    TOPIC_CAMERA_INFO,
    TOPIC_GROUND_TRUTH,
    TOPIC_IMAGE,
    BagError,
    BagFrame,
    BagReader,
    image_to_array,
    image_to_mono,
    image_to_rgb,
    rgb_to_image_msg,
    sequence_stamps,
    summarize,
    write_bag,
)
from tsa_ros.data.camera import CameraModel

H, W = 32, 48
START_NS = 1_500_000_000_123_456_789  # a non-round start: sec/nanosec must both survive
STORAGES = ['sqlite3', 'mcap']
IMAGE, CAMERA_INFO = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/CameraInfo'


def make_frames(n=6, gt_at=(1, 4), seed=0):
    rng = np.random.default_rng(seed)
    camera = replace(CameraModel.cityscapes_default(W, H), pitch=0.05, mount_height=1.3)
    return [
        BagFrame(
            stamp_ns=stamp,
            image=rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
            camera=camera,
            ground_truth=rng.integers(0, 19, (H, W), dtype=np.uint8) if i in gt_at else None,
            frame_id='cam_left',
            name=f'aachen_000000_{i:06d}' if i % 2 == 0 else '',
        )
        for i, stamp in enumerate(sequence_stamps(n, START_NS))
    ]


def leftovers(parent: Path, name: str):
    """Temporary directories write_bag left next to the bag."""
    return [p for p in parent.iterdir() if p.name.startswith(f'.{name}.')]


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize('storage', STORAGES)
def test_round_trip(tmp_path, storage):
    frames = make_frames()
    out = tmp_path / 'seq'
    summary = write_bag(iter(frames), out, storage=storage)  # a one-pass iterator suffices

    counts = {TOPIC_IMAGE: 6, TOPIC_CAMERA_INFO: 6, TOPIC_GROUND_TRUTH: 2}
    assert (summary.frames, summary.ground_truth, summary.topics) == (6, 2, counts)
    assert (summary.start_ns, summary.end_ns) == (frames[0].stamp_ns, frames[-1].stamp_ns)
    assert summary.duration_s == pytest.approx(5 / CITYSCAPES_RATE_HZ, abs=1e-9)

    meta = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['storage_identifier'] == storage
    assert meta['version'] == 9
    suffix = {'sqlite3': '.db3', 'mcap': '.mcap'}[storage]
    assert meta['relative_file_paths'] == [f'seq{suffix}']  # named after the final directory
    assert (out / f'seq{suffix}').is_file()
    for topic in meta['topics_with_message_count']:
        (qos,) = topic['topic_metadata']['offered_qos_profiles']
        assert (qos['reliability'], qos['durability']) == ('reliable', 'volatile')
    assert leftovers(tmp_path, 'seq') == []

    with BagReader(out) as reader:
        assert reader.storage == storage
        assert reader.topics == {
            TOPIC_IMAGE: (IMAGE, 6),
            TOPIC_CAMERA_INFO: (CAMERA_INFO, 6),
            TOPIC_GROUND_TRUTH: (IMAGE, 2),
        }
        assert (reader.start_ns, reader.end_ns) == (summary.start_ns, summary.end_ns)
        assert reader.duration_ns == frames[-1].stamp_ns - frames[0].stamp_ns
        back = list(reader.frames())

        # Every message's bag time is its header stamp; ground truth shares the image's stamp.
        stamps = {TOPIC_IMAGE: [], TOPIC_CAMERA_INFO: [], TOPIC_GROUND_TRUTH: []}
        for topic, bag_ns, msg in reader.messages():
            header_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert header_ns == bag_ns
            assert msg.header.frame_id == 'cam_left'
            stamps[topic].append(header_ns)
    assert stamps[TOPIC_IMAGE] == stamps[TOPIC_CAMERA_INFO] == [f.stamp_ns for f in frames]
    assert stamps[TOPIC_GROUND_TRUTH] == [frames[1].stamp_ns, frames[4].stamp_ns]

    assert len(back) == len(frames)
    for got, want in zip(back, frames, strict=True):
        assert got.stamp_ns == want.stamp_ns
        assert got.image.dtype == np.uint8 and got.image.shape == (H, W, 3)
        assert got.image.tobytes() == want.image.tobytes()
        assert got.camera == want.camera  # intrinsics from CameraInfo, pose from custom_data
        assert got.frame_id == want.frame_id and got.name == want.name
        if want.ground_truth is None:
            assert got.ground_truth is None
        else:
            assert got.ground_truth.dtype == np.uint8
            assert got.ground_truth.tobytes() == want.ground_truth.tobytes()
    back[0].image[0, 0] = 0  # frames are the caller's to modify

    assert summarize(out) == summary


@pytest.mark.parametrize('storage', STORAGES)
def test_camera_info_contents(tmp_path, storage):
    frames = make_frames(2, gt_at=())
    write_bag(frames, tmp_path / 'b', storage=storage)
    with BagReader(tmp_path / 'b') as reader:
        assert TOPIC_GROUND_TRUTH not in reader.topics  # no labels, no topic
        (_, _, info), _ = list(reader.messages([TOPIC_CAMERA_INFO]))
    cam = frames[0].camera
    assert (info.width, info.height, info.distortion_model) == (W, H, 'plumb_bob')
    np.testing.assert_array_equal(info.d, np.zeros(5))
    np.testing.assert_array_equal(info.k.reshape(3, 3), cam.K)
    np.testing.assert_array_equal(info.r.reshape(3, 3), np.eye(3))
    np.testing.assert_array_equal(info.p.reshape(3, 4), np.hstack([cam.K, np.zeros((3, 1))]))


def test_start_offset_skips_frames(tmp_path):
    frames = make_frames(6)
    write_bag(frames, tmp_path / 'b')
    with BagReader(tmp_path / 'b') as reader:
        # 17 Hz: frames at 0, 58.8, 117.6, ... ms; from 100 ms on, frames 2..5 remain.
        assert [f.stamp_ns for f in reader.frames(0.1)] == [f.stamp_ns for f in frames[2:]]
        got = list(reader.frames(start_offset_s=2 / CITYSCAPES_RATE_HZ))
        assert [f.stamp_ns for f in got] == [f.stamp_ns for f in frames[2:]]
        assert got[2].ground_truth is not None  # frame 4's label still joined
        assert list(reader.frames(10.0)) == []
        with pytest.raises(ValueError, match='start_offset_s'):
            next(reader.frames(-1.0))


def test_sequence_stamps():
    stamps = sequence_stamps(35, START_NS)
    assert len(stamps) == 35 and stamps[0] == START_NS
    assert np.all(np.diff(stamps) > 0)
    assert stamps[17] - stamps[0] == 10**9  # 17 frames at 17 Hz, no accumulated rounding
    assert set(np.diff(stamps)) <= {58823529, 58823530}
    assert sequence_stamps(0, 5) == []
    with pytest.raises(ValueError, match='rate_hz'):
        sequence_stamps(3, 0, rate_hz=0.0)


# --------------------------------------------------------------------------- safety


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / 'b'
    write_bag(make_frames(2, seed=1), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(FileExistsError, match='overwrite=True'):
        write_bag(make_frames(3, seed=2), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before

    new = make_frames(3, seed=2)
    summary = write_bag(new, out, overwrite=True, storage='mcap')
    assert summary.frames == 3 and summarize(out).storage == 'mcap'
    assert sorted(p.name for p in out.iterdir()) == ['b.mcap', 'metadata.yaml']  # no old .db3
    with BagReader(out) as reader:
        assert [f.image.tobytes() for f in reader.frames()] == [f.image.tobytes() for f in new]
    assert leftovers(tmp_path, 'b') == []


def test_overwrite_only_replaces_bags(tmp_path):
    folder = tmp_path / 'photos'
    folder.mkdir()
    (folder / 'keep.txt').write_text('precious')
    a_file = tmp_path / 'notes.txt'
    a_file.write_text('precious')
    for target in (folder, a_file):
        with pytest.raises(FileExistsError, match='not a rosbag2 directory'):
            write_bag(make_frames(1), target, overwrite=True)
    assert (folder / 'keep.txt').read_text() == a_file.read_text() == 'precious'
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert write_bag(make_frames(1), empty, overwrite=True).frames == 1


def test_failed_write_leaves_nothing(tmp_path):
    out = tmp_path / 'b'
    frames = make_frames(4)
    bad = frames[:3] + [replace(frames[3], image=frames[3].image.astype(np.float32))]
    with pytest.raises(ValueError, match='frame 3'):
        write_bag(bad, out)
    assert not out.exists() and leftovers(tmp_path, 'b') == []

    def interrupted():
        yield from frames[:2]
        raise KeyboardInterrupt

    write_bag(frames, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        write_bag(interrupted(), out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old bag intact
    assert leftovers(tmp_path, 'b') == []

    with pytest.raises(ValueError, match='no frames'):
        write_bag([], tmp_path / 'empty')
    assert not (tmp_path / 'empty').exists()
    with pytest.raises(ValueError, match='storage'):
        write_bag(frames, tmp_path / 'x', storage='rosbag1')


def _bad(frames, index, **changes):
    return frames[:index] + [replace(frames[index], **changes)] + frames[index + 1 :]


@pytest.mark.parametrize(
    'case, pattern',
    [
        ('repeated_stamp', r'frame 2: stamps must be strictly increasing'),
        ('earlier_stamp', r'frame 2: stamps must be strictly increasing'),
        ('float_image', r'frame 2: image must be a uint8'),
        ('gray_image', r'frame 2: image must be \(H, W, 3\)'),
        ('gt_shape', r'frame 2: ground_truth shape \(16, 48\) does not match'),
        ('gt_dtype', r'frame 2: ground_truth must be a uint8'),
        ('camera_size', r'frame 2: camera is 96x64 but the image is 48x32'),
        ('negative_stamp', r'frame 0: stamp_ns -1 outside'),
    ],
)
def test_validation(tmp_path, case, pattern):
    frames = make_frames(4)
    f2 = frames[2]
    bad = {
        'repeated_stamp': lambda: _bad(frames, 2, stamp_ns=frames[1].stamp_ns),
        'earlier_stamp': lambda: _bad(frames, 2, stamp_ns=frames[0].stamp_ns),
        'float_image': lambda: _bad(frames, 2, image=f2.image.astype(np.float64)),
        'gray_image': lambda: _bad(frames, 2, image=f2.image[..., 0]),
        'gt_shape': lambda: _bad(frames, 2, ground_truth=np.zeros((H // 2, W), np.uint8)),
        'gt_dtype': lambda: _bad(frames, 2, ground_truth=np.zeros((H, W), np.int64)),
        'camera_size': lambda: _bad(frames, 2, camera=f2.camera.scaled(2 * W, 2 * H)),
        'negative_stamp': lambda: _bad(frames, 0, stamp_ns=-1),
    }[case]()
    with pytest.raises(ValueError, match=pattern):
        write_bag(bad, tmp_path / 'b')
    assert not (tmp_path / 'b').exists()


# --------------------------------------------------------------------------- reading errors


def test_reading_non_bags(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        BagReader(tmp_path / 'missing')
    (tmp_path / 'plain').mkdir()
    (tmp_path / 'plain' / 'x.txt').write_text('x')
    with pytest.raises(BagError, match='not a rosbag2 bag.*metadata.yaml'):
        BagReader(tmp_path / 'plain')
    with pytest.raises(ValueError, match='not a rosbag2 bag'):  # BagError is a ValueError
        summarize(tmp_path / 'plain' / 'x.txt')

    write_bag(make_frames(1), tmp_path / 'b')
    meta_path = tmp_path / 'b' / 'metadata.yaml'
    meta_path.write_text(meta_path.read_text().replace('sqlite3', 'rosbag_v1'))
    with pytest.raises(BagError, match="unsupported storage 'rosbag_v1'"):
        BagReader(tmp_path / 'b')
    meta_path.write_text('rosbag2_bagfile_information: [')
    with pytest.raises(BagError, match='unreadable metadata.yaml'):
        BagReader(tmp_path / 'b')


def test_unknown_topic(tmp_path):
    write_bag(make_frames(1, gt_at=()), tmp_path / 'b')
    with BagReader(tmp_path / 'b') as reader, pytest.raises(BagError, match='/lidar'):
        list(reader.messages(['/lidar']))


# --------------------------------------------------------------------------- image codec


def test_codec_encodings():
    rgb = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for encoding in ('rgb8', 'bgr8'):
        msg = rgb_to_image_msg(rgb, START_NS, 'cam', encoding=encoding)
        assert (msg.encoding, msg.step, msg.width, msg.height) == (encoding, 21, 7, 5)
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_500_000_000, 123_456_789)
        np.testing.assert_array_equal(image_to_rgb(msg), rgb)
    bgr = rgb_to_image_msg(rgb, 0, encoding='bgr8')
    np.testing.assert_array_equal(bgr.data.reshape(5, 7, 3), rgb[..., ::-1])

    mono = rgb[..., 0].copy()
    msg = rgb_to_image_msg(mono, 0, encoding='mono8')
    np.testing.assert_array_equal(image_to_mono(msg), mono)
    np.testing.assert_array_equal(image_to_rgb(msg), np.stack([mono] * 3, axis=-1))
    with pytest.raises(ValueError, match='mono8 needs an \\(H, W\\) array'):
        rgb_to_image_msg(rgb, 0, encoding='mono8')
    with pytest.raises(ValueError, match="expected a mono8 image, got encoding 'bgr8'"):
        image_to_mono(bgr)


def test_codec_honours_step():
    rgb = np.random.default_rng(4).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    for encoding, pixels in (('rgb8', rgb), ('bgr8', rgb[..., ::-1]), ('mono8', rgb[..., 1])):
        rows = pixels.reshape(4, -1)
        padded = np.full((4, rows.shape[1] + 3), 0xEE, np.uint8)  # 3 bytes of row padding
        padded[:, : rows.shape[1]] = rows
        msg = rgb_to_image_msg(rgb, 0)
        msg.encoding, msg.step, msg.data = encoding, padded.shape[1], padded.reshape(-1)
        want = rgb if encoding != 'mono8' else rgb[..., 1]
        got = image_to_array(msg)
        np.testing.assert_array_equal(got, want)
        assert got.flags.c_contiguous and got.flags.writeable
    msg.data = msg.data[:-4]  # shorter than step * height
    with pytest.raises(ValueError, match='data bytes < step'):
        image_to_array(msg)
    msg.step = 2
    with pytest.raises(ValueError, match='step 2 < width 5'):
        image_to_array(msg)


@pytest.mark.parametrize('encoding', ['rgba8', '16UC1', 'bayer_rggb8'])
def test_codec_rejects_other_encodings(encoding):
    msg = rgb_to_image_msg(np.zeros((2, 2, 3), np.uint8), 0)
    msg.encoding = encoding
    with pytest.raises(ValueError, match=f"unsupported image encoding '{encoding}'"):
        image_to_rgb(msg)
    with pytest.raises(ValueError, match=f"unsupported image encoding '{encoding}'"):
        rgb_to_image_msg(np.zeros((2, 2, 3), np.uint8), 0, encoding=encoding)


# --------------------------------------------------------------------------- real ROS 2


def _ros_type_hash(msgtype):
    """The RIHS01 hash the installed ROS 2 interface package declares for ``msgtype``."""
    package, _, name = msgtype.split('/')
    prefixes = os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) + [sys.prefix]
    for prefix in filter(None, prefixes):
        path = Path(prefix, 'share', package, 'msg', f'{name}.json')
        if path.is_file():
            data = json.loads(path.read_text())
            return next(h['hash_string'] for h in data['type_hashes'] if h['type_name'] == msgtype)
    return None


@pytest.mark.parametrize('storage', STORAGES)
def test_payload_matches_ros2_deserialiser(tmp_path, storage):
    """rclpy (the C type support `ros2 bag play` uses) reads our CDR bytes field for field."""
    pytest.importorskip('rclpy')
    serialization = pytest.importorskip('rclpy.serialization')
    sensor_msgs = pytest.importorskip('sensor_msgs.msg')
    frames = make_frames(2, gt_at=(1,))
    write_bag(frames, tmp_path / 'b', storage=storage)

    ros_types = {IMAGE: sensor_msgs.Image, CAMERA_INFO: sensor_msgs.CameraInfo}
    seen = {}
    with Reader(tmp_path / 'b') as reader:  # rosbags' own reader: the raw bytes as stored
        for conn in reader.connections:
            if (want := _ros_type_hash(conn.msgtype)) is not None:
                assert conn.digest == want  # the type hash in the bag is ROS 2's
        for conn, bag_ns, raw in reader.messages():
            msg = serialization.deserialize_message(raw, ros_types[conn.msgtype])
            assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == bag_ns
            assert msg.header.frame_id == 'cam_left'
            seen[conn.topic, bag_ns] = msg

    frame = frames[1]
    image = seen[TOPIC_IMAGE, frame.stamp_ns]
    assert (image.height, image.width, image.encoding) == (H, W, 'rgb8')
    assert (image.step, image.is_bigendian) == (3 * W, 0)
    assert bytes(image.data) == frame.image.tobytes()
    gt = seen[TOPIC_GROUND_TRUTH, frame.stamp_ns]
    assert (gt.height, gt.width, gt.encoding, gt.step) == (H, W, 'mono8', W)
    assert bytes(gt.data) == frame.ground_truth.tobytes()
    assert gt.header.stamp == image.header.stamp
    info = seen[TOPIC_CAMERA_INFO, frame.stamp_ns]
    assert (info.height, info.width, info.distortion_model) == (H, W, 'plumb_bob')
    np.testing.assert_array_equal(np.reshape(info.k, (3, 3)), frame.camera.K)
    np.testing.assert_array_equal(info.d, np.zeros(5))


def test_shift_header_stamp_moves_only_the_stamp():
    pytest.importorskip('rclpy')
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image

    from tsa_ros.data.bag import BagError, shift_header_stamp

    msg = Image(height=2, width=3, encoding='rgb8', step=9, data=bytes(range(18)))
    msg.header.stamp.sec, msg.header.stamp.nanosec = 100, 999_999_000
    msg.header.frame_id = 'camera'
    moved = deserialize_message(shift_header_stamp(serialize_message(msg), 2_500), Image)
    assert (moved.header.stamp.sec, moved.header.stamp.nanosec) == (101, 1_500)
    assert moved.header.frame_id == 'camera' and bytes(moved.data) == bytes(msg.data)
    back = deserialize_message(shift_header_stamp(serialize_message(moved), -2_500), Image)
    assert back == msg
    with pytest.raises(BagError, match='out of range'):
        shift_header_stamp(serialize_message(msg), -(10**12))
    with pytest.raises(BagError, match='CDR'):
        shift_header_stamp(b'\x07\x07' + bytes(20), 1)
