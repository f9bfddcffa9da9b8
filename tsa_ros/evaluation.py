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
          "clean_miou": 0.80,             # only with a clean report:
          "miou_ratio": 0.89              # mIoU(adversarial) / mIoU(clean), Arnab et al.
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
    'load_report',
    'report_markdown',
    'report_paths',
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


def build_report(
    matrices: Mapping[str, ConfusionMatrix],
    frames: int,
    missing: Mapping[str, int],
    clean: Mapping[str, Any] | None = None,
    stamps: Mapping[str, list[int]] | None = None,
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
            mIoU is 0).
        stamps: Stream name -> header stamps (ns) of the frames it was scored on; adds a
            ``stamps`` list per stream, so an offline evaluation can use the same frames.

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
        if clean is not None:
            clean_value = _clean_miou(clean, stream)
            entry['clean_miou'] = _number(clean_value)
            entry['miou_ratio'] = _number(miou_ratio(cm.miou(), clean_value))
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
                self.matrices[stream].update(pred, gt)
                self.stamps[stream].append(stamp)
                continue
            self.missing[stream] += 1
        return problems

    def miou(self) -> dict[str, float]:
        """The running mIoU of every stream (NaN before any scored frame)."""
        return {s: float(self.matrices[s].miou()) for s in self.streams}

    def report(self, clean: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """:func:`build_report` of everything scored so far."""
        return build_report(self.matrices, self.frames, self.missing, clean, stamps=self.stamps)


def _pct(value: float | None) -> str:
    return format_number(percent(value), 2)


def _ratio(value: float | None) -> str:
    return '—' if value is None else f'{value:.3f}'


def report_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: a summary table per stream and a per-class IoU table (in %)."""
    streams = report['streams']
    names = list(streams)
    with_clean = bool(report.get('clean'))
    lines = [f'# Evaluation ({report["frames"]} ground-truth frames)', '']
    header = ['stream', 'mIoU [%]']
    if with_clean:
        header += ['clean mIoU [%]', 'mIoU ratio']
    header += ['pixel acc. [%]', 'pixels', 'missing frames']
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for stream in names:
        entry = streams[stream]
        row = [stream, _pct(entry['miou'])]
        if with_clean:
            row += [_pct(entry.get('clean_miou')), _ratio(entry.get('miou_ratio'))]
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
