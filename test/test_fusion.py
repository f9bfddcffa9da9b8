"""Tests for tsa_ros.fusion: majority vote, posterior fusion, the weighted, confidence and
detection-gated votes, disagreement and suspect."""

import hashlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tsa_ros.data.labels import CLASS_NAMES, TRAIN_COLORS, legend
from tsa_ros.fusion import (
    DISAGREEMENT_COLORS,
    MODES,
    FusionConfig,
    FusionResult,
    SizeMismatchError,
    colorize_disagreement,
    confidence_vote,
    disagreement,
    disagreement_map,
    fuse,
    fuse_roles,
    gated_fusion,
    majority_vote,
    posterior_fusion,
    posterior_fusion_labels,
    suspect,
    weighted_vote,
)

IGN = 255


def _maps(*rows):
    """One (1, P) uint8 label map per network from flat per-pixel lists."""
    return [np.array([r], dtype=np.uint8) for r in rows]


def _onehot_post(scores, c):
    """(C, 1, P) posterior map from a {pixel: {class: prob}} dict; rest uniform-ish small."""
    p = np.full((c, 1, len(scores)), 0.01, dtype=np.float32)
    for px, cls_probs in enumerate(scores):
        for cls, v in cls_probs.items():
            p[cls, 0, px] = v
    return p


# --- majority vote: clear majorities, ignore votes, no-vote pixels ------------------------------


def test_majority_clear_winner_independent_of_tie_rule():
    t, s, a = _maps([1, 3, 0], [2, 3, 4], [2, 3, 4])
    post = [np.zeros((5, 1, 3), np.float32)] * 3
    for tie in ('teacher', 'posterior', 'ignore'):
        out = majority_vote([t, s, a], tie=tie, posteriors=post, num_classes=5)
        np.testing.assert_array_equal(out, [[2, 3, 4]])
        assert out.dtype == np.uint8


def test_ignore_votes_and_no_vote_pixels():
    t, s, a = _maps(
        [IGN, IGN, IGN, IGN, 0],
        [1, 1, IGN, IGN, IGN],
        [2, 1, 3, IGN, IGN],
    )
    out = majority_vote([t, s, a], num_classes=5)
    # px0: T silent, 1-1 tie between S and A -> S (next in priority); px1: 2 votes for 1;
    # px2: only A votes; px3: nobody votes -> ignore; px4: only T votes.
    np.testing.assert_array_equal(out, [[1, 1, 3, IGN, 0]])
    out_ign = majority_vote([t, s, a], tie='ignore', num_classes=5)
    np.testing.assert_array_equal(out_ign, [[IGN, 1, 3, IGN, 0]])


def test_k1_returns_input_and_k2_tie():
    (t,) = _maps([0, 4, IGN])
    np.testing.assert_array_equal(majority_vote([t], num_classes=5), t)
    t, s = _maps([0, 1], [2, 1])
    np.testing.assert_array_equal(majority_vote([t, s], num_classes=5), [[0, 1]])
    np.testing.assert_array_equal(majority_vote([t, s], priority=[1, 0], num_classes=5), [[2, 1]])
    np.testing.assert_array_equal(majority_vote([t, s], tie='ignore', num_classes=5), [[IGN, 1]])


# --- tie rules ----------------------------------------------------------------------------------


def test_tie_teacher_one_one_one():
    t, s, a = _maps([0], [1], [2])
    assert majority_vote([t, s, a], num_classes=3)[0, 0] == 0
    assert majority_vote([t, s, a], priority=[2, 0, 1], num_classes=3)[0, 0] == 2
    assert majority_vote([t, s, a], priority=(1, 2, 0), num_classes=3)[0, 0] == 1


def test_tie_teacher_skips_networks_outside_the_tie_k5():
    # Votes: 0 x1 (teacher), 1 x2, 2 x2 -> tie {1, 2}; teacher's class 0 is not in the tie.
    maps = _maps([0], [1], [1], [2], [2])
    assert majority_vote(maps, num_classes=3)[0, 0] == 1  # network 1 decides
    assert majority_vote(maps, priority=[0, 3, 1, 2, 4], num_classes=3)[0, 0] == 2
    assert majority_vote(maps, tie='ignore', num_classes=3)[0, 0] == IGN


def test_tie_posterior():
    t, s, a = _maps([0, 0], [1, 1], [2, 2])
    # px0: summed posterior favours class 1; px1: favours class 2.
    post = [
        _onehot_post([{1: 0.4}, {2: 0.3}], 3),
        _onehot_post([{1: 0.4}, {2: 0.3}], 3),
        _onehot_post([{0: 0.5}, {1: 0.2}], 3),
    ]
    out = majority_vote([t, s, a], tie='posterior', posteriors=post, num_classes=3)
    np.testing.assert_array_equal(out, [[1, 2]])


def test_tie_posterior_only_among_tied_classes():
    # Tie {1, 2}; class 0 has by far the largest posterior but is not tied -> must lose.
    maps = _maps([0], [1], [1], [2], [2])
    post = [_onehot_post([{0: 0.9, 2: 0.2, 1: 0.1}], 3) for _ in range(5)]
    out = majority_vote(maps, tie='posterior', posteriors=post, num_classes=3)
    assert out[0, 0] == 2


def test_tie_posterior_batch_shapes_and_torch():
    rng = np.random.default_rng(0)
    n, c, h, w = 2, 4, 3, 5
    # Three networks always disagree on a pixel: labels k, k+1, k+2 (mod 4) -> all ties.
    base = rng.integers(0, c, size=(n, h, w))
    labels = [((base + j) % c).astype(np.uint8) for j in range(3)]
    logits = rng.normal(size=(3, n, c, h, w)).astype(np.float32)
    post = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    out = majority_vote(labels, tie='posterior', posteriors=list(post), num_classes=c)
    assert out.shape == (n, h, w)

    # Reference: among the three voted classes, the one with the highest summed posterior.
    summed = post.sum(axis=0)  # (N, C, H, W)
    tied = np.stack(labels).astype(np.int64)  # (3, N, H, W)
    scores = np.take_along_axis(summed, np.moveaxis(tied, 0, 1), axis=1)  # (N, 3, H, W)
    ref = np.take_along_axis(np.moveaxis(tied, 0, 1), scores.argmax(axis=1)[:, None], axis=1)[:, 0]
    np.testing.assert_array_equal(out, ref)

    # Torch tensors and a stacked array give the same result as lists of numpy arrays.
    out_t = majority_vote(
        [torch.from_numpy(x) for x in labels],
        tie='posterior',
        posteriors=torch.from_numpy(post),
        num_classes=c,
    )
    np.testing.assert_array_equal(out_t, out)
    np.testing.assert_array_equal(
        majority_vote(np.stack(labels), num_classes=c), labels[0]
    )  # all-ties -> teacher


# --- validation ---------------------------------------------------------------------------------


def test_majority_vote_validation():
    t, s = _maps([0, 1], [1, 0])
    with pytest.raises(ValueError, match='same shape'):
        majority_vote([t, np.zeros((1, 3), np.uint8)])
    with pytest.raises(ValueError, match='K >= 1'):
        majority_vote([])
    with pytest.raises(ValueError, match='label values'):
        majority_vote([t, np.array([[0, 19]], np.uint8)])
    with pytest.raises(ValueError, match='integer'):
        majority_vote([t.astype(np.float32), s.astype(np.float32)])
    with pytest.raises(ValueError, match=r'\(H, W\)'):
        majority_vote([np.zeros(3, np.uint8)])
    with pytest.raises(ValueError, match='tie'):
        majority_vote([t, s], tie='random')
    with pytest.raises(ValueError, match='requires posteriors'):
        majority_vote([t, s], tie='posterior')
    with pytest.raises(ValueError, match='posteriors must be 2 maps'):
        majority_vote([t, s], tie='posterior', posteriors=[np.zeros((3, 1, 2))] * 2)
    with pytest.raises(ValueError, match='posteriors must be 2 maps'):  # K mismatch
        majority_vote([t, s], tie='posterior', posteriors=[np.zeros((19, 1, 2))] * 3)
    with pytest.raises(ValueError, match='permutation'):
        majority_vote([t, s], priority=[0, 0])
    with pytest.raises(ValueError, match='ignore_index'):
        majority_vote([t, s], ignore_index=5)


# --- posterior fusion ---------------------------------------------------------------------------


def test_posterior_fusion_mean_and_weights():
    rng = np.random.default_rng(1)
    a, b, c = (rng.random((2, 4, 3, 3)).astype(np.float32) for _ in range(3))
    np.testing.assert_allclose(posterior_fusion([a, b, c]), (a + b + c) / 3, rtol=1e-6)
    np.testing.assert_allclose(
        posterior_fusion([a, b], weights=[1, 3]), 0.25 * a + 0.75 * b, rtol=1e-6
    )
    np.testing.assert_allclose(posterior_fusion([a, b], weights=[0, 2]), b, rtol=1e-6)
    lab = posterior_fusion_labels([a, b], weights=[1, 3])
    assert lab.dtype == np.uint8 and lab.shape == (2, 3, 3)
    np.testing.assert_array_equal(lab, (0.25 * a + 0.75 * b).argmax(axis=1))
    # Single (C, H, W) maps: class axis is 0.
    np.testing.assert_array_equal(
        posterior_fusion_labels([a[0], b[0]]), (a[0] + b[0]).argmax(axis=0)
    )


def test_posterior_fusion_dtypes_and_torch():
    a = np.array([[[0.2]], [[0.8]]], dtype=np.float16)
    b = np.array([[[0.6]], [[0.4]]], dtype=np.float16)
    out = posterior_fusion([a, b])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[:, 0, 0], [0.4, 0.6], rtol=1e-3)
    out_t = posterior_fusion([torch.tensor(a), torch.tensor(b).to(torch.bfloat16)])
    np.testing.assert_allclose(out_t[:, 0, 0], [0.4, 0.6], atol=1e-2)
    assert posterior_fusion([a.astype(np.float64)] * 2).dtype == np.float64


def test_posterior_fusion_validation():
    a = np.full((2, 1, 1), 0.5, np.float32)
    with pytest.raises(ValueError, match='non-negative'):
        posterior_fusion([a, a], weights=[1, -1])
    with pytest.raises(ValueError, match='one weight per network'):
        posterior_fusion([a, a], weights=[1, 1, 1])
    with pytest.raises(ValueError, match='all be zero'):
        posterior_fusion([a, a], weights=[0, 0])
    with pytest.raises(ValueError, match='same shape'):
        posterior_fusion([a, np.zeros((3, 1, 1), np.float32)])
    with pytest.raises(ValueError, match='floating'):
        posterior_fusion([a.astype(np.int64)])


# --- disagreement and suspect -------------------------------------------------------------------


def test_disagreement_by_hand():
    t, s, a = _maps([0, 1, 2, IGN], [0, 0, 2, 2], [IGN, IGN, IGN, IGN])
    fused = np.array([[0, 1, IGN, 2]], np.uint8)
    d = disagreement([t, s, a], fused)
    # T: valid in both at px0, px1 -> 0/2. S: px0, px1, px3 -> differs at px1 -> 1/3.
    # A: never valid -> NaN.
    np.testing.assert_allclose(d[:2], [0.0, 1 / 3])
    assert np.isnan(d[2])
    with pytest.raises(ValueError, match='does not match'):
        disagreement([t, s], fused[:, :2])


def test_suspect_logic():
    assert suspect([0.1, 0.5, 0.05]) == 1
    assert suspect([0.1, 0.15, 0.05]) is None  # below threshold
    assert suspect([0.1, 0.2, 0.05]) is None  # equal is not above
    assert suspect([0.5, 0.5, 0.1]) is None  # not a unique maximum
    assert suspect([np.nan, 0.3, 0.1]) == 1  # NaN never wins
    assert suspect([np.nan, np.nan]) is None
    assert suspect(np.array([0.05, 0.1]), threshold=0.08) == 1
    assert suspect([]) is None
    with pytest.raises(ValueError):
        suspect([0.1], threshold=1.5)


# --- images for people: disagreement map, its colours, the class legend -----------------------


def test_disagreement_map_by_hand():
    t, s, a = _maps([0, 1, 2, 3, 0, IGN], [0, 1, 1, 2, IGN, 1], [0, 2, 2, 1, 1, IGN])
    fused = np.array([[0, 1, 2, 3, 1, IGN]], np.uint8)
    counts = disagreement_map([t, s, a], fused)
    # px0 all agree; px1 A differs; px2 S differs; px3 S and A differ; px4 T differs, S did
    # not vote (no disagreement); px5 no fused decision.
    np.testing.assert_array_equal(counts, [[0, 1, 1, 2, 1, IGN]])
    assert counts.dtype == np.uint8
    # Posterior fusion can pick a class no network voted: all three disagree.
    assert disagreement_map(_maps([0], [1], [2]), np.array([[3]], np.uint8))[0, 0] == 3
    # Its sum over the decided pixels is the numerators of the per-network disagreement.
    per_net = disagreement([t, s, a], fused)
    valid = [np.count_nonzero((m != IGN) & (fused != IGN)) for m in (t, s, a)]
    decided = counts[fused != IGN]
    assert decided.sum() == round(sum(d * n for d, n in zip(per_net, valid, strict=True)))
    with pytest.raises(ValueError, match='does not match'):
        disagreement_map([t, s], fused[:, :2])
    with pytest.raises(ValueError, match='too many networks'):
        disagreement_map(_maps(*[[0]] * 4), np.array([[0]], np.uint8), ignore_index=3)


@settings(max_examples=40, deadline=None)
@given(stack=hnp.arrays(np.uint8, (3, 4, 6), elements=st.sampled_from([0, 1, 2, IGN])))
def test_disagreement_map_of_a_majority_of_three(stack):
    fused = majority_vote(stack, num_classes=3)
    counts = disagreement_map(stack, fused)
    decided = fused != IGN
    np.testing.assert_array_equal(counts == IGN, ~decided)
    agree = ((stack == fused[None]) | (stack == IGN)).all(axis=0)
    # Black exactly where every vote cast is the fused label; never more than two dissent.
    np.testing.assert_array_equal(counts[decided] == 0, agree[decided])
    assert (counts[decided] <= 2).all()


def test_disagreement_colours_are_the_documented_ones():
    counts = np.array([[0, 1, 2, 3, 7, IGN]], np.uint8)
    rgb = colorize_disagreement(counts)
    assert rgb.shape == (1, 6, 3) and rgb.dtype == np.uint8
    expected = [DISAGREEMENT_COLORS[k] for k in ('0', '1', '2', '3+', '3+', 'ignore')]
    assert [tuple(c) for c in rgb[0]] == expected
    assert expected[:3] == [(0, 0, 0), (255, 255, 0), (255, 0, 0)]  # black, yellow, red
    with pytest.raises(ValueError, match='uint8'):
        colorize_disagreement(counts.astype(np.int64))


def test_legend_shows_every_class_colour_and_a_name():
    image = legend(row_height=20, width=180)
    rows = len(CLASS_NAMES) + 1  # and the ignore row
    assert image.shape == (20 * rows, 180, 3) and image.dtype == np.uint8
    for i in range(rows):
        swatch = image[i * 20 + 10, 10]  # centre of the row's swatch
        expected = TRAIN_COLORS[i] if i < len(CLASS_NAMES) else (0, 0, 0)
        np.testing.assert_array_equal(swatch, expected)
        text = image[i * 20 : (i + 1) * 20, 24:]
        assert (text.min(axis=2) < 128).any(), f'row {i}: no name drawn'
    assert legend(ignore=None).shape[0] == 20 * len(CLASS_NAMES)
    with pytest.raises(ValueError, match='class names'):
        legend(CLASS_NAMES[:3])


# --- config and fuse ----------------------------------------------------------------------------


def test_fusion_config_validation():
    assert FusionConfig().mode == 'majority'
    for bad in (
        {'mode': 'mean'},
        {'tie': 'coin'},
        {'suspect_threshold': -0.1},
        {'weights': [1.0, -1.0]},
        {'weights': [0.0, 0.0]},
        {'num_classes': 300},
    ):
        with pytest.raises(ValueError):
            FusionConfig(**bad)
    assert FusionConfig(mode='posterior', weights=[1, 2]).weights == (1.0, 2.0)


def test_fuse_majority_flags_attacked_network():
    rng = np.random.default_rng(3)
    clean = rng.integers(0, 19, size=(8, 8)).astype(np.uint8)
    attacked = clean.copy()
    attacked[:4] = (attacked[:4] + 1) % 19  # half the image flipped
    res = fuse([clean, clean, attacked])
    assert isinstance(res, FusionResult)
    np.testing.assert_array_equal(res.labels, clean)
    np.testing.assert_allclose(res.disagreement, [0.0, 0.0, 0.5])
    assert res.suspect == 2
    assert fuse([clean, clean, attacked], cfg=FusionConfig(suspect_threshold=0.6)).suspect is None


def test_fuse_posterior_mode():
    rng = np.random.default_rng(4)
    post = rng.random((3, 5, 4, 4)).astype(np.float32)
    cfg = FusionConfig(mode='posterior', weights=[2, 1, 1], num_classes=5)
    res = fuse(posteriors=list(post), cfg=cfg)
    np.testing.assert_array_equal(res.labels, posterior_fusion_labels(post, weights=[2, 1, 1]))
    own = post.argmax(axis=1)
    ref = (own != res.labels[None]).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(res.disagreement, ref)
    with pytest.raises(ValueError, match='requires posteriors'):
        fuse(list(own.astype(np.uint8)), cfg=cfg)
    with pytest.raises(ValueError, match='requires labels'):
        fuse(None, list(post))


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    label=hnp.arrays(np.uint8, (3, 4), elements=st.sampled_from([0, 1, 2, 3, IGN])),
    k=st.integers(1, 5),
    tie=st.sampled_from(['teacher', 'posterior', 'ignore']),
)
def test_unanimous_networks_win_for_every_tie_rule(label, k, tie):
    post = [np.full((4, 3, 4), 0.25, np.float32)] * k
    out = majority_vote([label] * k, tie=tie, posteriors=post, num_classes=4)
    np.testing.assert_array_equal(out, label)


@settings(max_examples=40, deadline=None)
@given(stack=hnp.arrays(np.uint8, (3, 2, 5), elements=st.sampled_from([0, 1, 2, IGN])))
def test_vote_properties(stack):
    post = np.random.default_rng(0).random((3, 3, 2, 5)).astype(np.float32)
    res = {
        tie: majority_vote(stack, tie=tie, posteriors=post, num_classes=3)
        for tie in ('teacher', 'posterior', 'ignore')
    }
    decided = res['ignore'] != IGN
    for tie in ('teacher', 'posterior'):
        # Tie rules only change undecided pixels; a strict majority is never overruled.
        np.testing.assert_array_equal(res[tie][decided], res['ignore'][decided])
        # The winner is always one of the labels actually voted at that pixel.
        winner = res[tie]
        voted = (stack == winner[None]).any(axis=0)
        assert (voted | (winner == IGN)).all()
    # Ignore only where nobody voted (teacher rule always resolves ties).
    no_vote = (stack == IGN).all(axis=0)
    np.testing.assert_array_equal(res['teacher'] == IGN, no_vote)


# --------------------------------------------------------------------------- fuse_roles
ROLES = ('teacher', 'student', 'adaptive')


def _onehot(labels, classes=3, scale=1):
    """(C, h, w) posteriors that put all mass on ``labels``, downsampled by ``scale``."""
    probs = np.eye(classes, dtype=np.float32)[labels].transpose(2, 0, 1)
    return probs[:, ::scale, ::scale]


def test_fuse_roles_keeps_priority_order_of_the_present_roles():
    a = np.zeros((2, 2), np.uint8)
    b = np.ones((2, 2), np.uint8)
    cfg = FusionConfig(num_classes=3)
    # Given out of order, without the student: the teacher still breaks the 1:1 tie.
    out = fuse_roles(ROLES, {'adaptive': b, 'teacher': a}, None, cfg)
    assert out.roles == ('teacher', 'adaptive')
    np.testing.assert_array_equal(out.result.labels, a)
    assert out.lacking_posteriors == () and out.config.mode == 'majority'


def test_fuse_roles_falls_back_to_a_majority_vote_without_posteriors():
    labels = {r: np.full((4, 4), i % 2, np.uint8) for i, r in enumerate(ROLES)}
    probs = {'teacher': _onehot(labels['teacher']), 'student': None, 'adaptive': None}
    cfg = FusionConfig(mode='posterior', tie='posterior', weights=(1, 1, 1), num_classes=3)
    out = fuse_roles(ROLES, labels, probs, cfg)
    assert out.lacking_posteriors == ('student', 'adaptive')
    assert (out.config.mode, out.config.tie, out.config.weights) == ('majority', 'teacher', None)
    np.testing.assert_array_equal(out.result.labels, np.zeros((4, 4)))  # 2 votes for 0


def test_fuse_roles_weights_follow_the_present_roles_and_posteriors_are_resampled():
    labels = {'teacher': np.zeros((4, 4), np.uint8), 'adaptive': np.ones((4, 4), np.uint8)}
    # Posteriors at half the label size, as the segmenters send them.
    probs = {r: _onehot(lab, scale=2) for r, lab in labels.items()}
    cfg = FusionConfig(mode='posterior', weights=(1.0, 5.0, 3.0), num_classes=3)
    out = fuse_roles(ROLES, labels, probs, cfg)
    assert out.config.weights == (1.0, 3.0)  # teacher's and adaptive's
    np.testing.assert_array_equal(out.result.labels, np.ones((4, 4)))  # A outweighs T
    assert out.suspected_role == 'teacher'


def test_fuse_roles_names_bad_input():
    cfg = FusionConfig(num_classes=3)
    with pytest.raises(SizeMismatchError, match='teacher 2x2, student 3x2'):
        fuse_roles(
            ROLES,
            {'teacher': np.zeros((2, 2), np.uint8), 'student': np.zeros((2, 3), np.uint8)},
            None,
            cfg,
        )
    with pytest.raises(ValueError, match="unknown role.*'oracle'"):
        fuse_roles(ROLES, {'oracle': np.zeros((2, 2), np.uint8)}, None, cfg)
    with pytest.raises(ValueError, match='no role'):
        fuse_roles(ROLES, {}, None, cfg)
    bad = FusionConfig(mode='posterior', weights=(1.0, 1.0), num_classes=3)
    ones = {'teacher': np.zeros((2, 2), np.uint8)}
    with pytest.raises(ValueError, match='2 fusion weights for 3 roles'):
        fuse_roles(ROLES, ones, {'teacher': _onehot(ones['teacher'])}, bad)


@pytest.mark.parametrize('tie', ['teacher', 'posterior', 'ignore'])
@pytest.mark.parametrize('k', [1, 2, 3])
def test_pairwise_vote_equals_counting_on_random_frames(k, tie):
    """The fast path for K <= 3 against the general counting vote, pixel for pixel."""
    from tsa_ros.fusion import TIE_RULES, _vote_counts, _vote_pairwise

    rng = np.random.default_rng(100 * k + TIE_RULES.index(tie))  # one stream per case
    for trial in range(20):
        classes = int(rng.choice([2, 3, 19]))  # few classes: many agreements and ties
        shape = (int(rng.integers(1, 3)), 24, 40) if trial % 2 else (24, 40)
        labels = rng.integers(0, classes, (k, *shape)).astype(np.uint8)
        labels[rng.random(labels.shape) < 0.2] = 255
        post = rng.random((k, *shape[:-2], 19, *shape[-2:]), dtype=np.float32)
        post[..., 1::2, :, :] = post[..., :1, :, :]  # exactly equal sums: lowest id wins
        order = list(rng.permutation(k))
        flat = labels.reshape(k, -1)
        args = (flat, flat != 255, tie, order, list(post), 19, 255)
        np.testing.assert_array_equal(_vote_pairwise(*args), _vote_counts(*args))


@pytest.mark.parametrize('dtype', [np.float16, np.float32, np.float64])
def test_blocked_posterior_labels_equal_the_argmax_of_the_fused_map(dtype, monkeypatch):
    """The cache-blocked labels against materialising the fused map and its argmax."""
    import tsa_ros.fusion as fusion_module

    # 5 pixels of 19 classes per block: many blocks, a ragged last one.
    monkeypatch.setattr(fusion_module, '_FUSION_BLOCK', 97)
    rng = np.random.default_rng(7)
    for trial in range(12):
        k = int(rng.integers(1, 4))
        shape = (19, 13, 29) if trial % 2 else (2, 19, 13, 29)
        post = rng.random((k, *shape)).astype(dtype)
        post[:, ..., 3::4, :, :] = post[:, ..., :1, :, :]  # exact ties: the lowest class wins
        weights = rng.random(k) + 0.1 if trial % 3 else None
        expected = posterior_fusion(list(post), weights=weights).argmax(axis=-3)
        np.testing.assert_array_equal(
            posterior_fusion_labels(list(post), weights=weights), expected
        )


def _reference_fusion_labels(post, weights=None):
    """posterior_fusion_labels written out: the weighted mean (weights normalised in float64,
    summed network by network from zero in at least float32), then argmax over classes."""
    post = [np.asarray(p) for p in post]
    w = np.full(len(post), 1.0 / len(post)) if weights is None else np.asarray(weights, float)
    w = w / w.sum()
    dtype = np.result_type(np.float32, *[p.dtype for p in post])
    fused = np.zeros(post[0].shape, dtype)
    for wj, p in zip(w, post, strict=True):
        fused += dtype.type(wj) * p
    return fused.argmax(axis=-3).astype(np.uint8)


@pytest.mark.parametrize('block', [None, 97, 1])
@pytest.mark.parametrize('k', [2, 3])
def test_posterior_labels_equal_a_written_out_mean_and_argmax(k, block, monkeypatch):
    """Bit for bit on random frames of odd sizes, with and without weights, with exact ties
    (copied class planes, quantised scores, equal networks, networks reversed) and every
    float dtype, given as a list, a stacked array and torch tensors."""
    import tsa_ros.fusion as fusion_module

    if block is not None:  # many blocks, a ragged last one / one pixel per block
        monkeypatch.setattr(fusion_module, '_FUSION_BLOCK', block)
    rng = np.random.default_rng(1000 * k + (block or 0))
    shapes = [(19, 1, 1), (2, 7, 3), (1, 5, 9), (5, 33, 17), (2, 19, 9, 13), (19, 11, 23)]
    if block is None:  # a frame of several default blocks, the last one ragged
        shapes[-1] = (19, 61, 1031)
    for trial in range(18):
        shape = shapes[trial % len(shapes)]
        dtype = (np.float32, np.float16, np.float64)[trial % 3]
        post = rng.random((k, *shape)).astype(dtype)
        ties = trial % 5
        if ties == 1:  # copied class planes: equal scores, the lowest class wins
            post[..., 2::3, :, :] = post[..., :1, :, :]
        elif ties == 2:  # few distinct values: ties between classes and across networks
            post = (rng.integers(0, 3, post.shape) / 2).astype(dtype)
        elif ties == 3:  # every network the same map: the mean is that map (or 1 ulp off)
            post[1:] = post[0]
        elif ties == 4:  # class c + 1 = class c with the networks reversed: the two sums
            # differ only in rounding order, which a shortcut (summing unscaled) would change.
            for c in range(1, shape[-3], 2):
                post[:, ..., c, :, :] = post[::-1, ..., c - 1, :, :]
        weights = None
        if trial % 2:
            weights = rng.choice([0.0, 0.5, 1.0, 1.0 / 3, 2.0, 7.25], k)
            weights[0] += 0.25  # not all zero
        expected = _reference_fusion_labels(post, weights)
        for given_as in (list(post), post, [torch.from_numpy(p) for p in post]):
            got = posterior_fusion_labels(given_as, weights=weights)
            assert got.dtype == np.uint8 and got.shape == expected.shape
            np.testing.assert_array_equal(got, expected)


def test_posterior_labels_nan_scores_keep_the_running_max_rule():
    """NaN has no argmax answer; the labels stay the ones of a running max with a strict '>':
    classes after a NaN score cannot win (kept from the running-max implementation)."""
    post = np.zeros((1, 4, 1, 5), np.float32)
    post[0, :, 0, 0] = [0.2, np.nan, 0.9, 0.1]  # class 2 comes after the NaN
    post[0, :, 0, 1] = [np.nan, 0.5, 0.9, 0.1]  # NaN at class 0: class 0
    post[0, :, 0, 2] = [0.2, 0.3, 0.9, np.nan]  # NaN after the max: the max
    post[0, :, 0, 3] = [0.2, 0.7, 0.7, 0.1]  # no NaN: first maximum
    post[0, :, 0, 4] = [0.2, 0.7, 0.9, 0.1]
    np.testing.assert_array_equal(posterior_fusion_labels(post), [[0, 0, 2, 1, 2]])


def test_posterior_labels_of_256_classes():
    post = np.zeros((2, 256, 1, 4), np.float32)
    post[:, 255, 0, 0] = 1  # the last class alone at the max
    post[:, [0, 255], 0, 1] = 1  # a tie of the first and the last class
    post[:, 254, 0, 2] = 1
    post[0, 7, 0, 3], post[1, 200, 0, 3] = 1, 1  # networks disagree: a tie, 7 wins
    expected = [[255, 0, 254, 7]]
    np.testing.assert_array_equal(_reference_fusion_labels(post), expected)
    np.testing.assert_array_equal(posterior_fusion_labels(post), expected)
    with pytest.raises(ValueError, match='too many classes'):
        posterior_fusion_labels(np.zeros((2, 257, 1, 1), np.float32))


# --------------------------------------------------------------------------- old modes frozen
def _old_modes_digest():
    """sha256 over fuse()'s output in the modes 'majority' and 'posterior' with every tie
    rule, on seeded random frames (K = 1..5, ignore votes, (H, W) and (N, H, W))."""
    digest = hashlib.sha256()
    rng = np.random.default_rng(2024)
    for trial in range(24):
        k = int(rng.integers(1, 6))
        c = int(rng.choice([3, 19]))
        shape = (2, 12, 20) if trial % 2 else (12, 20)
        lab = rng.integers(0, c, (k, *shape)).astype(np.uint8)
        lab[rng.random(lab.shape) < 0.15] = IGN
        post = rng.random((k, *shape[:-2], c, *shape[-2:])).astype(np.float32)
        weights = (rng.random(k) + 0.1).tolist()
        for mode in ('majority', 'posterior'):
            for tie in ('teacher', 'posterior', 'ignore'):
                cfg = FusionConfig(
                    mode=mode, tie=tie, num_classes=c, weights=weights, suspect_threshold=0.1
                )
                res = fuse(list(lab), list(post), cfg)
                digest.update(res.labels.tobytes())
                digest.update(np.asarray(res.disagreement, np.float64).tobytes())
                digest.update(str(res.suspect).encode())
    return digest.hexdigest()


def test_old_modes_are_bit_identical_to_before_the_new_rules():
    # Computed with tsa_ros/fusion.py as it was before the weighted, confidence and gated
    # modes were added: those must not change a single label, disagreement or suspect.
    assert _old_modes_digest() == (
        '8dbfb2098188553f58ad98bb3e849412d34c3db457a50ace75d43ce75ec6c17b'
    )


# --------------------------------------------------------------------------- weighted vote
def _reference_strongest(labels, strength, order):
    """Slow reference: per pixel, per-class sums of the vote strengths; the largest wins,
    an exact tie goes to the class of the first network in ``order`` among the tied."""
    k, npix = labels.shape
    out = np.full(npix, IGN, np.int64)
    for px in range(npix):
        sums = {}
        for j in range(k):
            if labels[j, px] != IGN:
                sums[labels[j, px]] = sums.get(labels[j, px], 0.0) + strength[j, px]
        if not sums:
            continue
        top = max(sums.values())
        out[px] = next(labels[j, px] for j in order if sums.get(labels[j, px]) == top)
    return out


def test_weighted_vote_by_hand():
    t, s, a = _maps([0, 0, 1, 2, IGN, IGN], [1, 1, 1, 0, 1, IGN], [1, 2, 0, 1, 2, IGN])
    w = np.array(
        [
            [3.0, 1.0, 1.0],  # T: strong on class 0
            [1.0, 1.0, 1.0],
            [1.0, 1.0, 1.0],
        ]
    )
    out = weighted_vote([t, s, a], w, num_classes=3)
    # px0: T's 0 (3) beats S + A on 1 (2); px1: 0 (3) vs 1 vs 2; px2: 1 (T 1 + S 1) vs 0 (1);
    # px3: all differ, T's 2 (1) ties S's 0 and A's 1 -> the teacher; px4: T silent, S's 1
    # ties A's 2 -> S (next in priority); px5: nobody votes.
    np.testing.assert_array_equal(out, [[0, 0, 1, 2, 1, IGN]])
    assert out.dtype == np.uint8
    # Flat weights (the ROS parameter's form) give the same; priority moves the tie.
    np.testing.assert_array_equal(weighted_vote([t, s, a], w.ravel(), num_classes=3), out)
    tied = weighted_vote([t, s, a], w, priority=[2, 0, 1], num_classes=3)
    np.testing.assert_array_equal(tied[0, 3:5], [1, 2])
    # A zero weight still votes: it beats no vote, and ties go by priority.
    zero = weighted_vote(_maps([2], [IGN], [IGN]), np.zeros((3, 3)), num_classes=3)
    assert zero[0, 0] == 2


@pytest.mark.parametrize('k', [1, 2, 3, 4])
def test_weighted_vote_equals_the_slow_reference_and_equal_weights_the_majority(k):
    rng = np.random.default_rng(10 + k)
    for trial in range(10):
        labels = rng.integers(0, 4, (k, 3, 17)).astype(np.uint8)
        labels[rng.random(labels.shape) < 0.2] = IGN
        weights = rng.integers(0, 3, (k, 4)).astype(float)  # integers: many exact ties
        order = list(rng.permutation(k))
        out = weighted_vote(labels, weights, priority=order, num_classes=4)
        flat = labels.reshape(k, -1)
        strength = np.where(flat != IGN, np.take_along_axis(weights, flat % 4, axis=1), 0)
        np.testing.assert_array_equal(
            out.reshape(-1), _reference_strongest(flat, strength, order), err_msg=f'{trial}'
        )
        equal = weighted_vote(labels, np.ones((k, 4)), priority=order, num_classes=4)
        np.testing.assert_array_equal(equal, majority_vote(labels, priority=order, num_classes=4))


# --------------------------------------------------------------------------- confidence vote
def test_confidence_vote_by_hand():
    t, s, a = _maps([0, 0, 0, IGN], [1, 1, 1, 1], [1, 2, 1, 2])
    # The posterior of each network's voted class, per pixel (other classes get the rest).
    post = [
        _onehot_post([{0: 0.9}, {0: 0.3}, {0: 0.4}, {0: 0.9}], 3),
        _onehot_post([{1: 0.4}, {1: 0.3}, {1: 0.2}, {1: 0.5}], 3),
        _onehot_post([{1: 0.4}, {2: 0.3}, {1: 0.2}, {2: 0.5}], 3),
    ]
    out = confidence_vote([t, s, a], post, num_classes=3)
    # px0: S + A 0.8 < T 0.9; px1: 0.3 each -> tie -> the teacher; px2: 0.4 vs 0.4 -> tie ->
    # teacher; px3: T silent (its posterior is not read), S and A tie -> S.
    np.testing.assert_array_equal(out, [[0, 0, 0, 1]])
    # Weights scale the votes: with the teacher at 2, px0 and px2 stay; unweighted S + A win
    # px2 once A is surer.
    post[2][1, 0, 2] = 0.5
    np.testing.assert_array_equal(confidence_vote([t, s, a], post, num_classes=3)[0, 2], 1)
    heavy = confidence_vote([t, s, a], post, weights=[2, 1, 1], num_classes=3)
    np.testing.assert_array_equal(heavy, [[0, 0, 0, 1]])


def test_confidence_vote_batches_torch_and_equals_the_majority_at_equal_confidence():
    rng = np.random.default_rng(11)
    k, n, c, h, w = 3, 2, 5, 4, 6
    labels = rng.integers(0, c, (k, n, h, w)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.2] = IGN
    post = rng.random((k, n, c, h, w)).astype(np.float32)
    out = confidence_vote(list(labels), list(post), weights=[1.5, 1, 0.5], num_classes=c)
    # Reference: gather each voted posterior with take_along_axis, then the slow vote.
    index = np.where(labels != IGN, labels, 0).astype(np.intp)
    voted = np.take_along_axis(post, index[:, :, None], axis=2)[:, :, 0]
    strength = np.where(labels != IGN, voted * np.array([1.5, 1, 0.5])[:, None, None, None], 0)
    ref = _reference_strongest(labels.reshape(k, -1), strength.reshape(k, -1), [0, 1, 2])
    np.testing.assert_array_equal(out.reshape(-1), ref)
    as_torch = confidence_vote(
        torch.from_numpy(labels), torch.from_numpy(post), weights=[1.5, 1, 0.5], num_classes=c
    )
    np.testing.assert_array_equal(as_torch, out)
    uniform = np.full((k, n, c, h, w), 1 / c, np.float32)
    np.testing.assert_array_equal(
        confidence_vote(list(labels), list(uniform), num_classes=c),
        majority_vote(list(labels), num_classes=c),
    )


# --------------------------------------------------------------------------- gated fusion
def _triplet(teacher_flip=0.0, student_flip=0.0, agree=0.0, size=(8, 10), seed=0):
    """T, S, A label maps: S and A copy a clean map, T agrees with them except on the
    fraction ``agree`` of rows (a clean disagreement); a flip replaces a network's labels
    on that fraction of rows (an attack)."""
    rng = np.random.default_rng(seed)
    clean = rng.integers(0, 5, size).astype(np.uint8)
    t, s, a = clean.copy(), clean.copy(), clean.copy()
    for net, rows in ((t, agree), (t, teacher_flip), (s, student_flip)):
        n = round(rows * size[0])
        net[:n] = (net[:n] + 1 + (net is s)) % 5
    return t, s, a


def test_gated_keeps_the_teacher_unless_flagged():
    # A clean disagreement: the majority would follow S and A, the gate keeps T.
    t, s, a = _triplet(agree=0.25)
    fused, flagged = gated_fusion([t, s, a], threshold=0.3, num_classes=5)
    assert flagged is None
    np.testing.assert_array_equal(fused, t)
    assert not np.array_equal(majority_vote([t, s, a], num_classes=5), t)
    assert fused is not t and fused.dtype == np.uint8
    # The teacher attacked: flagged, the others' majority (S on ties) replaces it.
    t, s, a = _triplet(teacher_flip=0.5)
    a[0, 0] = (s[0, 0] + 2) % 5  # S and A disagree on one pixel: S (next in priority)
    fused, flagged = gated_fusion([t, s, a], threshold=0.3, num_classes=5)
    assert flagged == 0
    np.testing.assert_array_equal(fused, s)
    # The student attacked: flagged, and the teacher's labels are kept.
    t, s, a = _triplet(student_flip=0.75)
    fused, flagged = gated_fusion([t, s, a], threshold=0.3, num_classes=5)
    assert flagged == 1
    np.testing.assert_array_equal(fused, t)
    # The threshold is strict, like suspect(): T disagrees on exactly half the pixels.
    t, s, a = _triplet(teacher_flip=0.5)
    assert gated_fusion([t, s, a], threshold=0.5, num_classes=5)[1] is None


def test_gated_fills_the_teachers_silent_pixels_and_handles_ties_and_few_networks():
    t, s, a = _triplet()
    t[0, :3] = IGN  # no teacher vote there: the others' vote
    s[0, 1] = a[0, 1] = 4
    s[0, 2], a[0, 2] = 1, 2  # the others tie: S, or ignore under tie='ignore'
    fused, flagged = gated_fusion([t, s, a], threshold=0.3, num_classes=5)
    assert flagged is None
    np.testing.assert_array_equal(fused[0, :3], [s[0, 0], 4, 1])
    np.testing.assert_array_equal(fused[1:], t[1:])
    fused, _ = gated_fusion([t, s, a], threshold=0.3, tie='ignore', num_classes=5)
    assert fused[0, 2] == IGN
    # One network: never flagged, its labels. Two: the disagreeing second one is flagged.
    np.testing.assert_array_equal(gated_fusion([t], threshold=0.1, num_classes=5)[0], t)
    t2, s2, _ = _triplet(student_flip=0.5)
    fused, flagged = gated_fusion([t2, s2], threshold=0.1, num_classes=5)
    assert flagged == 1
    np.testing.assert_array_equal(fused, t2)


def test_gated_confidence_drops_the_flagged_network():
    t, s, a = _triplet(teacher_flip=0.5)
    c = 5
    sure = [np.eye(c, dtype=np.float32)[m].transpose(2, 0, 1) * 0.9 + 0.02 for m in (t, s, a)]
    fused, flagged = gated_fusion(
        [t, s, a],
        threshold=0.3,
        posteriors=sure,
        confidence=True,
        weights=[5, 1, 1],
        num_classes=c,
    )
    # The teacher is flagged: even at weight 5 its labels are out; S and A agree.
    assert flagged == 0
    np.testing.assert_array_equal(fused, s)
    # Not flagged: the confidence vote of all three, where weight 5 carries the teacher.
    fused, flagged = gated_fusion(
        [t, s, a],
        threshold=0.6,
        posteriors=sure,
        confidence=True,
        weights=[5, 1, 1],
        num_classes=c,
    )
    assert flagged is None
    np.testing.assert_array_equal(fused, t)
    with pytest.raises(ValueError, match='requires posteriors'):
        gated_fusion([t, s, a], threshold=0.3, confidence=True, num_classes=c)
    with pytest.raises(ValueError, match='per frame'):
        gated_fusion(np.stack([t, s, a])[:, None], threshold=0.3, num_classes=c)


def test_fuse_in_the_new_modes():
    t, s, a = _triplet(teacher_flip=0.5)
    c = 5
    post = [np.eye(c, dtype=np.float32)[m].transpose(2, 0, 1) for m in (t, s, a)]
    gated = fuse([t, s, a], cfg=FusionConfig(mode='gated', suspect_threshold=0.3, num_classes=c))
    np.testing.assert_array_equal(gated.labels, s)
    # The suspect is the gate's (from the majority vote); the disagreement is with the output.
    assert gated.suspect == 0
    np.testing.assert_allclose(gated.disagreement, [0.5, 0.0, 0.0])
    cfg = FusionConfig(mode='gated_confidence', suspect_threshold=0.3, num_classes=c)
    np.testing.assert_array_equal(fuse([t, s, a], post, cfg).labels, s)
    # Without labels, the posterior-reading modes take each network's argmax.
    np.testing.assert_array_equal(fuse(None, post, cfg).labels, s)
    cfg = FusionConfig(mode='confidence', weights=[3, 1, 1], num_classes=c)
    res = fuse([t, s, a], post, cfg)
    np.testing.assert_array_equal(res.labels, t)  # 3 x 1.0 beats 1.0 + 1.0
    assert res.suspect is None  # S and A disagree with it on half the pixels, equally
    weights = np.ones((3, c))
    cfg = FusionConfig(mode='weighted', class_weights=weights.ravel(), num_classes=c)
    np.testing.assert_array_equal(fuse([t, s, a], cfg=cfg).labels, s)
    for mode in ('gated', 'weighted'):
        with pytest.raises(ValueError, match=f"mode='{mode}' requires labels"):
            fuse(None, post, FusionConfig(mode=mode, class_weights=weights.ravel(), num_classes=c))
    with pytest.raises(ValueError, match="mode='confidence' requires posteriors"):
        fuse([t, s, a], cfg=FusionConfig(mode='confidence', num_classes=c))


def test_new_mode_config_validation():
    assert set(MODES) >= {'weighted', 'confidence', 'gated', 'gated_confidence'}
    for bad, match in (
        ({'mode': 'weighted'}, 'needs class_weights'),
        ({'mode': 'weighted', 'class_weights': [1.0] * 20}, 'values per network'),
        ({'class_weights': [-1.0] + [1.0] * 18}, 'non-negative'),
        ({'class_weights': [float('nan')] * 19}, 'non-negative'),
        ({'mode': 'gated', 'suspect_threshold': 1.5}, 'suspect_threshold'),
    ):
        with pytest.raises(ValueError, match=match):
            FusionConfig(**bad)
    cfg = FusionConfig(mode='weighted', class_weights=np.ones((2, 19)))
    assert cfg.class_weights == (1.0,) * 38
    t, s = _maps([0, 1], [1, 0])
    with pytest.raises(ValueError, match='2 networks x 19 classes = 38 values, got 19'):
        weighted_vote([t, s], [1.0] * 19)
    with pytest.raises(ValueError, match='posteriors must be 2 maps'):
        confidence_vote([t, s], [np.zeros((3, 1, 2), np.float32)] * 2)
    with pytest.raises(ValueError, match='one weight per network'):
        confidence_vote([t, s], [np.zeros((19, 1, 2), np.float32)] * 2, weights=[1.0])


def test_fuse_roles_in_the_new_modes():
    labels = {'teacher': np.zeros((4, 4), np.uint8), 'adaptive': np.ones((4, 4), np.uint8)}
    # Class weights per role: rows of the absent student drop out.
    rows = np.array([[1.0, 0.5, 0.1], [9.0, 9.0, 9.0], [0.2, 2.0, 0.1]])
    cfg = FusionConfig(mode='weighted', class_weights=rows.ravel(), num_classes=3)
    out = fuse_roles(ROLES, labels, None, cfg)
    assert out.config.class_weights == tuple(rows[[0, 2]].ravel())
    np.testing.assert_array_equal(out.result.labels, np.ones((4, 4)))  # A's 2.0 > T's 1.0
    with pytest.raises(ValueError, match='class_weights for 3 roles'):
        fuse_roles(
            ROLES,
            labels,
            None,
            FusionConfig(mode='weighted', class_weights=[1.0] * 6, num_classes=3),
        )
    # Confidence weights follow the present roles, posteriors are resampled.
    probs = {r: _onehot(lab, scale=2) for r, lab in labels.items()}
    cfg = FusionConfig(mode='confidence', weights=(1.0, 5.0, 3.0), num_classes=3)
    out = fuse_roles(ROLES, labels, probs, cfg)
    assert out.config.weights == (1.0, 3.0)
    np.testing.assert_array_equal(out.result.labels, np.ones((4, 4)))
    # gated_confidence without a role's posteriors: the label-only gate, teacher's labels.
    cfg = FusionConfig(mode='gated_confidence', weights=(1.0, 5.0, 3.0), num_classes=3)
    out = fuse_roles(ROLES, labels, {'teacher': probs['teacher'], 'adaptive': None}, cfg)
    assert (out.config.mode, out.config.weights) == ('gated', None)
    assert out.lacking_posteriors == ('adaptive',)
    np.testing.assert_array_equal(out.result.labels, labels['teacher'])
    # The confidence vote without posteriors falls back to the majority vote.
    cfg = FusionConfig(mode='confidence', num_classes=3)
    assert fuse_roles(ROLES, labels, None, cfg).config.mode == 'majority'
