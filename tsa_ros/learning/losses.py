"""Teacher-student losses for training the adaptive student A (paper section 3.3).

* :func:`soft_cross_entropy` -- eq. (3), cross entropy of A's posteriors against the
  teacher's soft targets ``y_T``.
* :func:`fm_loss` -- eq. (4), feature matching between A and the static student S.
* :func:`ifm_loss` -- eq. (5), inverse feature matching ``1 / (J_FM + beta)^gamma``.
* :func:`ts_loss` -- eq. (6), ``(1 - alpha) * J_CE + alpha * J_IFM``.
* :func:`ts_objective` -- all four terms at once, driven by a :class:`TSLossConfig`.

A subtlety of eqs. (4)-(6) at initialisation: A starts as an exact copy of S
(``theta_A = theta_S``), so every feature difference ``f_A - f_S`` is exactly zero. For
``p = 1`` the (sub)gradient torch uses for ``|z|`` at ``z = 0`` is ``sign(0) = 0`` (and
for ``p > 1`` the derivative ``p |z|^(p-1)`` vanishes there too), so the IFM term
contributes *no gradient at all* in the first step. IFM only starts to push A away from
S after the CE term has moved A's parameters off S's. For ``0 < p < 1`` the analytic
derivative is infinite at zero; :func:`fm_loss` defines it as zero there as well instead
of producing NaNs.
"""

import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'TSLossConfig',
    'TSLossTerms',
    'fm_loss',
    'ifm_loss',
    'soft_cross_entropy',
    'ts_loss',
    'ts_objective',
]


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f'{name} must be a real number, got {value!r}')
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f'{name} must be finite and > 0, got {value!r}')


def _check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise ValueError(f'alpha must be a real number, got {alpha!r}')
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must lie in [0, 1], got {alpha!r}')


def soft_cross_entropy(
    student_logits: Tensor,
    teacher_probs: Tensor,
    *,
    valid_mask: Tensor | None = None,
) -> Tensor:
    """Cross entropy of the student's posteriors against soft teacher targets, eq. (3).

    ``J_CE = -sum_s y^T_{i,s} log y^A_{i,s}``, averaged over the (valid) pixels of all
    images. ``log y^A`` is taken as ``log_softmax`` of the logits for numerical
    stability. The teacher is static, so ``teacher_probs`` is treated as a constant
    (detached).

    Why a mean instead of the paper's sum over pixels: the sum grows with ``H * W``,
    while the IFM term it is weighed against in eq. (6) is bounded by ``1 / beta^gamma``
    independently of the image size. With a sum, the meaning of a fixed ``alpha`` would
    depend on the image resolution; with the mean, ``alpha`` means the same at any
    resolution (and Adam's effective step does not depend on it either).

    Args:
        student_logits: Logits of the adaptive student A.
        teacher_probs: Posteriors (softmax probabilities) of the teacher T, same shape.
        valid_mask: Optional boolean mask of the pixels to average over (e.g. pixels
            that are not ignored). If it selects no pixel the loss is a zero that still
            belongs to the autograd graph.

    Returns:
        Scalar loss.

    Shape:
        - student_logits: ``(N, C, H, W)``
        - teacher_probs: ``(N, C, H, W)``, same shape (no implicit resizing)
        - valid_mask: ``(N, H, W)``, bool
        - output: ``()``

    Raises:
        ValueError: On mismatching shapes or a non-boolean mask.
    """
    if student_logits.dim() != 4:
        raise ValueError(
            f'student_logits must be (N, C, H, W), got shape {tuple(student_logits.shape)}'
        )
    if teacher_probs.shape != student_logits.shape:
        raise ValueError(
            'teacher_probs must have the same shape as student_logits, got '
            f'{tuple(teacher_probs.shape)} vs {tuple(student_logits.shape)}'
        )
    log_probs = F.log_softmax(student_logits, dim=1)  # (N, C, H, W)
    per_pixel = -(teacher_probs.detach() * log_probs).sum(dim=1)  # (N, H, W)
    if valid_mask is None:
        return per_pixel.mean()
    expected = per_pixel.shape
    if valid_mask.shape != expected:
        raise ValueError(
            f'valid_mask must have shape {tuple(expected)} (N, H, W), '
            f'got {tuple(valid_mask.shape)}'
        )
    if valid_mask.dtype != torch.bool:
        raise ValueError(f'valid_mask must be a bool tensor, got {valid_mask.dtype}')
    # where() rather than indexing keeps an all-masked batch's zero loss attached to the
    # graph, and rather than multiplying it avoids 0 * inf at masked extreme logits.
    masked = torch.where(valid_mask, per_pixel, torch.zeros_like(per_pixel))
    return masked.sum() / valid_mask.sum().clamp(min=1)


def _abs_pow(diff: Tensor, p: float) -> Tensor:
    """``|diff|^p`` elementwise with a zero (sub)gradient wherever ``diff == 0``."""
    if p == 1:
        return diff.abs()  # d|z|/dz = sign(z), and sign(0) = 0
    if p == 2:
        return diff * diff
    absd = diff.abs()
    if p > 1:
        return absd.pow(p)  # p |z|^(p-1) is finite and 0 at z = 0
    # For p < 1 the derivative p |z|^(p-1) is infinite at 0 and autograd would give
    # inf * sign(0) = NaN; route zeros through a constant branch instead.
    nonzero = absd > 0
    safe = torch.where(nonzero, absd, torch.ones_like(absd))
    return torch.where(nonzero, safe.pow(p), torch.zeros_like(absd))


def fm_loss(
    features_a: Mapping[str, Tensor],
    features_s: Mapping[str, Tensor],
    *,
    p: float = 1.0,
) -> Tensor:
    """Feature matching loss between adaptive student A and static student S, eq. (4).

    ``J_FM = 1/|M| sum_m ||f^A_m - f^S_m||_p^p / (H_m W_m C_m)``: for every layer the
    ``p``-th power of the ``p``-norm distance, divided by the layer's size so that every
    layer counts equally, then averaged over the layers. With a batch, the per-image
    value is averaged over the images. S is static, so its features are detached.

    For ``p = 1`` and ``f_A == f_S`` (A freshly copied from S) the gradient is exactly
    zero (torch uses ``sign(0) = 0``); see the module docstring.

    Args:
        features_a: Layer name -> feature of A (may require grad).
        features_s: Layer name -> feature of S, same keys and shapes.
        p: Exponent and norm order, any ``p > 0``.

    Returns:
        Scalar loss (non-negative).

    Shape:
        - features_a[m], features_s[m]: ``(N, C_m, H_m, W_m)`` (any shape with the
          batch first works; it is the per-image mean over the remaining dimensions)
        - output: ``()``

    Raises:
        ValueError: On ``p <= 0``, an empty mapping, different keys, or a layer whose
            shapes differ (the message names the layer).
    """
    _check_positive('p', p)
    if len(features_a) == 0:
        raise ValueError('fm_loss needs at least one feature layer, got an empty mapping')
    keys_a, keys_s = set(features_a), set(features_s)
    if keys_a != keys_s:
        raise ValueError(
            'features_a and features_s must have the same layers; only in A: '
            f'{sorted(keys_a - keys_s)}, only in S: {sorted(keys_s - keys_a)}'
        )
    per_layer = []
    for name, f_a in features_a.items():
        f_s = features_s[name]
        if f_a.shape != f_s.shape:
            raise ValueError(
                f'feature layer {name!r} has shape {tuple(f_a.shape)} in A but '
                f'{tuple(f_s.shape)} in S'
            )
        # The mean over all elements of (N, C_m, H_m, W_m) equals the per-image sum
        # divided by H_m W_m C_m, averaged over the batch.
        per_layer.append(_abs_pow(f_a - f_s.detach(), p).mean())
    return torch.stack(per_layer).mean()


def ifm_loss(fm: Tensor, *, beta: float = 0.5, gamma: float = 1.0) -> Tensor:
    """Inverse feature matching loss, eq. (5): ``1 / (J_FM + beta)^gamma``.

    Penalises similarity between A and S. ``beta > 0`` bounds it from above by
    ``1 / beta^gamma`` (reached at ``J_FM = 0``); ``gamma`` sets how fast it falls off
    as the features move apart. (Sec. 3.3 states ``beta = 1``; every experiment of sec. 4.3
    uses ``beta = 0.5`` with ``gamma in {0.5, 1, 2}``, hence the default.)

    Args:
        fm: Feature matching loss ``J_FM`` from :func:`fm_loss` (non-negative).
        beta: Offset, ``> 0``.
        gamma: Exponent, ``> 0``.

    Returns:
        Tensor of the same shape as ``fm``.

    Shape:
        - fm: ``()`` (or any shape, applied elementwise)
        - output: same as ``fm``
    """
    _check_positive('beta', beta)
    _check_positive('gamma', gamma)
    return (fm + beta).pow(-gamma)


def ts_loss(ce: Tensor, ifm: Tensor, *, alpha: float) -> Tensor:
    """Teacher-student loss, eq. (6): ``(1 - alpha) * J_CE + alpha * J_IFM``.

    Args:
        ce: Cross-entropy term from :func:`soft_cross_entropy`.
        ifm: Inverse feature matching term from :func:`ifm_loss`.
        alpha: Weight of the IFM term in ``[0, 1]``.

    Returns:
        The weighted sum.

    Shape:
        - ce, ifm: ``()`` (or broadcastable shapes)
        - output: ``()``
    """
    _check_alpha(alpha)
    return (1.0 - alpha) * ce + alpha * ifm


@dataclass
class TSLossConfig:
    """Hyper-parameters of the TS loss, eqs. (4)-(6).

    Attributes:
        alpha: Weight of the IFM term in eq. (6), in ``[0, 1]``.
        beta: Offset in eq. (5), ``> 0`` (the experiments of sec. 4.3 use 0.5).
        gamma: Exponent in eq. (5), ``> 0`` (the paper uses 0.5, 1 or 2).
        p: Norm order and power in eq. (4), ``> 0``.
    """

    alpha: float = 0.6
    beta: float = 0.5
    gamma: float = 1.0
    p: float = 1.0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        _check_positive('beta', self.beta)
        _check_positive('gamma', self.gamma)
        _check_positive('p', self.p)


@dataclass
class TSLossTerms:
    """All terms of the TS loss for one batch; only ``ts`` is meant for ``backward()``.

    Attributes:
        ce: ``J_CE``, eq. (3).
        fm: ``J_FM``, eq. (4).
        ifm: ``J_IFM``, eq. (5).
        ts: ``J_TS``, eq. (6).
    """

    ce: Tensor
    fm: Tensor
    ifm: Tensor
    ts: Tensor


def ts_objective(
    student_logits: Tensor,
    features_a: Mapping[str, Tensor],
    features_s: Mapping[str, Tensor],
    teacher_probs: Tensor,
    cfg: TSLossConfig,
    *,
    valid_mask: Tensor | None = None,
) -> TSLossTerms:
    """Compute ``J_CE``, ``J_FM``, ``J_IFM`` and ``J_TS`` (eqs. 3-6) for one batch.

    With ``cfg.alpha == 0`` the FM and IFM terms are still computed for logging, but
    without autograd graph since they do not enter ``J_TS``.

    Args:
        student_logits: Logits of A.
        features_a: Named intermediate features of A.
        features_s: Named intermediate features of S (detached inside).
        teacher_probs: Posteriors of T (detached inside).
        cfg: Loss hyper-parameters.
        valid_mask: Optional mask of the pixels used by the CE term.

    Returns:
        The four terms, each a scalar tensor.

    Shape:
        - student_logits, teacher_probs: ``(N, C, H, W)``
        - features_a[m], features_s[m]: ``(N, C_m, H_m, W_m)``
        - valid_mask: ``(N, H, W)``
    """
    ce = soft_cross_entropy(student_logits, teacher_probs, valid_mask=valid_mask)
    with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.alpha > 0):
        fm = fm_loss(features_a, features_s, p=cfg.p)
        ifm = ifm_loss(fm, beta=cfg.beta, gamma=cfg.gamma)
    ts = ts_loss(ce, ifm, alpha=cfg.alpha)
    return TSLossTerms(ce=ce, fm=fm, ifm=ifm, ts=ts)
