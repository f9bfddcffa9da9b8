"""Online adaptation of the adaptive student A (Bär et al. 2019, sec. 3.3), free of ROS.

:class:`OnlineLearner` owns A (initialised as a copy of the static student S, θ_A,t=0 = θ_S)
and a frozen copy of S. Camera frames paired with the teacher's posteriors are pushed into a
bounded queue (:meth:`OnlineLearner.submit`, never blocks, drops the oldest frame when full);
a background thread draws mini-batches and minimises J_TS = (1-α)·J_CE + α·J_IFM (eqs. 3-6)
with Adam. Every ``snapshot_every`` steps it publishes a versioned, immutable weight snapshot
that other threads (the ROS learner node, a segmenter) can read without locks of their own.

The same class serves the offline quasi-online experiment: :meth:`OnlineLearner.train_step`
runs one synchronous step on a given batch, which is exactly what the thread does.
"""

from __future__ import annotations

import copy
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsa_ros.inference import frames_to_tensor, resolve_device
from tsa_ros.learning.losses import TSLossConfig, TSLossTerms, ts_objective


@dataclass
class LearnerConfig:
    """Hyper-parameters of the online learner (paper sec. 4.3 defaults).

    Attributes:
        lr: Constant Adam learning rate (paper: 1e-5).
        batch_size: Frames per optimisation step (paper: 3).
        queue_size: Bound of the frame queue; the oldest frame is dropped when it is full.
        snapshot_every: Publish a weight snapshot every this many steps.
        loss: α, β, γ and p of eqs. (4)-(6).
        train_mode: Run A in train mode (batch-norm statistics updated, dropout on). Off by
            default: a batch of 3 gives unreliable batch-norm statistics, and dropout would make
            A's features differ from S's by noise alone, so J_FM would measure dropout instead
            of the parameter change that IFM is meant to drive.
        grad_clip: Optional max gradient norm.
        device: 'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available).
        nice: Niceness added to the training thread (Linux; 0 = none): training takes the
            CPU the segmenters leave, instead of slowing the networks that vote.
    """

    lr: float = 1e-5
    batch_size: int = 3
    queue_size: int = 32
    snapshot_every: int = 50
    loss: TSLossConfig = field(default_factory=TSLossConfig)
    train_mode: bool = False
    grad_clip: float | None = None
    device: str = 'auto'
    nice: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.nice <= 19:
            raise ValueError(f'learner nice must be in [0, 19], got {self.nice}')
        if isinstance(self.loss, dict):
            self.loss = TSLossConfig(**self.loss)
        if not self.lr > 0:
            raise ValueError(f'learner lr must be > 0, got {self.lr}')
        for name in ('batch_size', 'queue_size', 'snapshot_every'):
            if int(getattr(self, name)) < 1:
                raise ValueError(f'learner {name} must be >= 1, got {getattr(self, name)}')
        if self.queue_size < self.batch_size:
            raise ValueError(
                f'learner queue_size ({self.queue_size}) must be >= batch_size ({self.batch_size})'
            )
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f'learner grad_clip must be > 0 or None, got {self.grad_clip}')


def lower_thread_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's niceness (Linux threads have their own)."""
    if nice and hasattr(os, 'setpriority'):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))


@dataclass(frozen=True)
class WeightSnapshot:
    """An immutable copy of A's weights (tensors on the CPU)."""

    version: int
    step: int
    state_dict: dict[str, Tensor]
    created: float


@dataclass
class LearnerStats:
    """Counters and the last loss terms, as plain floats (safe to read from any thread)."""

    step: int = 0
    frames_received: int = 0
    frames_dropped: int = 0
    steps_skipped: int = 0
    holds: int = 0
    snapshot_version: int = 0
    ce: float = math.nan
    fm: float = math.nan
    ifm: float = math.nan
    ts: float = math.nan
    lr: float = math.nan


def image_to_tensor(image: np.ndarray | Tensor) -> Tensor:
    """An RGB image as float (3, H, W) gray values in [0, 255].

    Accepts uint8 (H, W, 3) arrays (the package's image contract) or (3, H, W) tensors.
    """
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f'image must be (H, W, 3) RGB, got shape {image.shape}')
        return frames_to_tensor(image)[0]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f'image tensor must be (3, H, W), got shape {tuple(image.shape)}')
    return image.float()


class OnlineLearner:
    """Adapts A towards the teacher and away from S in a background thread (eqs. 3-6).

    Args:
        student: The trained static student S; it is copied twice (frozen S and trainable A)
            and not modified.
        config: Learner hyper-parameters.
        adaptive_state: Optional state dict to start A from (resume after a restart);
            default is θ_A = θ_S.
        start_step: Step counter to resume from.
    """

    def __init__(
        self,
        student: nn.Module,
        config: LearnerConfig | None = None,
        *,
        adaptive_state: dict[str, Tensor] | None = None,
        start_step: int = 0,
    ) -> None:
        self.config = config or LearnerConfig()
        self.device = resolve_device(self.config.device)
        self.static = copy.deepcopy(student).to(self.device).eval()
        self.static.requires_grad_(False)
        self.adaptive = copy.deepcopy(student).to(self.device)
        self.adaptive.requires_grad_(True)
        if adaptive_state is not None:
            self.adaptive.load_state_dict(adaptive_state)
        self.adaptive.train(self.config.train_mode)
        self.optimizer = torch.optim.Adam(self.adaptive.parameters(), lr=self.config.lr)
        # Last weights known to be finite, restored when a step produces NaN/inf weights.
        self._good = [p.detach().clone() for p in self.adaptive.parameters()]

        self._queue: deque[tuple[Tensor, Tensor]] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._hold_until = 0.0  # time.monotonic() before which no step starts
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._snapshot_lock = threading.Lock()
        self._snapshot: WeightSnapshot | None = None
        self._frame_shape: tuple[int, int] | None = None
        self.stats = LearnerStats(step=start_step, lr=self.config.lr)
        self.snapshot_callbacks: list[Callable[[WeightSnapshot], None]] = []
        self._publish_snapshot()

    # ------------------------------------------------------------------ producer side
    def submit(self, image: np.ndarray | Tensor, teacher_probs: np.ndarray | Tensor) -> bool:
        """Queue one (frame, teacher posteriors) pair; never blocks.

        Args:
            image: RGB uint8 (H, W, 3) array or float (3, H, W) tensor in [0, 255].
            teacher_probs: Teacher posteriors (C, h, w), any float dtype; resized to (H, W)
                when the teacher published them at a lower resolution.

        Returns:
            False when the queue was full and the oldest frame was dropped to make room.
        """
        x = image_to_tensor(image)
        probs = torch.as_tensor(teacher_probs)
        if probs.ndim != 3:
            raise ValueError(f'teacher_probs must be (C, H, W), got shape {tuple(probs.shape)}')
        if not torch.isfinite(x).all() or not torch.isfinite(probs.float()).all():
            raise ValueError('frame or teacher posteriors contain NaN or inf; frame rejected')
        shape = (x.shape[1], x.shape[2])
        with self._cond:
            if self._frame_shape is None:
                self._frame_shape = shape
            elif shape != self._frame_shape:
                raise ValueError(
                    f'frame size {shape} differs from the stream size {self._frame_shape}; '
                    'frames of one batch must share a size'
                )
            dropped = len(self._queue) >= self.config.queue_size
            if dropped:
                self._queue.popleft()
                self.stats.frames_dropped += 1
            self._queue.append((x, probs))
            self.stats.frames_received += 1
            self._cond.notify()
        return not dropped

    def hold(self, seconds: float) -> None:
        """Start no training step for ``seconds`` from now (a step under way finishes); frames
        keep queueing meanwhile, the oldest dropped when the queue is full. The graph yields
        the CPU this way to segmenters that fall behind."""
        if not seconds >= 0:
            raise ValueError(f'hold must be >= 0 s, got {seconds}')
        with self._cond:
            until = time.monotonic() + seconds
            if until > self._hold_until:
                if self._hold_until <= time.monotonic():
                    self.stats.holds += 1  # a new hold, not an extension of one
                self._hold_until = until

    @property
    def held(self) -> bool:
        """Whether training is on hold now."""
        return time.monotonic() < self._hold_until

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._queue)

    # ------------------------------------------------------------------ training
    def train_step(self, images: Tensor, teacher_probs: Tensor) -> TSLossTerms | None:
        """One Adam step on J_TS (eq. 6) for a batch; the thread runs exactly this.

        Args:
            images: Float (N, 3, H, W) gray values in [0, 255].
            teacher_probs: Teacher posteriors (N, C, h, w); resized bilinearly to (H, W).

        Returns:
            The detached loss terms, or None when the step was skipped because the loss,
            the gradients or the updated weights were not finite (weights then restored).
        """
        images = images.to(self.device, torch.float32)
        probs = teacher_probs.to(self.device, torch.float32)
        if probs.shape[-2:] != images.shape[-2:]:
            probs = F.interpolate(
                probs, size=images.shape[-2:], mode='bilinear', align_corners=False
            )
        with torch.no_grad():
            _, features_s = self.static(images, return_features=True)
        logits_a, features_a = self.adaptive(images, return_features=True)
        terms = ts_objective(logits_a, features_a, features_s, probs, self.config.loss)

        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(terms.ts):
            return self._skip()
        terms.ts.backward()
        params = [p for p in self.adaptive.parameters() if p.grad is not None]
        if self.config.grad_clip is not None:
            norm = nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad) for p in params])
            )
        if not torch.isfinite(norm):
            return self._skip()
        self.optimizer.step()
        if not all(torch.isfinite(p).all() for p in self.adaptive.parameters()):
            with torch.no_grad():
                torch._foreach_copy_(list(self.adaptive.parameters()), self._good)
            # Adam's moments may hold the inf that broke the step: start them afresh.
            self.optimizer.state.clear()
            return self._skip()
        with torch.no_grad():
            torch._foreach_copy_(self._good, [p.detach() for p in self.adaptive.parameters()])

        detached = TSLossTerms(*(t.detach() for t in (terms.ce, terms.fm, terms.ifm, terms.ts)))
        self.stats.step += 1
        self.stats.ce, self.stats.fm = float(detached.ce), float(detached.fm)
        self.stats.ifm, self.stats.ts = float(detached.ifm), float(detached.ts)
        if self.stats.step % self.config.snapshot_every == 0:
            self._publish_snapshot()
        return detached

    def _skip(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.stats.steps_skipped += 1
        return None

    def _next_batch(self, timeout: float) -> tuple[Tensor, Tensor] | None:
        """Pop batch_size frames (oldest first) once that many are queued."""
        with self._cond:
            ready = self._cond.wait_for(
                lambda: (
                    (len(self._queue) >= self.config.batch_size and not self.held)
                    or self._stop.is_set()
                ),
                timeout=timeout,
            )
            if not ready or self._stop.is_set():
                return None
            items = [self._queue.popleft() for _ in range(self.config.batch_size)]
        images = torch.stack([x for x, _ in items])  # (N, 3, H, W)
        probs = torch.stack([p.float() for _, p in items])  # (N, C, h, w)
        return images, probs

    def _run(self) -> None:
        # Before the first torch call: the thread's OpenMP team inherits its niceness.
        lower_thread_priority(self.config.nice)
        try:
            while not self._stop.is_set():
                wait = self._hold_until - time.monotonic()
                if wait > 0:
                    self._stop.wait(min(wait, 0.1))
                    continue
                batch = self._next_batch(timeout=0.1)
                if batch is not None:
                    self.train_step(*batch)
        except BaseException as exc:  # surfaced by stop() / error
            self._error = exc

    # ------------------------------------------------------------------ snapshots
    def _publish_snapshot(self) -> WeightSnapshot:
        state = {k: v.detach().to('cpu', copy=True) for k, v in self.adaptive.state_dict().items()}
        with self._snapshot_lock:
            version = 0 if self._snapshot is None else self._snapshot.version + 1
            snap = WeightSnapshot(version, self.stats.step, state, time.time())
            self._snapshot = snap
            self.stats.snapshot_version = version
        for callback in list(self.snapshot_callbacks):
            callback(snap)
        return snap

    def latest_snapshot(self) -> WeightSnapshot:
        """The newest snapshot (version 0 is the initial A = S)."""
        with self._snapshot_lock:
            assert self._snapshot is not None
            return self._snapshot

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the training thread, if any."""
        return self._error

    def start(self) -> None:
        """Start the background training thread (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name='tsa-online-learner', daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the thread to finish its current step and join it; re-raise its error."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f'online learner thread did not stop within {timeout} s')
            self._thread = None
        if self._error is not None:
            raise RuntimeError('online learner thread failed') from self._error

    def __enter__(self) -> OnlineLearner:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
