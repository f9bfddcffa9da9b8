"""Interleaved timing and the machine a timing was taken on.

A figure is only meaningful beside a reference measured in the same run on the same machine
(CPU models and their load differ between runs), so every case of one comparison is timed
round-robin: case A, case B, case A, ... Drifting load then shifts both alike, and their
ratio holds.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from tsa_ros.inference import has_bf16

__all__ = ['Timing', 'has_bf16', 'interleave', 'loadavg', 'machine']


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one case over its repetitions."""

    samples: tuple[float, ...]

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleave(
    cases: Mapping[str, Callable[[], object]],
    repeats: int,
    *,
    warmup: int = 1,
    device: torch.device | None = None,
) -> dict[str, Timing]:
    """Time every case ``repeats`` times, round-robin, after ``warmup`` untimed rounds."""
    if repeats < 1:
        raise ValueError(f'repeats must be >= 1, got {repeats}')
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    _sync(device)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: Timing(tuple(s)) for name, s in samples.items()}


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine(device: torch.device) -> dict:
    """CPU model, cores, threads, SIMD level, torch version and the load average now."""
    from tsa_ros.experiments.paper import environment

    env = environment()
    env['device'] = str(device)
    env['bf16'] = has_bf16(device)
    env['loadavg'] = loadavg()
    return env
