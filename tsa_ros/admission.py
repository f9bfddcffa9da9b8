"""Which camera frames the triplet segments: the same ones in every network, chosen by stamp.

A camera faster than the networks makes each node drop frames on its own, each a different
set, and a "majority" then often has one voter. Admission instead splits time into slots of
``1 / rate_hz`` seconds by the frame's header stamp and admits the first frame of each slot;
every node (T, S, A and the learner) applies the same rule to the same stream, so they admit
the same frames without talking to each other, and skip the rest before decoding them.

The guarantee needs each node to see the first frame of every slot: it holds while a node
segments an admitted frame in less than a slot (set ``rate_hz`` at or below what the slowest
network sustains) and its camera queue holds the frames that arrive meanwhile. A node that
falls behind anyway admits a later frame of the slot, which fusion then reports as an
incomplete frame, never a silent one.

Frames a node never received (its queue overflowed during a stall) cannot be counted where
they were lost, so they are inferred from the stamps: the camera period is the shortest of
the recent stamp gaps, and a gap of k periods means k - 1 frames missed (``lost``). With
``admitted + skipped + lost`` a node accounts for every frame of a regular camera; gaps
longer than ``PAUSE_S`` are a paused camera, not losses.
"""

from __future__ import annotations

import threading
from collections import deque

#: A stamp gap longer than this is a pause of the camera, not frames lost in a queue.
PAUSE_S = 2.0


class FrameAdmission:
    """First frame per stamp slot of ``1 / rate_hz`` s; ``rate_hz`` 0 admits every frame."""

    def __init__(self, rate_hz: float = 0.0) -> None:
        if not rate_hz >= 0:
            raise ValueError(f'admission rate must be >= 0 Hz (0 = every frame), got {rate_hz}')
        self.rate_hz = float(rate_hz)
        self._period_ns = round(1e9 / rate_hz) if rate_hz else 0
        self._last_slot: int | None = None
        self._last_stamp: int | None = None
        self._lock = threading.Lock()
        self._gaps: deque[int] = deque(maxlen=31)
        self.admitted = 0
        self.skipped = 0
        self.lost = 0

    def admit(self, stamp_ns: int) -> bool:
        """Whether the frame of this stamp is segmented; counts it either way."""
        with self._lock:
            # Stamps that go back (a replay restarting, a bag loop) start the slots afresh.
            rewound = self._last_stamp is not None and stamp_ns < self._last_stamp
            if self._last_stamp is not None and not rewound:
                self._count_lost(stamp_ns - self._last_stamp)
            elif rewound:
                self._gaps.clear()
            self._last_stamp = stamp_ns
            if not self._period_ns:
                self.admitted += 1
                return True
            slot = stamp_ns // self._period_ns
            if slot == self._last_slot and not rewound:
                self.skipped += 1
                return False
            self._last_slot = slot
            self.admitted += 1
            return True

    def _count_lost(self, gap_ns: int) -> None:
        if gap_ns <= 0 or gap_ns > PAUSE_S * 1e9:
            return
        if len(self._gaps) >= 5:
            # The shortest recent gap: losses only ever lengthen gaps, jitter barely shortens.
            period = min(self._gaps)
            self.lost += max(0, round(gap_ns / period) - 1)
        self._gaps.append(gap_ns)
