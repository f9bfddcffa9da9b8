"""Supervised training of T and S on labeled data (paper sec. 4.2): the step and the loop.

Adam with a polynomial learning-rate decay (Zhao et al.'s "poly", power 0.9) on the pixel-wise
cross-entropy with ignore label 255, as the paper trains its student (eta_0 = 1e-4).
:func:`evaluate` accumulates a confusion matrix (mIoU) over a data loader; the full training
run (config, checkpoints, resume, DDP) lives in :mod:`tsa_ros.learning.train`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsa_ros.metrics import ConfusionMatrix


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    """Polynomial decay: base_lr * (1 - step / total) ** power."""
    return base_lr * (1.0 - min(step, total) / max(total, 1)) ** power


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group['lr'] = lr


def supervised_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, images: Tensor, labels: Tensor
) -> float:
    """One optimisation step on the cross-entropy (ignore 255); returns the loss."""
    logits = model(images)  # (N, C, H, W)
    loss = F.cross_entropy(logits, labels, ignore_index=255)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    num_classes: int = 19,
    device: torch.device | str = 'cpu',
    matrix: ConfusionMatrix | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of the arg-max predictions over ``loader`` (images, labels).

    The model is put in eval mode (BatchNorm running statistics, no dropout) and its previous
    mode is restored afterwards, so this can be called in the middle of training.
    """
    matrix = matrix if matrix is not None else ConfusionMatrix(num_classes)
    was_training = model.training
    model.eval()
    try:
        for images, labels in loader:
            logits = model(images.to(device))
            matrix.update(logits.argmax(1).cpu(), labels)
    finally:
        model.train(was_training)
    return matrix
