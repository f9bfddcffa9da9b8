"""Segmentation metrics: streaming confusion matrix, per-class IoU, mIoU and mIoU ratio.

Bär et al. (2019) evaluate every network with the mean intersection over union over the 19
Cityscapes training classes (eq. 11)::

    IoU_c = TP_c / (TP_c + FP_c + FN_c)

and, following Arnab et al. (2018), measure robustness by the *mIoU ratio*: the mIoU on
adversarially perturbed inputs divided by the mIoU on the clean inputs.

Conventions (Cityscapes semantics, also used by the official evaluation scripts):

* The confusion matrix has ground truth along the rows and prediction along the columns.
* Pixels whose *ground truth* equals ``ignore_index`` (255) are skipped entirely.
* A class that occurs neither in the ground truth nor in the prediction has IoU ``NaN``
  and is left out of the mean (it is *not* counted as 0).
* A prediction outside ``[0, num_classes)`` on a valid pixel (e.g. 255 produced by a fusion
  that declined to decide) is counted as *wrong*: a false negative for the true class and
  no false positive for any class. Such pixels are kept in :attr:`ConfusionMatrix.missed`,
  a per-class vector beside the ``C x C`` matrix, because they have no column of their own.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from tsa_ros.inference import as_numpy

__all__ = [
    'ConfusionMatrix',
    'format_number',
    'percent',
    'mean_iou',
    'miou_ratio',
    'per_class_iou',
]


def _check_matrix(matrix: Any) -> np.ndarray:
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f'confusion matrix must be square C x C, got shape {m.shape}')
    return m


def per_class_iou(matrix: Any, *, missed: Any = None) -> np.ndarray:
    """Per-class intersection over union (paper eq. 11) from a confusion matrix.

    ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` with rows = ground truth, columns = prediction.

    Args:
        matrix: ``C x C`` confusion matrix (rows ground truth, columns prediction).
        missed: optional length-``C`` vector of valid pixels per ground-truth class whose
            prediction was outside ``[0, C)``; they are added to the false negatives.

    Returns:
        float64 array of length ``C``. A class absent from both ground truth and prediction
        is ``NaN``; a class present in only one of them gets ``0.0``.
    """
    m = _check_matrix(matrix).astype(np.float64)
    tp = np.diag(m)
    fn = m.sum(axis=1) - tp
    fp = m.sum(axis=0) - tp
    if missed is not None:
        extra = np.asarray(missed, dtype=np.float64)
        if extra.shape != tp.shape:
            raise ValueError(f'missed must have shape {tp.shape}, got {extra.shape}')
        fn = fn + extra
    denom = tp + fp + fn
    iou = np.full(tp.shape, np.nan, dtype=np.float64)
    present = denom > 0
    iou[present] = tp[present] / denom[present]
    return iou


def mean_iou(matrix: Any, *, missed: Any = None) -> float:
    """Mean IoU over the classes present in ground truth or prediction (eq. 11, averaged).

    Classes whose IoU is ``NaN`` (absent from both) are left out; returns ``NaN`` if no
    class is present at all.
    """
    iou = per_class_iou(matrix, missed=missed)
    if np.all(np.isnan(iou)):
        return math.nan
    return float(np.nanmean(iou))


def miou_ratio(miou_adv: float, miou_clean: float) -> float:
    """Robustness measure of Arnab et al.: ``mIoU(adversarial) / mIoU(clean)``.

    Both values must be on the same scale (fractions or percent); the ratio is unit-free.

    Returns ``NaN`` when either input is ``NaN`` or when ``miou_clean == 0`` (a network that
    is useless on clean data has no meaningful robustness ratio, and a report should show
    that rather than crash or print ``inf``).

    Raises:
        ValueError: if either value is negative or infinite.
    """
    adv = float(miou_adv)
    clean = float(miou_clean)
    for name, v in (('miou_adv', adv), ('miou_clean', clean)):
        if math.isinf(v) or v < 0:
            raise ValueError(f'{name} must be a finite non-negative number, got {v}')
    if math.isnan(adv) or math.isnan(clean) or clean == 0:
        return math.nan
    return adv / clean


class ConfusionMatrix:
    """Streaming ``C x C`` confusion matrix over a data set (rows ground truth, cols prediction).

    ``update`` can be called once per batch; matrices from several processes can be combined
    with :meth:`merge` or ``+=``. See the module docstring for ignore and out-of-range rules.
    """

    def __init__(self, num_classes: int = 19, ignore_index: int = 255) -> None:
        if int(num_classes) < 1:
            raise ValueError(f'num_classes must be >= 1, got {num_classes}')
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(
                f'ignore_index {self.ignore_index} collides with a class in [0, {num_classes})'
            )
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        # Per ground-truth class: valid pixels predicted outside [0, C) (false negatives).
        self.missed = np.zeros(self.num_classes, dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f'ConfusionMatrix(num_classes={self.num_classes}, '
            f'ignore_index={self.ignore_index}, pixels={self.total})'
        )

    @property
    def total(self) -> int:
        """Number of evaluated (non-ignored) pixels so far."""
        return int(self.matrix.sum() + self.missed.sum())

    def reset(self) -> None:
        """Zero all counts."""
        self.matrix[...] = 0
        self.missed[...] = 0

    def update(self, pred: Any, target: Any) -> 'ConfusionMatrix':
        """Accumulate one prediction / ground-truth pair.

        Args:
            pred: predicted label map(s), integer, shape ``(H, W)`` or ``(N, H, W)``.
            target: ground-truth label map(s) of the same shape; ``ignore_index`` is skipped.

        Raises:
            ValueError: on shape mismatch, wrong rank, or ground-truth values that are
                neither a class nor ``ignore_index``.
            TypeError: on non-integer inputs (e.g. float posteriors passed by mistake).
        """
        p = as_numpy(pred)
        t = as_numpy(target)
        if p.shape != t.shape:
            raise ValueError(f'pred and target shapes differ: {p.shape} vs {t.shape}')
        if p.ndim not in (2, 3):
            raise ValueError(f'expected (H, W) or (N, H, W) label maps, got shape {p.shape}')
        for name, a in (('pred', p), ('target', t)):
            if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
                raise TypeError(f'{name} must be an integer label map, got dtype {a.dtype}')
        p = p.reshape(-1).astype(np.int64, copy=False)
        t = t.reshape(-1).astype(np.int64, copy=False)

        c = self.num_classes
        valid = t != self.ignore_index
        t = t[valid]
        p = p[valid]
        if t.size and (t.min() < 0 or t.max() >= c):
            bad = np.unique(t[(t < 0) | (t >= c)])[:5]
            raise ValueError(
                f'target contains values outside [0, {c}) and != '
                f'{self.ignore_index}: {bad.tolist()}'
            )
        in_range = (p >= 0) & (p < c)
        self.matrix += np.bincount(t[in_range] * c + p[in_range], minlength=c * c).reshape(c, c)
        self.missed += np.bincount(t[~in_range], minlength=c)
        return self

    def _check_compatible(self, other: 'ConfusionMatrix') -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f'can only merge a ConfusionMatrix, got {type(other).__name__}')
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                'cannot merge confusion matrices with different num_classes / ignore_index'
            )

    def merge(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
        """Add the counts of ``other`` into this matrix (e.g. reducing across processes)."""
        self._check_compatible(other)
        self.matrix += other.matrix
        self.missed += other.missed
        return self

    def __iadd__(self, other: 'ConfusionMatrix') -> 'ConfusionMatrix':
        return self.merge(other)

    def iou(self) -> np.ndarray:
        """Per-class IoU (eq. 11); ``NaN`` for classes absent from gt and prediction."""
        return per_class_iou(self.matrix, missed=self.missed)

    def miou(self) -> float:
        """Mean IoU over present classes (``NaN`` if nothing was evaluated)."""
        return mean_iou(self.matrix, missed=self.missed)

    def pixel_accuracy(self) -> float:
        """Fraction of evaluated pixels predicted correctly (``NaN`` if none)."""
        total = self.total
        if total == 0:
            return math.nan
        return float(np.trace(self.matrix)) / total

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot (plain ints and lists of lists)."""
        return {
            'num_classes': self.num_classes,
            'ignore_index': self.ignore_index,
            'matrix': self.matrix.tolist(),
            'missed': self.missed.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'ConfusionMatrix':
        """Inverse of :meth:`to_dict` (``missed`` may be absent and then defaults to 0)."""
        cm = cls(num_classes=data['num_classes'], ignore_index=data.get('ignore_index', 255))
        m = np.asarray(data['matrix'], dtype=np.int64)
        if m.shape != cm.matrix.shape:
            raise ValueError(f'matrix shape {m.shape} does not match num_classes {cm.num_classes}')
        missed = np.asarray(data.get('missed', np.zeros(cm.num_classes)), dtype=np.int64)
        if missed.shape != cm.missed.shape:
            raise ValueError(
                f'missed shape {missed.shape} does not match num_classes {cm.num_classes}'
            )
        if (m < 0).any() or (missed < 0).any():
            raise ValueError('counts must be non-negative')
        cm.matrix[...] = m
        cm.missed[...] = missed
        return cm


def percent(fraction: float | None) -> float | None:
    """A fraction (mIoU, ratio, accuracy) in percent; ``None`` when undefined (None or NaN)."""
    if fraction is None or math.isnan(fraction):
        return None
    return 100.0 * float(fraction)


def format_number(value: float | None, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, ``'—'`` when undefined (tables of the reports)."""
    if value is None or math.isnan(value):
        return '—'
    return f'{value:.{digits}f}'
