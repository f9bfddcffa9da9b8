"""Iterative least-likely class attack (paper section 3.5, eqs. 7-10).

The attacker knows a static network (T or S) but not the ground truth, so it follows
Kurakin et al.'s iterative least-likely class method (ILLC):

* eq. (7): ``l(i) = argmin_s y_{i,s}(x)`` -- the least likely class of every pixel of the
  clean image (:func:`least_likely_targets`);
* eq. (8): ``J_AE(x) = -sum_i log y_{i,l(i)}(x)`` (:func:`adversarial_loss`);
* eq. (9): ``x_0 = x``, ``x_{t+1} = x_t - lambda * sign(grad_x J_AE(x_t))``;
* eq. (10): ``||x_adv - x||_inf <= epsilon``, plus the valid gray-value range [0, 255],
  for ``min(epsilon + 4, 1.25 epsilon)`` iterations (:func:`num_iterations`).

Everything is in gray values [0, 255], the scale the models take as input, so
``epsilon`` and the step size ``lambda`` mean exactly what they mean in the paper
(``lambda = 1``, ``epsilon in {1, 10}``).
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    'AttackConfig',
    'adversarial_loss',
    'least_likely_attack',
    'least_likely_targets',
    'num_iterations',
]

_ROUNDINGS = ('paper', 'ceil')


def num_iterations(epsilon: float, rounding: str = 'paper') -> int:
    """Return the attack's iteration count ``min(epsilon + 4, 1.25 * epsilon)`` (sec. 3.5).

    Args:
        epsilon: L-inf bound in gray values, ``>= 0``.
        rounding: ``'paper'`` truncates like Kurakin et al.'s (and torchattacks')
            ``int(...)``: 1 iteration for ``epsilon = 1``, 12 for ``epsilon = 10``.
            ``'ceil'`` rounds up, so that ``n * step >= 1.25 * epsilon`` is never cut
            short (e.g. 4 iterations instead of 3 for ``epsilon = 2.5``).

    Returns:
        The iteration count.
    """
    _check_real('epsilon', epsilon, allow_zero=True)
    if rounding not in _ROUNDINGS:
        raise ValueError(f'rounding must be one of {_ROUNDINGS}, got {rounding!r}')
    # round() first so that binary noise (e.g. 1.25 * 0.8 = 1.0000000000000002) does not
    # flip the result of int()/ceil().
    value = round(min(epsilon + 4.0, 1.25 * epsilon), 9)
    return int(value) if rounding == 'paper' else math.ceil(value)


def _check_real(name: str, value: float, *, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f'{name} must be a finite real number, got {value!r}')
    if value < 0 or (value == 0 and not allow_zero):
        bound = '>= 0' if allow_zero else '> 0'
        raise ValueError(f'{name} must be {bound}, got {value!r}')


@dataclass
class AttackConfig:
    """Parameters of the least-likely attack, eqs. (9)-(10).

    Attributes:
        epsilon: L-inf bound of the perturbation in gray values, ``>= 0``.
        step_size: Step size ``lambda`` in gray values, ``> 0``.
        iterations: Number of iterations; ``None`` derives it from ``epsilon`` with
            :func:`num_iterations`.
        rounding: ``'paper'`` or ``'ceil'``, see :func:`num_iterations`.
        recompute_target: If False (Kurakin et al.'s ILLC), the least-likely classes are
            computed once from the clean image; if True they are recomputed from the
            current adversarial image in every iteration (as Arnab et al. do).
    """

    epsilon: float = 1.0
    step_size: float = 1.0
    iterations: int | None = None
    rounding: str = 'paper'
    recompute_target: bool = False

    def __post_init__(self) -> None:
        _check_real('epsilon', self.epsilon, allow_zero=True)
        _check_real('step_size', self.step_size, allow_zero=False)
        if self.iterations is not None and (
            isinstance(self.iterations, bool)
            or not isinstance(self.iterations, int)
            or self.iterations < 0
        ):
            raise ValueError(f'iterations must be None or an int >= 0, got {self.iterations!r}')
        if self.rounding not in _ROUNDINGS:
            raise ValueError(f'rounding must be one of {_ROUNDINGS}, got {self.rounding!r}')
        if not isinstance(self.recompute_target, bool):
            raise ValueError(f'recompute_target must be a bool, got {self.recompute_target!r}')

    @property
    def num_iterations(self) -> int:
        """Iterations actually run: ``iterations`` if set, else from ``epsilon``."""
        if self.iterations is not None:
            return self.iterations
        return num_iterations(self.epsilon, self.rounding)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode and restore every submodule's own mode afterwards."""
    # Restore per module: a training model may hold deliberately frozen (eval) parts,
    # which a blanket model.train() afterwards would silently unfreeze.
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f'images must be a (N, C, H, W) tensor, got {shape}')
    if not images.is_floating_point():
        raise ValueError(f'images must be a floating point tensor, got {images.dtype}')
    if images.numel() == 0:
        raise ValueError(f'images must not be empty, got shape {tuple(images.shape)}')
    lo, hi = images.min().item(), images.max().item()
    if not (0.0 <= lo and hi <= 255.0):  # also rejects NaN
        raise ValueError(f'images must hold gray values in [0, 255], got range [{lo}, {hi}]')


def _check_logits(logits: Tensor, batch: int) -> None:
    if logits.dim() != 4 or logits.shape[0] != batch:
        raise ValueError(
            f'model must return logits of shape ({batch}, C, H, W), got {tuple(logits.shape)}'
        )


def least_likely_targets(model: nn.Module, images: Tensor) -> Tensor:
    """Least likely class of every pixel of the clean image, eq. (7).

    ``argmin_s y_{i,s}`` of the posteriors equals the argmin of the logits, since softmax
    is monotonic; ties go to the lowest class index. The model runs in eval mode under
    ``no_grad``; its previous modes are restored.

    Args:
        model: Segmentation network taking gray values [0, 255] and returning logits.
        images: Clean images in gray values.

    Returns:
        Class indices (int64) on the images' device.

    Shape:
        - images: ``(N, C_in, H, W)``
        - output: ``(N, H_out, W_out)``, the model's output resolution
    """
    _check_images(images)
    with _eval_mode(model), torch.no_grad():
        logits = model(images)  # (N, C, H, W)
    _check_logits(logits, images.shape[0])
    return logits.argmin(dim=1)  # (N, H, W)


def adversarial_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Adversarial cross entropy towards the target classes, eq. (8).

    ``J_AE = -sum_i log y_{i,l(i)}``, summed over the pixels of each image and over the
    images of the batch. The images do not interact, so summing over the batch leaves
    every image's input gradient exactly what it would be alone; and only the gradient's
    sign enters eq. (9), so the scale (sum vs. mean) does not matter for the attack.

    Args:
        logits: Logits of the attacked network.
        targets: Target class per pixel, e.g. from :func:`least_likely_targets`.

    Returns:
        Scalar loss.

    Shape:
        - logits: ``(N, C, H, W)``
        - targets: ``(N, H, W)``, int64
        - output: ``()``
    """
    if logits.dim() != 4:
        raise ValueError(f'logits must be (N, C, H, W), got {tuple(logits.shape)}')
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(targets.shape) != expected:
        raise ValueError(
            f'targets must have shape {expected} (N, H, W), got {tuple(targets.shape)}'
        )
    if targets.dtype != torch.long:
        raise ValueError(f'targets must be int64 class indices, got {targets.dtype}')
    # cross_entropy = -log_softmax at the target, i.e. -log y_{i,l(i)}.
    return F.cross_entropy(logits, targets, reduction='sum')


def least_likely_attack(
    model: nn.Module,
    images: Tensor,
    cfg: AttackConfig,
    targets: Tensor | None = None,
) -> Tensor:
    """Perturb images with the iterative least-likely class attack, eqs. (7)-(10).

    ``x_0 = x``; ``x_{t+1} = clip_{[0, 255]}(clip_{x, eps}(x_t - lambda *
    sign(grad_x J_AE(x_t))))``. The model runs in eval mode (its previous train/eval
    modes are restored afterwards); its parameters are not modified and no ``.grad`` is
    accumulated on them, because gradients are taken with respect to the input only. The
    result is deterministic for a deterministic model. With integer-valued images and
    integer ``epsilon`` and ``step_size`` the adversarial image stays integer-valued,
    i.e. a valid 8-bit image.

    Args:
        model: Attacked network (gray values [0, 255] in, logits out).
        images: Clean images in gray values [0, 255].
        cfg: Attack parameters.
        targets: Optional fixed target classes; default: the least likely classes of the
            clean image, eq. (7). Cannot be combined with ``cfg.recompute_target``.

    Returns:
        Adversarial images, detached, with the dtype, shape and device of ``images``.

    Shape:
        - images: ``(N, C_in, H, W)``
        - targets: ``(N, H_out, W_out)``, int64
        - output: ``(N, C_in, H, W)``

    Raises:
        ValueError: On images that are not floating point ``(N, C, H, W)`` gray values in
            [0, 255], or on invalid ``targets``.
    """
    _check_images(images)
    if targets is not None and cfg.recompute_target:
        raise ValueError('explicit targets cannot be combined with cfg.recompute_target')
    if targets is not None:
        _check_targets(targets, images)
    n_iter = cfg.num_iterations
    # The caller may be under no_grad/inference_mode (e.g. a ROS node); the attack needs
    # input gradients regardless, and tensors it can differentiate through.
    with torch.inference_mode(False), torch.enable_grad():
        clean = images.detach().clone()
        if n_iter == 0:
            return clean
        if targets is None and not cfg.recompute_target:
            targets = least_likely_targets(model, clean)  # (N, H, W), eq. (7)
        lower = (clean - cfg.epsilon).clamp(min=0.0)  # eq. (10) and the gray-value range
        upper = (clean + cfg.epsilon).clamp(max=255.0)
        adv = clean
        with _eval_mode(model):
            for step in range(n_iter):
                adv = adv.detach().requires_grad_(True)
                logits = model(adv)  # (N, C, H, W)
                _check_logits(logits, clean.shape[0])
                if cfg.recompute_target:
                    targets = logits.detach().argmin(dim=1)  # eq. (7) at x_t
                elif step == 0 and targets.numel() and targets.max().item() >= logits.shape[1]:
                    raise ValueError(
                        f'targets hold class {targets.max().item()} but the model has '
                        f'{logits.shape[1]} classes'
                    )
                loss = adversarial_loss(logits, targets)  # eq. (8)
                # Gradient w.r.t. the input only: nothing accumulates in parameters' .grad.
                (grad,) = torch.autograd.grad(loss, adv)
                with torch.no_grad():
                    adv = adv - cfg.step_size * grad.sign()  # eq. (9), descend on J_AE
                    adv = torch.minimum(torch.maximum(adv, lower), upper)  # eq. (10)
    return adv.detach()


def _check_targets(targets: Tensor, images: Tensor) -> None:
    if not isinstance(targets, Tensor) or targets.dim() != 3:
        raise ValueError('targets must be a (N, H, W) tensor of class indices')
    if targets.shape[0] != images.shape[0]:
        raise ValueError(f'targets has batch size {targets.shape[0]}, images {images.shape[0]}')
    if targets.dtype != torch.long:
        raise ValueError(f'targets must be int64 class indices, got {targets.dtype}')
    if targets.device != images.device:
        raise ValueError(f'targets are on {targets.device}, images on {images.device}')
    if targets.numel() and targets.min().item() < 0:
        raise ValueError('targets must be non-negative class indices')
