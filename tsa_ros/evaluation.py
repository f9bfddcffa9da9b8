"""Evaluation reports: per-stream mIoU, per-class IoU and mIoU ratio, as JSON and Markdown.

One report shape for the live evaluator node and the offline evaluation: the evaluator writes
a whole report, and every cell of the offline tables (:func:`tsa_ros.experiments.evaluate`,
``results[row][set]``) is one stream entry of the report of that set; ``tsa experiment
compare`` reads both. A report is a plain, JSON-serialisable dict built from one
:class:`~tsa_ros.metrics.ConfusionMatrix` per stream (``teacher``, ``student``, ``adaptive``,
``fused``, ...)::

    {
      "frames": 40,                       # ground-truth frames evaluated
      "classes": ["road", ...],           # names by trainId
      "streams": {
        "fused": {
          "miou": 0.71,                   # eq. 11 averaged; null when nothing was evaluated
          "iou": {"road": 0.97, ...},     # null for classes absent from gt and prediction
          "pixel_accuracy": 0.93,
          "pixels": 123456,               # evaluated (non-ignored) pixels
          "missing": 2,                   # frames without this stream's labels
          "confusion": {...},             # ConfusionMatrix.to_dict()
          "stamps": [...],                # live evaluator: frames scored (header stamps, ns)
          "frame_confusion": [...],       # ... and each frame's confusion, sparse
          "clean_miou": 0.80,             # only with a clean report:
          "miou_ratio": 0.89,             # mIoU(adversarial) / mIoU(clean), Arnab et al.
          "compared_frames": 38,          # frames scored in both runs (null: whole runs)
        }, ...
      },
      "clean": true                       # whether the ratios above were computed
    }

NaN becomes ``null`` so the file is strict JSON that any tool can read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tsa_ros.data.labels import CLASS_NAMES, IGNORE_ID, NUM_CLASSES
from tsa_ros.metrics import ConfusionMatrix, format_number, miou_ratio, percent

__all__ = [
    'StreamEvaluation',
    'build_report',
    'dense_confusion',
    'load_report',
    'report_markdown',
    'report_paths',
    'sparse_confusion',
    'write_report',
]


def _number(value: float) -> float | None:
    """A float for JSON: NaN (no data) becomes None."""
    value = float(value)
    return None if math.isnan(value) else value


def _class_names(num_classes: int) -> list[str]:
    if num_classes == len(CLASS_NAMES):
        return list(CLASS_NAMES)
    return [f'class_{i}' for i in range(num_classes)]


def _clean_miou(clean: Mapping[str, Any], stream: str) -> float:
    entry = clean.get('streams', {}).get(stream)
    if not entry or entry.get('miou') is None:
        return math.nan
    return float(entry['miou'])


def sparse_confusion(cm: ConfusionMatrix) -> list[list[int]]:
    """One frame's confusion as ``[flat indices, counts]`` of its non-zero cells over the
    ``C x (C + 1)`` matrix whose last column is ``missed`` (a frame touches few cells)."""
    full = np.concatenate([cm.matrix, cm.missed[:, None]], axis=1)
    index = np.flatnonzero(full)
    return [index.tolist(), full.ravel()[index].tolist()]


def dense_confusion(
    frames: Sequence[Sequence[Sequence[int]]],
    num_classes: int = NUM_CLASSES,
    ignore_index: int = IGNORE_ID,
) -> ConfusionMatrix:
    """The sum of :func:`sparse_confusion` frames as one ConfusionMatrix."""
    full = np.zeros(num_classes * (num_classes + 1), np.int64)
    for index, counts in frames:
        np.add.at(full, np.asarray(index, np.int64), np.asarray(counts, np.int64))
    full = full.reshape(num_classes, num_classes + 1)
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.matrix[...] = full[:, :-1]
    cm.missed[...] = full[:, -1]
    return cm


def _by_stamp(entry: Mapping[str, Any]) -> dict[int, Any] | None:
    stamps, frames = entry.get('stamps'), entry.get('frame_confusion')
    if stamps is None or frames is None or len(stamps) != len(frames):
        return None
    return dict(zip((int(t) for t in stamps), frames, strict=True))


def _same_frames(
    entry: Mapping[str, Any], clean_entry: Mapping[str, Any], num_classes: int
) -> tuple[float, float, int] | None:
    """(mIoU here, clean mIoU, frames) over the frames both runs scored, by stamp; None when a
    report has no per-frame confusion (then the whole runs are compared)."""
    here, there = _by_stamp(entry), _by_stamp(clean_entry)
    if here is None or there is None:
        return None
    common = sorted(here.keys() & there.keys())
    if not common:
        return math.nan, math.nan, 0
    adv = dense_confusion([here[t] for t in common], num_classes)
    ref = dense_confusion([there[t] for t in common], num_classes)
    return adv.miou(), ref.miou(), len(common)


def build_report(
    matrices: Mapping[str, ConfusionMatrix],
    frames: int,
    missing: Mapping[str, int],
    clean: Mapping[str, Any] | None = None,
    stamps: Mapping[str, list[int]] | None = None,
    frame_confusion: Mapping[str, list] | None = None,
) -> dict[str, Any]:
    """The report of one run from its per-stream confusion matrices.

    Args:
        matrices: Stream name -> accumulated confusion matrix (gt rows, prediction columns).
        frames: Number of ground-truth frames evaluated.
        missing: Stream name -> frames for which the stream delivered no (usable) labels;
            streams not listed count 0.
        clean: A report of the same streams on clean (unattacked) input, as this function
            returns it or :func:`load_report` reads it; adds ``clean_miou`` and
            ``miou_ratio`` per stream (``None`` where either mIoU is undefined or the clean
            mIoU is 0). When both reports carry per-frame confusion, both mIoUs are taken
            over the frames both runs scored (``compared_frames``): an attacked replay
            scores fewer frames than the clean one, and other frames would make another
            ratio; otherwise over the whole runs (``compared_frames`` null).
        stamps: Stream name -> header stamps (ns) of the frames it was scored on; adds a
            ``stamps`` list per stream, so an offline evaluation can use the same frames.
        frame_confusion: Stream name -> :func:`sparse_confusion` per frame, aligned with
            ``stamps``.

    Returns:
        A JSON-serialisable dict (see the module docstring).
    """
    if frames < 0:
        raise ValueError(f'frames must be >= 0, got {frames}')
    num_classes = {cm.num_classes for cm in matrices.values()}
    if len(num_classes) > 1:
        raise ValueError(f'streams have different class counts: {sorted(num_classes)}')
    names = _class_names(num_classes.pop() if num_classes else len(CLASS_NAMES))
    streams: dict[str, Any] = {}
    for stream, cm in matrices.items():
        entry: dict[str, Any] = {
            'miou': _number(cm.miou()),
            'iou': {name: _number(v) for name, v in zip(names, cm.iou(), strict=True)},
            'pixel_accuracy': _number(cm.pixel_accuracy()),
            'pixels': cm.total,
            'missing': int(missing.get(stream, 0)),
            'confusion': cm.to_dict(),
        }
        if stamps is not None:  # which frames (header stamps, ns) the stream was scored on
            entry['stamps'] = [int(t) for t in stamps.get(stream, [])]
            if frame_confusion is not None:
                entry['frame_confusion'] = list(frame_confusion.get(stream, []))
        if clean is not None:
            clean_entry = clean.get('streams', {}).get(stream) or {}
            same = _same_frames(entry, clean_entry, cm.num_classes)
            if same is None:
                here, clean_value, compared = cm.miou(), _clean_miou(clean, stream), None
            else:
                here, clean_value, compared = same
            entry['clean_miou'] = _number(clean_value)
            entry['miou_ratio'] = _number(miou_ratio(here, clean_value))
            entry['compared_frames'] = compared
        streams[stream] = entry
    return {
        'frames': int(frames),
        'classes': names,
        'streams': streams,
        'clean': clean is not None,
    }


class StreamEvaluation:
    """Running evaluation of several label streams against ground truth, frame by frame.

    What the live evaluator accumulates between reports: one confusion matrix per stream,
    the frames each stream missed (no labels, or labels of another size than the ground
    truth) and the stamps each stream was scored on.

    Args:
        streams: stream names (``teacher``, ``student``, ``adaptive``, ``fused`` ...).
        num_classes: number of trainId classes C.
        ignore_index: ground-truth label that is not evaluated.
    """

    def __init__(
        self, streams: Sequence[str], num_classes: int = NUM_CLASSES, ignore_index: int = IGNORE_ID
    ) -> None:
        self.streams = tuple(streams)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrices = {s: ConfusionMatrix(num_classes, ignore_index) for s in self.streams}
        self.missing = dict.fromkeys(self.streams, 0)
        self.stamps: dict[str, list[int]] = {s: [] for s in self.streams}
        self.frame_confusion: dict[str, list] = {s: [] for s in self.streams}
        self.frames = 0

    def check_ground_truth(self, gt: np.ndarray) -> None:
        """Raise ``ValueError`` naming values of ``gt`` that are neither trainIds nor ignore."""
        bad = (gt >= self.num_classes) & (gt != self.ignore_index)
        if bad.any():
            values = np.unique(gt[bad])[:5].tolist()
            raise ValueError(f'values {values} are not trainIds or {self.ignore_index}')

    def add(
        self, stamp: int, gt: np.ndarray, labels: Mapping[str, np.ndarray]
    ) -> list[tuple[str, str]]:
        """Score one frame: ``labels`` maps the streams that delivered to their label maps.

        Returns ``(stream, problem)`` for every stream counted missing for this frame
        (``'missing'``, or a text naming a size mismatch).
        """
        self.frames += 1
        problems = []
        for stream in self.streams:
            pred = labels.get(stream)
            if pred is None:
                problems.append((stream, 'missing'))
            elif pred.shape != gt.shape:
                problems.append(
                    (
                        stream,
                        f'{stream} labels are {pred.shape[1]}x{pred.shape[0]}, ground truth '
                        f'is {gt.shape[1]}x{gt.shape[0]} (stamp {stamp}); counted missing',
                    )
                )
            else:
                frame = ConfusionMatrix(self.num_classes, self.ignore_index).update(pred, gt)
                self.matrices[stream] += frame
                self.stamps[stream].append(stamp)
                self.frame_confusion[stream].append(sparse_confusion(frame))
                continue
            self.missing[stream] += 1
        return problems

    def miou(self) -> dict[str, float]:
        """The running mIoU of every stream (NaN before any scored frame)."""
        return {s: float(self.matrices[s].miou()) for s in self.streams}

    def report(self, clean: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """:func:`build_report` of everything scored so far."""
        return build_report(
            self.matrices,
            self.frames,
            self.missing,
            clean,
            stamps=self.stamps,
            frame_confusion=self.frame_confusion,
        )


def _pct(value: float | None) -> str:
    return format_number(percent(value), 2)


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: a summary table per stream and a per-class IoU table (in %)."""
    streams = report['streams']
    names = list(streams)
    with_clean = bool(report.get('clean'))
    lines = [f'# Evaluation ({report["frames"]} ground-truth frames)', '']
    header = ['stream', 'mIoU [%]']
    if with_clean:
        header += ['clean mIoU [%]', 'mIoU ratio [%]', 'frames compared']
    header += ['pixel acc. [%]', 'pixels', 'missing frames']
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for stream in names:
        entry = streams[stream]
        row = [stream, _pct(entry['miou'])]
        if with_clean:
            compared = entry.get('compared_frames')
            row += [
                _pct(entry.get('clean_miou')),
                _pct(entry.get('miou_ratio')),
                'all' if compared is None else str(compared),
            ]
        row += [_pct(entry['pixel_accuracy']), str(entry['pixels']), str(entry['missing'])]
        lines.append('| ' + ' | '.join(row) + ' |')
    if names:
        lines += ['', '## IoU per class [%]', '']
        lines += ['| class | ' + ' | '.join(names) + ' |', '|' + '---|' * (len(names) + 1)]
        for cls in report['classes']:
            cells = [_pct(streams[s]['iou'].get(cls)) for s in names]
            lines.append(f'| {cls} | ' + ' | '.join(cells) + ' |')
    lines.append('')
    lines.append('— : no data (class absent from ground truth and prediction, or no frames).')
    return '\n'.join(lines) + '\n'


def report_paths(path: str | Path) -> tuple[Path, Path]:
    """(JSON path, Markdown path) of a report: ``x.json`` and ``x.md`` for ``x`` or ``x.json``."""
    path = Path(path)
    stem = path.with_suffix('') if path.suffix in ('.json', '.md') else path
    return stem.with_name(stem.name + '.json'), stem.with_name(stem.name + '.md')


def write_report(report: Mapping[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Write the report as JSON and Markdown (see :func:`report_paths`); returns both paths.

    Each file is written to a temporary name and renamed, so a reader never sees half a file.
    """
    json_path, md_path = report_paths(path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    for target, text in (
        (json_path, json.dumps(report, indent=2, allow_nan=False) + '\n'),
        (md_path, report_markdown(report)),
    ):
        tmp = target.with_name(f'.{target.name}.tmp')
        tmp.write_text(text)
        tmp.replace(target)
    return json_path, md_path


def load_report(path: str | Path) -> dict[str, Any]:
    """A report written by :func:`write_report` (give the JSON path or the common stem).

    Raises FileNotFoundError naming the path, ValueError when it is not such a report.
    """
    json_path = Path(path)
    if json_path.suffix != '.json':
        json_path = report_paths(json_path)[0]
    if not json_path.is_file():
        raise FileNotFoundError(f'no evaluation report at {json_path}')
    try:
        report = json.loads(json_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f'{json_path}: not valid JSON ({exc})') from exc
    if not isinstance(report, dict) or not isinstance(report.get('streams'), dict):
        raise ValueError(f'{json_path}: not an evaluation report (no "streams" mapping)')
    return report
