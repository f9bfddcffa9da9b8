"""Joining messages of several streams by header stamp, with a bounded buffer and a timeout.

The fusion node joins the three networks' results of one camera frame, the learner joins a
frame with the teacher's posteriors, the evaluator joins ground truth with every stream's
labels. All do it with :class:`StampJoiner`: pure Python, no ROS, driven by the caller's
clock so it is testable without waiting.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any


def stamp_ns(header: Any) -> int:
    """A ``std_msgs/Header``'s stamp (rclpy or rosbags type) as integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def split_ns(stamp: int) -> tuple[int, int]:
    """Integer nanoseconds as ``(sec, nanosec)`` of a ``builtin_interfaces/Time``."""
    return divmod(int(stamp), 1_000_000_000)


@dataclass
class JoinedGroup:
    """Items of one stamp; ``missing`` names the streams that never arrived (on timeout)."""

    stamp: int
    items: dict[Hashable, Any]
    missing: tuple[Hashable, ...] = ()


@dataclass
class _Pending:
    items: dict[Hashable, Any] = field(default_factory=dict)
    first_seen: float = 0.0


class StampJoiner:
    """Collects items per stamp until every required stream has delivered one.

    Args:
        streams: The stream keys a complete group needs.
        max_pending: Bound of stamps waiting at once; the oldest is given up (returned as a
            partial group) when a new stamp would exceed it.
        timeout: Seconds (of the caller's clock) after which an incomplete stamp is returned
            as a partial group by :meth:`expire`.
    """

    def __init__(
        self, streams: Iterable[Hashable], *, max_pending: int = 16, timeout: float = 1.0
    ):
        self.streams = tuple(streams)
        if not self.streams:
            raise ValueError('StampJoiner needs at least one stream')
        if max_pending < 1 or not timeout > 0:
            raise ValueError('max_pending must be >= 1 and timeout > 0')
        self.max_pending, self.timeout = max_pending, timeout
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self.received = 0  # items add() took (late ones included)
        self.completed = 0
        self.partial = 0
        self.late = 0  # items for a stamp that was already completed or given up
        self._done: OrderedDict[int, None] = OrderedDict()

    def add(self, stream: Hashable, stamp: int, item: Any, now: float) -> list[JoinedGroup]:
        """Add one item; returns the groups this completes or pushes out (oldest first)."""
        if stream not in self.streams:
            raise ValueError(f'unknown stream {stream!r}; expected one of {self.streams}')
        self.received += 1
        if stamp in self._done:
            self.late += 1
            return []
        out = []
        pending = self._pending.get(stamp)
        if pending is None:
            while len(self._pending) >= self.max_pending:
                out.append(self._give_up(next(iter(self._pending))))
            pending = self._pending[stamp] = _Pending(first_seen=now)
        pending.items[stream] = item
        if len(pending.items) == len(self.streams):
            del self._pending[stamp]
            self._mark_done(stamp)
            self.completed += 1
            out.append(JoinedGroup(stamp, pending.items))
        return out

    def expire(self, now: float) -> list[JoinedGroup]:
        """Give up the stamps that have waited longer than the timeout."""
        stale = [s for s, p in self._pending.items() if now - p.first_seen >= self.timeout]
        return [self._give_up(s) for s in stale]

    def _give_up(self, stamp: int) -> JoinedGroup:
        pending = self._pending.pop(stamp)
        self._mark_done(stamp)
        self.partial += 1
        missing = tuple(s for s in self.streams if s not in pending.items)
        return JoinedGroup(stamp, pending.items, missing)

    def _mark_done(self, stamp: int) -> None:
        self._done[stamp] = None
        while len(self._done) > 4 * self.max_pending:
            self._done.popitem(last=False)

    def __len__(self) -> int:
        return len(self._pending)
