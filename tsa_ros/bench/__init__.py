"""``tsa bench``: what every stage of the package costs on this machine, beside its floor.

Each figure is printed with a reference measured in the same run (interleaved with it, the
minimum of the repetitions; the median too): a network's forward pass against its
convolution FLOPs at this machine's measured compute peak, the ``Predictor`` against the bare
forward, codec and fusion against a memcpy of their bytes, an attack against its iterations
in forwards, S's latency while the learner trains against S idle, and T, S and A segmenting
one frame together in three processes (as the graph runs them) per thread budget against
each alone; and the running ``tsa`` graph: camera-to-fused latency against the slowest
network's bare forward, the ROS overhead, and the bytes of every topic's messages
(:mod:`tsa_ros.bench.graph`). The machine (CPU model,
threads, load average before and after) goes with the numbers: ratios hold across machines,
absolute times do not.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from tsa_ros.bench import figures
from tsa_ros.bench.graph import graph_rows, messages_markdown, run_graph_bench
from tsa_ros.bench.timing import has_bf16, machine
from tsa_ros.bench.triplet import triplet_rows

__all__ = ['add_arguments', 'main_from_args', 'markdown', 'run']

FULL_SIZES = ((256, 512), (512, 1024))
QUICK_SIZES = ((64, 128),)


def _log(message: str) -> None:
    print(f'[tsa bench] {message}', file=sys.stderr, flush=True)


def run(
    *,
    quick: bool = False,
    device: str = 'cpu',
    sizes: tuple[tuple[int, int], ...] | None = None,
    repeats: int | None = None,
    config: str | None = None,
    params: tuple[str, ...] = ('',),
    graph: bool = True,
) -> dict[str, Any]:
    """Measure every figure; returns ``{'machine_before', 'machine_after', 'rows', ...}``.

    ``params`` are the graph's params files, one set of graph rows each (ros__parameters
    form, '' = the package's cpu.yaml
    on a CPU); ``graph=False`` leaves the graph rows out.
    """
    from tsa_ros.config import TSAConfig, load_config
    from tsa_ros.inference import resolve_device
    from tsa_ros.models import build_model

    dev = resolve_device(device)
    cfg = load_config(config) if config else TSAConfig()
    sizes = tuple(sizes or (QUICK_SIZES if quick else FULL_SIZES))
    repeats = repeats or (3 if quick else 5)
    before = machine(dev)
    _log(f'{before["cpu"]}, {before["threads"]} threads, load {before["loadavg"]}')

    torch.manual_seed(0)
    teacher = build_model(cfg.teacher)
    student = build_model(cfg.student)
    rows: list[figures.Row] = []
    peaks = {'fp32': figures.compute_peak(dev, torch.float32, quick, repeats)}
    if has_bf16(dev):
        peaks['bf16'] = figures.compute_peak(dev, torch.bfloat16, quick, repeats)
    _log('compute peak ' + ', '.join(f'{k} {v / 1e9:.0f} GFLOP/s' for k, v in peaks.items()))
    for size in sizes:
        for role, model in (('T', teacher), ('S/A', student)):
            _log(f'{role} forward at {size[0]}x{size[1]}')
            rows += figures.network_rows(role, model, size, dev, repeats, peaks)
        _log(f'Predictor, codec and fusion at {size[0]}x{size[1]}')
        rows += figures.predictor_rows(student, size, dev, repeats)
        rows += figures.codec_rows(size, repeats)
        rows += figures.fusion_rows(size, repeats)
    # The slow, iterative stages at the smallest size only.
    small = sizes[0]
    _log(f'attack and learner at {small[0]}x{small[1]}')
    rows += figures.attack_rows(student, small, dev, max(1, repeats // 2))
    if dev.type == 'cpu':
        rows += figures.learner_rows(student, small, repeats, nice=cfg.learner.nice)
        # The graph's CPU networks (config/cpu.yaml) in three processes, per thread budget.
        graph_size = small if quick else (128, 256)
        _log(f'the triplet in three processes at {graph_size[0]}x{graph_size[1]}')
        rows += triplet_rows(graph_size, repeats, learner_nice=cfg.learner.nice)
    messages = []
    if graph:
        _log('the tsa graph: camera -> fused, message sizes')
        for params_file in params:
            result = run_graph_bench(params_file, 3 if quick else 10, str(dev), log=_log)
            if result is not None:
                rows += graph_rows(result)
                height, width = result['camera_size']
                messages += [m | {'camera': f'{width}x{height}'} for m in result['messages']]
    after = machine(dev)
    return {
        'machine_before': before,
        'machine_after': after,
        'peaks_gflops': {k: v / 1e9 for k, v in peaks.items()},
        'quick': quick,
        'repeats': repeats,
        'rows': [row.as_dict() for row in rows],
        'messages': messages,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table, preceded by the machine it was measured on."""
    m0, m1 = report['machine_before'], report['machine_after']
    peaks = ', '.join(f'{k} {v:.0f} GFLOP/s' for k, v in report['peaks_gflops'].items())
    lines = [
        f'Machine: {m0["cpu"]} ({m0["cpu_count"]} CPUs, {m0["threads"]} torch threads, '
        f'{m0["cpu_capability"]}), torch {m0["torch"]}, device {m0["device"]}; '
        f'compute peak (GEMM or 3x3 conv) {peaks}; '
        f'load average {m0["loadavg"]} before, {m1["loadavg"]} after; '
        f'{report["repeats"]} repetitions, interleaved with their reference.',
        '',
        '| stage | figure | min ms | median ms | reference | reference ms | ratio |',
        '|---|---|--:|--:|---|--:|--:|',
    ]
    for r in report['rows']:
        lines.append(
            f'| {r["stage"]} | {r["figure"]} | {r["ms"]:.2f} | {r["median_ms"]:.2f} | '
            f'{r["reference"]} | {r["reference_ms"]:.2f} | {r["ratio"]:.2f} |'
        )
    if report.get('messages'):
        lines += ['', 'Messages of the tsa graph (serialized bytes, median):', '']
        lines += messages_markdown(report['messages'])
    return '\n'.join(lines) + '\n'


def _size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'size must be HxW, e.g. 512x1024, got {text!r}'
        ) from None
    if height < 8 or width < 8 or height % 8 or width % 8:
        raise argparse.ArgumentTypeError(f'size {text} must be multiples of 8, at least 8')
    return height, width


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--quick', action='store_true', help='64x128, 3 repetitions (~1-2 minutes)')
    p.add_argument('--json', action='store_true', help='print JSON instead of Markdown')
    p.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N or auto')
    p.add_argument(
        '--sizes', type=_size, nargs='+', metavar='HxW', help='network input sizes (H x W)'
    )
    p.add_argument('--repeats', type=int, help='repetitions per figure (default 5; quick 3)')
    p.add_argument('--config', help='YAML config whose teacher and student are measured')
    p.add_argument(
        '--params',
        nargs='+',
        default=('',),
        metavar='FILE',
        help="params files of the graph rows, one set each (default: the package's cpu.yaml "
        "on a CPU; config/tsa.yaml adds the paper's networks at 512x1024)",
    )
    p.add_argument('--no-graph', action='store_true', help='leave out the graph rows')
    p.add_argument('--out', type=Path, help='also write bench.md and bench.json into this folder')


def main_from_args(args: argparse.Namespace) -> int:
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit(f'tsa bench: --repeats must be >= 1, got {args.repeats}')
    try:
        report = run(
            quick=args.quick,
            device=args.device,
            sizes=args.sizes,
            repeats=args.repeats,
            config=args.config,
            params=args.params,
            graph=not args.no_graph,
        )
    except ValueError as exc:
        print(f'tsa bench: {exc}', file=sys.stderr)
        return 2
    report['command'] = 'tsa ' + ' '.join(getattr(args, 'argv', []) or ['bench'])
    text = json.dumps(report, indent=2) if args.json else markdown(report)
    print(text, end='' if text.endswith('\n') else '\n')
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / 'bench.md').write_text(markdown(report), encoding='utf-8')
        (args.out / 'bench.json').write_text(json.dumps(report, indent=2) + '\n', encoding='utf-8')
        _log(f'wrote {args.out / "bench.md"} and {args.out / "bench.json"}')
    return 0
