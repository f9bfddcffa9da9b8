"""Figures of ``tsa experiment paper``: the sweep curves (Figs. 2 and 3) and mask overlays.

Matplotlib with the Agg backend (files only, no display). The sweep figures have the paper's
two panels, clean-image mIoU (performance) and the mIoU ratio S-AE (ε = 1) / clean
(robustness), plus a third of ours, the ratio at ε = 10; all in percent over the swept
parameter. Rows without a panel's number (runs before the ε = 10 column) leave it empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use('Agg')  # headless: the experiment runs on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
import torch

from tsa_ros.data.cityscapes import LabeledDataset
from tsa_ros.data.labels import IGNORE_ID, colorize
from tsa_ros.fusion import majority_vote
from tsa_ros.inference import Predictor
from tsa_ros.metrics import percent

__all__ = ['overlays', 'sweep_figure']

_PANELS = (
    ('miou_clean', 'mean IoU (clean) [%]', 'Performance'),
    ('ratio_s_ae1', 'mean IoU ratio S-AE ε=1 / clean [%]', 'Robustness (paper: ε = 1)'),
    ('ratio_s_ae10', 'mean IoU ratio S-AE ε=10 / clean [%]', 'Robustness, ε = 10 (ours)'),
)


def _pct(value: Any) -> float:
    """Percent for matplotlib: NaN leaves a gap where a number is undefined."""
    pct = percent(value)
    return math.nan if pct is None else pct


def sweep_figure(
    rows: Sequence[Mapping[str, Any]], sweep: str, path: str | Path, extra: str | None = None
) -> Path:
    """Panels (mIoU, mIoU ratios) over the parameter ``sweep`` of the rows of that sweep.

    ``extra`` names further sweep rows (e.g. ``'p'``) drawn as single markers at their α.
    """
    path = Path(path)
    points = sorted((r for r in rows if r['sweep'] == sweep), key=lambda r: r[sweep])
    fig, axes = plt.subplots(1, len(_PANELS), figsize=(4.5 * len(_PANELS), 3.6))
    for ax, (key, label, title) in zip(axes, _PANELS, strict=True):
        xs = [r[sweep] for r in points]
        ax.plot(xs, [_pct(r.get(key)) for r in points], 'o-', label=f'p = 1, varying {sweep}')
        for r in rows:
            if extra and r['sweep'] == extra:
                ax.plot(r[sweep], _pct(r.get(key)), 's', label=f'{extra} = {r[extra]:g}')
        ax.set_xlabel({'alpha': 'α', 'gamma': 'γ'}.get(sweep, sweep))
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.ticklabel_format(axis='y', useOffset=False)  # plain percent, no '+1e2' offset
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def overlays(
    models: Mapping[str, torch.nn.Module],
    sets: Mapping[str, LabeledDataset],
    frames: int,
    out: str | Path,
    device: str | torch.device = 'cpu',
) -> list[Path]:
    """One PNG per frame: rows = sets (clean, S-AE-1), columns = image, labels, masks.

    ``models`` must hold T, S, A and A+IFM; the fused mask is the majority vote of T, S and
    A+IFM (T breaks ties), as in Table 2's ``majority`` row.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shown = ('S', 'A', 'A+IFM')
    predictors = {name: Predictor(model, device=device) for name, model in models.items()}
    written = []
    for index in range(frames):
        fig, axes = plt.subplots(
            len(sets), 3 + len(shown), figsize=(2.6 * (3 + len(shown)), 1.6 * len(sets) + 0.6)
        )
        axes = np.atleast_2d(axes)
        for row, (set_name, dataset) in enumerate(sets.items()):
            image, label = dataset[index]
            x = image.unsqueeze(0)  # already at the networks' size
            preds = {n: p.infer(x)[0][0].cpu().numpy() for n, p in predictors.items()}
            fused = majority_vote([preds['T'], preds['S'], preds['A+IFM']], ignore_index=IGNORE_ID)
            panels = [
                ('image', image.permute(1, 2, 0).numpy().astype(np.uint8)),
                ('labels', colorize(label.numpy())),
                *((n, colorize(preds[n])) for n in shown),
                ('fused (T, S, A+IFM)', colorize(fused)),
            ]
            for col, (title, picture) in enumerate(panels):
                ax = axes[row, col]
                ax.imshow(picture)
                ax.set_title(f'{set_name}: {title}', fontsize=8)
                ax.axis('off')
        fig.tight_layout()
        path = out / f'frame_{index:02d}.png'
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
