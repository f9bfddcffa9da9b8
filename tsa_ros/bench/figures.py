"""The figures of ``tsa bench``: each stage of the package timed beside a reference.

Every function returns :class:`Row` s; a row holds the figure, the reference it is compared
with (measured in the same interleaved loop, or derived from a measured peak) and their ratio.
"""

from __future__ import annotations

import copy
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import numpy as np
import torch

from tsa_ros import fusion, image_codec
from tsa_ros.attacks import AttackConfig, least_likely_attack
from tsa_ros.bench.timing import Timing, interleave
from tsa_ros.inference import Predictor, frames_to_tensor
from tsa_ros.models import ModelConfig, SegmentationNet, build_model, count_conv_macs

__all__ = [
    'Row',
    'attack_rows',
    'codec_rows',
    'fusion_rows',
    'compute_peak',
    'learner_rows',
    'network_rows',
    'predictor_rows',
]


@dataclass(frozen=True)
class Row:
    """One figure beside its reference, in milliseconds (min over repetitions)."""

    stage: str
    figure: str
    ms: float
    median_ms: float
    reference: str
    reference_ms: float

    @property
    def ratio(self) -> float:
        return self.ms / self.reference_ms if self.reference_ms > 0 else float('nan')

    def as_dict(self) -> dict:
        return {**asdict(self), 'ratio': self.ratio}


def _row(stage: str, figure: str, t: Timing, reference: str, ref_s: float) -> Row:
    return Row(stage, figure, t.min * 1e3, t.median * 1e3, reference, ref_s * 1e3)


def _size_name(size: tuple[int, int]) -> str:
    return f'{size[0]}x{size[1]}'


def compute_peak(device: torch.device, dtype: torch.dtype, quick: bool, repeats: int) -> float:
    """FLOP/s this machine reaches in ``dtype``: the better of a square matrix product and a
    3x3 convolution (channels_last, 256 channels), the kernels a network is made of.

    Both, because the libraries differ by CPU: on AMD EPYC torch's matmul reaches ~160 and
    oneDNN's convolution ~180 GFLOP/s, and a floor below what a network achieves is no floor.
    """
    n = 1024 if quick else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    channels, h, w = 256, 32 if quick else 64, 64 if quick else 128
    x = torch.randn(1, channels, h, w, device=device).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, channels, 3, 3, device=device).to(dtype)
    weight = weight.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        times = interleave(
            {
                'mm': lambda: torch.mm(a, b),
                'conv': lambda: torch.nn.functional.conv2d(x, weight, padding=1),
            },
            max(repeats, 10),
            device=device,
        )
    return max(2 * n**3 / times['mm'].min, 2 * channels**2 * 9 * h * w / times['conv'].min)


def _frames(size: tuple[int, int], n: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _input(size: tuple[int, int], device: torch.device, n: int = 1) -> torch.Tensor:
    return frames_to_tensor(list(_frames(size, n)), device)


def _onnxruntime(model: SegmentationNet, size: tuple[int, int], device: torch.device):
    """``model`` in ONNX Runtime at ``size`` with its session built (exported, or loaded from
    the cache), or ``None`` where the backend cannot run (not the CPU, packages missing)."""
    from tsa_ros.onnx_backend import OrtNetwork

    if device.type != 'cpu':
        return None
    try:
        network = OrtNetwork(copy.deepcopy(model))
    except ValueError:  # onnxruntime / onnx / onnxscript not installed
        return None
    network.session(size)
    return network


def network_rows(
    role: str,
    model: SegmentationNet,
    size: tuple[int, int],
    device: torch.device,
    repeats: int,
    peaks: dict[str, float],
) -> list[Row]:
    """The bare forward pass of one network per backend against the compute floor.

    Floor = the network's convolution FLOPs (2 x MACs) / this run's compute peak in that dtype.
    onnxruntime (CPU only): its graph ends in the arg-max, which runs whatever output is
    fetched, so its row includes one. For A (``role`` naming it), also the weight swap: a
    new predictor with new weights up to its first labels, against one onnxruntime forward.
    """
    model = model.to(device).eval()
    flops = 2 * count_conv_macs(model, input_size=size)
    x = _input(size, device)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    cases = {
        'eager fp32': lambda: model(x),
        'channels_last fp32': lambda: cl_model(x_cl),
    }
    bf16 = 'bf16' in peaks
    if bf16:

        def bf16_forward() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return cl_model(x_cl)

        cases['channels_last bf16 autocast'] = bf16_forward
    ort_network = _onnxruntime(model, size, device)
    swap = ort_network is not None and 'A' in role.split('/')
    if ort_network is not None:
        cases['onnxruntime fp32 (+argmax)'] = lambda: ort_network.logits(x)
    if swap:
        predictor = Predictor(
            copy.deepcopy(model), device=device, input_size=size, backend='onnxruntime'
        )
        predictor.warmup(size)  # the export is cached: a hash and a session
        weights = {k: v.clone() for k, v in model.state_dict().items()}
        cases['swap'] = lambda: predictor.with_weights(weights).infer(x)
    with torch.inference_mode():
        times = interleave(cases, repeats, device=device)
    name = f'{role} {model.config.arch} {_size_name(size)}'
    swap_time = times.pop('swap', None)
    rows = []
    for backend, t in times.items():
        rows.append(_row('network', f'{name} {backend}', t, 'fp32 floor', flops / peaks['fp32']))
        if bf16:
            rows.append(
                _row('network', f'{name} {backend}', t, 'bf16 floor', flops / peaks['bf16'])
            )
    if swap_time is not None:
        rows.append(
            _row(
                'network',
                f'{name} onnxruntime weight swap (with_weights to first labels)',
                swap_time,
                'one onnxruntime forward',
                times['onnxruntime fp32 (+argmax)'].min,
            )
        )
    return rows


def predictor_rows(
    model: SegmentationNet, size: tuple[int, int], device: torch.device, repeats: int
) -> list[Row]:
    """Frame in, labels (and posteriors) out, against the bare forward of the same network."""
    predictor = Predictor(copy.deepcopy(model), device=device, input_size=size)
    predictor.warmup(size)  # backend 'auto': the fastest path, as the segmenters choose
    frame = _frames(size)[0]
    x = _input(size, device)
    if predictor.backend != 'eager':
        x = x.contiguous(memory_format=torch.channels_last)
    net = predictor.model  # the same network in the same backend: the Predictor's overhead

    bf16 = predictor.backend == 'bf16'

    def bare() -> torch.Tensor:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
        ):
            return net(x)

    times = interleave(
        {
            'bare': bare,
            'labels': lambda: predictor.predict(frame),
            'labels+posteriors': lambda: predictor.predict(frame, posteriors_scale=0.25),
        },
        repeats,
        device=device,
    )
    name = f'Predictor {model.config.arch} {_size_name(size)} {predictor.backend}'
    return [
        _row('predictor', f'{name} {what}', times[what], 'bare forward', times['bare'].min)
        for what in ('labels', 'labels+posteriors')
    ]


def codec_rows(size: tuple[int, int], repeats: int) -> list[Row]:
    """Image message <-> numpy and frame -> tensor, against a memcpy of the same bytes."""
    frame = _frames(size)[0]
    target = np.empty_like(frame)
    fields = image_codec.encode(frame, 'rgb8')
    msg = SimpleNamespace(**fields._asdict())
    times = interleave(
        {
            'memcpy': lambda: np.copyto(target, frame),
            'numpy -> Image fields': lambda: bytes(image_codec.encode(frame, 'rgb8').data),
            'Image -> numpy': lambda: image_codec.to_rgb(msg),
            'frame -> tensor': lambda: frames_to_tensor(frame),
        },
        repeats,
    )
    ref = times.pop('memcpy').min
    name = _size_name(size)
    return [_row('codec', f'{what} {name}', t, 'memcpy', ref) for what, t in times.items()]


def _triplet_labels(size: tuple[int, int], disagree: float, seed: int = 0) -> list[np.ndarray]:
    """Three label maps that agree except on a fraction ``disagree`` of each one's pixels."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 19, size, dtype=np.uint8)
    maps = [base]
    for _ in range(2):
        other = base.copy()
        flip = rng.random(size) < disagree
        other[flip] = rng.integers(0, 19, int(flip.sum()), dtype=np.uint8)
        maps.append(other)
    return maps


def fusion_rows(size: tuple[int, int], repeats: int, disagree: float = 0.1) -> list[Row]:
    """Majority vote (every tie rule) and posterior fusion of one frame, against a memcpy of
    their inputs; each network disagrees with T on ``disagree`` of the pixels."""
    labels = _triplet_labels(size, disagree)
    rng = np.random.default_rng(1)
    post = [rng.random((19, *size), dtype=np.float32) for _ in range(3)]
    stacked_labels, stacked_post = np.stack(labels), np.stack(post)
    label_copy, post_copy = np.empty_like(stacked_labels), np.empty_like(stacked_post)
    cases = {
        'memcpy labels': lambda: np.copyto(label_copy, stacked_labels),
        'memcpy posteriors': lambda: np.copyto(post_copy, stacked_post),
    }
    for tie in fusion.TIE_RULES:
        cases[f'majority tie={tie}'] = lambda tie=tie: fusion.majority_vote(
            labels, tie=tie, posteriors=post
        )
    cases['posterior fusion'] = lambda: fusion.posterior_fusion_labels(post)
    times = interleave(cases, repeats)
    name = f'3 x {_size_name(size)}'
    rows = [
        _row('fusion', f'{what} {name}', times[what], 'memcpy labels', times['memcpy labels'].min)
        for what in cases
        if what.startswith('majority')
    ]
    rows.append(
        _row(
            'fusion',
            f'posterior fusion {name} x 19 classes',
            times['posterior fusion'],
            'memcpy posteriors',
            times['memcpy posteriors'].min,
        )
    )
    return rows


def attack_rows(
    model: SegmentationNet,
    size: tuple[int, int],
    device: torch.device,
    repeats: int,
    epsilons: tuple[float, ...] = (1.0, 10.0),
) -> list[Row]:
    """Least-likely attack (eqs. 7-10) per image against its iterations x a bare forward.

    One iteration is a forward and a backward pass (about 3 forwards), so a ratio near
    3 x iterations is the attack at the speed of the network.
    """
    model = model.to(device).eval()
    x = _input(size, device)

    def bare() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    cases = {'bare': bare}
    iterations = {}
    for eps in epsilons:
        cfg = AttackConfig(epsilon=eps)
        iterations[eps] = cfg.num_iterations
        cases[f'eps={eps:g}'] = lambda cfg=cfg: least_likely_attack(model, x, cfg)
    times = interleave(cases, repeats, warmup=0 if repeats < 3 else 1, device=device)
    name = f'{model.config.arch} {_size_name(size)}'
    return [
        _row(
            'attack',
            f'least-likely eps={eps:g} ({iterations[eps]} iterations) {name}',
            times[f'eps={eps:g}'],
            f'{iterations[eps] + 1} bare forwards',
            (iterations[eps] + 1) * times['bare'].min,
        )
        for eps in epsilons
    ]


def train_until_stopped(
    config: dict,
    size: tuple[int, int],
    nice: int,
    stop,
    steps,
    batch: int = 3,
    threads: int | None = None,
) -> None:
    """Child process: the learner's training loop on random frames (``batch`` a step, on
    ``threads`` intra-op threads, None = torch's default) until ``stop`` is set."""
    from tsa_ros.learning.online import LearnerConfig, OnlineLearner, lower_thread_priority

    # First, before torch starts its worker threads: they inherit the niceness (as the
    # learner node's training thread does).
    lower_thread_priority(nice)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    student = build_model(ModelConfig(**config))
    learner = OnlineLearner(student, LearnerConfig(device='cpu', nice=0))
    images = frames_to_tensor(list(_frames(size, batch)))
    probs = torch.softmax(torch.randn(batch, student.num_classes, *size), dim=1)
    while not stop.is_set():
        learner.train_step(images, probs)
        with steps.get_lock():
            steps.value += 1


def learner_rows(
    student: SegmentationNet, size: tuple[int, int], repeats: int, nice: int = 10
) -> list[Row]:
    """Learner steps per second, and S's latency while a learner process trains beside it
    (at niceness ``nice``, as the learner node runs) against S idle."""
    from tsa_ros.learning.online import LearnerConfig, OnlineLearner

    device = torch.device('cpu')
    learner = OnlineLearner(student, LearnerConfig(device='cpu', nice=0))
    images = frames_to_tensor(list(_frames(size, 3)))
    probs = torch.softmax(torch.randn(3, student.num_classes, *size), dim=1)
    model = copy.deepcopy(student).eval()
    x = _input(size, device)

    def bare() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    times = interleave(
        {'step': lambda: learner.train_step(images, probs), 'bare': bare}, repeats, warmup=1
    )
    name = f'{student.config.arch} {_size_name(size)}'
    rows = [
        _row(
            'learner',
            f'train step (batch 3) {name}',
            times['step'],
            '3 bare forwards (batch 1)',
            3 * times['bare'].min,
        )
    ]

    config = dict(vars(student.config))
    ctx = mp.get_context('spawn')
    stop, steps = ctx.Event(), ctx.Value('i', 0)
    child = ctx.Process(target=train_until_stopped, args=(config, size, nice, stop, steps))
    idle = interleave({'idle': bare}, repeats)['idle']
    child.start()
    try:
        deadline = time.monotonic() + 120
        while steps.value < 1 and child.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)  # measure only once the learner is really training
        if steps.value < 1:
            raise RuntimeError('the learner process did not complete a training step')
        with torch.inference_mode():
            busy = interleave({'busy': bare}, repeats, warmup=0)['busy']
    finally:
        stop.set()
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    rows.append(
        _row(
            'learner',
            f'S forward while a learner trains (nice {nice}) {name}',
            busy,
            'S forward idle',
            idle.min,
        )
    )
    return rows
