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
* :func:`weighted_vote` -- every vote counts a per-network, per-class weight (e.g. the
  network's IoU of that class on mini-val); the class with the largest summed weight wins.
* :func:`confidence_vote` -- every vote counts the network's weight times its posterior
  ``y_{i,s}`` (eq. 1) of the class it votes for: a network unsure at a pixel, as the
  least-likely attack (eqs. 7-10) leaves the attacked one, counts less there.
* :func:`gated_fusion` -- detection-gated: the lead network's (the teacher's) labels, or a
  confidence vote led by it, unless :func:`suspect` flags that network; then the others
  are fused without it. The teacher is the most accurate network, and a vote that lets
  two weaker students overrule it loses clean accuracy; the gate gives the teacher's
  accuracy on clean frames and drops it only when it looks attacked.

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
    'class_weight_matrix',
    'confidence_vote',
    'gated_fusion',
    'weighted_vote',
]

TIE_RULES = ('teacher', 'posterior', 'ignore')
_FUSION_BLOCK = 1 << 18  # scores per (classes, pixels) block of posterior_fusion_labels (1 MB)
MODES = ('majority', 'posterior', 'weighted', 'confidence', 'gated', 'gated_confidence')
#: Modes that read posteriors, each with the label-only mode fuse_roles falls back to.
POSTERIOR_FALLBACK = {
    'posterior': 'majority',
    'confidence': 'majority',
    'gated_confidence': 'gated',
}
#: Modes whose per-network ``weights`` apply (indexed like the networks / roles).
WEIGHTED_MODES = ('posterior', 'confidence', 'gated_confidence')


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


def _priority_order(priority: Optional[Sequence[int]], k: int) -> list[int]:
    """Network indices, most trusted first; default ``0, 1, ..., K-1`` (the teacher first)."""
    if priority is None:
        return list(range(k))
    order = [int(i) for i in priority]
    if sorted(order) != list(range(k)):
        raise ValueError(f'priority must be a permutation of range({k}), got {priority}')
    return order


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

    order = _priority_order(priority, k)

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
    # Blocks of pixels, all classes at once, small enough to stay in cache: per block the
    # fused scores (C, n), their max over classes and the first class reaching it, instead
    # of materialising the fused map (~1.4x a memcpy of the inputs instead of ~4x). The
    # same products summed in the same order as posterior_fusion (whose np.zeros start can
    # only turn a -0.0 into 0.0, which compares equal), and the first maximum wins as in
    # argmax: identical labels.
    dtype = np.result_type(np.float32, *[p.dtype for p in items])
    ws = [dtype.type(w) for w in weights]
    plane = items[0].shape[:-3] + items[0].shape[-2:]
    # (C, pixels) views; (N, C, H, W) inputs take the class axis first (a copy, rare path).
    flat = [np.moveaxis(p, -3, 0).reshape(num_classes, -1) for p in items]
    npix = flat[0].shape[1]
    labels = np.empty(npix, dtype=np.uint8)
    block = min(npix, max(1, _FUSION_BLOCK // num_classes))
    score, term = (np.empty((num_classes, block), dtype=dtype) for _ in range(2))
    best = np.empty(block, dtype=dtype)
    hit = np.empty((num_classes, block), dtype=np.uint8)
    # 255 - c for class c: the first class at the max has the largest rank, and a rank fits
    # uint8 for up to 256 classes (where class 255 ranks 0, as a miss does, but then it is
    # the only class left that can be at the max).
    rank = (255 - np.arange(num_classes)).astype(np.uint8)[:, None]
    for start in range(0, npix, block):
        stop = min(npix, start + block)
        n = stop - start
        sc, tm, bs, lb = score[:, :n], term[:, :n], best[:n], labels[start:stop]
        np.multiply(flat[0][:, start:stop], ws[0], out=sc)
        for w, p in zip(ws[1:], flat[1:], strict=True):
            np.multiply(p[:, start:stop], w, out=tm)
            sc += tm
        np.max(sc, axis=0, out=bs)
        if np.isnan(bs).any():
            _first_max_running(sc, lb)  # a NaN score: keep the running max's answer
            continue
        # The first class at the max, as 255 - the largest rank among the classes there:
        # three uint8 passes over the block (np.argmax(axis=0) transposes it first).
        ht = hit[:, :n]
        np.equal(sc, bs, out=ht)
        ht *= rank
        np.max(ht, axis=0, out=lb)
        np.subtract(255, lb, out=lb)
    return labels.reshape(plane)


def _first_max_running(score: np.ndarray, labels: np.ndarray) -> None:
    """Labels of a ``(C, n)`` score block by a running max over the classes, into ``labels``.

    A later class wins only when strictly greater, so the first maximum wins; a NaN score
    stops later classes from winning (``x > NaN`` is false): posterior_fusion_labels' rule for
    NaN scores before blocks were labelled by max-and-compare, which would differ there.
    """
    best = score[0].copy()
    labels.fill(0)
    better = np.empty(best.shape, dtype=bool)
    for c in range(1, score.shape[0]):
        np.greater(score[c], best, out=better)
        np.maximum(best, score[c], out=best)
        labels[better] = c


def _strongest_vote(
    flat: np.ndarray, strength: np.ndarray, valid: np.ndarray, order: list[int]
) -> np.ndarray:
    """Per pixel, the class whose votes have the largest summed strength.

    Args:
        flat: ``(K, P)`` labels, ``ignore_index`` where a network casts no vote.
        strength: ``(K, P)`` float32 strength of each vote: non-negative, 0 at non-votes.
        valid: ``(K, P)``, which labels are votes.
        order: network indices, most trusted first.

    Every voter of a class gets the total of that class, summed over the networks in index
    order, so the voters of one class hold bit-identical totals (adding 0.0 is exact) and an
    exact tie between two classes is a real one: it goes to the class of the most trusted
    voter, as ``tie='teacher'`` does. A non-vote scores -1, below any vote, so a pixel
    without votes keeps the first network's label, ``ignore_index``. About K^2 elementwise
    passes and no per-class array (a few ms for K = 3 on a 1024x512 frame).
    """
    k = flat.shape[0]
    same = {}  # label equality of each pair of networks, computed once
    totals = []
    for j in range(k):
        total = None
        for m in range(k):
            if m == j:
                term = strength[m]
            else:
                key = (min(j, m), max(j, m))
                if key not in same:
                    same[key] = flat[j] == flat[m]
                term = same[key] * strength[m]
            if total is None:
                total = term.copy() if m == j else term  # never write into ``strength``
            else:
                total += term
        if not valid[j].all():
            total -= ~valid[j]  # non-votes to -1 (strengths are >= 0)
        totals.append(total)
    first = order[0]
    out, best = flat[first].copy(), totals[first]
    for j in order[1:]:  # most trusted first: a later class wins only when strictly stronger
        better = totals[j] > best
        best = np.maximum(best, totals[j])
        out = np.where(better, flat[j], out)
    return out


def _vote_weights(weights: Any, k: int, what: str) -> np.ndarray:
    """Non-negative finite weights of shape ``(K,)`` (not normalised: only ratios matter)."""
    if weights is None:
        return np.ones(k)
    w = np.asarray(as_numpy(weights), dtype=np.float64).reshape(-1)
    if w.shape != (k,):
        raise ValueError(f'{what}: need one weight per network ({k}), got {w.size}')
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError(f'{what}: weights must be finite and non-negative, got {w.tolist()}')
    return w


def class_weight_matrix(class_weights: Any, k: int, num_classes: int) -> np.ndarray:
    """Per-network, per-class weights as a ``(K, C)`` float64 array.

    ``class_weights`` is ``(K, C)`` or flat ``K * C`` values, network by network (the form of
    the ROS parameter ``fusion.class_weights``). Raises ValueError on another size, a negative
    or a non-finite value.
    """
    w = np.asarray(as_numpy(class_weights), dtype=np.float64)
    if w.size != k * num_classes:
        raise ValueError(
            f'class_weights: need {k} networks x {num_classes} classes = '
            f'{k * num_classes} values, got {w.size}'
        )
    w = w.reshape(k, num_classes)
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise ValueError('class_weights must be finite and non-negative')
    return w


def weighted_vote(
    labels: Any,
    class_weights: Any,
    *,
    priority: Optional[Sequence[int]] = None,
    num_classes: int = 19,
    ignore_index: int = 255,
) -> np.ndarray:
    """Per-pixel vote where network j's vote for class s counts ``class_weights[j, s]``.

    With each network's per-class IoU (eq. 11) on mini-val as weights, a network counts
    more for the classes it segments well. Such weights favour the large, easy classes that
    every network gets right and can lower the mIoU, which averages over classes (on the
    demo networks they do: ``tsa experiment detection``). The class with the largest summed
    weight wins; exact ties go to the class voted by the most trusted network (``priority``,
    default the teacher first), so equal weights give :func:`majority_vote` with
    ``tie='teacher'``. A vote of weight 0 still beats no vote; pixels where nobody votes are
    ``ignore_index``.

    Args:
        labels: K label maps ``(H, W)`` or ``(N, H, W)`` (or stacked ``(K, ...)``).
        class_weights: ``(K, C)`` or flat ``K * C`` non-negative weights.
        priority: network indices, most trusted first.
        num_classes: number of classes C.
        ignore_index: label for "no decision".

    Returns:
        uint8 label map of the per-network shape.
    """
    _check_label_space(num_classes, ignore_index)
    lab = _stack_labels(labels, num_classes, ignore_index)
    k, shape = lab.shape[0], lab.shape[1:]
    order = _priority_order(priority, k)
    w = class_weight_matrix(class_weights, k, num_classes)
    # A 256-entry table per network, 0 beyond the classes (so at ignore_index): the uint8
    # (or validated int64) labels index it directly.
    table = np.zeros((k, 256), dtype=np.float32)
    table[:, :num_classes] = w
    flat = lab.reshape(k, -1)
    strength = np.stack([np.take(table[j], flat[j]) for j in range(k)])
    out = _strongest_vote(flat, strength, flat != ignore_index, order)
    return out.reshape(shape).astype(np.uint8, copy=False)


def confidence_vote(
    labels: Any,
    posteriors: Any,
    *,
    weights: Optional[Sequence[float]] = None,
    priority: Optional[Sequence[int]] = None,
    num_classes: int = 19,
    ignore_index: int = 255,
) -> np.ndarray:
    """Per-pixel vote where network j's vote counts ``w_j * y_{i,s_j}`` (eq. 1).

    ``y_{i,s_j}`` is network j's softmax posterior, at pixel i, of the class ``s_j`` it
    votes for: its confidence there. A network pushed off its clean class by an attack
    (eqs. 7-10) is less sure at the pixels it gets wrong, so it counts less exactly there,
    and ``w_j`` (e.g. 2 for the teacher) keeps the most accurate network ahead on clean
    frames, where two weaker students agreeing would otherwise overrule it. Unlike
    :func:`posterior_fusion`, only the voted class of each network scores: a network's
    probability mass on other classes does not pull the result. The class with the largest
    summed strength wins; exact ties go to the most trusted voter (``priority``).

    Args:
        labels: K label maps ``(H, W)`` / ``(N, H, W)``; ``ignore_index`` casts no vote.
        posteriors: K softmax maps ``(C, H, W)`` / ``(N, C, H, W)`` at the labels' size.
        weights: K non-negative network weights ``w_j`` (default equal); only ratios matter.
        priority: network indices, most trusted first (default the teacher first).
        num_classes: number of classes C.
        ignore_index: label for "no decision".

    Returns:
        uint8 label map of the per-network shape.
    """
    _check_label_space(num_classes, ignore_index)
    lab = _stack_labels(labels, num_classes, ignore_index)
    k, shape = lab.shape[0], lab.shape[1:]
    order = _priority_order(priority, k)
    w = _vote_weights(weights, k, 'confidence_vote')
    post = _posterior_list(posteriors)
    expected = shape[:-2] + (num_classes,) + shape[-2:]
    if len(post) != k or post[0].shape != expected:
        raise ValueError(
            f'posteriors must be {k} maps of shape {expected} ([N,] C, H, W), '
            f'got {len(post)} of shape {post[0].shape}'
        )
    flat = lab.reshape(k, -1)
    valid = flat != ignore_index
    npix = flat.shape[1]
    plane = npix // max(1, int(np.prod(shape[:-2], dtype=np.int64)))  # H * W
    pixel = np.arange(npix, dtype=np.intp)
    # Flat index of y[n, s_j, h, w] in a C-contiguous ([N,] C, H, W) map: one 1-D take
    # (np.take_along_axis builds index grids for every axis and is ~2x slower).
    frame = (pixel // plane) * (num_classes * plane) + pixel % plane if len(shape) == 3 else pixel
    strength = np.empty((k, npix), dtype=np.float32)
    for j in range(k):
        index = np.where(valid[j], flat[j], 0).astype(np.intp)  # in range; masked below
        index *= plane
        index += frame
        voted = np.take(np.ascontiguousarray(post[j]).reshape(-1), index)
        np.multiply(voted, w[j], out=strength[j], casting='unsafe')
        strength[j] *= valid[j]  # a non-vote has no strength
    out = _strongest_vote(flat, strength, valid, order)
    return out.reshape(shape).astype(np.uint8, copy=False)


def gated_fusion(
    labels: Any,
    *,
    threshold: float,
    posteriors: Any = None,
    confidence: bool = False,
    weights: Optional[Sequence[float]] = None,
    tie: str = 'teacher',
    num_classes: int = 19,
    ignore_index: int = 255,
) -> tuple[np.ndarray, Optional[int]]:
    """Detection-gated fusion: keep the lead network unless the detector flags it.

    The detector is the fusion node's: :func:`suspect` on each network's
    :func:`disagreement` with the majority vote (``tie``), flagging the unique largest one
    above ``threshold``. Network 0 leads (the teacher, the most accurate network). Then:

    * ``confidence=False`` (mode ``gated``): the lead's labels, unless the lead is flagged;
      then the majority vote of the others (``tie`` among them, next in order first).
      Where the lead casts no vote (``ignore_index``), the others' vote fills in.
    * ``confidence=True`` (mode ``gated_confidence``): :func:`confidence_vote` (``weights``,
      lead first) over every network the detector does not flag.

    Why: a vote lets two weaker students overrule the teacher and so loses clean accuracy,
    but the teacher alone falls with an attack on it. Gating keeps the teacher's labels on
    frames where nothing looks wrong, and an attack on the teacher that makes it disagree
    with the other two (as the least-likely attack at ε = 10 does on every demo frame) drops
    it. An attack on a student leaves the teacher's labels untouched.

    Args:
        labels: K label maps ``(H, W)`` of one frame (the gate decides per frame).
        threshold: disagreement above which :func:`suspect` flags a network.
        posteriors: K ``(C, H, W)`` maps; needed by ``confidence`` or ``tie='posterior'``.
        confidence: fuse with :func:`confidence_vote` instead (see above).
        weights: K network weights of the confidence vote (default equal).
        tie: tie rule of the majority votes (detector reference and fallback).
        num_classes, ignore_index: the label space.

    Returns:
        ``(fused uint8 labels, index of the flagged network or None)``.
    """
    if tie not in TIE_RULES:
        raise ValueError(f'tie must be one of {TIE_RULES}, got {tie!r}')
    _check_label_space(num_classes, ignore_index)
    lab = _stack_labels(labels, num_classes, ignore_index)
    if lab.ndim != 3:
        raise ValueError(
            f'gated fusion decides per frame: labels must be (K, H, W), got {lab.shape}'
        )
    k = lab.shape[0]
    post = None if posteriors is None else _posterior_list(posteriors)
    if confidence and post is None:
        raise ValueError('gated fusion with confidence=True requires posteriors')
    if post is not None and len(post) != k:
        raise ValueError(f'posteriors: need {k} maps, got {len(post)}')
    w = _vote_weights(weights, k, 'gated_fusion')
    space = {'num_classes': num_classes, 'ignore_index': ignore_index}
    reference = majority_vote(
        lab, tie=tie, posteriors=post if tie == 'posterior' else None, **space
    )
    flagged = suspect(disagreement(lab, reference, ignore_index=ignore_index), threshold=threshold)
    keep = [j for j in range(k) if j != flagged]

    def others_vote(rest: list[int]) -> np.ndarray:
        return majority_vote(
            lab[rest],
            tie=tie,
            posteriors=[post[j] for j in rest] if tie == 'posterior' else None,
            **space,
        )

    if confidence:
        fused = confidence_vote(lab[keep], [post[j] for j in keep], weights=w[keep], **space)
    elif flagged == 0:
        fused = others_vote(keep)
    else:
        fused = lab[0].astype(np.uint8)  # a copy: the caller's map is never written
        hole = fused == ignore_index
        if k > 1 and hole.any():
            fused[hole] = others_vote(list(range(1, k)))[hole]
    return fused, flagged


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
        mode: ``'majority'`` (label vote), ``'posterior'`` (weighted posterior mean),
            ``'weighted'`` (vote weighted per network and class by class_weights),
            ``'confidence'`` (vote weighted by the network weight times its posterior of the
            voted class), ``'gated'`` (the teacher's labels unless the suspect rule flags the
            teacher, then the majority vote of the others) or ``'gated_confidence'``
            (confidence vote of the networks the suspect rule does not flag).
        tie: tie rule of :func:`majority_vote` (``'teacher'``, ``'posterior'``, ``'ignore'``);
            in the gated modes that of the detector's reference vote and of the fallback.
        weights: per-network weights, in roles order, of modes ``'posterior'``,
            ``'confidence'`` and ``'gated_confidence'``; unset = equal.
        suspect_threshold: disagreement above which :func:`suspect` flags a network; in the
            gated modes also the gate.
        num_classes: number of classes C.
        ignore_index: label for ignored / undecided pixels.
        class_weights: per-network, per-class vote weights of mode ``'weighted'``:
            num_classes values per network, network by network in roles order (e.g. the
            per-class mini-val IoU that ``tsa experiment detection`` writes).
    """

    mode: str = 'majority'
    tie: str = 'teacher'
    weights: Optional[Sequence[float]] = None
    suspect_threshold: float = 0.2
    num_classes: int = 19
    ignore_index: int = 255
    class_weights: Optional[Sequence[float]] = None

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
        if self.class_weights is not None:
            self.class_weights = tuple(float(w) for w in np.ravel(self.class_weights))
            n = len(self.class_weights)
            if n == 0 or n % self.num_classes:
                raise ValueError(
                    f'class_weights must hold num_classes ({self.num_classes}) values per '
                    f'network, got {n}'
                )
            class_weight_matrix(self.class_weights, n // self.num_classes, self.num_classes)
        elif self.mode == 'weighted':
            raise ValueError(
                "mode 'weighted' needs class_weights (num_classes values per network)"
            )


@dataclass(frozen=True)
class FusionResult:
    """Output of :func:`fuse`: fused labels, per-network disagreement and suspect index.

    ``disagreement`` is always with the fused ``labels``. ``suspect`` is :func:`suspect` of
    it, except in the gated modes, where it is the gate's decision: :func:`suspect` of the
    disagreement with the majority vote (the fused labels follow the unflagged networks,
    so the disagreement with them would no longer point at the attacked one).
    """

    labels: np.ndarray
    disagreement: np.ndarray
    suspect: Optional[int]


def fuse(
    labels: Any = None, posteriors: Any = None, cfg: Optional[FusionConfig] = None
) -> FusionResult:
    """Fuse K network outputs according to ``cfg`` and flag the most deviant network.

    Every mode but ``'posterior'`` needs ``labels``; ``'posterior'``, ``'confidence'`` and
    ``'gated_confidence'`` (and ``tie='posterior'``) need ``posteriors`` at the labels' size.
    Without ``labels``, the posterior-reading modes take each network's argmax. The gated
    modes decide per frame: labels ``(K, H, W)``.
    """
    cfg = FusionConfig() if cfg is None else cfg
    space = {'num_classes': cfg.num_classes, 'ignore_index': cfg.ignore_index}
    if cfg.mode in POSTERIOR_FALLBACK:
        if posteriors is None:
            raise ValueError(f'mode={cfg.mode!r} requires posteriors')
        posteriors = _posterior_list(posteriors)
        if labels is None:
            labels = [p.argmax(axis=-3).astype(np.uint8) for p in posteriors]
    elif labels is None:
        raise ValueError(f'mode={cfg.mode!r} requires labels')
    flagged = None
    if cfg.mode == 'majority':
        fused = majority_vote(labels, tie=cfg.tie, posteriors=posteriors, **space)
    elif cfg.mode == 'posterior':
        fused = posterior_fusion_labels(posteriors, weights=cfg.weights)
    elif cfg.mode == 'weighted':
        fused = weighted_vote(labels, cfg.class_weights, **space)
    elif cfg.mode == 'confidence':
        fused = confidence_vote(labels, posteriors, weights=cfg.weights, **space)
    else:
        fused, flagged = gated_fusion(
            labels,
            threshold=cfg.suspect_threshold,
            posteriors=posteriors,
            confidence=cfg.mode == 'gated_confidence',
            weights=cfg.weights,
            tie=cfg.tie,
            **space,
        )
    dis = disagreement(labels, fused, ignore_index=cfg.ignore_index)
    if cfg.mode not in ('gated', 'gated_confidence'):
        flagged = suspect(dis, threshold=cfg.suspect_threshold)
    return FusionResult(labels=fused, disagreement=dis, suspect=flagged)


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
            under ``tie='teacher'`` and leads the gated modes); ``cfg.weights`` and the
            rows of ``cfg.class_weights`` are indexed like it.
        labels: role -> ``(H, W)`` label map, for the roles that delivered (a subset).
        posteriors: role -> ``(C, h, w)`` posteriors or ``None``, when the fusion needs them;
            they are resampled to the label size.
        cfg: the configured fusion.

    A role without posteriors turns a posterior fusion or a confidence vote (or the posterior
    tie rule) into a majority vote with the ``'teacher'`` tie rule for this frame, and
    ``'gated_confidence'`` into ``'gated'`` (:data:`POSTERIOR_FALLBACK`): a fused mask for
    every frame is worth more downstream than strictness about the mode. Weights (and class
    weights) of absent roles drop out; in the gated modes the first present role leads.
    Raises :class:`SizeMismatchError` when the label maps differ in size and ``ValueError``
    when no role is present, a role is unknown or a label is outside the label space.
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
    if cfg.mode in POSTERIOR_FALLBACK or cfg.tie == 'posterior':
        given = posteriors or {}
        lacking = tuple(r for r in roles if given.get(r) is None)
        if lacking:
            tie = 'teacher' if cfg.tie == 'posterior' else cfg.tie
            mode = POSTERIOR_FALLBACK.get(cfg.mode, cfg.mode)  # e.g. gated_confidence: gated
            cfg = replace(cfg, mode=mode, tie=tie, weights=None)
        else:
            probs = [resize_posteriors(np.asarray(given[r], np.float32), size) for r in roles]
    index = [list(priority).index(r) for r in roles]
    if cfg.mode in WEIGHTED_MODES and cfg.weights is not None:
        if len(cfg.weights) != len(priority):
            raise ValueError(
                f'{len(cfg.weights)} fusion weights for {len(priority)} roles {list(priority)}'
            )
        cfg = replace(cfg, weights=tuple(cfg.weights[i] for i in index))
    if cfg.mode == 'weighted':
        expected = len(priority) * cfg.num_classes
        if len(cfg.class_weights) != expected:
            raise ValueError(
                f'{len(cfg.class_weights)} fusion class_weights for {len(priority)} roles '
                f'{list(priority)} x {cfg.num_classes} classes (need {expected})'
            )
        rows = np.asarray(cfg.class_weights).reshape(len(priority), cfg.num_classes)
        cfg = replace(cfg, class_weights=tuple(rows[index].ravel().tolist()))
    return RoleFusion(fuse(maps, probs, cfg), roles, cfg, lacking)
