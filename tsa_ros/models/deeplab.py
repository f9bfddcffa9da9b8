"""DeepLabV3+ with a ResNet backbone, the teacher network T.

References:

* L.-C. Chen, Y. Zhu, G. Papandreou, F. Schroff, H. Adam, "Encoder-Decoder with Atrous
  Separable Convolution for Semantic Image Segmentation" (DeepLabV3+), ECCV 2018.
* K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016.

Independent plain-torch implementation. The ResNet uses the common "v1.5" layout (stride on
the 3x3 conv of a bottleneck) and the same parameter names as the usual ImageNet checkpoints
(``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so such weights can be loaded into
``backbone``. An output stride of 16 (8) replaces the stride of the last stage (last two
stages) by dilation. The ASPP uses plain (not depthwise-separable) atrous convolutions.

Feature-tap names: ``backbone.stem`` (after the max-pool, stride 4), ``backbone.layer1`` ..
``backbone.layer4``, ``aspp`` (after the ASPP projection), ``decoder.low_level`` (48-channel
projection of the stride-4 features) and ``decoder`` (after the two 3x3 convs, before the
classifier). The defaults are the four stage outputs, ``aspp`` and ``decoder``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    'BasicBlock',
    'Bottleneck',
    'ResNet',
    'resnet',
    'ASPP',
    'DeepLabV3PlusDecoder',
    'DeepLabV3Plus',
    'RESNET_DEPTHS',
]


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding == dilation keeps the spatial size for stride 1
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with identity shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided / dilated), 1x1 expand by 4, identity shortcut (ResNet-50+)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


#: depth -> (block type, blocks per stage)
RESNET_DEPTHS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
}


class ResNet(nn.Module):
    """ResNet feature extractor (no pooling / fc head) with optional dilated last stages.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the four stages.
        output_stride: 8, 16 or 32; strides beyond it become dilations.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        # layer2..4 each halve the resolution unless dilated; stem + layer1 give stride 4.
        dilate = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}
        d2, d3, d4 = dilate[output_stride]
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=d2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=d3)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=d4)
        self.low_level_channels = 64 * block.expansion
        self.out_channels = 512 * block.expansion

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilate: bool = False,
    ) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:
            # Trade the stride for dilation: keep the resolution, keep the receptive field.
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # The first block still uses the previous dilation (it sits at the stage transition).
        layers = [block(self.inplanes, planes, stride, previous_dilation, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(
        self, x: Tensor, taps: Collection[str] = (), prefix: str = 'backbone.'
    ) -> tuple[Tensor, Tensor, OrderedDict[str, Tensor]]:
        """Return ``(low_level, high_level, features)``: the layer1 and layer4 outputs."""
        feats: OrderedDict[str, Tensor] = OrderedDict()
        out = self.maxpool(F.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        if prefix + 'stem' in taps:
            feats[prefix + 'stem'] = out
        low_level = out
        for name in ('layer1', 'layer2', 'layer3', 'layer4'):
            out = getattr(self, name)(out)
            if name == 'layer1':
                low_level = out  # (N, 64 * expansion, H/4, W/4)
            if prefix + name in taps:
                feats[prefix + name] = out
        return low_level, out, feats  # out: (N, 512 * expansion, H/OS, W/OS)


def resnet(depth: int, output_stride: int = 16) -> ResNet:
    """Build a ResNet-``depth`` backbone (18, 34, 50 or 101)."""
    if depth not in RESNET_DEPTHS:
        raise ValueError(f'unsupported ResNet depth {depth}; choose from {sorted(RESNET_DEPTHS)}')
    block, layers = RESNET_DEPTHS[depth]
    return ResNet(block, layers, output_stride)


def _conv_bn_relu(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class _ImagePooling(nn.Module):
    """ASPP image-level branch: global average pool, 1x1 conv, BN, ReLU, broadcast back."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:  # (N, Cin, h, w)
        pooled = self.conv(F.adaptive_avg_pool2d(x, 1))  # (N, Cout, 1, 1)
        # Batch statistics over a single 1x1 value per channel do not exist; a training
        # batch of one image therefore normalises this branch with the running statistics.
        if self.training and pooled.shape[0] == 1:
            pooled = F.batch_norm(
                pooled,
                self.bn.running_mean,
                self.bn.running_var,
                self.bn.weight,
                self.bn.bias,
                training=False,
                eps=self.bn.eps,
            )
        else:
            pooled = self.bn(pooled)
        pooled = F.relu(pooled)
        return pooled.expand(-1, -1, x.shape[-2], x.shape[-1])  # (N, Cout, h, w)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three 3x3 atrous convs and image pooling."""

    def __init__(
        self,
        cin: int,
        cout: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(cin, cout, 1)] + [_conv_bn_relu(cin, cout, 3, r) for r in rates]
        )
        self.pooling = _ImagePooling(cin, cout)
        n_branches = len(self.branches) + 1
        self.project = nn.Sequential(
            nn.Conv2d(n_branches * cout, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:  # (N, Cin, h, w)
        outs = [branch(x) for branch in self.branches] + [self.pooling(x)]
        return self.project(torch.cat(outs, dim=1))  # (N, 256, h, w)


class DeepLabV3PlusDecoder(nn.Module):
    """Fuse up-sampled ASPP features with 48-channel projected stride-4 features."""

    def __init__(self, low_level_channels: int, aspp_channels: int = 256) -> None:
        super().__init__()
        self.low_level = _conv_bn_relu(low_level_channels, 48, 1)
        self.fuse = nn.Sequential(
            _conv_bn_relu(aspp_channels + 48, 256, 3),
            _conv_bn_relu(256, 256, 3),
        )

    def forward(
        self, aspp: Tensor, low_level: Tensor, taps: Collection[str] = ()
    ) -> tuple[Tensor, OrderedDict[str, Tensor]]:
        feats: OrderedDict[str, Tensor] = OrderedDict()
        low = self.low_level(low_level)  # (N, 48, H/4, W/4)
        if 'decoder.low_level' in taps:
            feats['decoder.low_level'] = low
        up = F.interpolate(aspp, size=low.shape[-2:], mode='bilinear', align_corners=False)
        out = self.fuse(torch.cat([up, low], dim=1))  # (N, 256, H/4, W/4)
        if 'decoder' in taps:
            feats['decoder'] = out
        return out, feats


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ segmentation network with a ResNet backbone.

    Expects an already normalised image; :class:`tsa_ros.models.SegmentationNet` wraps this
    module and does the normalisation. Logits are bilinearly up-sampled to the input size.
    """

    #: Smallest supported height / width in pixels.
    min_size = 32

    def __init__(self, num_classes: int, depth: int = 50, output_stride: int = 16) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f'output_stride must be 8 or 16, got {output_stride}')
        self.num_classes = num_classes
        self.backbone = resnet(depth, output_stride)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.aspp = ASPP(self.backbone.out_channels, 256, rates)
        self.decoder = DeepLabV3PlusDecoder(self.backbone.low_level_channels, 256)
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.tap_names: tuple[str, ...] = (
            'backbone.stem',
            'backbone.layer1',
            'backbone.layer2',
            'backbone.layer3',
            'backbone.layer4',
            'aspp',
            'decoder.low_level',
            'decoder',
        )
        self.default_taps: tuple[str, ...] = (
            'backbone.layer1',
            'backbone.layer2',
            'backbone.layer3',
            'backbone.layer4',
            'aspp',
            'decoder',
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if ``height`` x ``width`` cannot be processed."""
        if height < self.min_size or width < self.min_size:
            raise ValueError(
                f'DeepLabV3+ needs an input of at least {self.min_size}x{self.min_size} pixels; '
                f'got {height}x{width} (HxW)'
            )

    def forward(
        self, x: Tensor, taps: Collection[str] = ()
    ) -> tuple[Tensor, OrderedDict[str, Tensor]]:
        """Return ``(logits, features)`` for a normalised image batch ``x`` (N, 3, H, W)."""
        height, width = x.shape[-2:]
        self.check_input_size(height, width)
        low_level, high, feats = self.backbone(x, taps)
        aspp = self.aspp(high)  # (N, 256, H/OS, W/OS)
        if 'aspp' in taps:
            feats['aspp'] = aspp
        dec, dec_feats = self.decoder(aspp, low_level, taps)  # (N, 256, H/4, W/4)
        feats.update(dec_feats)
        logits = self.classifier(dec)  # (N, C, H/4, W/4)
        logits = F.interpolate(
            logits, size=(height, width), mode='bilinear', align_corners=False
        )  # (N, C, H, W)
        return logits, feats
