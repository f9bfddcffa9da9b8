"""The triplet as the graph runs it: T, S and A in three processes on the same frame.

In the graph every segmenter is its own process and all three receive each camera frame at
once, so on a small CPU they compete for the same cores; the learner trains beside them. The
bare forward of one network says little about that. Here three worker processes (plus, if
asked, a training process at the learner's niceness) segment one frame together per round,
released by a barrier, for each per-process thread budget; every figure is set beside the
network's bare forward timed alone in the same run. No ROS: these are the costs the graph
adds by contention, before any message passing (``tsa bench``'s graph figures add that).
"""

from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import torch

from tsa_ros.bench.figures import train_until_stopped
from tsa_ros.bench.timing import Timing, interleave
from tsa_ros.inference import Predictor
from tsa_ros.models import ModelConfig, build_model
from tsa_ros.threads import available_cores

__all__ = ['ROLES', 'run_triplet', 'triplet_models', 'triplet_rows']

ROLES = ('teacher', 'student', 'adaptive')


def triplet_models(size: tuple[int, int]) -> dict[str, dict]:
    """ModelConfig fields of T (DeepLabV3+ ResNet-18) and S / A (ERFNet), as config/cpu.yaml."""
    teacher = dict(arch='deeplabv3plus', backbone='resnet18', output_stride=16)
    student = dict(arch='erfnet')
    return {
        role: dict(num_classes=19, input_size=tuple(size), **net)
        for role, net in zip(ROLES, (teacher, student, student), strict=True)
    }


def _segmenter(config, seed, size, threads, start, done, times, slot, rounds) -> None:
    """Worker: one network at ``threads`` intra-op threads, one frame per released round."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    predictor = Predictor(build_model(ModelConfig(**config)), device='cpu')
    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    predictor.predict(frame)  # the first call allocates
    for r in range(rounds):
        start.wait()
        t0 = time.perf_counter()
        predictor.predict(frame)
        times[slot * rounds + r] = time.perf_counter() - t0
        done.wait()


def run_triplet(
    size: tuple[int, int],
    threads: int,
    rounds: int,
    learner: tuple[int, int] | None = None,
) -> dict[str, Timing]:
    """Per-role seconds (and ``'wall'``: all three done) of ``rounds`` rounds of the triplet.

    ``learner``: ``(threads, nice)`` of a training process running meanwhile, or ``None``.
    """
    ctx = mp.get_context('spawn')
    configs = triplet_models(size)
    start, done = ctx.Barrier(len(ROLES) + 1), ctx.Barrier(len(ROLES) + 1)
    times = ctx.Array('d', len(ROLES) * rounds)
    workers = [
        ctx.Process(
            target=_segmenter,
            args=(configs[role], seed, size, threads, start, done, times, slot, rounds),
            daemon=True,
        )
        for slot, (role, seed) in enumerate(zip(ROLES, (1, 2, 3), strict=True))
    ]
    stop, steps = ctx.Event(), ctx.Value('i', 0)
    trainer = None
    if learner is not None:
        threads, nice = learner
        trainer = ctx.Process(
            target=train_until_stopped,
            args=(configs['student'], size, nice, stop, steps),
            kwargs={'batch': 2, 'threads': threads},  # batch 2, as config/cpu.yaml
            daemon=True,
        )
    wall = []
    try:
        for worker in workers:
            worker.start()
        if trainer is not None:
            trainer.start()
            deadline = time.monotonic() + 120
            while steps.value < 1 and trainer.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)  # measure only once the learner really trains
            if steps.value < 1:
                raise RuntimeError('the learner process did not complete a training step')
        for _ in range(rounds):
            start.wait(timeout=300)
            t0 = time.perf_counter()
            done.wait(timeout=300)
            wall.append(time.perf_counter() - t0)
    finally:
        stop.set()
        for proc in (*workers, *([trainer] if trainer else [])):
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    out = {
        role: Timing(tuple(times[slot * rounds : (slot + 1) * rounds]))
        for slot, role in enumerate(ROLES)
    }
    out['wall'] = Timing(tuple(wall))
    return out


def bare_forwards(size: tuple[int, int], repeats: int) -> dict[str, Timing]:
    """Each network's Predictor alone in this process (its thread setting), interleaved."""
    frame = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    predictors = {}
    for (role, config), seed in zip(triplet_models(size).items(), (1, 2, 3), strict=True):
        torch.manual_seed(seed)
        predictors[role] = Predictor(build_model(ModelConfig(**config)), device='cpu')
    return interleave(
        {role: (lambda p=p: p.predict(frame)) for role, p in predictors.items()}, repeats
    )


def triplet_rows(size: tuple[int, int], repeats: int, learner_nice: int = 10) -> list:
    """Rows of ``tsa bench``: the triplet per thread budget, idle and beside the learner."""
    from tsa_ros.bench.figures import Row

    name = f'{size[0]}x{size[1]}'
    cores = available_cores()
    default_threads = torch.get_num_threads()
    bare = bare_forwards(size, repeats)
    serial = sum(bare[r].min for r in ROLES)
    rows = []
    budgets = sorted({1, max(1, cores // 2), cores})
    for threads in budgets:
        runs = {'idle': run_triplet(size, threads, repeats)}
        runs['learner'] = run_triplet(size, threads, repeats, learner=(1, learner_nice))
        for case, timings in runs.items():
            beside = (
                '' if case == 'idle' else f', learner training (1 thread, nice {learner_nice})'
            )
            label = f'{threads} thread(s) each{beside}'
            for role in ROLES:
                t = timings[role]
                rows.append(
                    Row(
                        'triplet',
                        f'{role} in the triplet, {label}, {name}',
                        t.min * 1e3,
                        t.median * 1e3,
                        f'{role} alone ({default_threads} threads)',
                        bare[role].min * 1e3,
                    )
                )
            t = timings['wall']
            rows.append(
                Row(
                    'triplet',
                    f'all three done, {label}, {name}',
                    t.min * 1e3,
                    t.median * 1e3,
                    'T + S + A one after another',
                    serial * 1e3,
                )
            )
    return rows
