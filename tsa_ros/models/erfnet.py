"""ERFNet, the student network (static student S and adaptive student A).

Reference: E. Romera, J. M. Alvarez, L. M. Bergasa, R. Arroyo, "ERFNet: Efficient Residual
Factorized ConvNet for Real-Time Semantic Segmentation", IEEE T-ITS 2018. The layer layout,
channel widths, dilations, dropout rates and BatchNorm epsilon follow the authors' reference
implementation (eromera/erfnet_pytorch); this is an independent re-implementation. The
encoder-only 1x1 prediction head of the reference is left out because the full network never
uses it. With 19 classes the network has 2,064,191 trainable parameters.

Module paths (and therefore feature-tap names) are::

    encoder.0            DownsamplerBlock(3, 16)          stride 2
    encoder.1            DownsamplerBlock(16, 64)         stride 4
    encoder.2 .. 6       5x NonBottleneck1d(64, dil 1)    stride 4
    encoder.7            DownsamplerBlock(64, 128)        stride 8
    encoder.8 .. 15      2x NonBottleneck1d(128, dil 2/4/8/16)
    decoder.0            UpsamplerBlock(128, 64)          stride 4
    decoder.1 .. 2       2x NonBottleneck1d(64)
    decoder.3            UpsamplerBlock(64, 16)           stride 2
    decoder.4 .. 5       2x NonBottleneck1d(16)
    output_conv          ConvTranspose2d(16, C, 2, stride 2)   (not a tap)

Use :func:`convert_reference_state_dict` to load weights saved by the reference code.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Collection, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    'BN_EPS',
    'DownsamplerBlock',
    'NonBottleneck1d',
    'UpsamplerBlock',
    'ERFNet',
    'convert_reference_state_dict',
]

BN_EPS = 1e-3  # as in the reference implementation (PyTorch's default is 1e-5)


class DownsamplerBlock(nn.Module):
    """Halve the resolution: [3x3 stride-2 conv | 2x2 max-pool] concatenated, BN, ReLU.

    The conv produces ``noutput - ninput`` channels so that, together with the ``ninput``
    pooled channels, the block outputs ``noutput`` channels.
    """

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        if noutput <= ninput:
            raise ValueError(f'noutput ({noutput}) must be larger than ninput ({ninput})')
        self.conv = nn.Conv2d(ninput, noutput - ninput, 3, stride=2, padding=1, bias=True)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(noutput, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:  # (N, Cin, H, W)
        out = torch.cat([self.conv(x), self.pool(x)], dim=1)  # (N, Cout, H/2, W/2)
        return F.relu(self.bn(out))


class NonBottleneck1d(nn.Module):
    """Residual block with factorised (3x1 then 1x3) convolutions, the core of ERFNet.

    The second pair of factorised convs is dilated by ``dilation`` to enlarge the receptive
    field without extra parameters. Shape-preserving: ``(N, C, H, W) -> (N, C, H, W)``.
    """

    def __init__(self, channels: int, dropprob: float, dilation: int) -> None:
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(c, eps=BN_EPS)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(c, eps=BN_EPS)
        self.dropout = nn.Dropout2d(dropprob)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv3x1_1(x))
        out = F.relu(self.bn1(self.conv1x3_1(out)))
        out = F.relu(self.conv3x1_2(out))
        out = self.bn2(self.conv1x3_2(out))
        if self.dropout.p != 0:  # the reference skips the module entirely when p == 0
            out = self.dropout(out)
        # Not in-place: ``x`` may be a tapped feature that autograd still needs.
        return F.relu(out + x)


class UpsamplerBlock(nn.Module):
    """Double the resolution: 3x3 stride-2 transposed conv, BN, ReLU."""

    def __init__(self, ninput: int, noutput: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(
            ninput, noutput, 3, stride=2, padding=1, output_padding=1, bias=True
        )
        self.bn = nn.BatchNorm2d(noutput, eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:  # (N, Cin, H, W)
        return F.relu(self.bn(self.conv(x)))  # (N, Cout, 2H, 2W)


def _encoder() -> nn.Sequential:
    layers: list[nn.Module] = [DownsamplerBlock(3, 16), DownsamplerBlock(16, 64)]
    layers += [NonBottleneck1d(64, 0.03, 1) for _ in range(5)]
    layers.append(DownsamplerBlock(64, 128))
    for _ in range(2):
        layers += [NonBottleneck1d(128, 0.3, d) for d in (2, 4, 8, 16)]
    return nn.Sequential(*layers)


def _decoder() -> nn.Sequential:
    return nn.Sequential(
        UpsamplerBlock(128, 64),
        NonBottleneck1d(64, 0.0, 1),
        NonBottleneck1d(64, 0.0, 1),
        UpsamplerBlock(64, 16),
        NonBottleneck1d(16, 0.0, 1),
        NonBottleneck1d(16, 0.0, 1),
    )


class ERFNet(nn.Module):
    """ERFNet encoder-decoder producing full-resolution logits.

    Expects an already normalised image; :class:`tsa_ros.models.SegmentationNet` wraps this
    module and does the normalisation. Height and width must be divisible by 8 (three
    stride-2 stages whose transposed convs exactly double the size back).
    """

    #: The network's total down-sampling factor; input sizes must be multiples of it.
    size_divisor = 8

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = _encoder()
        self.decoder = _decoder()
        self.output_conv = nn.ConvTranspose2d(16, num_classes, 2, stride=2, bias=True)
        self.tap_names: tuple[str, ...] = tuple(
            [f'encoder.{i}' for i in range(len(self.encoder))]
            + [f'decoder.{i}' for i in range(len(self.decoder))]
        )
        self.default_taps: tuple[str, ...] = self.tap_names

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if ``height`` x ``width`` cannot be processed."""
        d = self.size_divisor
        if height % d or width % d or height <= 0 or width <= 0:
            raise ValueError(
                f'ERFNet needs an input height and width divisible by {d}; '
                f'got {height}x{width} (HxW)'
            )

    def forward(
        self, x: Tensor, taps: Collection[str] = ()
    ) -> tuple[Tensor, OrderedDict[str, Tensor]]:
        """Return ``(logits, features)`` for a normalised image batch ``x`` (N, 3, H, W).

        ``features`` holds the outputs of the blocks named in ``taps``, in network order.
        The tapped tensors are the very tensors the network continues with, so gradients
        flow through them. Nothing is stored on the module, so calls are independent.
        """
        self.check_input_size(x.shape[-2], x.shape[-1])
        feats: OrderedDict[str, Tensor] = OrderedDict()
        out = x
        for stage_name, stage in (('encoder', self.encoder), ('decoder', self.decoder)):
            for i, block in enumerate(stage):
                out = block(out)
                name = f'{stage_name}.{i}'
                if name in taps:
                    feats[name] = out
        # encoder: (N, 128, H/8, W/8); decoder: (N, 16, H/2, W/2)
        logits = self.output_conv(out)  # (N, C, H, W)
        return logits, feats


_REFERENCE_RULES = (
    (re.compile(r'^encoder\.initial_block\.'), lambda m: 'encoder.0.'),
    (re.compile(r'^encoder\.layers\.(\d+)\.'), lambda m: f'encoder.{int(m.group(1)) + 1}.'),
    (re.compile(r'^decoder\.layers\.(\d+)\.'), lambda m: f'decoder.{int(m.group(1))}.'),
    (re.compile(r'^decoder\.output_conv\.'), lambda m: 'output_conv.'),
)


def convert_reference_state_dict(state_dict: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Rename the keys of an eromera/erfnet_pytorch state dict to this module's layout.

    Handles the ``module.`` prefix that ``nn.DataParallel`` adds and drops the unused
    encoder-only head (``encoder.output_conv``). Returns a dict for :class:`ERFNet` (prefix it
    with ``net.`` for :class:`~tsa_ros.models.SegmentationNet`).
    """
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        k = key[len('module.') :] if key.startswith('module.') else key
        if k.startswith('encoder.output_conv.'):
            continue
        for pattern, repl in _REFERENCE_RULES:
            m = pattern.match(k)
            if m:
                k = repl(m) + k[m.end() :]
                break
        else:
            raise ValueError(f'unexpected key in reference ERFNet state dict: {key!r}')
        out[k] = value
    return out
