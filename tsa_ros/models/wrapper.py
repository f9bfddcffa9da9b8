"""The single network interface used by the teacher, the static and the adaptive student.

:class:`SegmentationNet` wraps an inner architecture (ERFNet, Romera et al. 2018, or
DeepLabV3+, Chen et al. 2018, with a ResNet backbone, He et al. 2016) and adds:

* input normalisation inside the network, so callers (and adversarial attacks) work in gray
  values in ``[0, 255]``;
* named feature taps for the feature-matching loss of the adaptive student
  (Bär et al. 2019). Taps are collected per call and handed back to the caller, so they
  carry gradients, leak no state between calls and are safe to use from several threads.

Tap names are those of the inner network, e.g. ``encoder.0`` ... ``encoder.15`` and
``decoder.0`` ... ``decoder.5`` for ERFNet (see :mod:`tsa_ros.models.erfnet`) and
``backbone.layer1`` ... ``aspp`` ... ``decoder`` for DeepLabV3+ (see
:mod:`tsa_ros.models.deeplab`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tsa_ros.models.deeplab import DeepLabV3Plus
from tsa_ros.models.erfnet import ERFNet

__all__ = [
    'ARCHS',
    'BACKBONES',
    'OUTPUT_STRIDES',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'ModelConfig',
    'SegmentationNet',
    'build_model',
]

ARCHS = ('erfnet', 'deeplabv3plus')
BACKBONES = ('resnet18', 'resnet50', 'resnet101')
OUTPUT_STRIDES = (8, 16)

#: ImageNet statistics in gray values (RGB order), i.e. the usual [0, 1] values times 255.
IMAGENET_MEAN = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
IMAGENET_STD = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture description of a :class:`SegmentationNet`; everything a checkpoint needs.

    Attributes:
        arch: ``'erfnet'`` or ``'deeplabv3plus'``.
        num_classes: number of output classes.
        input_size: ``(H, W)`` the network is trained / used at. Metadata only: ``forward``
            accepts other sizes (ERFNet: multiples of 8; DeepLabV3+: at least 32 px).
        backbone: ``'resnet18'``, ``'resnet50'`` or ``'resnet101'`` (DeepLabV3+ only).
        output_stride: 8 or 16 (DeepLabV3+ only).
        feature_layers: names of the feature taps returned by
            ``forward(x, return_features=True)``; ``None`` selects the architecture default.
    """

    arch: str = 'erfnet'
    num_classes: int = 19
    input_size: tuple[int, int] = (512, 1024)
    backbone: str = 'resnet50'
    output_stride: int = 16
    feature_layers: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f'ModelConfig.arch must be one of {ARCHS}, got {self.arch!r}')
        if not _is_int(self.num_classes) or self.num_classes < 1:
            raise ValueError(
                f'ModelConfig.num_classes must be a positive int, got {self.num_classes!r}'
            )
        size = self.input_size
        if (
            not isinstance(size, (tuple, list))
            or len(size) != 2
            or not all(_is_int(s) and s > 0 for s in size)
        ):
            raise ValueError(
                f'ModelConfig.input_size must be two positive ints (H, W), got {size!r}'
            )
        # Frozen dataclass: normalise containers through object.__setattr__.
        object.__setattr__(self, 'input_size', tuple(size))
        if self.arch == 'erfnet' and (size[0] % 8 or size[1] % 8):
            raise ValueError(
                f'ModelConfig.input_size must be divisible by 8 for erfnet, got {tuple(size)}'
            )
        if self.arch == 'deeplabv3plus' and min(size) < DeepLabV3Plus.min_size:
            raise ValueError(
                'ModelConfig.input_size must be at least '
                f'{DeepLabV3Plus.min_size} px for deeplabv3plus, got {tuple(size)}'
            )
        if self.backbone not in BACKBONES:
            raise ValueError(
                f'ModelConfig.backbone must be one of {BACKBONES}, got {self.backbone!r}'
            )
        if self.output_stride not in OUTPUT_STRIDES or not _is_int(self.output_stride):
            raise ValueError(
                f'ModelConfig.output_stride must be one of {OUTPUT_STRIDES}, '
                f'got {self.output_stride!r}'
            )
        layers = self.feature_layers
        if layers is not None:
            if isinstance(layers, str) or not isinstance(layers, (tuple, list)):
                raise ValueError(
                    'ModelConfig.feature_layers must be None or a sequence of layer names, '
                    f'got {layers!r}'
                )
            if not all(isinstance(n, str) and n for n in layers):
                raise ValueError(
                    f'ModelConfig.feature_layers must contain non-empty strings, got {layers!r}'
                )
            if len(set(layers)) != len(layers):
                raise ValueError(f'ModelConfig.feature_layers has duplicates: {layers!r}')
            object.__setattr__(self, 'feature_layers', tuple(layers))

    def to_dict(self) -> dict[str, Any]:
        """Plain-type dict (lists instead of tuples) suitable for JSON / YAML / checkpoints."""
        return {
            'arch': self.arch,
            'num_classes': self.num_classes,
            'input_size': list(self.input_size),
            'backbone': self.backbone,
            'output_stride': self.output_stride,
            'feature_layers': None if self.feature_layers is None else list(self.feature_layers),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; missing keys take their defaults, unknown keys fail."""
        if not isinstance(data, Mapping):
            raise ValueError(f'ModelConfig.from_dict expects a mapping, got {type(data).__name__}')
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f'ModelConfig.from_dict: unknown key(s) {unknown}; allowed keys are {known}'
            )
        kwargs = dict(data)
        for key in ('input_size', 'feature_layers'):
            if isinstance(kwargs.get(key), list):
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


def _build_inner(config: ModelConfig) -> nn.Module:
    if config.arch == 'erfnet':
        return ERFNet(config.num_classes)
    depth = int(config.backbone.removeprefix('resnet'))
    return DeepLabV3Plus(config.num_classes, depth, config.output_stride)


class SegmentationNet(nn.Module):
    """Segmentation network taking gray values in ``[0, 255]`` and returning logits.

    Args:
        config: the architecture; the inner network is built from it (see
            :func:`build_model`). Parameter initialisation follows the global torch RNG, so
            it is reproducible under ``torch.manual_seed``.

    Attributes:
        config: the :class:`ModelConfig` (``feature_layers`` as given, possibly ``None``).
        num_classes: number of output classes.
        net: the inner architecture (takes normalised images).
        mean, std: ``(1, 3, 1, 1)`` non-trainable, non-persistent normalisation buffers in gray
            values; they follow ``.to()`` but are not part of the state dict.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f'config must be a ModelConfig, got {type(config).__name__}')
        self.num_classes = config.num_classes
        self.net = _build_inner(config)
        self.register_buffer(
            'mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.config = config
        self._feature_layers = self._resolve_taps(config.feature_layers)

    # ----------------------------------------------------------------------------- taps
    def available_feature_layers(self) -> tuple[str, ...]:
        """All tap-able layer names, in network order."""
        return tuple(self.net.tap_names)

    @property
    def feature_layers(self) -> tuple[str, ...]:
        """Names of the configured taps, in network order."""
        return self._feature_layers

    def set_feature_layers(self, names: Iterable[str] | None) -> None:
        """Change the taps (``None``: architecture default); also updates ``config``."""
        names = None if names is None else tuple(names)
        config = dataclasses.replace(self.config, feature_layers=names)
        self._feature_layers = self._resolve_taps(config.feature_layers)
        self.config = config

    def _resolve_taps(self, names: tuple[str, ...] | None) -> tuple[str, ...]:
        available = self.available_feature_layers()
        if names is None:
            names = tuple(self.net.default_taps)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ValueError(
                f'unknown feature layer(s) {unknown} for arch {self.config.arch!r}; '
                f'available: {list(available)}'
            )
        wanted = set(names)
        return tuple(n for n in available if n in wanted)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` naming the rule if a ``height`` x ``width`` input cannot run."""
        self.net.check_input_size(height, width)

    # -------------------------------------------------------------------------- forward
    def normalize(self, x: Tensor) -> Tensor:
        """Map gray values ``[0, 255]`` (RGB) to ImageNet-normalised inputs."""
        return (x - self.mean) / self.std

    def forward(
        self, x: Tensor, return_features: bool = False
    ) -> Tensor | tuple[Tensor, OrderedDict[str, Tensor]]:
        """Compute logits ``(N, C, H, W)`` for gray-value images ``x`` ``(N, 3, H, W)``.

        With ``return_features=True`` returns ``(logits, features)``, ``features`` being an
        ``OrderedDict`` of the configured taps in network order. Features are part of the
        autograd graph (no detaching).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(
                f'expected an image batch of shape (N, 3, H, W), got {tuple(x.shape)}'
            )
        if not x.is_floating_point():
            x = x.to(self.mean.dtype)
        taps = frozenset(self._feature_layers) if return_features else frozenset()
        logits, feats = self.net(self.normalize(x), taps)
        if return_features:
            return logits, feats
        return logits

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Arg-max class map ``(N, H, W)`` (int64), without gradients."""
        return self.forward(x).argmax(dim=1)

    def posteriors(self, x: Tensor) -> Tensor:
        """Softmax class posteriors ``(N, C, H, W)`` (differentiable)."""
        return torch.softmax(self.forward(x), dim=1)

    def extra_repr(self) -> str:
        return f'config={self.config}'


def build_model(config: ModelConfig) -> SegmentationNet:
    """Build the :class:`SegmentationNet` described by ``config`` (on the default device)."""
    return SegmentationNet(config)
