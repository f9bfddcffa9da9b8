"""Pairs camera frames with the teacher's posteriors of the same stamp for the online learner.

The learner trains A on (frame, teacher posteriors) pairs (eq. 3 needs T's soft labels of
the very frame A sees). Frames and posteriors arrive on two topics, in any order, some never:
:class:`TeacherPairing` joins them by header stamp (:class:`~tsa_ros.sync.StampJoiner`),
brings frames to A's input size by the inference path's resize rule, and submits complete
pairs to the :class:`~tsa_ros.learning.online.OnlineLearner` queue, which never blocks.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from tsa_ros.inference import resize_frame
from tsa_ros.learning.online import OnlineLearner
from tsa_ros.sync import JoinedGroup, StampJoiner

__all__ = ['IMAGE', 'TEACHER', 'TeacherPairing']

IMAGE, TEACHER = 'image', 'teacher'


class TeacherPairing:
    """Join frames with teacher posteriors by stamp and feed the pairs to the learner.

    Args:
        learner: receives the pairs (:meth:`OnlineLearner.submit`).
        input_size: ``(H, W)`` A is trained at.
        resize: resize frames of another size to ``input_size``; else they are refused.
        max_pending: stamps waiting for their partner at once (the oldest is given up).
        timeout: seconds a stamp waits for its partner before it is given up.
        count: called with a counter name for every event (``image.late``,
            ``teacher.unmatched``, ``pairs.submitted`` ...), e.g. a node's diagnostics.
        reject: called with (reason, detail) for a pair the learner refused.

    Thread-safe: the two inputs and :meth:`expire` may be called from different threads.
    """

    def __init__(
        self,
        learner: OnlineLearner,
        *,
        input_size: tuple[int, int],
        resize: bool,
        max_pending: int,
        timeout: float,
        count: Callable[[str], None] = lambda name: None,
        reject: Callable[[str, str], None] = lambda reason, detail: None,
    ) -> None:
        self.learner = learner
        self.input_size = tuple(input_size)
        self.resize = resize
        self._count = count
        self._reject = reject
        self._lock = threading.Lock()
        self._joiner = StampJoiner((IMAGE, TEACHER), max_pending=max_pending, timeout=timeout)

    def add_frame(self, stamp: int, rgb: np.ndarray, now: float) -> None:
        """A camera frame (uint8 RGB); ``ValueError`` when its size does not fit A."""
        height, width = self.input_size
        if rgb.shape[:2] != (height, width):
            if not self.resize:
                raise ValueError(
                    f'frame {rgb.shape[1]}x{rgb.shape[0]} != model.input_size {width}x{height}; '
                    'set resize:=true to resize frames'
                )
            rgb = resize_frame(rgb, (height, width))  # the segmenters' rule
        self._add(IMAGE, stamp, rgb, now)

    def add_teacher(self, stamp: int, probs: np.ndarray, now: float) -> None:
        """The teacher's posteriors ``(C, h, w)``; ``ValueError`` for a wrong class count."""
        classes = self.learner.adaptive.num_classes
        if probs.ndim != 3 or probs.shape[0] != classes:
            raise ValueError(
                f'teacher posteriors of shape {probs.shape}: need ({classes}, H, W) for A'
            )
        self._add(TEACHER, stamp, probs, now)

    def expire(self, now: float) -> None:
        """Give up the stamps whose partner did not come within the timeout."""
        with self._lock:
            groups = self._joiner.expire(now)
        self._submit(groups)

    def _add(self, stream: str, stamp: int, item: np.ndarray, now: float) -> None:
        with self._lock:
            late = self._joiner.late
            groups = self._joiner.add(stream, stamp, item, now)
            if self._joiner.late > late:
                self._count(f'{stream}.late')
        self._submit(groups)

    def _submit(self, groups: list[JoinedGroup]) -> None:
        for group in groups:
            if group.missing:
                # A frame without teacher posteriors has no target: it is not trained on.
                for stream in group.items:
                    self._count(f'{stream}.unmatched')
                continue
            try:
                # Never blocks: a full queue drops its oldest frame (counted by the learner).
                self.learner.submit(group.items[IMAGE], group.items[TEACHER])
            except ValueError as exc:
                self._reject('pair', str(exc))
                continue
            self._count('pairs.submitted')
