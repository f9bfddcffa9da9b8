"""Fusion of the teacher / static student / adaptive student outputs.

Bär et al. (2019) run three redundant networks (teacher T, static student S, adaptive
student A) and compare them with the mIoU between their outputs (sec. 3.4, 4.3). They mention
that the redundant outputs could be combined by majority vote or posterior fusion, but leave
this to future work. This module implements both options, vectorised over pixels:

* :func:`majority_vote` -- every network votes its label per pixel, the class with most
  votes wins; ties are broken by network priority (teacher first), by summed posteriors,
  or left undecided (``ignore_index``).
* :func:`posterior_fusion` / :func:`posterior_fusion_labels` -- weighted mean of the
  softmax posteriors, then argmax.

On top, :func:`disagreement` and :func:`suspect` point at the network that disagrees most
with the fused result. This is an attack-detection *hint* that goes beyond the paper: the
paper only observes that an attacked network drifts away from the others (low mIoU between
outputs); it does not propose a decision rule.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np

from tsa_ros.inference import as_numpy, resize_posteriors

__all__ = [
    'FusionConfig',
    'FusionResult',
    'DISAGREEMENT_COLORS',
    'colorize_disagreement',
    'disagreement',
    'disagreement_map',
    'fuse',
    'fuse_roles',
    'RoleFusion',
    'SizeMismatchError',
    'majority_vote',
    'posterior_fusion',
    'posterior_fusion_labels',
    'suspect',
]

TIE_RULES = ('teacher', 'posterior', 'ignore')
_FUSION_BLOCK = 1 << 16  # pixels per block of posterior_fusion_labels (256 kB of float32)
MODES = ('majority', 'posterior')


def _stack(maps: Any, what: str) -> np.ndarray:
    """Stack a sequence of K arrays (or take a stacked array) into shape ``(K, ...)``."""
    if isinstance(maps, np.ndarray) or (hasattr(maps, 'detach') and hasattr(maps, 'cpu')):
        arr = as_numpy(maps)
        if arr.ndim == 0 or arr.shape[0] < 1:
            raise ValueError(f'{what}: need at least one network (K >= 1)')
        return arr
    items = [as_numpy(m) for m in maps]
    if not items:
        raise ValueError(f'{what}: need at least one network (K >= 1)')
    shapes = {a.shape for a in items}
    if len(shapes) != 1:
        raise ValueError(
            f'{what}: all networks must have the same shape, got {[a.shape for a in items]}'
        )
    return np.stack(items)


def _check_label_space(num_classes: int, ignore_index: int) -> None:
    if not 1 <= num_classes <= 255:
        raise ValueError(f'num_classes must be in [1, 255] for uint8 output, got {num_classes}')
    if not 0 <= ignore_index <= 255 or ignore_index < num_classes:
        raise ValueError(f'ignore_index must be in [num_classes, 255], got {ignore_index}')


def _stack_labels(labels: Any, num_classes: int, ignore_index: int) -> np.ndarray:
    lab = _stack(labels, 'labels')
    if lab.ndim not in (3, 4):
        raise ValueError(f'each label map must be (H, W) or (N, H, W), got {lab.shape[1:]}')
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f'label maps must be integer, got dtype {lab.dtype}')
    if lab.dtype != np.uint8:  # uint8 (the messages' mono8) is compared as it is
        lab = lab.astype(np.int64, copy=False)
    bad = (lab >= num_classes) & (lab != ignore_index)
    if lab.dtype != np.uint8:
        bad |= lab < 0
    if bad.any():
        raise ValueError(
            f'label values must be in [0, {num_classes}) or {ignore_index}, '
            f'got e.g. {np.unique(lab[bad])[:5].tolist()}'
        )
    return lab


def _posterior_list(posteriors: Any) -> list[np.ndarray]:
    """Validate K posterior maps and return them as a list of arrays.

    No stacked copy is made: a full-resolution Cityscapes posterior is ~160 MB in float32.
    """
    if isinstance(posteriors, np.ndarray) or hasattr(posteriors, 'detach'):
        items = list(as_numpy(posteriors))
    else:
        items = [as_numpy(p) for p in posteriors]
    if not items:
        raise ValueError('posteriors: need at least one network (K >= 1)')
    if len({p.shape for p in items}) != 1:
        raise ValueError(
            f'posteriors: all networks must have the same shape, got {[p.shape for p in items]}'
        )
    if items[0].ndim not in (3, 4):
        raise ValueError(f'each posterior must be (C, H, W) or (N, C, H, W), got {items[0].shape}')
    for p in items:
        if not np.issubdtype(p.dtype, np.floating):
            raise ValueError(f'posteriors must be floating point, got dtype {p.dtype}')
    return items


def _weighted_sum(items: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    # float16 sums lose precision quickly; accumulate at least in float32.
    dtype = np.result_type(np.float32, *[p.dtype for p in items])
    out = np.zeros(items[0].shape, dtype=dtype)
    for w, p in zip(weights, items, strict=True):  # loop over networks only
        out += dtype.type(w) * p
    return out


def majority_vote(
    labels: Any,
    *,
    tie: str = 'teacher',
    priority: Optional[Sequence[int]] = None,
    posteriors: Any = None,
    num_classes: int = 19,
    ignore_index: int = 255,
) -> np.ndarray:
    """Per-pixel majority vote over K label maps.

    Args:
        labels: sequence of K label maps of equal shape ``(H, W)`` or ``(N, H, W)``, or one
            array stacked along a new first axis ``(K, ...)``. ``ignore_index`` pixels cast
            no vote from that network.
        tie: how to break a tie between several classes sharing the top vote count:
            ``'teacher'`` -- the tied class voted by the highest-priority network;
            ``'posterior'`` -- the tied class with the largest posterior summed over all K
            networks (exact posterior ties go to the lowest class id);
            ``'ignore'`` -- ``ignore_index``.
        priority: network indices, most trusted first (a permutation of ``range(K)``);
            default ``0, 1, ..., K-1`` i.e. the teacher (index 0) first. Only used by
            ``tie='teacher'``.
        posteriors: K softmax maps ``(C, H, W)`` / ``(N, C, H, W)``; required for
            ``tie='posterior'``.
        num_classes: number of classes C.
        ignore_index: label for "no decision"; returned where no network votes.

    Returns:
        uint8 label map of the per-network shape.
    """
    if tie not in TIE_RULES:
        raise ValueError(f'tie must be one of {TIE_RULES}, got {tie!r}')
    _check_label_space(num_classes, ignore_index)
    lab = _stack_labels(labels, num_classes, ignore_index)
    k = lab.shape[0]
    shape = lab.shape[1:]

    if priority is None:
        order = list(range(k))
    else:
        order = [int(i) for i in priority]
        if sorted(order) != list(range(k)):
            raise ValueError(f'priority must be a permutation of range({k}), got {priority}')

    post = None
    if tie == 'posterior':
        if posteriors is None:
            raise ValueError("tie='posterior' requires posteriors")
        post = _posterior_list(posteriors)
        # Expected K x (C, H, W) for (H, W) labels or K x (N, C, H, W) for (N, H, W) labels.
        expected = shape[:-2] + (num_classes,) + shape[-2:]
        if len(post) != k or post[0].shape != expected:
            raise ValueError(
                f'posteriors must be {k} maps of shape {expected} ([N,] C, H, W), '
                f'got {len(post)} of shape {post[0].shape}'
            )

    flat = lab.reshape(k, -1)
    valid = flat != ignore_index
    vote = _vote_pairwise if k <= 3 else _vote_counts
    out = vote(flat, valid, tie, order, post, num_classes, ignore_index)
    return out.reshape(shape).astype(np.uint8, copy=False)


def _vote_pairwise(flat, valid, tie, order, post, num_classes, ignore_index):
    """Majority vote of K <= 3 networks by comparing their labels pairwise.

    With at most three votes a class has the majority exactly when two networks agree on
    it, so no per-class count is needed. With the networks ``p, q, r`` in priority order
    (absent ones padded with ``ignore_index``), the vote is: ``q`` where ``q`` and ``r``
    agree, else the first valid of ``p, q, r``; every other agreement involves ``p``, which
    is then that first valid vote. A few elementwise uint8 operations (about 2 ms per
    1024x512 frame instead of ~100 ms for the counting of :func:`_vote_counts`, which it
    equals on every input; a randomized test checks it).
    """
    k, npix = flat.shape
    ign = flat.dtype.type(ignore_index)
    votes = [flat[j] for j in order] + [np.full(npix, ign, flat.dtype)] * (3 - k)
    live = [valid[j] for j in order] + [np.zeros(npix, bool)] * (3 - k)
    p, q, r = votes
    qr = (q == r) & live[1]
    first = np.where(live[0], p, np.where(live[1], q, r))
    out = np.where(qr, q, first)
    if tie == 'teacher' or k == 1:
        return out  # a tie goes to the first valid vote in priority order
    agree = qr | (live[0] & ((p == q) | (p == r)))
    n_valid = live[0].view(np.uint8) + live[1].view(np.uint8) + live[2].view(np.uint8)
    ambiguous = ~agree & (n_valid > 1)  # every valid vote a different class: a tie
    if tie == 'ignore':
        out[ambiguous] = ign
        return out
    if not ambiguous.any():
        return out
    # tie == 'posterior': the tied class with the largest summed posterior, lowest id on
    # equality, summed in the same order and dtype as _vote_counts does.
    idx = np.flatnonzero(ambiguous)
    dtype = np.result_type(np.float32, *[p.dtype for p in post])
    maps = [np.moveaxis(p, -3, 0).reshape(num_classes, -1) for p in post]  # (C, pixels)
    best_score = np.full(idx.size, -np.inf, dtype=dtype)
    best_class = np.full(idx.size, ignore_index, dtype=np.int64)
    for j in range(k):
        cls = flat[j, idx].astype(np.int64)
        ok = valid[j, idx]
        safe = np.where(ok, cls, 0)
        score = np.zeros(idx.size, dtype=dtype)
        for m in maps:
            score += dtype.type(1.0) * m[safe, idx]
        score = np.where(ok, score, -np.inf)
        better = (score > best_score) | ((score == best_score) & ok & (cls < best_class))
        best_score = np.where(better, score, best_score)
        best_class = np.where(better, cls, best_class)
    out[idx] = best_class
    return out


def _vote_counts(flat, valid, tie, order, post, num_classes, ignore_index):
    """Majority vote of any number K of networks by counting the votes per class."""
    k, npix = flat.shape
    pix = np.arange(npix)
    # Vote counts per class and pixel; K networks give at most K votes.
    counts = np.zeros((num_classes, npix), dtype=np.uint8 if k < 256 else np.int32)
    for j in range(k):  # loop over networks only, each pixel appears once per network
        counts[flat[j, valid[j]], pix[valid[j]]] += 1

    top = counts.max(axis=0)
    tied = (counts == top) & (top > 0)
    n_tied = tied.sum(axis=0)

    out = np.full(npix, ignore_index, dtype=np.int64)
    single = n_tied == 1
    out[single] = counts[:, single].argmax(axis=0)
    ambiguous = n_tied > 1

    if ambiguous.any():
        if tie == 'teacher':
            pending = ambiguous.copy()
            safe = np.where(valid, flat, 0)  # keep indices in range; masked by ``valid``
            for j in order:
                take = pending & valid[j] & tied[safe[j], pix]
                out[take] = flat[j, take]
                pending &= ~take
        elif tie == 'posterior':
            score = _weighted_sum(post, np.ones(k))  # ([N,] C, H, W)
            score = np.moveaxis(score, -3, 0).reshape(num_classes, -1)[:, ambiguous]
            score = np.where(tied[:, ambiguous], score, -np.inf)
            out[ambiguous] = score.argmax(axis=0)
        # tie == 'ignore': leave ignore_index.
    return out


def _normalised_weights(weights: Optional[Sequence[float]], k: int) -> np.ndarray:
    if weights is None:
        return np.full(k, 1.0 / k)
    w = np.asarray(as_numpy(weights), dtype=np.float64).reshape(-1)
    if w.shape != (k,):
        raise ValueError(f'need one weight per network ({k}), got {w.size}')
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f'weights must be finite and non-negative, got {w.tolist()}')
    if w.sum() <= 0:
        raise ValueError('weights must not all be zero')
    return w / w.sum()


def posterior_fusion(posteriors: Any, *, weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Weighted mean of K posterior maps ``(C, H, W)`` or ``(N, C, H, W)``.

    Args:
        posteriors: sequence of K probability maps of equal shape, or a stacked array
            ``(K, ...)``; numpy (float16/32/64) or torch tensors.
        weights: K non-negative weights, normalised to sum 1; default equal weights.

    Returns:
        Fused probability map, float32 (float64 if the input was float64).
    """
    items = _posterior_list(posteriors)
    return _weighted_sum(items, _normalised_weights(weights, len(items)))


def posterior_fusion_labels(
    posteriors: Any, *, weights: Optional[Sequence[float]] = None
) -> np.ndarray:
    """Argmax of :func:`posterior_fusion` over the class axis, as uint8 labels."""
    items = _posterior_list(posteriors)
    weights = _normalised_weights(weights, len(items))
    num_classes = items[0].shape[-3]
    if num_classes > 256:
        raise ValueError(f'too many classes for uint8 labels: {num_classes}')
    # Blocks of pixels small enough to stay in cache: per block the fused score of each
    # class and a running max, instead of materialising the fused map and an argmax across
    # class planes (~2x a memcpy of the inputs instead of ~5x). Same sums in the same order
    # as posterior_fusion, and the first maximum wins as in argmax: identical labels.
    dtype = np.result_type(np.float32, *[p.dtype for p in items])
    ws = [dtype.type(w) for w in weights]
    plane = items[0].shape[:-3] + items[0].shape[-2:]
    # (C, pixels) views; (N, C, H, W) inputs take the class axis first (a copy, rare path).
    flat = [np.moveaxis(p, -3, 0).reshape(num_classes, -1) for p in items]
    npix = flat[0].shape[1]
    labels = np.empty(npix, dtype=np.uint8)
    block = min(npix, _FUSION_BLOCK)
    score, term, best = (np.empty(block, dtype=dtype) for _ in range(3))
    better = np.empty(block, dtype=bool)
    for start in range(0, npix, block):
        stop = min(npix, start + block)
        n = stop - start
        sc, tm, bs, bt, lb = score[:n], term[:n], best[:n], better[:n], labels[start:stop]
        for c in range(num_classes):
            sc.fill(0)
            for w, p in zip(ws, flat, strict=True):
                np.multiply(p[c, start:stop], w, out=tm)
                sc += tm
            if c == 0:
                bs[:] = sc
                lb.fill(0)
            else:
                np.greater(sc, bs, out=bt)
                np.maximum(bs, sc, out=bs)
                lb[bt] = c
    return labels.reshape(plane)


def disagreement(labels: Any, fused: Any, *, ignore_index: int = 255) -> np.ndarray:
    """Per network, the fraction of pixels where its label differs from the fused label.

    Only pixels that are valid (not ``ignore_index``) in both that network's map and the
    fused map count. A network with no such pixel gets ``NaN``.

    Returns:
        float64 array of shape ``(K,)``.
    """
    lab = _stack(labels, 'labels')  # compared in their own integer dtype: no int64 copies
    ref = as_numpy(fused)
    if lab.shape[1:] != ref.shape:
        raise ValueError(f'fused shape {ref.shape} does not match label maps {lab.shape[1:]}')
    flat = lab.reshape(lab.shape[0], -1)
    ref = ref.reshape(1, -1)
    both = (flat != ignore_index) & (ref != ignore_index)
    n = np.count_nonzero(both, axis=1)
    diff = np.count_nonzero((flat != ref) & both, axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(n > 0, diff / np.maximum(n, 1), np.nan)


def disagreement_map(labels: Any, fused: Any, *, ignore_index: int = 255) -> np.ndarray:
    """Per pixel, how many networks voted a label other than the fused one.

    A network that cast no vote at a pixel (``ignore_index``) does not disagree there. Pixels
    where the fused label is ``ignore_index`` (no decision) are ``ignore_index`` too. The map
    for people (``fused/disagreement``): where it is not 0, the fused mask is contested.

    Returns:
        uint8 array of the label maps' shape.
    """
    lab = _stack(labels, 'labels')
    ref = as_numpy(fused)
    if lab.shape[1:] != ref.shape:
        raise ValueError(f'fused shape {ref.shape} does not match label maps {lab.shape[1:]}')
    if lab.shape[0] >= ignore_index:  # a count must never read as "no decision"
        raise ValueError(f'too many networks ({lab.shape[0]}) for ignore_index {ignore_index}')
    out = np.zeros(ref.shape, dtype=np.uint8)
    for net in lab:  # loop over networks only: no (K, H, W) boolean temporary
        out += (net != ref) & (net != ignore_index)
    out[ref == ignore_index] = ignore_index
    return out


#: Colours of :func:`colorize_disagreement` (RGB): 0 networks disagree black, 1 yellow,
#: 2 red, 3 or more magenta; no fused decision (ignore) grey.
DISAGREEMENT_COLORS: dict[str, tuple[int, int, int]] = {
    '0': (0, 0, 0),
    '1': (255, 255, 0),
    '2': (255, 0, 0),
    '3+': (255, 0, 255),
    'ignore': (128, 128, 128),
}


def colorize_disagreement(counts: Any, *, ignore_index: int = 255) -> np.ndarray:
    """RGB (H, W, 3) uint8 image of a :func:`disagreement_map` in DISAGREEMENT_COLORS."""
    counts = as_numpy(counts)
    if counts.dtype != np.uint8:
        raise ValueError(f'disagreement counts must be uint8, got dtype {counts.dtype}')
    lut = np.empty((256, 3), dtype=np.uint8)
    lut[:] = DISAGREEMENT_COLORS['3+']
    lut[0], lut[1], lut[2] = (DISAGREEMENT_COLORS[k] for k in ('0', '1', '2'))
    lut[ignore_index] = DISAGREEMENT_COLORS['ignore']
    return lut[counts]


def suspect(disagreements: Any, *, threshold: float = 0.2) -> Optional[int]:
    """Index of the network that disagrees most with the fused result, or ``None``.

    A network is flagged only if its disagreement is strictly above ``threshold`` and is the
    unique maximum (``NaN`` entries never win). This attack-detection rule is an extension
    beyond Bär et al. (2019), who only report the mIoU between the networks' outputs.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f'threshold must be in [0, 1], got {threshold}')
    d = np.asarray(as_numpy(disagreements), dtype=np.float64).reshape(-1)
    if d.size == 0:
        return None
    d = np.where(np.isnan(d), -np.inf, d)
    best = d.max()
    if not best > threshold or np.count_nonzero(d == best) != 1:
        return None
    return int(d.argmax())


@dataclass
class FusionConfig:
    """Settings for :func:`fuse`.

    Attributes:
        mode: ``'majority'`` (label vote) or ``'posterior'`` (weighted posterior mean).
        tie: tie rule of :func:`majority_vote` (``'teacher'``, ``'posterior'``, ``'ignore'``).
        weights: per-network weights, used by ``mode='posterior'`` only.
        suspect_threshold: disagreement above which :func:`suspect` flags a network.
        num_classes: number of classes C.
        ignore_index: label for ignored / undecided pixels.
    """

    mode: str = 'majority'
    tie: str = 'teacher'
    weights: Optional[Sequence[float]] = None
    suspect_threshold: float = 0.2
    num_classes: int = 19
    ignore_index: int = 255

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f'mode must be one of {MODES}, got {self.mode!r}')
        if self.tie not in TIE_RULES:
            raise ValueError(f'tie must be one of {TIE_RULES}, got {self.tie!r}')
        if not 0.0 <= float(self.suspect_threshold) <= 1.0:
            raise ValueError(f'suspect_threshold must be in [0, 1], got {self.suspect_threshold}')
        _check_label_space(self.num_classes, self.ignore_index)
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            # Validate sign / finiteness now; the length is checked against K in fuse().
            _normalised_weights(self.weights, len(self.weights))


@dataclass(frozen=True)
class FusionResult:
    """Output of :func:`fuse`: fused labels, per-network disagreement and suspect index."""

    labels: np.ndarray
    disagreement: np.ndarray
    suspect: Optional[int]


def fuse(
    labels: Any = None, posteriors: Any = None, cfg: Optional[FusionConfig] = None
) -> FusionResult:
    """Fuse K network outputs according to ``cfg`` and flag the most deviant network.

    ``mode='majority'`` needs ``labels`` (and ``posteriors`` for ``tie='posterior'``).
    ``mode='posterior'`` needs ``posteriors``; per-network labels for the disagreement are
    taken from ``labels`` if given, else from the argmax of each posterior.
    """
    cfg = FusionConfig() if cfg is None else cfg
    if cfg.mode == 'majority':
        if labels is None:
            raise ValueError("mode='majority' requires labels")
        fused = majority_vote(
            labels,
            tie=cfg.tie,
            posteriors=posteriors,
            num_classes=cfg.num_classes,
            ignore_index=cfg.ignore_index,
        )
    else:
        if posteriors is None:
            raise ValueError("mode='posterior' requires posteriors")
        post = _posterior_list(posteriors)
        fused = posterior_fusion_labels(post, weights=cfg.weights)
        if labels is None:
            labels = [p.argmax(axis=-3).astype(np.uint8) for p in post]
    dis = disagreement(labels, fused, ignore_index=cfg.ignore_index)
    return FusionResult(
        labels=fused, disagreement=dis, suspect=suspect(dis, threshold=cfg.suspect_threshold)
    )


class SizeMismatchError(ValueError):
    """The label maps of one frame have different sizes."""


@dataclass(frozen=True)
class RoleFusion:
    """Output of :func:`fuse_roles`: the fusion of the roles that delivered a frame.

    Attributes:
        result: fused labels, disagreement and suspect index (into ``roles``).
        roles: the roles fused, in priority order.
        config: the configuration actually applied (mode, tie and weights after fallback
            and after dropping absent roles).
        lacking_posteriors: roles whose missing posteriors forced the majority-vote
            fallback (empty when the configured mode ran).
    """

    result: FusionResult
    roles: tuple[str, ...]
    config: FusionConfig
    lacking_posteriors: tuple[str, ...] = ()

    @property
    def suspected_role(self) -> str:
        """The role :func:`suspect` flags, or ``''``."""
        return '' if self.result.suspect is None else self.roles[self.result.suspect]


def fuse_roles(
    priority: Sequence[str],
    labels: dict[str, np.ndarray],
    posteriors: Optional[dict[str, Optional[np.ndarray]]],
    cfg: FusionConfig,
) -> RoleFusion:
    """Fuse one frame from the roles present, in the priority order of the full triplet.

    Args:
        priority: every configured role, highest priority first (the first breaks ties
            under ``tie='teacher'``); ``cfg.weights`` is indexed like it.
        labels: role -> ``(H, W)`` label map, for the roles that delivered (a subset).
        posteriors: role -> ``(C, h, w)`` posteriors or ``None``, when the fusion needs them;
            they are resampled to the label size.
        cfg: the configured fusion.

    A role without posteriors turns a posterior fusion (or the posterior tie rule) into a
    majority vote with the ``'teacher'`` tie rule for this frame: a fused mask for every
    frame is worth more downstream than strictness about the mode. Weights of absent roles
    drop out. Raises :class:`SizeMismatchError` when the label maps differ in size and
    ``ValueError`` when no role is present, a role is unknown or a label is outside the
    label space.
    """
    unknown = sorted(set(labels) - set(priority))
    if unknown:
        raise ValueError(f'unknown role(s) {unknown}; configured roles are {list(priority)}')
    roles = tuple(r for r in priority if r in labels)
    if not roles:
        raise ValueError('no role delivered labels for this frame')
    maps = [np.asarray(labels[r]) for r in roles]
    if len({m.shape for m in maps}) != 1:
        sizes = ', '.join(
            f'{r} {m.shape[1]}x{m.shape[0]}' for r, m in zip(roles, maps, strict=True)
        )
        raise SizeMismatchError(f'label maps of one frame differ in size: {sizes}')
    size = maps[0].shape[:2]

    lacking: tuple[str, ...] = ()
    probs = None
    if cfg.mode == 'posterior' or cfg.tie == 'posterior':
        given = posteriors or {}
        lacking = tuple(r for r in roles if given.get(r) is None)
        if lacking:
            tie = 'teacher' if cfg.tie == 'posterior' else cfg.tie
            cfg = replace(cfg, mode='majority', tie=tie, weights=None)
        else:
            probs = [resize_posteriors(np.asarray(given[r], np.float32), size) for r in roles]
    if cfg.mode == 'posterior' and cfg.weights is not None:
        if len(cfg.weights) != len(priority):
            raise ValueError(
                f'{len(cfg.weights)} fusion weights for {len(priority)} roles {list(priority)}'
            )
        cfg = replace(cfg, weights=tuple(cfg.weights[list(priority).index(r)] for r in roles))
    return RoleFusion(fuse(maps, probs, cfg), roles, cfg, lacking)
