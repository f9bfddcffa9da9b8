"""``tsa data bag``: Cityscapes sequence snippets (real or synthetic) -> rosbag2."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tsa_ros.data.bag import CITYSCAPES_RATE_HZ, BagFrame, BagSummary, write_bag
from tsa_ros.data.cityscapes import DataError, SequenceDataset, resize_pair

#: First stamp of an exported bag (2017-07-14 02:40 UTC, fixed so exports are reproducible)
#: and the pause between two snippets, which are separate drives.
START_NS = 1_500_000_000 * 10**9
SNIPPET_GAP_NS = 10**9


def sequence_frames(
    root: str | Path,
    split: str = 'val',
    *,
    size: tuple[int, int] | None = None,
    frame_id: str = 'camera',
) -> Iterator[BagFrame]:
    """Every frame of every snippet of ``split`` as a BagFrame at 17 Hz, streamed.

    Ground truth (trainIds) rides along on the annotated (20th) frame of each snippet.
    """
    data = SequenceDataset(root, split)
    if not len(data):
        raise DataError(f'no sequence snippets for split {split!r} under {root}')
    period_ns = round(1e9 / CITYSCAPES_RATE_HZ)
    stamp = START_NS
    for snippet in data.snippets:
        camera = None
        for fid, rgb, label in data.iter_frames(snippet):
            if size is not None:
                rgb, label = resize_pair(rgb, label, size)
            if camera is None:
                camera = data.camera(snippet, rgb.shape[1], rgb.shape[0])
            yield BagFrame(
                stamp, rgb, camera, ground_truth=label, frame_id=frame_id, name=fid.stem
            )
            stamp += period_ns
        stamp += SNIPPET_GAP_NS


def export_bag(
    root: str | Path,
    split: str,
    out: str | Path,
    *,
    storage: str = 'sqlite3',
    size: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> BagSummary:
    """Write the sequence snippets of ``split`` as a rosbag2 that ``ros2 bag play`` accepts."""
    return write_bag(
        sequence_frames(root, split, size=size), out, storage=storage, overwrite=overwrite
    )


__all__ = ['START_NS', 'export_bag', 'sequence_frames']
