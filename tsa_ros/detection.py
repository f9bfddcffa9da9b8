"""Frame-level detection of an attacked network from the triplet's outputs (no ROS types).

Bär et al. (2019) observe that a network under its own attack drifts away from the other two
networks (low mIoU between their outputs, sec. 4.2-4.3, Tables 1 and 2), but propose no
decision rule. This module turns the outputs of T, S and A on one frame -- label maps,
softmax posteriors ``y_{i,s}`` (eq. 1) and the fused mask -- into per-network *features*,
combines them into frame-level *scores* ("is any network attacked?") with a *suspect* ("which
one?"), and measures such scores as detectors: rank-based AUROC, ROC points, TPR at a fixed
FPR, a threshold chosen on one split for a target FPR, and how often the suspect is the
attacked network.

Per-network features (:data:`FEATURES`, each an array ``(N, K)`` over N frames, K networks):

* ``fused`` -- fraction of pixels where the network's label differs from the fused label
  (:func:`tsa_ros.fusion.disagreement`). The fused mask follows the two networks that agree,
  so an attacked network that leaves the others alone disagrees with it the most. This is the
  quantity the fusion node's :func:`tsa_ros.fusion.suspect` thresholds today.
* ``pairwise`` -- mean over the other networks of the pairwise label disagreement
  ``D(j, i)``: the attacked network disagrees with both others, an intact one with one.
* ``isolation`` -- minimum over the other networks of ``D(j, i)``: high only when a network
  disagrees with *every* other one, which is what an attack on that network alone produces;
  an intact network always has one intact partner.
* ``entropy`` -- mean per-pixel entropy of the network's posteriors
  ``-sum_s y_{i,s} log y_{i,s}``, divided by ``log |S|`` (0 = certain, 1 = uniform). The
  least-likely attack (eqs. 7-10) pulls the attacked network's posteriors from its clean
  class towards the least likely one, which raises the entropy on the way (measured on the
  demo networks at ε = 1 and 10); an attack run long enough to make the wrong class
  confident would lower it again, hence also the two-sided calibrated ``entropy_z``. Unlike
  the other features it needs no second network.
* ``temporal`` -- fraction of pixels where the network's label changed since the previous
  frame of the sequence. Only defined where a previous frame exists (``NaN`` otherwise). An
  attack that starts on a frame changes the attacked network's output much more than the
  scene's motion changes the others'.

Frame rules (:data:`RULES`): ``<feature>`` scores a frame by the largest raw feature over
the networks; ``<feature>_z`` first standardises each network's feature by its mean and
standard deviation on clean frames (:class:`Calibration`), which removes the networks'
different baselines: even on clean frames one network may as a rule disagree more with the
fused mask, or be less certain, than another, which the raw maximum reads as an attack (on
the demo's clean minival frames T disagrees on 10 % of the pixels, S on 6 %). The suspect
is the network with the largest value, or none when that maximum is not unique (like
:func:`tsa_ros.fusion.suspect`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import entr
from scipy.stats import rankdata

from tsa_ros.inference import as_numpy

__all__ = [
    'FEATURES',
    'RULES',
    'Calibration',
    'Rule',
    'auroc',
    'auroc_se',
    'choose_threshold',
    'flag_rate',
    'pairwise_disagreement',
    'roc_curve',
    'rule_scores',
    'suspect_accuracy',
    'suspect_index',
    'tpr_at_fpr',
    'triplet_features',
]

FEATURES = ('fused', 'pairwise', 'isolation', 'entropy', 'temporal')


@dataclass(frozen=True)
class Rule:
    """A frame rule: the feature it reads and how it turns K values into one score.

    Attributes:
        name: ``<feature>`` or ``<feature>_z``.
        feature: one of :data:`FEATURES`.
        calibrated: standardise each network's feature on clean frames first.
        two_sided: score the absolute deviation (only for calibrated entropy, which an attack
            can move either way).
        description: one line for the reports.
    """

    name: str
    feature: str
    calibrated: bool
    two_sided: bool
    description: str


_DESCRIPTIONS = {
    'fused': 'disagreement with the fused mask',
    'pairwise': 'mean pairwise disagreement with the other networks',
    'isolation': 'smallest pairwise disagreement with another network',
    'entropy': 'mean normalised posterior entropy',
    'temporal': 'label change since the previous sequence frame',
}


def _rules() -> dict[str, Rule]:
    rules = {}
    for feature, what in _DESCRIPTIONS.items():
        rules[feature] = Rule(feature, feature, False, False, f'max over networks of {what}')
        two_sided = feature == 'entropy'
        how = 'absolute z' if two_sided else 'z'  # no '|': the text goes into Markdown tables
        rules[f'{feature}_z'] = Rule(
            f'{feature}_z',
            feature,
            True,
            two_sided,
            f'max over networks of {how}-scored {what} (clean-frame mean / std per network)',
        )
    return rules


#: Every frame rule by name; ``fused`` is the fusion node's rule of today (with a threshold).
RULES: dict[str, Rule] = _rules()


# --------------------------------------------------------------------------- features
def _labels(labels: Any) -> np.ndarray:
    """Label maps as ``(K, N, H, W)``; a single frame ``(K, H, W)`` gets N = 1."""
    if isinstance(labels, np.ndarray) or hasattr(labels, 'detach'):
        lab = as_numpy(labels)
    else:
        lab = np.stack([as_numpy(m) for m in labels])
    if lab.ndim == 3:
        lab = lab[:, None]
    if lab.ndim != 4:
        raise ValueError(f'labels must be (K, N, H, W) or (K, H, W), got shape {lab.shape}')
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f'label maps must be integer, got dtype {lab.dtype}')
    return lab


def _differ(a: np.ndarray, b: np.ndarray, ignore_index: int) -> np.ndarray:
    """Per frame, the fraction of pixels valid in both ``a`` and ``b`` where they differ.

    ``a``, ``b``: ``(N, H, W)``. NaN for a frame without a pixel valid in both.
    """
    both = (a != ignore_index) & (b != ignore_index)
    n = both.reshape(len(a), -1).sum(axis=1)
    diff = ((a != b) & both).reshape(len(a), -1).sum(axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(n > 0, diff / np.maximum(n, 1), np.nan)


def pairwise_disagreement(labels: Any, *, ignore_index: int = 255) -> np.ndarray:
    """``D[n, i, j]``: fraction of pixels of frame n where networks i and j differ.

    Args:
        labels: K label maps, ``(K, N, H, W)`` or one frame ``(K, H, W)``.

    Returns:
        float64 ``(N, K, K)``, symmetric, zero diagonal. It is one minus the pixel accuracy of
        one network against the other, a cheap stand-in for the paper's mIoU between the
        networks' outputs (sec. 4.3).
    """
    lab = _labels(labels)
    k, n = lab.shape[:2]
    out = np.zeros((n, k, k))
    for i in range(k):
        for j in range(i + 1, k):
            out[:, i, j] = out[:, j, i] = _differ(lab[i], lab[j], ignore_index)
    return out


def triplet_features(
    labels: Any,
    fused: Any,
    posteriors: Any = None,
    previous: Any = None,
    has_previous: Any = None,
    *,
    ignore_index: int = 255,
) -> dict[str, np.ndarray]:
    """Every per-network feature of :data:`FEATURES` for N frames.

    Args:
        labels: label maps of the K networks, ``(K, N, H, W)`` (or ``(K, H, W)``: N = 1).
        fused: fused labels ``(N, H, W)`` (or ``(H, W)``).
        posteriors: softmax posteriors of the K networks, ``(K, N, C, H, W)`` or a list of K
            ``(N, C, H, W)`` maps at the labels' size; without them ``entropy`` is NaN.
        previous: each network's labels on the previous frame of the sequence, shaped like
            ``labels``; without them ``temporal`` is NaN.
        has_previous: bool ``(N,)``, which frames have a previous frame in ``previous`` (the
            others get NaN); default all when ``previous`` is given.
        ignore_index: label that counts as no decision (never compared).

    Returns:
        feature name -> float64 ``(N, K)``; see the module docstring for what each means.
    """
    lab = _labels(labels)
    k, n = lab.shape[:2]
    ref = as_numpy(fused)
    if ref.ndim == 2:
        ref = ref[None]
    if ref.shape != lab.shape[1:]:
        raise ValueError(f'fused shape {ref.shape} does not match label maps {lab.shape[1:]}')
    if k < 2:
        raise ValueError(f'need at least two networks to compare, got {k}')

    out = {name: np.full((n, k), np.nan) for name in FEATURES}
    for j in range(k):
        out['fused'][:, j] = _differ(lab[j], ref, ignore_index)
    pair = pairwise_disagreement(lab, ignore_index=ignore_index)
    others = ~np.eye(k, dtype=bool)
    for j in range(k):
        row = pair[:, j, others[j]]  # (N, K-1): network j against every other one
        out['pairwise'][:, j] = row.mean(axis=1)
        out['isolation'][:, j] = row.min(axis=1)

    if posteriors is not None:
        for j in range(k):
            probs = np.asarray(as_numpy(posteriors[j]), dtype=np.float64)
            if probs.ndim == 3:
                probs = probs[None]
            if probs.shape[0] != n or probs.shape[-2:] != lab.shape[-2:]:
                raise ValueError(
                    f'posteriors of network {j} have shape {probs.shape}, expected '
                    f'({n}, C, {lab.shape[-2]}, {lab.shape[-1]})'
                )
            classes = probs.shape[1]
            norm = math.log(classes) if classes > 1 else 1.0
            # entr(y) = -y log y with entr(0) = 0: no log(0) warnings at saturated pixels.
            out['entropy'][:, j] = entr(probs).sum(axis=1).mean(axis=(1, 2)) / norm

    if previous is not None:
        prev = _labels(previous)
        if prev.shape != lab.shape:
            raise ValueError(f'previous labels {prev.shape} do not match labels {lab.shape}')
        mask = np.ones(n, bool) if has_previous is None else np.asarray(has_previous, bool)
        if mask.shape != (n,):
            raise ValueError(f'has_previous must have shape ({n},), got {mask.shape}')
        for j in range(k):
            out['temporal'][:, j] = np.where(mask, _differ(lab[j], prev[j], ignore_index), np.nan)
    return out


# --------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Calibration:
    """Per feature and network, the mean and standard deviation on clean frames.

    Fit it on the clean frames of the split that also chooses the thresholds, never on the
    split that is reported.
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    #: Floor of a standard deviation (a constant feature would divide by zero).
    MIN_STD = 1e-6

    @classmethod
    def fit(cls, features: dict[str, np.ndarray]) -> Calibration:
        """From clean-frame features (name -> ``(N, K)``); NaN frames are left out."""
        mean, std = {}, {}
        for name, values in features.items():
            values = np.asarray(values, dtype=np.float64)
            with warnings.catch_warnings():  # an all-NaN column (no feature) stays NaN
                warnings.simplefilter('ignore', RuntimeWarning)
                mean[name] = np.nanmean(values, axis=0)
                std[name] = np.maximum(np.nanstd(values, axis=0), cls.MIN_STD)
        return cls(mean, std)

    def z(self, name: str, values: np.ndarray) -> np.ndarray:
        """``(values - mean) / std`` per network."""
        return (np.asarray(values, np.float64) - self.mean[name]) / self.std[name]

    def to_dict(self) -> dict[str, dict[str, list[float | None]]]:
        def clean(a):
            return [None if not np.isfinite(v) else float(v) for v in a]

        return {n: {'mean': clean(self.mean[n]), 'std': clean(self.std[n])} for n in self.mean}


def suspect_index(values: Any) -> np.ndarray:
    """Per frame, the network with the largest value; -1 when the maximum is not unique or
    every value is NaN (the no-suspect cases of :func:`tsa_ros.fusion.suspect`).

    Args:
        values: ``(N, K)``.

    Returns:
        int64 ``(N,)``.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f'values must be (N, K), got shape {v.shape}')
    v = np.where(np.isnan(v), -np.inf, v)
    best = v.max(axis=1, keepdims=True)
    unique = np.count_nonzero(v == best, axis=1) == 1
    return np.where(unique & np.isfinite(best[:, 0]), v.argmax(axis=1), -1)


def rule_scores(
    rule: Rule | str,
    features: dict[str, np.ndarray],
    calibration: Calibration | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frame scores (higher = more likely attacked) and suspects of one rule.

    Args:
        rule: a :class:`Rule` or its name in :data:`RULES`.
        features: name -> ``(N, K)`` from :func:`triplet_features`.
        calibration: required by calibrated rules.

    Returns:
        ``(score (N,), suspect (N,))``: score NaN where the feature is undefined for some
        network of the frame; suspect from :func:`suspect_index`.
    """
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f'unknown rule {rule!r}; choose from {sorted(RULES)}')
        rule = RULES[rule]
    values = np.asarray(features[rule.feature], dtype=np.float64)
    if rule.calibrated:
        if calibration is None:
            raise ValueError(f'rule {rule.name!r} needs a calibration on clean frames')
        values = calibration.z(rule.feature, values)
        if rule.two_sided:
            values = np.abs(values)
    # A frame with any undefined network value has no score: max would skip the NaN.
    score = np.where(np.isnan(values).any(axis=1), np.nan, values.max(axis=1, initial=-np.inf))
    return score, suspect_index(values)


# --------------------------------------------------------------------------- detector metrics
def _scores(x: Any, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError(f'{what}: need at least one score')
    if np.isnan(a).any():
        raise ValueError(f'{what}: scores contain NaN')
    return a


def auroc(negatives: Any, positives: Any) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U).

    The probability that a random positive (attacked frame) scores higher than a random
    negative (clean frame), ties counting one half: with midranks ``R`` of the positives among
    all scores, ``AUROC = (sum R - P (P + 1) / 2) / (P N)``. 0.5 = chance, 1 = every attacked
    frame above every clean one.
    """
    neg, pos = _scores(negatives, 'negatives'), _scores(positives, 'positives')
    ranks = rankdata(np.concatenate([pos, neg]), method='average')
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def auroc_se(value: float, negatives: int, positives: int) -> float:
    """Standard error of an AUROC ``value`` from ``negatives`` and ``positives`` frames.

    Hanley & McNeil (1982): ``SE^2 = (A (1 - A) + (P - 1)(Q1 - A^2) + (N - 1)(Q2 - A^2))
    / (P N)`` with ``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)``. A yardstick for whether
    two rules differ beyond noise on a few dozen frames; it is 0 at A = 0 or 1, where it
    understates the uncertainty.
    """
    if negatives < 1 or positives < 1:
        raise ValueError('need at least one negative and one positive')
    a = float(value)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = a * (1 - a) + (positives - 1) * (q1 - a * a) + (negatives - 1) * (q2 - a * a)
    return math.sqrt(max(var, 0.0) / (positives * negatives))


def roc_curve(negatives: Any, positives: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points of the rule "flag when score >= t" for every distinct score t.

    Returns:
        ``(fpr, tpr, thresholds)``, from ``(0, 0)`` at ``t = +inf`` down to ``(1, 1)`` at the
        smallest score. Tied scores move both rates in one step (a diagonal segment), so the
        trapezoidal area under these points equals :func:`auroc`.
    """
    neg, pos = _scores(negatives, 'negatives'), _scores(positives, 'positives')
    thresholds = np.unique(np.concatenate([neg, pos]))[::-1]
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    # Count of scores >= t: size minus the number strictly below t.
    fp = neg.size - np.searchsorted(neg_sorted, thresholds, side='left')
    tp = pos.size - np.searchsorted(pos_sorted, thresholds, side='left')
    fpr = np.concatenate([[0.0], fp / neg.size])
    tpr = np.concatenate([[0.0], tp / pos.size])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def flag_rate(scores: Any, threshold: float) -> float:
    """Fraction of frames flagged, i.e. with a score strictly above ``threshold`` (strictly,
    like :func:`tsa_ros.fusion.suspect`)."""
    s = _scores(scores, 'scores')
    return float(np.count_nonzero(s > threshold) / s.size)


def choose_threshold(negatives: Any, fpr: float) -> float:
    """The smallest threshold whose flag rate on ``negatives`` is at most ``fpr``.

    With the negatives sorted in descending order ``n_1 >= n_2 >= ...``, that is
    ``n_(m)`` with ``m = floor(fpr * N) + 1``: at most ``m - 1`` values lie strictly above it.
    Ties at ``n_(m)`` only lower the realised rate. Use the clean frames of a split other than
    the reported one; on new data the realised FPR scatters around ``fpr``.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f'fpr must be in [0, 1], got {fpr}')
    neg = np.sort(_scores(negatives, 'negatives'))[::-1]
    allowed = math.floor(fpr * neg.size + 1e-9)  # the float product of 0.05 * 20 is 1.0000..
    if allowed >= neg.size:
        return -math.inf  # every negative may be flagged
    return float(neg[allowed])


def tpr_at_fpr(negatives: Any, positives: Any, fpr: float = 0.05) -> float:
    """The largest TPR at an FPR of at most ``fpr`` on these scores (threshold chosen on the
    same negatives by :func:`choose_threshold`)."""
    return flag_rate(positives, choose_threshold(negatives, fpr))


def suspect_accuracy(suspects: Any, attacked: int, flagged: Any = None) -> float:
    """How often the suspected network is the attacked one.

    Args:
        suspects: per attacked frame, the suspected network (-1 = none).
        attacked: index of the attacked network.
        flagged: optional bool mask; only those frames count (the frames a detector flags).

    Returns:
        The fraction, NaN when no frame counts. A frame without a suspect counts as wrong.
    """
    s = np.asarray(suspects).reshape(-1)
    if flagged is not None:
        s = s[np.asarray(flagged, bool).reshape(-1)]
    if s.size == 0:
        return math.nan
    return float(np.count_nonzero(s == attacked) / s.size)
