"""sensor_msgs/Image pixel layouts <-> numpy, without ROS.

Works on any object with the fields of ``sensor_msgs/msg/Image`` (``height``, ``width``,
``encoding``, ``is_bigendian``, ``step``, ``data``): rclpy messages (``data`` is an
``array.array``) and rosbags messages (``data`` is a numpy array) alike. Decoding returns a
view into the message buffer when rows are unpadded and no conversion is needed (rgb8, mono8),
so the common case copies nothing; everything else is converted with OpenCV.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cv2
import numpy as np

# Encoding -> (channels, dtype, conversion to RGB or None when already RGB/mono).
_LAYOUTS: dict[str, tuple[int, np.dtype, int | None]] = {
    'rgb8': (3, np.dtype(np.uint8), None),
    'bgr8': (3, np.dtype(np.uint8), cv2.COLOR_BGR2RGB),
    'rgba8': (4, np.dtype(np.uint8), cv2.COLOR_RGBA2RGB),
    'bgra8': (4, np.dtype(np.uint8), cv2.COLOR_BGRA2RGB),
    'mono8': (1, np.dtype(np.uint8), None),
    '8UC1': (1, np.dtype(np.uint8), None),
    '8UC3': (3, np.dtype(np.uint8), cv2.COLOR_BGR2RGB),  # OpenCV's default channel order
    'mono16': (1, np.dtype(np.uint16), None),
    'yuv422': (2, np.dtype(np.uint8), cv2.COLOR_YUV2RGB_UYVY),
    'uyvy': (2, np.dtype(np.uint8), cv2.COLOR_YUV2RGB_UYVY),
    'yuv422_yuy2': (2, np.dtype(np.uint8), cv2.COLOR_YUV2RGB_YUY2),
    'yuyv': (2, np.dtype(np.uint8), cv2.COLOR_YUV2RGB_YUY2),
    'bayer_rggb8': (1, np.dtype(np.uint8), cv2.COLOR_BayerBG2RGB),
    'bayer_bggr8': (1, np.dtype(np.uint8), cv2.COLOR_BayerRG2RGB),
    'bayer_gbrg8': (1, np.dtype(np.uint8), cv2.COLOR_BayerGR2RGB),
    'bayer_grbg8': (1, np.dtype(np.uint8), cv2.COLOR_BayerGB2RGB),
}
ENCODINGS = tuple(_LAYOUTS)
#: Largest image accepted (guards against absurd sizes in a malformed message); nodes set a
#: tighter per-node budget (``max_pixels``, from the network input size).
MAX_PIXELS = 8192 * 8192


class FrameTooLarge(ValueError):
    """A frame over the pixel budget: rejected from its header, before any pixel is touched."""


class ImageFields(NamedTuple):
    """The fields of a sensor_msgs/Image except the header."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes | memoryview


def decode(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The pixels of an Image message as stored: (H, W, C) or (H, W), dtype of the encoding.

    Raises ValueError naming the problem for unknown encodings, empty sizes, a ``step`` too
    small for the width, or too little data; FrameTooLarge (a ValueError) for more than
    ``max_pixels`` pixels, checked first, from the header alone.
    """
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height * width > min(max_pixels, MAX_PIXELS):
        raise FrameTooLarge(
            f'frame {width}x{height} has {height * width:,} pixels, over the budget of '
            f'{min(max_pixels, MAX_PIXELS):,} (parameter max_pixels)'
        )
    encoding = str(msg.encoding)
    if encoding not in _LAYOUTS:
        raise ValueError(f'unsupported image encoding {encoding!r}; supported: {ENCODINGS}')
    channels, dtype, _ = _LAYOUTS[encoding]
    if height <= 0 or width <= 0:
        raise ValueError(f'image size {width}x{height} is empty')
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(
            f'{encoding} image: step {step} < width {width} x {channels * dtype.itemsize} '
            'bytes per pixel'
        )
    buf = np.frombuffer(msg.data, np.uint8) if not isinstance(msg.data, np.ndarray) else msg.data
    buf = buf.reshape(-1).view(np.uint8)
    if buf.size < step * height:
        raise ValueError(
            f'{encoding} image: {buf.size} data bytes < step {step} x height {height}'
        )
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    pixels = rows.view(dtype) if dtype.itemsize > 1 else rows
    if dtype.itemsize > 1 and bool(msg.is_bigendian) == np.little_endian:  # foreign order
        pixels = pixels.byteswap()
    return pixels.reshape(height, width, channels) if channels > 1 else pixels


def to_rgb(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any supported Image message as uint8 (H, W, 3) RGB; a view when it is unpadded rgb8."""
    encoding = str(msg.encoding)
    pixels = decode(msg, max_pixels)
    _, dtype, conversion = _LAYOUTS[encoding]
    if dtype != np.uint8:
        pixels = (pixels >> 8).astype(np.uint8)  # 16-bit mono: keep the high byte
    if conversion is not None:
        try:
            return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)
        except cv2.error:  # e.g. yuv422 of odd width, bayer smaller than 2x2
            height, width = pixels.shape[:2]
            raise ValueError(f'{encoding} image of {width}x{height} cannot be converted') from None
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def to_mono8(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A mono8 Image message (e.g. a trainId label map) as uint8 (H, W); a view if unpadded."""
    if str(msg.encoding) not in ('mono8', '8UC1'):
        raise ValueError(f'expected a mono8 label image, got encoding {str(msg.encoding)!r}')
    return decode(msg, max_pixels)


def encode(array: np.ndarray, encoding: str) -> ImageFields:
    """Fields of an Image message for a uint8 (H, W, 3) RGB or (H, W) array.

    ``rgb8``/``bgr8``/``rgba8``/``bgra8`` take RGB input; ``mono8`` takes (H, W). Rows are
    unpadded; ``data`` is a memoryview of a contiguous array (no copy for rgb8/mono8 input
    that is already contiguous).
    """
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f'images are uint8, got {array.dtype}')
    if encoding in ('mono8', '8UC1'):
        if array.ndim != 2:
            raise ValueError(f'mono8 needs an (H, W) array, got shape {array.shape}')
        out = np.ascontiguousarray(array)
    elif encoding in ('rgb8', 'bgr8', 'rgba8', 'bgra8'):
        if array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f'{encoding} needs an (H, W, 3) RGB array, got shape {array.shape}')
        if encoding == 'rgb8':
            out = np.ascontiguousarray(array)
        else:
            code = {
                'bgr8': cv2.COLOR_RGB2BGR,
                'rgba8': cv2.COLOR_RGB2RGBA,
                'bgra8': cv2.COLOR_RGB2BGRA,
            }[encoding]
            out = cv2.cvtColor(np.ascontiguousarray(array), code)
    else:
        raise ValueError(f'cannot encode {encoding!r}; use rgb8, bgr8, rgba8, bgra8 or mono8')
    height, width = out.shape[:2]
    return ImageFields(height, width, encoding, 0, out.strides[0], memoryview(out).cast('B'))
