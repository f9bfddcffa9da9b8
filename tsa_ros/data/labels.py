"""Cityscapes label definitions, taken from cityscapesScripts' official ``labels`` table.

Label maps come in two id spaces: Cityscapes *label ids* (0-33, what ``*_labelIds.png`` holds)
and the 19 *trainIds* (0-18, 255 = ignore) that networks predict and mIoU is computed on.
Nothing here is typed by hand: names, ids and colours are read from cityscapesScripts.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_ID = 255

_TRAIN = sorted(
    (lb for lb in _CS_LABELS if 0 <= lb.trainId < IGNORE_ID), key=lambda lb: lb.trainId
)
#: The 19 evaluated classes, indexed by trainId.
CLASS_NAMES: tuple[str, ...] = tuple(lb.name for lb in _TRAIN)
NUM_CLASSES = len(CLASS_NAMES)
#: RGB colour per trainId, (19, 3) uint8.
TRAIN_COLORS = np.array([lb.color for lb in _TRAIN], dtype=np.uint8)

#: Lookup table label id -> trainId (unknown ids -> 255), indexable by a uint8 map.
ID_TO_TRAIN = np.full(256, IGNORE_ID, dtype=np.uint8)
#: Lookup table trainId -> label id (255 -> 0 "unlabeled").
TRAIN_TO_ID = np.zeros(256, dtype=np.uint8)
for _lb in _CS_LABELS:
    if 0 <= _lb.id < 256:
        ID_TO_TRAIN[_lb.id] = _lb.trainId if 0 <= _lb.trainId < IGNORE_ID else IGNORE_ID
for _lb in _TRAIN:
    TRAIN_TO_ID[_lb.trainId] = _lb.id

#: Colour lookup for trainId maps: classes in their colour, ignore (255) black.
_COLOR_LUT = np.zeros((256, 3), dtype=np.uint8)
_COLOR_LUT[:NUM_CLASSES] = TRAIN_COLORS

assert NUM_CLASSES == 19, 'cityscapesScripts should define 19 training classes'
assert len(set(TRAIN_TO_ID[:NUM_CLASSES])) == NUM_CLASSES


def ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes label-id map to trainIds (255 for classes not evaluated)."""
    return ID_TO_TRAIN[np.asarray(label_ids, dtype=np.uint8)]


def train_ids_to_ids(train_ids: np.ndarray) -> np.ndarray:
    """Map a trainId map back to label ids (ignore -> 0, "unlabeled")."""
    return TRAIN_TO_ID[np.asarray(train_ids, dtype=np.uint8)]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) uint8 image of a trainId map in the official Cityscapes colours."""
    return _COLOR_LUT[np.asarray(train_ids, dtype=np.uint8)]


def overlay(rgb: np.ndarray, color: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A colour mask (:func:`colorize`) blended over an RGB frame; ``alpha`` weighs the mask."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    blend = (1.0 - alpha) * np.asarray(rgb, np.float32) + alpha * np.asarray(color, np.float32)
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def class_histogram(train_ids: np.ndarray, *, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Pixel counts per trainId (length ``num_classes``; ignore pixels are not counted)."""
    flat = np.asarray(train_ids, dtype=np.uint8).ravel()
    return np.bincount(flat[flat < num_classes], minlength=num_classes).astype(np.int64)


def legend(
    names: tuple[str, ...] = CLASS_NAMES,
    colors: np.ndarray = TRAIN_COLORS,
    *,
    row_height: int = 20,
    width: int = 180,
    ignore: str | None = 'ignore',
) -> np.ndarray:
    """RGB (H, W, 3) uint8 image of a class legend: one row per class, swatch and name.

    The colours are those of :func:`colorize` (row ``i`` is trainId ``i``); ``ignore`` adds a
    last row for the ignore label (black), None leaves it out. Any image viewer (rviz,
    Foxglove, rqt_image_view) can show it beside the masks.
    """
    import cv2  # only the legend needs it; the label tables stay numpy

    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    if len(names) != len(colors):
        raise ValueError(f'{len(names)} class names for {len(colors)} colours')
    if row_height < 8 or width < 2 * row_height:
        raise ValueError(f'legend rows of {row_height} px in {width} px are too small')
    rows = list(zip(names, colors.tolist(), strict=True))
    if ignore is not None:
        rows.append((ignore, [0, 0, 0]))
    image = np.full((row_height * len(rows), width, 3), 255, dtype=np.uint8)
    pad = max(2, row_height // 8)
    scale = (row_height - 2 * pad) / 26  # cv2's simplex font is ~26 px tall at scale 1
    for i, (name, color) in enumerate(rows):
        top = i * row_height
        swatch = image[top + pad : top + row_height - pad, pad : pad + row_height - 2 * pad]
        swatch[:] = color
        swatch[[0, -1], :] = swatch[:, [0, -1]] = 96  # outline: black swatches stay visible
        baseline = top + row_height - pad - max(1, round(4 * scale))
        cv2.putText(
            image,
            name,
            (row_height + pad, baseline),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return image
