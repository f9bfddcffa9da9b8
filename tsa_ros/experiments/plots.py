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
from tsa_ros.data.labels import CLASS_NAMES, IGNORE_ID, TRAIN_COLORS, colorize
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
    """One PNG per frame: rows = sets (clean first, then the AE sets), columns = image,
    perturbation, ground truth, T, S, A, A+IFM and the fused mask, with a class legend.

    ``models`` must hold T, S, A and A+IFM; the fused mask is the majority vote of T, S and
    A+IFM (T breaks ties), as in Table 2's ``majority`` row, so T is shown to explain it.
    The perturbation panel is the AE minus the clean image, amplified to the full gray range
    (at ε = 1 it is invisible in the image itself).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shown = ('T', 'S', 'A', 'A+IFM')
    predictors = {name: Predictor(model, device=device) for name, model in models.items()}
    clean = next(iter(sets.values()))
    columns = 4 + len(shown)
    written = []
    for index in range(frames):
        fig, axes = plt.subplots(
            len(sets), columns, figsize=(2.2 * columns, 1.25 * len(sets) + 1.2), squeeze=False
        )
        clean_image = clean[index][0].permute(1, 2, 0).numpy()
        present: set[int] = set()
        for row, (set_name, dataset) in enumerate(sets.items()):
            image, label = dataset[index]
            x = image.unsqueeze(0)  # already at the networks' size
            preds = {n: p.infer(x)[0][0].cpu().numpy() for n, p in predictors.items()}
            fused = majority_vote([preds['T'], preds['S'], preds['A+IFM']], ignore_index=IGNORE_ID)
            picture = image.permute(1, 2, 0).numpy()
            panels = [
                ('image', picture.astype(np.uint8)),
                ('perturbation (amplified)', _amplified(picture - clean_image)),
                ('ground truth', colorize(label.numpy())),
                *((n, colorize(preds[n])) for n in shown),
                ('fused (T, S, A+IFM)', colorize(fused)),
            ]
            for labels in (label.numpy(), fused, *preds.values()):
                present.update(int(c) for c in np.unique(labels) if c != IGNORE_ID)
            for col, (title, panel) in enumerate(panels):
                ax = axes[row, col]
                ax.imshow(panel)
                ax.set_title(f'{set_name}: {title}', fontsize=7)
                ax.axis('off')
        _class_legend(fig, sorted(present))
        fig.tight_layout(rect=(0, 0.6 / fig.get_figheight(), 1, 1))  # room for the legend
        path = out / f'frame_{index:02d}.png'
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _amplified(delta: np.ndarray) -> np.ndarray:
    """A signed image difference as uint8 gray around 128, scaled to use the full range."""
    peak = float(np.abs(delta).max())
    if peak == 0.0:
        return np.full(delta.shape, 128, np.uint8)
    return np.clip(128 + delta * (127 / peak), 0, 255).astype(np.uint8)


def _class_legend(fig, classes: Sequence[int]) -> None:
    """Colour swatches of the classes that appear in the figure, under the panels."""
    from matplotlib.patches import Patch

    handles = [
        Patch(color=np.asarray(TRAIN_COLORS[c]) / 255.0, label=CLASS_NAMES[c]) for c in classes
    ]
    handles.append(Patch(color='black', label='ignore'))
    fig.legend(handles=handles, loc='lower center', ncol=min(10, len(handles)), fontsize=7)
