"""numpy / torch <-> ROS messages: images, segmentations, signed weights, label info.

Image pixels go through the ROS-free :mod:`tsa_ros.image_codec` (views instead of copies where
the layout allows); a working ``cv_bridge`` is used for encodings the codec does not know.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tsa_msgs.msg import LabelInfo, ModelWeights, Segmentation

from tsa_ros import image_codec
from tsa_ros.data.labels import CLASS_NAMES, IGNORE_ID, TRAIN_COLORS
from tsa_ros.inference import Predictor
from tsa_ros.models import CheckpointError, state_dict_from_bytes, state_dict_to_bytes

POSTERIOR_DTYPES = {
    Segmentation.POSTERIORS_FLOAT16: np.float16,
    Segmentation.POSTERIORS_FLOAT32: np.float32,
    Segmentation.POSTERIORS_UINT8: np.uint8,
}


class MessageError(ValueError):
    """A message that cannot be used (bad encoding, size, values or signature)."""


class FrameTooLarge(MessageError):
    """A frame over the node's pixel budget (``max_pixels``), refused before any copy."""


# --------------------------------------------------------------------------- images
@lru_cache(maxsize=1)
def _cv_bridge() -> Any | None:
    """A working ROS 2 cv_bridge, or None (PyPI's `cv-bridge` is ROS 1 and fails here)."""
    try:
        from cv_bridge import CvBridge

        bridge = CvBridge()
        probe = Image(height=1, width=1, encoding='rgb8', step=3, data=b'\x01\x02\x03')
        if bridge.imgmsg_to_cv2(probe, 'rgb8').shape != (1, 1, 3):
            return None
        return bridge
    except Exception:  # any import or runtime failure means "not usable"
        return None


def image_to_rgb(msg: Image, max_pixels: int = image_codec.MAX_PIXELS) -> np.ndarray:
    """A camera image as uint8 (H, W, 3) RGB, a view into the message where possible.

    A frame of more than ``max_pixels`` pixels is FrameTooLarge, judged from its header.
    """
    try:
        return image_codec.to_rgb(msg, max_pixels)
    except image_codec.FrameTooLarge as exc:
        raise FrameTooLarge(str(exc)) from None
    except ValueError as exc:
        bridge = _cv_bridge()
        if bridge is None or msg.encoding in image_codec.ENCODINGS:
            raise MessageError(str(exc)) from exc
        return np.asarray(bridge.imgmsg_to_cv2(msg, 'rgb8'))


def labels_from_image(msg: Image, max_pixels: int = image_codec.MAX_PIXELS) -> np.ndarray:
    """A mono8 label image as uint8 (H, W)."""
    try:
        return image_codec.to_mono8(msg, max_pixels)
    except image_codec.FrameTooLarge as exc:
        raise FrameTooLarge(str(exc)) from None
    except ValueError as exc:
        raise MessageError(str(exc)) from exc


def image_msg(array: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image message for a uint8 RGB (H, W, 3) or label (H, W) array, header copied."""
    fields = image_codec.encode(array, encoding)
    msg = Image(
        header=header,
        height=fields.height,
        width=fields.width,
        encoding=fields.encoding,
        is_bigendian=0,
        step=fields.step,
    )
    msg.data = bytes(fields.data)  # rclpy copies into its own buffer either way
    return msg


# --------------------------------------------------------------------------- segmentations
def encode_posteriors(probs: np.ndarray, encoding: str) -> bytes:
    """Posteriors (C, H, W) in [0, 1] as raw bytes of the given encoding."""
    if encoding == Segmentation.POSTERIORS_UINT8:
        return np.rint(np.clip(probs, 0, 1) * 255).astype(np.uint8).tobytes()
    return np.ascontiguousarray(probs, dtype=POSTERIOR_DTYPES[encoding]).tobytes()


def segmentation_msg(
    header: Header,
    role: str,
    arch: str,
    version: int,
    labels: np.ndarray,
    posteriors: np.ndarray | None = None,
    encoding: str = Segmentation.POSTERIORS_FLOAT16,
    inference_ms: float = 0.0,
) -> Segmentation:
    """A Segmentation message; ``posteriors`` (C, h, w) are optional."""
    msg = Segmentation(
        header=header,
        role=role,
        arch=arch,
        model_version=int(version),
        labels=image_msg(labels, 'mono8', header),
        inference_time_ms=float(inference_ms),
    )
    if posteriors is not None:
        if encoding not in POSTERIOR_DTYPES:
            raise ValueError(f'posteriors encoding {encoding!r} not in {list(POSTERIOR_DTYPES)}')
        classes, height, width = posteriors.shape
        msg.posteriors_encoding = encoding
        msg.num_classes, msg.posteriors_height, msg.posteriors_width = classes, height, width
        msg.posteriors = encode_posteriors(posteriors, encoding)
    return msg


def posteriors_from_msg(msg: Segmentation) -> np.ndarray | None:
    """The posteriors of a Segmentation as float32 (C, h, w), or None when absent."""
    if not len(msg.posteriors):
        return None
    dtype = POSTERIOR_DTYPES.get(msg.posteriors_encoding)
    if dtype is None:
        raise MessageError(f'unknown posteriors encoding {msg.posteriors_encoding!r}')
    shape = (int(msg.num_classes), int(msg.posteriors_height), int(msg.posteriors_width))
    data = np.frombuffer(msg.posteriors, dtype)
    if data.size != int(np.prod(shape)):
        raise MessageError(f'posteriors hold {data.size} values, header says {shape}')
    probs = data.reshape(shape).astype(np.float32)
    if dtype == np.uint8:
        probs /= 255.0
    if not np.isfinite(probs).all():
        raise MessageError('posteriors contain NaN or inf')
    return probs


# --------------------------------------------------------------------------- weights
def _signed_text(lineage: str, version: int, step: int, arch_id: str, sha256: str) -> bytes:
    return f'tsa-weights|{lineage}|{version}|{step}|{arch_id}|{sha256}'.encode()


def sign(key: bytes, lineage: str, version: int, step: int, arch_id: str, sha256: str) -> str:
    """HMAC-SHA256 (hex) over the snapshot's identity and payload hash."""
    text = _signed_text(lineage, version, step, arch_id, sha256)
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def weights_msg(
    header: Header,
    lineage: str,
    version: int,
    step: int,
    arch_id: str,
    config: dict,
    state_dict: dict,
    key: bytes | None,
) -> ModelWeights:
    """A ModelWeights message for a state dict, signed with ``key`` (None: unsigned demo mode)."""
    payload = state_dict_to_bytes(state_dict)
    digest = hashlib.sha256(payload).hexdigest()
    return ModelWeights(
        header=header,
        lineage=lineage,
        version=int(version),
        step=int(step),
        arch_id=arch_id,
        config_json=json.dumps(config, sort_keys=True),
        payload=payload,
        sha256=digest,
        signature='' if key is None else sign(key, lineage, version, step, arch_id, digest),
    )


def verify_weights(msg: ModelWeights, key: bytes | None, arch_id: str, config: dict) -> dict:
    """The state dict of a snapshot whose signature, hash, architecture and config check out.

    ``key`` None is the unsigned demo mode: everything but the signature is checked. Raises
    MessageError naming the first check that fails, also for a signed payload that is
    malformed (a key holder's bug must not crash A) or holds non-finite weights.
    """
    if msg.arch_id != arch_id:
        raise MessageError(f'weights for architecture {msg.arch_id!r}, expected {arch_id!r}')
    try:
        theirs = json.loads(msg.config_json)
    except (json.JSONDecodeError, UnicodeError) as exc:
        raise MessageError('weights carry a malformed config') from exc
    if theirs != json.loads(json.dumps(config, sort_keys=True)):
        raise MessageError('weights were made for another model config')
    if key is not None:
        expected = sign(key, msg.lineage, msg.version, msg.step, msg.arch_id, msg.sha256)
        # As bytes: compare_digest refuses str with non-ASCII characters (a hostile field).
        given = str(msg.signature).encode('utf-8', 'surrogatepass')
        if not hmac.compare_digest(expected.encode(), given):
            raise MessageError(f'weights version {msg.version}: signature does not verify')
    payload = bytes(msg.payload)
    if hashlib.sha256(payload).hexdigest() != msg.sha256:
        raise MessageError(f'weights version {msg.version}: payload sha256 mismatch')
    try:
        state = state_dict_from_bytes(payload)
    except CheckpointError as exc:
        raise MessageError(f'weights version {msg.version}: {exc}') from exc
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise MessageError(f'weights version {msg.version}: {name} is not finite')
    return state


def load_weights(
    msg: ModelWeights, key: bytes | None, arch_id: str, config: dict, predictor: Predictor
) -> Predictor:
    """A new Predictor with a snapshot's weights, or MessageError: the one way weights load.

    Every malformed input, from a bad signature to a state dict of the wrong shapes or
    dtypes, is one MessageError; ``predictor`` itself is never touched, so the caller keeps
    serving its last good weights.
    """
    state = verify_weights(msg, key, arch_id, config)
    try:
        return predictor.with_weights(state)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise MessageError(f'weights version {msg.version}: {exc}') from exc


# --------------------------------------------------------------------------- label info
def label_info_msg(header: Header) -> LabelInfo:
    """Class names and colours of the 19 Cityscapes training classes."""
    return LabelInfo(
        header=header,
        train_ids=list(range(len(CLASS_NAMES))),
        class_names=list(CLASS_NAMES),
        colors=TRAIN_COLORS.reshape(-1).tobytes(),
        ignore_id=IGNORE_ID,
    )
