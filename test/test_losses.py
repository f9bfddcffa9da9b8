"""Tests of the teacher-student losses, eqs. (3)-(6), against hand-computed values."""

import copy
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from tsa_ros.learning import (
    TSLossConfig,
    TSLossTerms,
    fm_loss,
    ifm_loss,
    soft_cross_entropy,
    ts_loss,
    ts_objective,
)


class TinySegNet(nn.Module):
    """Two-layer conv net with the package's model interface (gray values in, logits out)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, num_classes, 1)

    def forward(self, x, return_features=False):
        f1 = torch.relu(self.conv1(x / 255.0))  # (N, 4, H, W)
        logits = self.conv2(f1)  # (N, C, H, W)
        if return_features:
            return logits, OrderedDict(conv1=f1, logits=logits)
        return logits


def _close(tensor, value, tol=1e-6):
    return abs(tensor.item() - value) < tol


# ---------------------------------------------------------------- soft cross entropy, eq. (3)


def _ce_example():
    # Pixel 0: logits (0, ln 3) -> y_A = (1/4, 3/4); teacher (1/2, 1/2).
    # Pixel 1: logits (0, 0)    -> y_A = (1/2, 1/2); teacher (1, 0).
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]).reshape(1, 2, 1, 2)
    teacher = torch.tensor([[0.5, 1.0], [0.5, 0.0]]).reshape(1, 2, 1, 2)
    pixel0 = -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    pixel1 = math.log(2.0)
    return logits, teacher, pixel0, pixel1


def test_soft_cross_entropy_hand_computed_mean_over_pixels():
    logits, teacher, pixel0, pixel1 = _ce_example()
    assert _close(soft_cross_entropy(logits, teacher), (pixel0 + pixel1) / 2)


def test_soft_cross_entropy_valid_mask_and_empty_mask():
    logits, teacher, pixel0, _ = _ce_example()
    logits.requires_grad_(True)
    mask = torch.tensor([[[True, False]]])
    assert _close(soft_cross_entropy(logits, teacher, valid_mask=mask), pixel0)
    empty = soft_cross_entropy(logits, teacher, valid_mask=torch.zeros(1, 1, 2, dtype=torch.bool))
    assert empty.item() == 0.0 and empty.requires_grad


def test_soft_cross_entropy_is_resolution_independent_and_teacher_is_constant():
    logits, teacher, pixel0, pixel1 = _ce_example()
    # Tiling the image 3 x 2 keeps the mean (the paper's sum would grow 6-fold).
    tiled = soft_cross_entropy(logits.repeat(2, 1, 3, 2), teacher.repeat(2, 1, 3, 2))
    assert _close(tiled, (pixel0 + pixel1) / 2)
    teacher.requires_grad_(True)
    soft_cross_entropy(logits.requires_grad_(True), teacher).backward()
    assert teacher.grad is None and logits.grad is not None


def test_soft_cross_entropy_rejects_mismatches():
    logits, teacher, _, _ = _ce_example()
    with pytest.raises(ValueError, match='same shape'):
        soft_cross_entropy(logits, teacher[..., :1])
    with pytest.raises(ValueError, match='valid_mask must have shape'):
        soft_cross_entropy(logits, teacher, valid_mask=torch.ones(1, 2, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match='bool'):
        soft_cross_entropy(logits, teacher, valid_mask=torch.ones(1, 1, 2))


# ---------------------------------------------------------------- feature matching, eq. (4)


def _fm_example():
    # Layer 'a' (1 x 1 x 1 x 2): |diff| = (1, 2).  Layer 'b' (1 x 2 x 1 x 1): |diff| = (.5, .5).
    f_a = OrderedDict(
        a=torch.tensor([1.0, 3.0]).reshape(1, 1, 1, 2),
        b=torch.tensor([0.5, -0.5]).reshape(1, 2, 1, 1),
    )
    f_s = OrderedDict(a=torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2), b=torch.zeros(1, 2, 1, 1))
    return f_a, f_s


def test_fm_loss_hand_computed_p1_p2_and_fractional_p():
    f_a, f_s = _fm_example()
    # p = 1: a -> (1 + 2) / 2 = 1.5, b -> (.5 + .5) / 2 = .5, mean over layers = 1.0
    assert _close(fm_loss(f_a, f_s), 1.0)
    # p = 2: a -> (1 + 4) / 2 = 2.5, b -> (.25 + .25) / 2 = .25, mean = 1.375
    assert _close(fm_loss(f_a, f_s, p=2.0), 1.375)
    # p = 0.5: a -> (1 + sqrt 2) / 2, b -> sqrt .5
    expected = ((1.0 + math.sqrt(2.0)) / 2 + math.sqrt(0.5)) / 2
    assert _close(fm_loss(f_a, f_s, p=0.5), expected)


def test_fm_loss_batch_mean_key_order_and_detached_student():
    f_a, f_s = _fm_example()
    # A second image identical in A and S halves every layer's batch mean.
    f_a2 = OrderedDict((k, torch.cat([v, f_s[k]])) for k, v in f_a.items())
    f_s2 = OrderedDict((k, torch.cat([v, v])) for k, v in reversed(list(f_s.items())))
    f_s2 = OrderedDict((k, v.requires_grad_(True)) for k, v in f_s2.items())
    loss = fm_loss(f_a2, f_s2)
    assert _close(loss, 0.5)
    assert not loss.requires_grad  # only S requires grad here, and S is detached


def test_fm_loss_zero_difference_has_zero_not_nan_gradient():
    for p in (0.5, 1.0, 1.5, 2.0):
        f = torch.tensor([0.0, 2.0, -1.0], requires_grad=True)
        (grad,) = torch.autograd.grad(fm_loss({'x': f}, {'x': f.detach().clone()}, p=p), f)
        assert torch.equal(grad, torch.zeros(3)), p


def test_fm_loss_rejects_bad_input():
    f_a, f_s = _fm_example()
    with pytest.raises(ValueError, match=r"only in A: \['a'\]"):
        fm_loss(f_a, OrderedDict(b=f_s['b']))
    with pytest.raises(ValueError, match="layer 'b'"):
        fm_loss(f_a, OrderedDict(a=f_s['a'], b=torch.zeros(1, 2, 1, 2)))
    with pytest.raises(ValueError, match='empty'):
        fm_loss({}, {})
    for p in (0.0, -1.0, float('nan')):
        with pytest.raises(ValueError, match='p must'):
            fm_loss(f_a, f_s, p=p)


# ---------------------------------------------------------------- IFM and TS loss, eqs. (5)-(6)


def test_ifm_loss_hand_computed_beta_gamma_effects():
    fm = torch.tensor(1.0)
    assert _close(ifm_loss(fm, beta=0.5, gamma=1.0), 1 / 1.5)
    assert _close(ifm_loss(fm, beta=0.5, gamma=2.0), 1 / 2.25)
    assert _close(ifm_loss(fm, beta=1.0, gamma=0.5), 1 / math.sqrt(2.0))
    # Upper bound 1 / beta^gamma at fm = 0; larger beta -> smaller bound.
    zero = torch.tensor(0.0)
    assert _close(ifm_loss(zero, beta=0.5, gamma=2.0), 4.0)
    assert _close(ifm_loss(zero, beta=1.0, gamma=2.0), 1.0)
    # Larger gamma -> steeper decrease as the features move apart (here from fm=0 to 1).
    drop = [
        ifm_loss(zero, beta=1.0, gamma=g) - ifm_loss(fm, beta=1.0, gamma=g)
        for g in (0.5, 1.0, 2.0)
    ]
    assert drop[0] < drop[1] < drop[2]
    assert _close(drop[1], 0.5)
    for kwargs in ({'beta': 0.0}, {'gamma': 0.0}, {'beta': -1.0}):
        with pytest.raises(ValueError):
            ifm_loss(fm, **kwargs)


def test_ts_loss_hand_computed_and_alpha_validation():
    ce, ifm = torch.tensor(2.0), torch.tensor(0.5)
    assert _close(ts_loss(ce, ifm, alpha=0.6), 0.4 * 2.0 + 0.6 * 0.5)
    assert _close(ts_loss(ce, ifm, alpha=0.0), 2.0)
    assert _close(ts_loss(ce, ifm, alpha=1.0), 0.5)
    for alpha in (-0.1, 1.1, float('nan')):
        with pytest.raises(ValueError, match='alpha'):
            ts_loss(ce, ifm, alpha=alpha)


def test_ts_loss_config_defaults_and_validation():
    assert TSLossConfig() == TSLossConfig(alpha=0.6, beta=0.5, gamma=1.0, p=1.0)
    for kwargs in (
        {'alpha': 1.5},
        {'alpha': -0.01},
        {'beta': 0.0},
        {'gamma': -1.0},
        {'p': 0.0},
        {'beta': float('inf')},
        {'alpha': True},
    ):
        with pytest.raises(ValueError):
            TSLossConfig(**kwargs)


def test_ts_objective_combines_the_terms():
    logits, teacher, pixel0, pixel1 = _ce_example()
    f_a, f_s = _fm_example()
    terms = ts_objective(logits, f_a, f_s, teacher, TSLossConfig(alpha=0.25, beta=1.0, gamma=2.0))
    assert isinstance(terms, TSLossTerms)
    ce = (pixel0 + pixel1) / 2
    ifm = 1 / (1.0 + 1.0) ** 2
    assert _close(terms.ce, ce) and _close(terms.fm, 1.0) and _close(terms.ifm, ifm)
    assert _close(terms.ts, 0.75 * ce + 0.25 * ifm)


def test_ts_objective_alpha_zero_still_logs_fm_without_graph():
    logits, teacher, _, _ = _ce_example()
    f_a, f_s = _fm_example()
    f_a = OrderedDict((k, v.requires_grad_(True)) for k, v in f_a.items())
    terms = ts_objective(logits.requires_grad_(True), f_a, f_s, teacher, TSLossConfig(alpha=0.0))
    assert _close(terms.fm, 1.0) and _close(terms.ifm, 1 / 1.5)
    assert not terms.fm.requires_grad and terms.ts.requires_grad
    assert _close(terms.ts, terms.ce.item())


# ---------------------------------------------------------------- IFM gradient at A == S


def _ifm_grads(model_a, model_s, x, cfg):
    _, feats_a = model_a(x, return_features=True)
    with torch.no_grad():
        _, feats_s = model_s(x, return_features=True)
    ifm = ifm_loss(fm_loss(feats_a, feats_s, p=cfg.p), beta=cfg.beta, gamma=cfg.gamma)
    return torch.autograd.grad(ifm, list(model_a.parameters()), allow_unused=True)


def test_ifm_has_zero_gradient_until_ce_moves_a_away_from_s():
    torch.manual_seed(0)
    student, teacher = TinySegNet(), TinySegNet()
    adaptive = copy.deepcopy(student)
    x = torch.randint(0, 256, (2, 3, 6, 6)).float()
    cfg = TSLossConfig(alpha=0.5, p=1.0)

    # A == S: every |f_A - f_S| is 0 and sign(0) = 0, so IFM gives no gradient at all.
    grads = _ifm_grads(adaptive, student, x, cfg)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)

    # One optimizer step on the CE term alone moves A off S ...
    optimizer = torch.optim.SGD(adaptive.parameters(), lr=0.5)
    with torch.no_grad():
        teacher_probs = teacher(x).softmax(dim=1)
    soft_cross_entropy(adaptive(x), teacher_probs).backward()
    optimizer.step()

    # ... and from then on IFM pushes A further away from S.
    grads = _ifm_grads(adaptive, student, x, cfg)
    assert any(g is not None and torch.count_nonzero(g) > 0 for g in grads)
