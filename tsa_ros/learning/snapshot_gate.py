"""Which weight snapshot the adaptive segmenter may swap in: lineage, order and bounded steps.

A learner names its run of snapshots with a *lineage* id, kept in its checkpoint: a resumed
learner continues its lineage and version sequence, a learner started without a checkpoint
begins a new lineage at version 1. The adaptive segmenter

* accepts a snapshot of its current lineage only when the version grows, and by at most
  ``max_step`` (a snapshot at a far-off version, by mistake or malice of a key holder, would
  otherwise make A refuse every genuine snapshot after it);
* adopts a new lineage (a restarted learner) at whatever version it starts, retiring the old
  one, so a restart never freezes A;
* refuses snapshots of a retired lineage, so a recorded old snapshot cannot roll A back.

Signatures are checked before this gate, sizes and values after it; the gate only orders.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

#: Default bound on a version jump: at one snapshot per 2.5 s (a fast GPU learner) about
#: seven hours of snapshots that A may have missed.
MAX_VERSION_STEP = 10_000


@dataclass(frozen=True)
class GateVerdict:
    """Outcome of :meth:`SnapshotGate.check`: ``reason`` is '' when the snapshot may load."""

    reason: str = ''
    message: str = ''
    new_lineage: bool = False

    @property
    def accepted(self) -> bool:
        return not self.reason


class SnapshotGate:
    """Tracks A's lineage and version; thread-safe (frames and snapshots on other threads)."""

    def __init__(self, max_step: int = MAX_VERSION_STEP) -> None:
        if max_step < 1:
            raise ValueError(f'max_step must be >= 1, got {max_step}')
        self.max_step = max_step
        self.lineage = ''  # '' = A still runs S (version 0)
        self.version = 0
        self._retired: set[str] = set()
        self._lock = threading.Lock()

    def check(self, lineage: str, version: int) -> GateVerdict:
        """Whether a snapshot (lineage, version) may replace the loaded weights."""
        with self._lock:
            return self._check(lineage, version)

    def _check(self, lineage: str, version: int) -> GateVerdict:
        if not lineage:
            return GateVerdict('weights_lineage', f'snapshot version {version} has no lineage')
        if lineage in self._retired:
            return GateVerdict(
                'weights_lineage',
                f'snapshot version {version} belongs to retired lineage {lineage}',
            )
        if lineage != self.lineage:
            return GateVerdict(new_lineage=bool(self.lineage))
        if version <= self.version:
            return GateVerdict(
                'weights_version',
                f'snapshot version {version} <= loaded version {self.version}',
            )
        if version - self.version > self.max_step:
            return GateVerdict(
                'weights_step',
                f'snapshot version {version} jumps {version - self.version} beyond loaded '
                f'version {self.version} (at most {self.max_step})',
            )
        return GateVerdict()

    def commit(self, lineage: str, version: int) -> bool:
        """Record a loaded snapshot; False (nothing changes) if it no longer passes the gate,
        e.g. a newer snapshot was committed while this one was loading."""
        with self._lock:
            if not self._check(lineage, version).accepted:
                return False
            if lineage != self.lineage and self.lineage:
                self._retired.add(self.lineage)
            self.lineage, self.version = lineage, int(version)
            return True
