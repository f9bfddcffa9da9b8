"""A contact sheet: generated images next to their colourised labels, for people to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tsa_ros.data.cityscapes import LabeledDataset, write_png
from tsa_ros.data.labels import CLASS_NAMES, TRAIN_COLORS, colorize


def _legend(width: int) -> np.ndarray:
    """A strip naming every class in its colour."""
    cols = 7 if width >= 900 else 4
    cell_w, cell_h = width // cols, 22
    rows = -(-len(CLASS_NAMES) // cols)
    strip = np.full((rows * cell_h, width, 3), 255, np.uint8)
    for i, name in enumerate(CLASS_NAMES):
        x, y = (i % cols) * cell_w, (i // cols) * cell_h
        cv2.rectangle(strip, (x + 4, y + 4), (x + 18, y + 18), TRAIN_COLORS[i].tolist(), -1)
        cv2.putText(
            strip,
            name,
            (x + 24, y + 16),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.45,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return strip


def contact_sheet(
    root: str | Path,
    out: str | Path,
    *,
    split: str = 'train',
    count: int = 8,
    tile_width: int = 384,
    columns: int = 2,
) -> Path:
    """Write a PNG grid of ``count`` images of ``split``, each beside its colourised labels."""
    data = LabeledDataset(root, split)
    count = min(count, len(data))
    picks = np.linspace(0, len(data) - 1, count).round().astype(int)
    tiles = []
    for index in picks:
        image, label = data.read(int(index))
        height = round(image.shape[0] * tile_width / image.shape[1])
        pair = [
            cv2.resize(image, (tile_width, height), interpolation=cv2.INTER_AREA),
            cv2.resize(colorize(label), (tile_width, height), interpolation=cv2.INTER_NEAREST),
        ]
        tiles.append(np.concatenate(pair, axis=1))
    blank = np.full_like(tiles[0], 255)
    tiles += [blank] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    sheet = np.concatenate(rows, axis=0)
    sheet = np.concatenate([sheet, _legend(sheet.shape[1])], axis=0)
    out = Path(out)
    write_png(out, sheet)
    return out
