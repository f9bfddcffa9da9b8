"""sensor_msgs/Image layouts <-> numpy without ROS (duck-typed messages)."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from tsa_ros import image_codec


def message(array, encoding, pad=0, bigendian=0):
    height, width = array.shape[:2]
    row = array.reshape(height, -1).view(np.uint8)
    padded = np.zeros((height, row.shape[1] + pad), np.uint8)
    padded[:, : row.shape[1]] = row
    return SimpleNamespace(
        height=height,
        width=width,
        encoding=encoding,
        is_bigendian=bigendian,
        step=padded.shape[1],
        data=padded.tobytes(),
    )


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)


def test_rgb8_round_trip_is_a_view(rgb):
    fields = image_codec.encode(rgb, 'rgb8')
    msg = SimpleNamespace(**fields._asdict())
    msg.data = bytearray(fields.data)
    out = image_codec.to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8)), 'no copy for rgb8'


@pytest.mark.parametrize('encoding', ['bgr8', 'rgba8', 'bgra8'])
def test_colour_orders(rgb, encoding):
    fields = image_codec.encode(rgb, encoding)
    assert fields.step == rgb.shape[1] * (4 if 'a' in encoding else 3)
    np.testing.assert_array_equal(image_codec.to_rgb(SimpleNamespace(**fields._asdict())), rgb)


def test_padded_rows_and_mono(rgb):
    np.testing.assert_array_equal(image_codec.to_rgb(message(rgb, 'rgb8', pad=6)), rgb)
    gray = rgb[..., 0].copy()
    np.testing.assert_array_equal(image_codec.to_mono8(message(gray, 'mono8', pad=2)), gray)
    np.testing.assert_array_equal(image_codec.to_rgb(message(gray, 'mono8'))[..., 2], gray)


def test_camera_driver_encodings(rgb):
    # Pixel pairs share their chroma in 4:2:2, so give each pair one colour.
    pairs = np.repeat(rgb[:, ::2] // 2 + 64, 2, axis=1)
    packed = np.zeros((6, 10, 2), np.uint8)
    ycrcb = cv2.cvtColor(pairs, cv2.COLOR_RGB2YCrCb)
    packed[..., 0] = ycrcb[..., 0]  # Y0 U Y1 V
    packed[:, 0::2, 1] = ycrcb[:, 0::2, 2]
    packed[:, 1::2, 1] = ycrcb[:, 0::2, 1]
    out = image_codec.to_rgb(message(packed, 'yuv422_yuy2'))
    assert (
        out.shape == rgb.shape and np.abs(out.astype(int) - pairs).max() <= 16
    )  # video-range rounding
    deep = (rgb[..., 0].astype(np.uint16) << 8) | 7
    np.testing.assert_array_equal(image_codec.to_rgb(message(deep, 'mono16'))[..., 0], rgb[..., 0])
    swapped = message(deep.byteswap(), 'mono16', bigendian=1)
    np.testing.assert_array_equal(image_codec.decode(swapped), deep)
    bayer = rgb[..., 1].copy()
    assert image_codec.to_rgb(message(bayer, 'bayer_rggb8')).shape == rgb.shape


@pytest.mark.parametrize(
    ('change', 'match'),
    [
        ({'encoding': '32FC1'}, 'unsupported image encoding'),
        ({'step': 5}, 'step'),
        ({'data': b'\x00' * 10}, 'data bytes'),
        ({'height': 100000, 'width': 100000}, 'over the budget'),
        ({'height': 0}, 'empty'),
    ],
)
def test_malformed_messages_name_the_problem(rgb, change, match):
    msg = message(rgb, 'rgb8')
    for key, value in change.items():
        setattr(msg, key, value)
    with pytest.raises(ValueError, match=match):
        image_codec.to_rgb(msg)


def test_pixel_budget_is_checked_from_the_header_before_the_data(rgb):
    msg = message(rgb, 'rgb8')
    assert image_codec.to_rgb(msg, max_pixels=60).shape == rgb.shape  # 6x10: at the budget
    with pytest.raises(image_codec.FrameTooLarge, match='60 pixels, over the budget of 59'):
        image_codec.to_rgb(msg, max_pixels=59)
    # An 8K frame with no data and an unknown encoding: the budget answers first.
    huge = SimpleNamespace(
        height=4320, width=7680, encoding='weird', is_bigendian=0, step=0, data=b''
    )
    with pytest.raises(image_codec.FrameTooLarge, match='33,177,600 pixels'):
        image_codec.to_rgb(huge, max_pixels=4 * 512 * 1024)
    with pytest.raises(image_codec.FrameTooLarge):
        image_codec.to_mono8(SimpleNamespace(**{**vars(huge), 'encoding': 'mono8'}), 1000)


def test_encode_rejects_wrong_shapes(rgb):
    with pytest.raises(ValueError, match='mono8'):
        image_codec.encode(rgb, 'mono8')
    with pytest.raises(ValueError, match='uint8'):
        image_codec.encode(rgb.astype(np.float32), 'rgb8')
    with pytest.raises(ValueError, match='cannot encode'):
        image_codec.encode(rgb, 'yuv422')
    with pytest.raises(ValueError, match='mono8 label'):
        image_codec.to_mono8(message(rgb, 'rgb8'))
