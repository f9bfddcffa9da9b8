"""Robustness tables of the paper (Tables 1 and 2): ``tsa eval``.

Every network is evaluated on every image set (clean and adversarial, see
:mod:`tsa_ros.experiments.ae_sets`) with one confusion matrix per (network, set). The table
has the paper's layout: rows are networks (T, S, A, ... and optionally the fused outputs),
columns are ``no AE`` then T-AE and S-AE at ``epsilon`` 1 and 10, cells are the robustness
``mIoU(adversarial) / mIoU(clean)`` in percent, bold above 70 %. The fused rows are the
majority vote and posterior fusion by default, or any fusion modes of :mod:`tsa_ros.fusion`
given as a mapping (row name -> FusionConfig; e.g. ``gated``, which keeps the teacher's
labels unless the suspect rule flags the teacher).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tsa_ros.data.cityscapes import LabeledDataset
from tsa_ros.data.labels import CLASS_NAMES, IGNORE_ID
from tsa_ros.evaluation import build_report
from tsa_ros.fusion import FusionConfig, fuse, majority_vote, posterior_fusion_labels
from tsa_ros.inference import Predictor
from tsa_ros.metrics import ConfusionMatrix, miou_ratio
from tsa_ros.models import SegmentationNet

__all__ = ['FUSION_ROWS', 'STANDARD_SETS', 'evaluate', 'ratio_table', 'write_results']

#: Set names of the paper's columns, in order; other sets are appended as extra columns.
STANDARD_SETS = ('clean', 'T-AE-1', 'T-AE-10', 'S-AE-1', 'S-AE-10')
_HEADERS = {
    'clean': 'no AE (ε=0)',
    'T-AE-1': 'T-AE ε=1',
    'T-AE-10': 'T-AE ε=10',
    'S-AE-1': 'S-AE ε=1',
    'S-AE-10': 'S-AE ε=10',
}
#: Extra rows of ``evaluate(..., fusion=True)``: fusion of the first three networks.
FUSION_ROWS = ('majority', 'posterior')
_BOLD_ABOVE = 70.0


def _batches(dataset: LabeledDataset, batch_size: int):
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        yield torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _provenance(dataset: LabeledDataset) -> dict[str, Any]:
    manifest = dataset.layout.manifest() or {}
    return {
        'root': str(Path(dataset.root).resolve()),
        'split': dataset.split,
        'size': list(dataset.size) if dataset.size else None,
        'frames': len(dataset),
        'ae': manifest.get('tsa_ae'),
    }


def evaluate(
    models: Mapping[str, SegmentationNet],
    sets: Mapping[str, LabeledDataset],
    fusion: bool | Mapping[str, FusionConfig] = False,
    batch_size: int = 4,
    device: str | torch.device = 'cpu',
    progress: bool = False,
    backend: str = 'auto',
) -> dict[str, Any]:
    """mIoU of every network (and optionally the fused outputs) on every set.

    Args:
        models: row name -> network, in table order (T, S, A first: fusion uses the first
            three, the first one breaking majority-vote ties like the paper's teacher).
        sets: column name -> labeled data set (``clean``, ``T-AE-1`` ... see STANDARD_SETS).
        fusion: ``True`` adds the rows ``majority`` (majority vote) and ``posterior`` (mean
            posterior); a mapping row name -> :class:`~tsa_ros.fusion.FusionConfig` adds one
            row per entry, each frame fused by :func:`tsa_ros.fusion.fuse` from the first
            three networks' labels and posteriors (any mode; the gated ones decide per frame,
            so their parameters, e.g. ``suspect_threshold``, belong to the mini-val split).
        batch_size: images per forward pass.
        device: torch device of the networks.
        progress: a tqdm bar of the frames done (all sets together) and frames per second.
        backend: the predictors' backend (tsa_ros.inference.BACKENDS), e.g. ``'bf16'`` to
            measure what reduced precision costs in mIoU.

    Returns:
        ``{'rows', 'columns', 'class_names', 'sets': {name: provenance},
        'results': {row: {set: cell}}}`` where each cell is a stream entry of
        :func:`tsa_ros.evaluation.build_report` (``miou``, ``iou`` by class name,
        ``pixel_accuracy``, ``pixels``, ``missing``, ``confusion``), mIoU / IoU as fractions
        (None where undefined).
    """
    if not models:
        raise ValueError('need at least one model')
    if not sets:
        raise ValueError('need at least one image set')
    classes = {m.config.num_classes for m in models.values()}
    if len(classes) != 1:
        raise ValueError(f'the models disagree on the number of classes: {sorted(classes)}')
    (num_classes,) = classes
    fused = list(models)[:3]
    if fusion and len(fused) < 2:
        raise ValueError('fusion needs at least two models')
    configs = {} if isinstance(fusion, bool) else dict(fusion)
    for name, cfg in configs.items():
        if not isinstance(cfg, FusionConfig):
            raise ValueError(f'fusion row {name!r}: need a FusionConfig, got {type(cfg).__name__}')
        if name in models:
            raise ValueError(f'fusion row {name!r} has the name of a model')
    extra = list(FUSION_ROWS) if fusion is True else list(configs)
    rows = list(models) + extra
    for name in rows:
        if name in FUSION_ROWS and name in models:
            raise ValueError(f'model name {name!r} is reserved for a fusion row')

    # The data sets are already at the networks' size: the predictors run them as they are.
    predictors = {
        name: Predictor(model, device=device, backend=backend) for name, model in models.items()
    }
    results: dict[str, dict[str, Any]] = {row: {} for row in rows}
    # A frame counts once however many networks run on it: the rate is frames per second.
    bar = tqdm(total=sum(len(ds) for ds in sets.values()), unit='frame', disable=not progress)
    for set_name, dataset in sets.items():
        bar.set_description(f'eval {set_name}')
        cms = {row: ConfusionMatrix(num_classes, IGNORE_ID) for row in rows}
        for images, labels in _batches(dataset, batch_size):
            target = labels.numpy()
            posts, preds = {}, {}
            for name, predictor in predictors.items():
                wants = bool(fusion) and name in fused
                pred, probs = predictor.infer(images, posteriors=wants)
                preds[name] = pred.cpu().numpy()
                cms[name].update(preds[name], target)
                if wants:
                    posts[name] = probs.cpu().numpy()
            if fusion is True:
                post_list = [posts[name] for name in fused]
                votes = [p.argmax(1) for p in post_list]
                cms['majority'].update(
                    majority_vote(votes, num_classes=num_classes, ignore_index=IGNORE_ID),
                    target,
                )
                cms['posterior'].update(posterior_fusion_labels(post_list), target)
            elif configs:
                maps = np.stack([preds[name].astype(np.uint8) for name in fused])
                for n in range(len(images)):  # frame by frame: the gated modes decide per frame
                    frame = [posts[name][n] for name in fused]
                    for row, cfg in configs.items():
                        cms[row].update(fuse(maps[:, n], frame, cfg).labels, target[n])
            bar.update(len(images))
        # One schema with the live evaluator: each cell is a stream entry of build_report.
        report = build_report(cms, frames=len(dataset), missing={})
        for row in rows:
            results[row][set_name] = report['streams'][row]
    bar.close()

    names = list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else None
    return {
        'rows': rows,
        'columns': list(sets),
        'class_names': names or [str(i) for i in range(num_classes)],
        'fusion_of': fused if fusion else [],
        'sets': {name: _provenance(ds) for name, ds in sets.items()},
        'results': results,
    }


def _ordered_columns(columns: list[str]) -> list[str]:
    standard = [c for c in STANDARD_SETS if c in columns]
    return standard + [c for c in columns if c not in STANDARD_SETS]


def _ratio_pct(results: Mapping[str, Any], row: str, column: str) -> float:
    cells = results['results'][row]
    clean = cells.get('clean', {}).get('miou')
    adv = cells[column]['miou']
    if clean is None or adv is None:
        return math.nan
    return 100.0 * miou_ratio(adv, clean)


def _miou_pct(results: Mapping[str, Any], row: str, column: str) -> float:
    value = results['results'][row][column]['miou']
    return math.nan if value is None else 100.0 * value


def _fmt(value: float, bold: bool = False) -> str:
    if math.isnan(value):
        return 'n/a'
    text = f'{value:.1f} %'
    return f'**{text}**' if bold and value > _BOLD_ABOVE else text


def ratio_table(results: Mapping[str, Any], title: str | None = None) -> tuple[str, str]:
    """The paper's table from :func:`evaluate`'s results: ``(markdown, csv)``.

    Markdown: the mIoU-ratio table (adversarial / clean in %, ratios above 70 % bold; the
    clean column is 100.0 % by definition) followed by the absolute mIoU table in %.
    CSV: columns ``network, metric, <set>...`` with ``metric`` ``miou_ratio_pct`` or
    ``miou_pct``, numbers with full precision (empty where undefined). Ratios need a set
    named ``clean``; without one they are ``n/a``.
    """
    rows = list(results['rows'])
    columns = _ordered_columns(list(results['columns']))
    headers = [_HEADERS.get(c, c) for c in columns]

    def table(cell) -> list[str]:
        lines = [
            '| network | ' + ' | '.join(headers) + ' |',
            '|---|' + '---:|' * len(columns),
        ]
        lines += [f'| {row} | ' + ' | '.join(cell(row, c) for c in columns) + ' |' for row in rows]
        return lines

    md = [f'# {title}', ''] if title else []
    md += ['## mIoU ratio adversarial / clean (robustness)', '']
    md += table(lambda r, c: _fmt(_ratio_pct(results, r, c), bold=True))
    md += ['', '## mIoU', '']
    md += table(lambda r, c: _fmt(_miou_pct(results, r, c)))
    md.append('')

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['network', 'metric', *columns])
    for metric, fn in (('miou_ratio_pct', _ratio_pct), ('miou_pct', _miou_pct)):
        for row in rows:
            values = [fn(results, row, c) for c in columns]
            writer.writerow([row, metric, *('' if math.isnan(v) else repr(v) for v in values)])
    return '\n'.join(md), buf.getvalue()


def write_results(
    results: Mapping[str, Any], out: str | Path, title: str | None = None
) -> dict[str, Path]:
    """Write ``results.json``, ``table.md`` and ``table.csv`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    markdown, table_csv = ratio_table(results, title)
    paths = {
        'json': out / 'results.json',
        'markdown': out / 'table.md',
        'csv': out / 'table.csv',
    }
    paths['json'].write_text(json.dumps(results, indent=2, default=_json_default))
    paths['markdown'].write_text(markdown)
    paths['csv'].write_text(table_csv)
    return paths


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')
