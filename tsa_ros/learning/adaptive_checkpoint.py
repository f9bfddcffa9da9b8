"""A's checkpoint across restarts of the online learner, and the snapshot version policy.

The adaptive segmenter accepts a snapshot only when its version is higher than the one it
runs, so versions must keep growing across restarts of the learner: the checkpoint stores
the published version next to A's weights and step, and a resumed learner continues from
there. One version number never names two different sets of weights: progress made after
the last snapshot is saved under the next version. The checkpoint also keeps the lineage id
(:mod:`tsa_ros.learning.snapshot_gate`); a learner without one starts a new lineage, which
the adaptive segmenter adopts instead of waiting for versions it has already passed.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from tsa_ros.learning.online import OnlineLearner, WeightSnapshot
from tsa_ros.models import ModelConfig, build_model, load_checkpoint, save_checkpoint
from tsa_ros.models.checkpoint import CheckpointError

__all__ = ['AUTO', 'AdaptiveCheckpoint', 'SavedState', 'checkpoint_file', 'new_lineage']

#: checkpoint_path value that picks a file per student (see checkpoint_file).
AUTO = 'auto'


def checkpoint_file(
    setting: str, student_sha256: str, config: ModelConfig | None = None
) -> Path | None:
    """Where A is checkpointed: '' = nowhere; 'auto' = one file per S under the user's
    state directory (``$XDG_STATE_HOME`` or ``~/.local/state``, then
    ``tsa_ros/adaptive-<first 16 hex digits of S's weights sha256>[-<arch>-<H>x<W>].pt``), so
    an A is only ever resumed on top of the S it was adapted from, at the size it was adapted
    at (the same seeded S at another input size must not find a file it cannot load);
    anything else is a path (``~`` ok)."""
    if not setting:
        return None
    if setting == AUTO:
        state = os.environ.get('XDG_STATE_HOME') or Path.home() / '.local' / 'state'
        suffix = ''
        if config is not None:
            height, width = config.input_size
            suffix = f'-{config.arch}-{height}x{width}'
        return Path(state) / 'tsa_ros' / f'adaptive-{student_sha256[:16]}{suffix}.pt'
    return Path(setting).expanduser()


def new_lineage() -> str:
    """A fresh lineage id: 16 random hex digits, so two learner runs never share one."""
    return secrets.token_hex(8)


@dataclass
class SavedState:
    """A's weights with the step and the published version they belong to."""

    state_dict: dict[str, Tensor]
    step: int
    version: int


class AdaptiveCheckpoint:
    """Resume, periodic and final checkpoints of A, and the versions snapshots publish under.

    Args:
        path: checkpoint file; ``None`` or empty = no checkpoint (every start begins from S,
            versions from 0).
        config: A's architecture; a checkpoint of another architecture is refused
            (``CheckpointError``) instead of being overwritten later by a fresh A.
        every_s: a snapshot is written at most this often (0 = every snapshot); the final
            checkpoint is always written.
        clock: monotonic seconds (injectable for tests).
        student_sha256: sha256 of the weights of the S that A starts from; stored, and a
            checkpoint of an A adapted from another S is refused instead of resumed.
    """

    def __init__(
        self,
        path: str | Path | None,
        config: ModelConfig,
        every_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        student_sha256: str = '',
    ) -> None:
        if not every_s >= 0:
            raise ValueError(f'every_s must be >= 0, got {every_s}')
        self.path = Path(path) if path else None
        self.config = config
        self.student_sha256 = student_sha256
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_write = clock()
        # A CPU model the state dicts are loaded into, because save_checkpoint takes a net.
        self._model = build_model(config) if self.path else None
        #: Published version of the learner's own snapshot 0 (the resumed weights).
        self.version_offset = 0
        #: The run of snapshots this learner publishes (see snapshot_gate): new unless resumed.
        self.lineage = new_lineage()
        self.resumed_lineage = False

    def resume(self) -> SavedState | None:
        """A's saved state when the checkpoint exists (and remember its version), else None."""
        if self.path is None or not self.path.is_file():
            return None
        saved, meta = load_checkpoint(self.path, expected=self.config)
        extra = meta['extra']
        stored = str(extra.get('student_sha256', ''))
        if stored and self.student_sha256 and stored != self.student_sha256:
            raise CheckpointError(
                f'{self.path} holds an A adapted from another S (weights sha256 '
                f'{stored[:16]}, this S has {self.student_sha256[:16]}); resuming it would '
                'mix two students: point checkpoint_path elsewhere (or use auto), or move '
                'the file away'
            )
        self.version_offset = int(extra.get('version', 0))
        if extra.get('lineage'):  # checkpoints written before lineages keep the new one
            self.lineage, self.resumed_lineage = str(extra['lineage']), True
        return SavedState(saved.state_dict(), int(extra.get('step', 0)), self.version_offset)

    def version(self, snapshot: WeightSnapshot) -> int:
        """The version a snapshot is published under (the learner counts from 0 each start)."""
        return self.version_offset + snapshot.version

    def due(self) -> bool:
        """Whether the next snapshot should be written (``every_s`` since the last write)."""
        return self.path is not None and self._clock() - self._last_write >= self.every_s

    def write(self, state: SavedState) -> None:
        """Write ``state`` atomically (save_checkpoint renames a complete temp file)."""
        if self.path is None:
            return
        with self._lock:
            self._model.load_state_dict(state.state_dict)
            save_checkpoint(
                self.path,
                self._model,
                extra={
                    'step': state.step,
                    'version': state.version,
                    'lineage': self.lineage,
                    'student_sha256': self.student_sha256,
                },
            )
            self._last_write = self._clock()

    def final_state(self, learner: OnlineLearner, stopped: bool) -> SavedState:
        """What to save on shutdown: the live A if it moved on since its last snapshot.

        ``stopped`` says the training thread has finished; otherwise (it failed or is still
        running) the last snapshot is the last consistent state.
        """
        snap = learner.latest_snapshot()
        state = SavedState(snap.state_dict, snap.step, self.version(snap))
        if stopped and learner.stats.step > snap.step:
            live = learner.adaptive.state_dict()
            weights = {k: v.detach().to('cpu') for k, v in live.items()}
            state = SavedState(weights, learner.stats.step, state.version + 1)
        return state
