"""Model complexity: parameter counts and convolution multiply-accumulates (MACs).

MACs are counted with forward hooks on a copy of the model living on the ``meta`` device, so
no real computation happens and even 512x1024 inputs are instant. Conventions (the ones under
which ERFNet, Romera et al. 2018, with 19 classes at 512x1024 gives 26.60 G MACs):

* ``Conv2d``: ``N * C_out * H_out * W_out * (C_in / groups) * kH * kW``;
* ``ConvTranspose2d``: ``N * C_in * H_in * W_in * (C_out / groups) * kH * kW`` (every input
  pixel is multiplied with the whole kernel);
* biases, BatchNorm, activations, pooling and interpolation are not counted.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from tsa_ros.models.wrapper import SegmentationNet

__all__ = ['count_parameters', 'count_conv_macs']


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameters; shared parameters count once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _meta_copy(model: nn.Module) -> nn.Module:
    if isinstance(model, SegmentationNet):
        # Rebuild from the config directly on meta: no copy of real weights at all.
        with torch.device('meta'):
            return SegmentationNet(model.config)
    return copy.deepcopy(model).to('meta')


def count_conv_macs(
    model: nn.Module, input_size: tuple[int, int] = (512, 1024), batch: int = 1
) -> int:
    """Multiply-accumulates of all ``Conv2d`` / ``ConvTranspose2d`` layers for one forward.

    Args:
        model: any module taking an ``(N, 3, H, W)`` tensor; it is not modified.
        input_size: ``(H, W)`` of the input.
        batch: batch size ``N``.
    """
    meta_model = _meta_copy(model).eval()
    total = 0

    def conv_hook(module: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    def deconv_hook(
        module: nn.ConvTranspose2d, inputs: tuple[Tensor, ...], output: Tensor
    ) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += inputs[0].numel() * (module.out_channels // module.groups) * k

    for m in meta_model.modules():
        if isinstance(m, nn.ConvTranspose2d):
            m.register_forward_hook(deconv_hook)
        elif isinstance(m, nn.Conv2d):
            m.register_forward_hook(conv_hook)
    x = torch.zeros(batch, 3, *input_size, device='meta')
    with torch.no_grad():
        meta_model(x)
    return int(total)
