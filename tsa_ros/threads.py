"""Thread budgets of the graph's processes: how many intra-op threads each network gets.

Every segmenter of the triplet is its own process and all three receive each frame at once,
so they compete for the same cores; torch's default (one thread per core in every process)
oversubscribes the machine. Measured with ``tsa bench`` (the triplet rows: T, S and A
segmenting one 64x128 frame together in three processes on a 2-core AMD EPYC): with 2
threads each the three took 3.2 s to finish, with 1 thread each 85 ms, less than one of them
alone at 2 threads. The cores are therefore divided among the networks that run together,
and the learner, which must yield to them, gets one thread.
"""

from __future__ import annotations

import os

__all__ = ['LEARNER_THREADS', 'SEGMENTERS', 'available_cores', 'segmenter_threads']

#: Networks of the triplet that segment each frame at the same time.
SEGMENTERS = 3
#: Intra-op threads of the learner's training (it runs beside the segmenters and yields).
LEARNER_THREADS = 1


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def segmenter_threads(num_threads: int = 0, cores: int | None = None) -> int:
    """``num_threads`` when set (> 0), else the available cores shared by the three
    segmenters, at least one each."""
    if num_threads < 0:
        raise ValueError(f'num_threads must be >= 0 (0 = auto), got {num_threads}')
    if num_threads:
        return num_threads
    return max(1, (cores or available_cores()) // SEGMENTERS)
