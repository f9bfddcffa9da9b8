"""Tests for tsa_ros.metrics: confusion matrix, IoU (eq. 11), mIoU and mIoU ratio."""

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torchmetrics.classification import MulticlassJaccardIndex

from tsa_ros.metrics import ConfusionMatrix, mean_iou, miou_ratio, per_class_iou

IGN = 255


def _cm(pred, target, num_classes=3):
    cm = ConfusionMatrix(num_classes=num_classes, ignore_index=IGN)
    cm.update(np.asarray(pred, dtype=np.uint8), np.asarray(target, dtype=np.uint8))
    return cm


# --- hand-worked examples -------------------------------------------------------------------


def test_hand_example_three_classes():
    # Valid (gt, pred) pairs: (0,0) (0,1) (1,1) (1,1) (2,2); the (255, 0) pixel is ignored.
    gt = [[0, 0, 1], [1, 2, IGN]]
    pred = [[0, 1, 1], [1, 2, 0]]
    cm = _cm(pred, gt)
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 2, 0], [0, 0, 1]])
    assert cm.matrix.dtype == np.int64
    # IoU0 = 1 / (1 + 0 FP + 1 FN), IoU1 = 2 / (2 + 1 FP + 0 FN), IoU2 = 1 / 1.
    np.testing.assert_allclose(cm.iou(), [0.5, 2 / 3, 1.0])
    assert cm.miou() == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert cm.pixel_accuracy() == pytest.approx(4 / 5)
    assert cm.total == 5


def test_absent_class_is_nan_and_excluded_from_mean():
    # Class 1 only in gt -> 0, class 2 only predicted -> 0, class 3 absent from both -> NaN.
    cm = _cm([[0, 0, 2, 2]], [[0, 0, 1, 1]], num_classes=4)
    iou = cm.iou()
    np.testing.assert_array_equal(iou[:3], [1.0, 0.0, 0.0])
    assert math.isnan(iou[3])
    assert cm.miou() == pytest.approx(1 / 3)  # not 1/4: class 3 is left out
    assert iou.dtype == np.float64


def test_nothing_present_gives_nan():
    m = np.zeros((4, 4), dtype=np.int64)
    assert np.isnan(per_class_iou(m)).all()
    assert math.isnan(mean_iou(m))
    cm = ConfusionMatrix(num_classes=4)
    assert math.isnan(cm.miou())
    assert math.isnan(cm.pixel_accuracy())


def test_functions_on_plain_matrix():
    m = [[3, 1], [2, 4]]
    # IoU0 = 3 / (3 + 2 + 1), IoU1 = 4 / (4 + 1 + 2)
    np.testing.assert_allclose(per_class_iou(m), [0.5, 4 / 7])
    assert mean_iou(m) == pytest.approx((0.5 + 4 / 7) / 2)
    with pytest.raises(ValueError, match='square'):
        per_class_iou(np.zeros((2, 3)))


# --- ignore and out-of-range handling ---------------------------------------------------------


def test_all_ignored_pixels_count_nothing():
    cm = _cm([[0, 1], [2, 0]], [[IGN, IGN], [IGN, IGN]])
    assert cm.total == 0
    assert cm.matrix.sum() == 0


def test_out_of_range_prediction_is_false_negative_only():
    # gt class 1 predicted as 255 (undecided fusion): FN for class 1, no FP anywhere.
    cm = _cm([[0, IGN]], [[0, 1]], num_classes=2)
    np.testing.assert_array_equal(cm.matrix, [[1, 0], [0, 0]])
    np.testing.assert_array_equal(cm.missed, [0, 1])
    np.testing.assert_allclose(cm.iou(), [1.0, 0.0])
    assert cm.miou() == pytest.approx(0.5)
    assert cm.pixel_accuracy() == pytest.approx(0.5)
    # Negative predictions (signed input) are treated the same way.
    cm2 = ConfusionMatrix(num_classes=2)
    cm2.update(np.array([[0, -1]]), np.array([[0, 1]]))
    np.testing.assert_array_equal(cm2.missed, [0, 1])
    # Out-of-range prediction on an ignored pixel is simply skipped.
    cm3 = _cm([[7]], [[IGN]], num_classes=2)
    assert cm3.total == 0


def test_validation_errors():
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match='shapes differ'):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r'\(H, W\)'):
        cm.update(np.zeros(4, np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match='target contains'):
        cm.update(np.zeros((1, 2), np.uint8), np.array([[0, 5]], np.uint8))
    with pytest.raises(TypeError, match='integer'):
        cm.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match='collides'):
        ConfusionMatrix(num_classes=19, ignore_index=3)
    with pytest.raises(ValueError):
        ConfusionMatrix(num_classes=0)
    assert cm.total == 0  # failed updates leave no partial counts


def test_torch_tensor_input_matches_numpy():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(2, 5, 6)).astype(np.uint8)
    gt[0, 0, :3] = IGN
    pred = rng.integers(0, 4, size=(2, 5, 6)).astype(np.uint8)
    a = ConfusionMatrix(4).update(pred, gt)
    b = ConfusionMatrix(4).update(torch.from_numpy(pred).long(), torch.from_numpy(gt))
    np.testing.assert_array_equal(a.matrix, b.matrix)


# --- streaming, merge, serialisation ----------------------------------------------------------


def test_streaming_equals_single_update_and_merge():
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 5, size=(6, 8, 8)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.1] = IGN
    pred = rng.integers(0, 5, size=(6, 8, 8)).astype(np.uint8)

    whole = ConfusionMatrix(5).update(pred, gt)
    stream = ConfusionMatrix(5)
    for i in range(0, 6, 2):
        stream.update(pred[i : i + 2], gt[i : i + 2])
    stream.update(pred[0], gt[0])  # a single (H, W) image ...
    whole.update(pred[0], gt[0])  # ... added to both
    np.testing.assert_array_equal(stream.matrix, whole.matrix)

    # Two "processes" each see half; merging gives the full matrix.
    p0 = ConfusionMatrix(5).update(pred[:3], gt[:3])
    p1 = ConfusionMatrix(5).update(pred[3:], gt[3:])
    p0 += p1
    np.testing.assert_array_equal(p0.matrix, ConfusionMatrix(5).update(pred, gt).matrix)

    with pytest.raises(ValueError, match='different'):
        p0.merge(ConfusionMatrix(4))
    with pytest.raises(TypeError):
        p0.merge(np.zeros((5, 5)))

    p0.reset()
    assert p0.total == 0


def test_to_dict_from_dict_roundtrip_via_json():
    cm = _cm([[0, 1, IGN]], [[0, 2, 1]])
    data = json.loads(json.dumps(cm.to_dict()))
    assert data['matrix'] == cm.matrix.tolist()
    back = ConfusionMatrix.from_dict(data)
    np.testing.assert_array_equal(back.matrix, cm.matrix)
    np.testing.assert_array_equal(back.missed, cm.missed)
    assert back.num_classes == 3 and back.ignore_index == IGN
    np.testing.assert_allclose(back.iou(), cm.iou())
    with pytest.raises(ValueError, match='shape'):
        ConfusionMatrix.from_dict({'num_classes': 4, 'matrix': data['matrix']})


# --- mIoU ratio ---------------------------------------------------------------------------------


def test_miou_ratio():
    assert miou_ratio(0.3, 0.6) == pytest.approx(0.5)
    assert miou_ratio(30.0, 60.0) == pytest.approx(0.5)  # unit-free
    assert math.isnan(miou_ratio(0.3, 0.0))  # clean mIoU 0 -> NaN, documented
    assert math.isnan(miou_ratio(math.nan, 0.5))
    assert math.isnan(miou_ratio(0.5, math.nan))
    with pytest.raises(ValueError):
        miou_ratio(-0.1, 0.5)
    with pytest.raises(ValueError):
        miou_ratio(0.1, math.inf)


# --- cross-check against torchmetrics -----------------------------------------------------------


def test_matches_torchmetrics_jaccard():
    """Agree with MulticlassJaccardIndex on present classes; document absent-class handling.

    torchmetrics (average='none') returns ``zero_division`` (default 0.0) for a class absent
    from both target and prediction, whereas we return NaN. With ``zero_division=nan`` the
    two agree exactly. For average='macro' torchmetrics gives absent classes weight 0, which
    equals our nanmean.
    """
    rng = np.random.default_rng(2)
    c = 19
    gt = rng.choice(np.arange(12), size=(3, 16, 16)).astype(np.uint8)  # 12..18 absent in gt
    gt[rng.random(gt.shape) < 0.15] = IGN
    pred = rng.choice(np.arange(14), size=(3, 16, 16)).astype(np.uint8)  # 12, 13 FP-only
    # Make some predictions agree with gt so IoUs are not all tiny.
    agree = rng.random(gt.shape) < 0.5
    pred[agree & (gt != IGN)] = gt[agree & (gt != IGN)]

    ours = ConfusionMatrix(c).update(pred, gt)
    iou = ours.iou()
    tp, tt = torch.from_numpy(pred).long(), torch.from_numpy(gt).long()

    tm = MulticlassJaccardIndex(num_classes=c, average='none', ignore_index=IGN)
    theirs = tm(tp, tt).double().numpy()
    present = ~np.isnan(iou)
    assert present.sum() == 14 and not present[14:].any()
    np.testing.assert_allclose(iou[present], theirs[present], rtol=1e-6)
    np.testing.assert_array_equal(theirs[~present], 0.0)  # absent -> zero_division (0.0)

    tm_nan = MulticlassJaccardIndex(
        num_classes=c, average='none', ignore_index=IGN, zero_division=float('nan')
    )
    np.testing.assert_allclose(iou, tm_nan(tp, tt).double().numpy(), rtol=1e-6)

    tm_macro = MulticlassJaccardIndex(num_classes=c, average='macro', ignore_index=IGN)
    assert ours.miou() == pytest.approx(float(tm_macro(tp, tt)), rel=1e-6)


# --- properties ---------------------------------------------------------------------------------

_labels = hnp.arrays(np.uint8, (2, 3, 4), elements=st.sampled_from([0, 1, 2, 3, 4, IGN]))


@settings(max_examples=40, deadline=None)
@given(
    pred=hnp.arrays(np.uint8, (2, 3, 4), elements=st.integers(0, 4)),
    gt=_labels,
    perm=st.permutations(range(5)),
)
def test_properties(pred, gt, perm):
    cm = ConfusionMatrix(5).update(pred, gt)
    iou = cm.iou()
    ok = ~np.isnan(iou)
    assert ((iou[ok] >= 0) & (iou[ok] <= 1)).all()
    m = cm.miou()
    assert math.isnan(m) or 0.0 <= m <= 1.0

    # Renaming the classes permutes the IoU vector and leaves the mIoU unchanged.
    lut = np.array(list(perm) + [IGN] * (256 - 5), dtype=np.uint8)
    lut[IGN] = IGN
    cm_p = ConfusionMatrix(5).update(lut[pred], lut[gt])
    np.testing.assert_allclose(cm_p.iou()[list(perm)], iou)
    assert (math.isnan(m) and math.isnan(cm_p.miou())) or cm_p.miou() == pytest.approx(m)

    # Perfect prediction -> 1.0 for every class in gt, NaN for the others.
    gt_valid = np.where(gt == IGN, 0, gt)
    perfect = ConfusionMatrix(5).update(gt_valid, gt)
    in_gt = np.isin(np.arange(5), gt[gt != IGN])
    np.testing.assert_array_equal(perfect.iou()[in_gt], 1.0)
    assert np.isnan(perfect.iou()[~in_gt]).all()


def test_stream_evaluation_counts_missing_and_mismatched_streams():
    from tsa_ros.evaluation import StreamEvaluation

    evaluation = StreamEvaluation(['teacher', 'fused'], num_classes=3)
    gt = np.array([[0, 1], [2, 255]], np.uint8)
    assert evaluation.add(7, gt, {'teacher': gt.copy(), 'fused': gt.copy()}) == []
    problems = evaluation.add(8, gt, {'fused': np.zeros((3, 2), np.uint8)})
    assert problems[0] == ('teacher', 'missing')
    assert (
        problems[1][0] == 'fused' and 'fused labels are 2x3, ground truth is 2x2' in problems[1][1]
    )
    assert evaluation.frames == 2 and evaluation.missing == {'teacher': 1, 'fused': 1}
    assert evaluation.stamps == {'teacher': [7], 'fused': [7]}
    assert evaluation.miou() == {'teacher': 1.0, 'fused': 1.0}
    report = evaluation.report()
    assert report['frames'] == 2 and report['streams']['fused']['missing'] == 1
    with pytest.raises(ValueError, match=r'values \[7\] are not trainIds'):
        evaluation.check_ground_truth(np.array([[7, 0]], np.uint8))
    evaluation.check_ground_truth(gt)


def test_attacked_run_ratio_is_taken_on_the_frames_both_runs_scored():
    """An attacked replay that scored fewer frames is compared on those frames only; the
    whole clean run would mix frames of another difficulty into the ratio."""
    from tsa_ros.evaluation import StreamEvaluation, dense_confusion, sparse_confusion

    rng = np.random.default_rng(0)
    gts = rng.integers(0, 3, (4, 6, 8)).astype(np.uint8)
    clean = StreamEvaluation(['teacher'], num_classes=3)
    for stamp, gt in enumerate(gts):
        # Frames 0 and 1 are easy (perfect), 2 and 3 hard (half wrong).
        pred = gt.copy() if stamp < 2 else np.where(rng.random(gt.shape) < 0.5, gt, (gt + 1) % 3)
        clean.add(stamp, gt, {'teacher': pred.astype(np.uint8)})
    attacked = StreamEvaluation(['teacher'], num_classes=3)
    for stamp in (0, 1):  # the attacked run scored the easy frames only, and perfectly
        attacked.add(stamp, gts[stamp], {'teacher': gts[stamp].copy()})

    entry = attacked.report(clean=clean.report())['streams']['teacher']
    assert entry['compared_frames'] == 2
    assert entry['clean_miou'] == 1.0 and entry['miou_ratio'] == 1.0  # not > 1
    # Without per-frame data (an older report) the whole runs are compared, and say so.
    legacy = clean.report()
    del legacy['streams']['teacher']['frame_confusion']
    entry = attacked.report(clean=legacy)['streams']['teacher']
    assert entry['compared_frames'] is None and entry['miou_ratio'] > 1.0
    # The sparse per-frame matrices add up to the running one.
    total = dense_confusion(clean.frame_confusion['teacher'], num_classes=3)
    np.testing.assert_array_equal(total.matrix, clean.matrices['teacher'].matrix)
    frame = clean.frame_confusion['teacher'][2]
    assert sparse_confusion(dense_confusion([frame], num_classes=3)) == frame
