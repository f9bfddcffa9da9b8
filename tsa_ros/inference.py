"""One inference path from camera frames to labels and posteriors.

Every place that runs a network on images goes through this module: the segmenters of the
triplet (T, S, A), the attacker's input, the learner's frame preprocessing, ``tsa eval`` and
the experiment tables, and the data loaders' network-input resize. One rule each, so what A
is trained on and what T, S and A segment at run time cannot drift apart:

* network input (:func:`resize_frame`): area averaging when no axis grows (shrinking without
  aliasing), bilinear when one does (cv2's area mode acts like nearest when enlarging);
* labels back to frame size (:func:`resize_labels`): nearest, so every pixel keeps a class id;
* posteriors (:func:`resize_posteriors`): area when shrinking, else bilinear, then
  renormalised, so each pixel stays a probability vector.

:class:`Predictor` owns one :class:`~tsa_ros.models.SegmentationNet` on one device (eval
mode, ``torch.inference_mode``) and applies these rules; it holds no ROS types.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tsa_ros.models import SegmentationNet

__all__ = [
    'BACKENDS',
    'Prediction',
    'Predictor',
    'as_numpy',
    'frames_to_tensor',
    'has_bf16',
    'tensor_to_frames',
    'resize_frame',
    'resize_labels',
    'resize_posteriors',
    'resolve_backend',
    'resolve_device',
    'scaled_size',
    'set_threads',
]


# --------------------------------------------------------------------------- devices
def resolve_device(name: str | torch.device | None = 'auto') -> torch.device:
    """``'auto'`` / ``None`` -> cuda when available, else cpu; anything else is validated."""
    if name is None or name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f'unknown torch device {name!r} (cpu, cuda, cuda:N or auto)') from exc
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {str(name)!r} requested but CUDA is not available')
    return device


def has_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run in hardware (AVX512-BF16 / AMX on CPU, sm80+ on CUDA);
    emulated bf16 is slower than fp32 and not worth offering."""
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            flags = next((line for line in f if line.startswith('flags')), '')
    except OSError:
        return False
    return bool(set(flags.split(':', 1)[-1].split()) & {'avx512_bf16', 'amx_bf16'})


def set_threads(num_threads: int | None) -> None:
    """Intra-op threads of this process (``None`` or 0 keeps torch's default)."""
    if num_threads is not None and num_threads < 0:
        raise ValueError(f'num_threads must be >= 0, got {num_threads}')
    if num_threads:
        torch.set_num_threads(int(num_threads))


def as_numpy(x) -> np.ndarray:
    """``x`` as a numpy array; torch tensors (any device, any dtype) are moved to the CPU."""
    if isinstance(x, Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- resizing
def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """``(H, W)`` times ``scale``, rounded, at least one pixel per axis."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f'target size must be positive (H, W), got {tuple(size)}')
    return height, width


def resize_frame(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An image ``(H, W[, C])`` at ``size`` ``(h, w)``: area when no axis grows, else linear.

    Returns the input itself when it already has that size.
    """
    height, width = _check_size(size)
    if rgb.shape[:2] == (height, width):
        return rgb
    shrink = height <= rgb.shape[0] and width <= rgb.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb), (width, height), interpolation=interp)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A label map ``(H, W)`` at ``size`` ``(h, w)`` by nearest neighbour (no new class ids)."""
    height, width = _check_size(size)
    if labels.shape[:2] == (height, width):
        return labels
    return cv2.resize(
        np.ascontiguousarray(labels), (width, height), interpolation=cv2.INTER_NEAREST
    )


def resize_posteriors(probs: Tensor | np.ndarray, size: tuple[int, int]):
    """Posteriors ``(N, C, h, w)`` or ``(C, h, w)`` at ``size`` ``(H, W)``, renormalised.

    Area averaging when no axis grows, else bilinear: both keep each pixel a convex
    combination of probability vectors; the renormalisation removes float rounding only.
    Returns the type it was given (tensor or numpy array).
    """
    height, width = _check_size(size)
    is_numpy = isinstance(probs, np.ndarray)
    tensor = torch.from_numpy(np.ascontiguousarray(probs)) if is_numpy else probs
    squeeze = tensor.dim() == 3
    if squeeze:
        tensor = tensor[None]
    if tensor.dim() != 4:
        raise ValueError(
            f'posteriors must be (N, C, H, W) or (C, H, W), got {tuple(tensor.shape)}'
        )
    if not tensor.is_floating_point():
        tensor = tensor.float()
    if tuple(tensor.shape[-2:]) != (height, width):
        shrink = height <= tensor.shape[-2] and width <= tensor.shape[-1]
        if shrink:
            tensor = F.interpolate(tensor, size=(height, width), mode='area')
        else:
            tensor = F.interpolate(
                tensor, size=(height, width), mode='bilinear', align_corners=False
            )
    tensor = tensor / tensor.sum(dim=1, keepdim=True).clamp_min(1e-12)
    if squeeze:
        tensor = tensor[0]
    return tensor.numpy() if is_numpy else tensor


def frames_to_tensor(
    frames: np.ndarray | Sequence[np.ndarray], device: str | torch.device = 'cpu'
) -> Tensor:
    """uint8 RGB ``(H, W, 3)`` frame(s) -> float ``(N, 3, H, W)`` gray values on ``device``.

    Message buffers may be read-only or padded views: each frame is copied into memory torch
    owns. Frames of one call must share their size.
    """
    if isinstance(frames, np.ndarray) and frames.ndim == 3:
        frames = [frames]
    arrays = []
    for frame in frames:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f'a frame must be (H, W, 3) RGB, got shape {frame.shape}')
        arrays.append(frame)
    if not arrays:
        raise ValueError('need at least one frame')
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f'frames of one batch differ in size: {[a.shape for a in arrays]}')
    batch = torch.from_numpy(np.stack(arrays))  # (N, H, W, 3), a fresh contiguous copy
    return batch.to(device).permute(0, 3, 1, 2).float()  # (N, 3, H, W)


def tensor_to_frames(images: Tensor) -> np.ndarray:
    """Gray values ``(N, 3, H, W)`` -> uint8 RGB ``(N, H, W, 3)``, rounded and clipped.

    Integer attack bounds and steps keep gray values integral; rounding makes any other
    configuration a valid 8-bit image too.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f'expected images (N, 3, H, W), got {tuple(images.shape)}')
    out = images.detach().round().clamp(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).cpu().numpy()


# --------------------------------------------------------------------------- predictor
BACKENDS = ('auto', 'eager', 'channels_last', 'bf16', 'onnxruntime')


def resolve_backend(backend: str, device: torch.device) -> str:
    """``backend`` validated for ``device``; ``'auto'`` becomes the concrete choice."""
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'auto':
        return 'channels_last'
    if backend == 'onnxruntime':
        if device.type != 'cpu':
            raise ValueError(
                f'backend onnxruntime runs on the CPU only (the onnxruntime wheel has no GPU '
                f'provider); device is {device}'
            )
        from tsa_ros.onnx_backend import check_available

        check_available()
    if backend == 'bf16':
        if not has_bf16(device):
            raise ValueError(
                f'backend bf16 needs bfloat16 hardware (AVX512-BF16 or AMX on CPU, sm80+ on '
                f'CUDA); {device} has none: use channels_last'
            )
    return backend


@dataclass
class Prediction:
    """One frame's result.

    Attributes:
        labels: ``(H, W)`` uint8 class ids at frame size.
        posteriors: ``(C, h, w)`` float32 softmax posteriors at the requested scale of the
            frame, or ``None`` when not asked for.
    """

    labels: np.ndarray
    posteriors: np.ndarray | None = None


class Predictor:
    """Frames in, labels (and posteriors) out, for one network on one device.

    Args:
        model: the network (moved to ``device`` and put in eval mode).
        device: torch device, ``'auto'`` = cuda when available.
        input_size: ``(H, W)`` every frame is resized to before the forward pass (the
            network's training size); ``None`` runs the network at frame size, which must
            then satisfy the network's own size rule.
        num_threads: intra-op threads for this process (``None`` keeps torch's setting).
        backend: how the forward pass runs (:data:`BACKENDS`): ``'eager'`` (NCHW fp32),
            ``'channels_last'`` (NHWC fp32: same labels, faster convolutions and a cheap
            argmax over classes), ``'bf16'`` (channels_last under bfloat16 autocast, only
            where the hardware has bf16: faster, labels may differ on a few pixels),
            ``'onnxruntime'`` (CPU, fp32: the network exported to ONNX once per weights and
            input size, cached on disk, see :mod:`tsa_ros.onnx_backend`; the first use at a
            new size exports, seconds; :meth:`with_weights` reuses the export);
            ``'auto'`` = the fastest torch path, timed by :meth:`warmup` on this machine
            (``'channels_last'`` until then): the two fp32 ones and, where the hardware has
            bfloat16, ``'bf16'``: which one wins depends on the CPU and the input size.
            bf16 competes because its mIoU on the trained networks equals fp32's within
            0.05 points (README, "What each stage costs"); onnxruntime is never chosen by
            itself (opt-in: an export in every timing would cost seconds).
    """

    def __init__(
        self,
        model: SegmentationNet,
        *,
        device: str | torch.device | None = 'auto',
        input_size: tuple[int, int] | None = None,
        num_threads: int | None = None,
        backend: str = 'auto',
    ) -> None:
        set_threads(num_threads)
        self.device = resolve_device(device)
        self.requested_backend = backend
        self.backend = resolve_backend(backend, self.device)
        self.model = model.to(self.device).eval()
        self._set_memory_format()
        self.input_size = None if input_size is None else _check_size(input_size)
        if self.input_size is not None:
            self.model.check_input_size(*self.input_size)
        self._ort = None  # OrtNetwork: exports lazily, at the first forward (or warmup)
        if self.backend == 'onnxruntime':
            from tsa_ros.onnx_backend import OrtNetwork

            self._ort = OrtNetwork(self.model)

    def _set_memory_format(self) -> None:
        nchw = self.backend in ('eager', 'onnxruntime')  # ORT: export, weights in NCHW
        fmt = torch.contiguous_format if nchw else torch.channels_last
        self.model = self.model.to(memory_format=fmt)

    @property
    def num_classes(self) -> int:
        return self.model.num_classes

    def with_weights(self, state_dict: dict[str, Tensor]) -> Predictor:
        """A new predictor running a copy of the network with ``state_dict`` loaded.

        This one keeps serving meanwhile (a weight swap never touches the running model).
        Raises ``ValueError`` when the weights do not fit the network (names, shapes, and
        dtypes: load_state_dict would cast a float64 or integer tensor silently).
        With ``'onnxruntime'`` the exported graph is reused (a new session, no export) and
        the session is built here, so the swapped predictor's first frame is not slower.
        """
        own = self.model.state_dict()
        for name, tensor in state_dict.items():
            dtype = getattr(tensor, 'dtype', type(tensor).__name__)
            if name in own and dtype != own[name].dtype:
                raise ValueError(
                    f'weights do not fit the network: {name} is {dtype}, '
                    f'expected {own[name].dtype}'
                )
        fresh = copy.deepcopy(self.model)
        try:
            fresh.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            raise ValueError(f'weights do not fit the network: {exc}') from exc
        swapped = Predictor(
            fresh, device=self.device, input_size=self.input_size, backend=self.backend
        )
        if self._ort is not None:
            swapped._ort = self._ort.with_model(swapped.model)
        return swapped

    def choose_backend(self, size: tuple[int, int], repeats: int = 2) -> str:
        """For ``backend='auto'``: time the torch paths (forward and argmax; bf16 where the
        hardware has it) at network input ``size`` and keep the fastest; any other backend
        is kept as configured."""
        if self.requested_backend != 'auto':
            return self.backend
        images = torch.zeros((1, 3, *size), device=self.device)
        seconds = {}
        candidates = ('channels_last', 'eager') + (('bf16',) if has_bf16(self.device) else ())
        for backend in candidates:
            self.backend = backend
            self._set_memory_format()
            self.infer(images)  # untimed: the first call of a format allocates
            runs = []
            for _ in range(repeats):
                start = time.perf_counter()
                self.infer(images)
                if self.device.type == 'cuda':
                    torch.cuda.synchronize(self.device)
                runs.append(time.perf_counter() - start)
            seconds[backend] = min(runs)
        self.backend = min(seconds, key=seconds.get)
        self._set_memory_format()
        return self.backend

    def warmup(self, size: tuple[int, int]) -> None:
        """One forward pass on a black ``(H, W)`` frame, so the first real frame is not slow;
        with ``backend='auto'`` first the choice of the faster backend at the network's size."""
        self.choose_backend(self.network_size(*size))
        self.predict(np.zeros((*size, 3), np.uint8))

    def network_size(self, height: int, width: int) -> tuple[int, int]:
        """The ``(H, W)`` the network sees for a frame of ``height`` x ``width``."""
        return self.input_size or (height, width)

    def check_frame(self, height: int, width: int) -> None:
        """Raise ``ValueError`` (naming the rule) if a frame of this size cannot be segmented."""
        if height < 1 or width < 1:
            raise ValueError(f'empty frame {width}x{height}')
        self.model.check_input_size(*self.network_size(height, width))

    def prepare(self, frames: np.ndarray | Sequence[np.ndarray]) -> Tensor:
        """Frames (uint8 RGB) -> the network's input batch ``(N, 3, h, w)`` on the device."""
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            frames = [frames]
        size = self.input_size
        frames = [frame if size is None else resize_frame(frame, size) for frame in frames]
        return frames_to_tensor(frames, self.device)

    def infer(self, images: Tensor, posteriors: bool = False) -> tuple[Tensor, Tensor | None]:
        """Labels ``(N, h, w)`` int64 and optionally posteriors ``(N, C, h, w)`` at input size.

        ``images`` are gray values ``(N, 3, h, w)`` already at the network's size (a data
        loader's batch, or :meth:`prepare`'s output).
        """
        if self._ort is not None:
            return self._ort.infer(images, posteriors)
        images = images.to(self.device)
        if self.backend != 'eager':
            images = images.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.backend == 'bf16'),
        ):
            logits = self.model(images)  # (N, C, h, w), NHWC in memory unless eager
            labels = logits.argmax(dim=1)  # (N, h, w); over NHWC a contiguous reduction
            probs = torch.softmax(logits.float(), dim=1) if posteriors else None
        return labels, probs

    def predict_batch(
        self, frames: Sequence[np.ndarray], posteriors_scale: float | None = None
    ) -> list[Prediction]:
        """:meth:`predict` for several frames of one size in one forward pass."""
        if not len(frames):
            return []
        height, width = frames[0].shape[:2]
        self.check_frame(height, width)
        if posteriors_scale is not None and not 0.0 < posteriors_scale <= 1.0:
            raise ValueError(f'posteriors_scale must be in (0, 1], got {posteriors_scale}')
        labels, probs = self.infer(self.prepare(frames), posteriors=posteriors_scale is not None)
        labels = labels.to(torch.uint8).cpu().numpy()  # (N, h, w)
        if probs is not None:
            probs = resize_posteriors(probs, scaled_size((height, width), posteriors_scale))
            probs = probs.contiguous().cpu().numpy()  # (N, C, h', w'), class planes
        return [
            Prediction(
                resize_labels(labels[i], (height, width)),
                None if probs is None else probs[i],
            )
            for i in range(len(frames))
        ]

    def predict(self, frame: np.ndarray, posteriors_scale: float | None = None) -> Prediction:
        """Labels at frame size and, with ``posteriors_scale``, posteriors at that scale.

        Args:
            frame: uint8 ``(H, W, 3)`` RGB of any size (resized to ``input_size`` if set).
            posteriors_scale: resolution of the returned posteriors relative to the frame,
                in ``(0, 1]``; ``None`` = no posteriors.
        """
        return self.predict_batch([frame], posteriors_scale)[0]
