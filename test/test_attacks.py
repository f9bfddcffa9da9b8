"""Tests of the iterative least-likely class attack, eqs. (7)-(10)."""

import math

import pytest
import torch
import torchattacks
from torch import nn

from tsa_ros.attacks import (
    AttackConfig,
    adversarial_loss,
    least_likely_attack,
    least_likely_targets,
    num_iterations,
)

NUM_CLASSES = 5


class TinySegNet(nn.Module):
    """Small conv net with the package's model interface (gray values in, logits out).

    The dropout makes train mode stochastic, so determinism also checks eval mode.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.drop = nn.Dropout2d(0.5)
        self.conv2 = nn.Conv2d(8, NUM_CLASSES, 3, padding=1)

    def forward(self, x, return_features=False):
        logits = self.conv2(self.drop(torch.tanh(self.conv1(x / 255.0 - 0.5))))
        return (logits, {}) if return_features else logits


class ZeroOneScale(nn.Module):
    """torchattacks works in [0, 1]; our models take gray values [0, 255]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x01):
        return self.model(x01 * 255.0)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinySegNet()


@pytest.fixture
def images():
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, 256, (2, 3, 8, 8), generator=gen).float()  # (N, 3, H, W)


def _j_ae(model, x, targets):
    with torch.no_grad():
        return adversarial_loss(model.eval()(x), targets).item()


# ---------------------------------------------------------------- iterations and config


def test_num_iterations_paper_and_ceil():
    assert num_iterations(1) == 1  # min(5, 1.25) -> 1
    assert num_iterations(10) == 12  # min(14, 12.5) -> 12
    assert num_iterations(0) == 0
    assert num_iterations(20) == 24  # min(24, 25)
    assert num_iterations(2.5) == 3 and num_iterations(2.5, 'ceil') == 4  # 3.125
    assert num_iterations(0.8, 'ceil') == 1  # 1.25 * 0.8 is 1 up to binary noise
    assert num_iterations(10, 'ceil') == 13
    assert AttackConfig(epsilon=10).num_iterations == 12
    assert AttackConfig(epsilon=10, iterations=3).num_iterations == 3
    assert AttackConfig(epsilon=2.5, rounding='ceil').num_iterations == 4
    with pytest.raises(ValueError, match='rounding'):
        num_iterations(1, 'floor')


def test_attack_config_validation():
    for kwargs in (
        {'epsilon': -1},
        {'epsilon': float('nan')},
        {'step_size': 0},
        {'iterations': -1},
        {'iterations': 1.5},
        {'rounding': 'round'},
        {'recompute_target': 1},
    ):
        with pytest.raises(ValueError):
            AttackConfig(**kwargs)


# ---------------------------------------------------------------- eqs. (7)-(8)


def test_least_likely_targets_is_argmin_and_restores_mode(model, images):
    model.train()
    targets = least_likely_targets(model, images)
    assert model.training and targets.shape == (2, 8, 8) and targets.dtype == torch.long
    with torch.no_grad():
        logits = model.eval()(images)
    assert torch.equal(targets, logits.argmin(dim=1))


def test_adversarial_loss_hand_computed():
    # One image, two pixels, two classes; logits (0, ln 3) -> y = (1/4, 3/4).
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0)] * 2]).reshape(1, 2, 1, 2)
    targets = torch.tensor([[[0, 1]]])
    expected = -(math.log(0.25) + math.log(0.75))
    assert abs(adversarial_loss(logits, targets).item() - expected) < 1e-6
    # Summed over the batch: a second copy doubles it.
    doubled = adversarial_loss(logits.repeat(2, 1, 1, 1), targets.repeat(2, 1, 1))
    assert abs(doubled.item() - 2 * expected) < 1e-6
    with pytest.raises(ValueError, match='targets must have shape'):
        adversarial_loss(logits, targets[:, :, :1])
    with pytest.raises(ValueError, match='int64'):
        adversarial_loss(logits, targets.int())


# ---------------------------------------------------------------- the attack, eqs. (9)-(10)


@pytest.mark.parametrize('epsilon', [1, 10])
def test_attack_bounds_integrality_and_loss_decrease(model, images, epsilon):
    images[0, 0, 0, :2] = torch.tensor([0.0, 255.0])  # exercise the [0, 255] clip
    targets = least_likely_targets(model, images)
    adv = least_likely_attack(model, images, AttackConfig(epsilon=epsilon))
    assert adv.shape == images.shape and adv.dtype == images.dtype and not adv.requires_grad
    assert (adv - images).abs().max().item() <= epsilon
    assert adv.min().item() >= 0 and adv.max().item() <= 255
    assert torch.equal(adv, adv.round())  # still a valid 8-bit image
    assert not torch.equal(adv, images)
    assert _j_ae(model, adv, targets) < _j_ae(model, images, targets)


def test_attack_leaves_model_untouched_and_restores_modes(model, images):
    model.train()
    model.drop.eval()  # a deliberately frozen part must stay frozen
    before = {k: v.clone() for k, v in model.state_dict().items()}
    least_likely_attack(model, images, AttackConfig(epsilon=4))
    assert model.training and model.conv1.training and not model.drop.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_attack_is_deterministic_and_batched(model, images):
    model.train()  # dropout would make it random if the attack did not switch to eval
    cfg = AttackConfig(epsilon=4)
    adv = least_likely_attack(model, images, cfg)
    assert torch.equal(adv, least_likely_attack(model, images, cfg))
    # Images of a batch are independent: attacking one alone gives the same result.
    assert torch.equal(adv[1:], least_likely_attack(model, images[1:], cfg))


def test_attack_under_inference_mode_and_zero_iterations(model, images):
    with torch.inference_mode():
        adv = least_likely_attack(model, images, AttackConfig(epsilon=2))
    assert torch.equal(adv, least_likely_attack(model, images, AttackConfig(epsilon=2)))
    assert torch.equal(least_likely_attack(model, images, AttackConfig(epsilon=0)), images)


def test_attack_targets_and_recompute(model, images):
    targets = least_likely_targets(model, images)
    one_step = AttackConfig(epsilon=3, iterations=1)
    adv = least_likely_attack(model, images, one_step)
    assert torch.equal(adv, least_likely_attack(model, images, one_step, targets=targets))
    # The first recomputed target map is the clean one, so one step agrees too.
    recompute = AttackConfig(epsilon=3, iterations=1, recompute_target=True)
    assert torch.equal(adv, least_likely_attack(model, images, recompute))
    adv = least_likely_attack(model, images, AttackConfig(epsilon=3, recompute_target=True))
    assert (adv - images).abs().max().item() <= 3
    with pytest.raises(ValueError, match='recompute_target'):
        least_likely_attack(model, images, recompute, targets=targets)
    with pytest.raises(ValueError, match='classes'):
        least_likely_attack(model, images, one_step, targets=targets + NUM_CLASSES)


def test_attack_rejects_bad_images(model, images):
    cfg = AttackConfig()
    for bad in (images / 255.0 - 0.5, images + 1.0, images[0], images.long()):
        with pytest.raises(ValueError, match='images'):
            least_likely_attack(model, bad, cfg)
    nan = images.clone()
    nan[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match=r'\[0, 255\]'):
        least_likely_targets(model, nan)


# ---------------------------------------------------------------- agreement with torchattacks


@pytest.mark.parametrize('epsilon', [1, 10])
def test_attack_agrees_with_torchattacks_bim(model, images, epsilon):
    cfg = AttackConfig(epsilon=epsilon)
    targets = least_likely_targets(model, images)
    adv = least_likely_attack(model, images, cfg)

    bim = torchattacks.BIM(
        ZeroOneScale(model), eps=epsilon / 255, alpha=1 / 255, steps=cfg.num_iterations
    )
    bim.set_mode_targeted_by_label(quiet=True)
    adv_ref = bim(images / 255.0, targets) * 255.0  # back to gray values

    close = (adv - adv_ref).abs() <= 1e-3
    agreement = close.float().mean().item()
    assert agreement >= 0.999, f'agreement {agreement:.5f}'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_attack_runs_on_the_models_device(model, images):
    model, images = model.cuda(), images.cuda()
    adv = least_likely_attack(model, images, AttackConfig(epsilon=4))
    assert adv.device == images.device and (adv - images).abs().max().item() <= 4
