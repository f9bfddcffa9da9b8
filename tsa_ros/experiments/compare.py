"""``tsa experiment compare``: do two runs of ``tsa experiment paper`` agree?

Reads two ``results.json`` files (or two reports of the live evaluator, which share the
tables' cell schema, :mod:`tsa_ros.evaluation`) and compares every number the findings rest
on: the
mini-val mIoU T and S reached in training, the mIoU and the mIoU ratio of each cell of
Tables 1 and 2, and the clean mIoU and S-AE ratios of each sweep point. Differences are in
percentage points; a re-run "reproduces within noise" when the largest one is at most the
tolerance. A number one run lacks inside a group both runs have fails the comparison; a
whole group only one run has (the sweeps' ε = 10 ratio and Table 2's fusion-rule rows, added
after the first published run) is listed as such and not gated. Stage times are listed beside
each other but never gated: they measure the machine, not the method.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsa_ros.data.cityscapes import DataError
from tsa_ros.metrics import format_number, miou_ratio, percent

__all__ = ['Difference', 'compare_results', 'comparison_markdown', 'load_results']

#: Table 2's fusion-rule rows (tsa_ros.experiments.detection.FUSION_ROWS after 'posterior'),
#: added after the first published run: a group of their own, so that a run without them
#: stays comparable (the group is listed as one-sided, not gated).
RULE_ROWS = ('weighted', 'confidence', 'gated', 'gated_confidence')


@dataclass(frozen=True)
class Difference:
    """One compared number (percent) of two runs; ``None`` where a run lacks it."""

    group: str
    name: str
    a: float | None
    b: float | None

    @property
    def delta(self) -> float:
        """|a - b| in points; infinite where only one run has the number."""
        if self.a is None and self.b is None:
            return 0.0
        if self.a is None or self.b is None:
            return math.inf
        return abs(self.a - self.b)


def load_results(path: str | Path) -> dict[str, Any]:
    """``results.json`` of a run, given the run folder or the file itself."""
    path = Path(path)
    file = path / 'results.json' if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f'{path} holds no results.json of a tsa experiment run')
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f'{file} is not valid JSON: {exc}') from None


def _cells(results: Mapping[str, Any]) -> Iterator[tuple[str, str, float | None]]:
    """(group, name, percent) of every table cell and sweep point of one run."""
    for stream, entry in (results.get('streams') or {}).items():  # an evaluator report
        yield 'evaluator mIoU', stream, percent(entry.get('miou'))
        if 'miou_ratio' in entry:
            yield 'evaluator ratio', stream, percent(entry['miou_ratio'])
    for stage in ('train_teacher', 'train_student'):
        record = (results.get('timings') or {}).get(stage) or {}
        if 'miou' in record:
            yield 'training minival mIoU', stage, percent(record['miou'])
    for number in (1, 2):
        table = results.get(f'table{number}') or {}
        for row, cells in (table.get('results') or {}).items():
            clean = (cells.get('clean') or {}).get('miou')
            group = f'table{number} fusion rules' if row in RULE_ROWS else f'table{number}'
            for column, cell in cells.items():
                miou = cell.get('miou')
                yield f'{group} mIoU', f'{row} {column}', percent(miou)
                if column != 'clean':
                    ratio = None if miou is None or clean is None else miou_ratio(miou, clean)
                    yield f'{group} ratio', f'{row} {column}', percent(ratio)
    for point in results.get('sweeps') or []:
        name = f'{point["sweep"]} α={point["alpha"]:g} γ={point["gamma"]:g} p={point["p"]:g}'
        yield 'sweeps clean mIoU', name, percent(point.get('miou_clean'))
        yield 'sweeps S-AE-1 ratio', name, percent(point.get('ratio_s_ae1'))
        if 'ratio_s_ae10' in point:
            yield 'sweeps S-AE-10 ratio', name, percent(point['ratio_s_ae10'])


def compare_results(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[Difference]:
    """Every table cell and sweep point of two runs side by side, in run ``a``'s order."""
    first = {(group, name): value for group, name, value in _cells(a)}
    second = {(group, name): value for group, name, value in _cells(b)}
    keys = list(first) + [key for key in second if key not in first]
    return [Difference(g, n, first.get((g, n)), second.get((g, n))) for g, n in keys]


def comparison_markdown(
    a: Mapping[str, Any],
    b: Mapping[str, Any],
    names: tuple[str, str] = ('A', 'B'),
    tolerance: float = 0.0,
    largest: int = 10,
) -> tuple[str, bool]:
    """A Markdown comparison of two runs and whether they agree within ``tolerance`` points."""
    diffs = compare_results(a, b)
    groups = [{g for g, _, _ in _cells(run)} for run in (a, b)]
    one_sided = [
        g for g in dict.fromkeys(d.group for d in diffs) if not (g in groups[0] and g in groups[1])
    ]
    gated = [d for d in diffs if d.group not in one_sided]
    worst = max((d.delta for d in gated), default=0.0)
    agree = worst <= tolerance
    lines = ['# Two runs of tsa experiment paper compared', '']
    for label, run in zip(names, (a, b), strict=True):
        lines.append(
            f'- {label}: git `{str(run.get("git_revision"))[:12]}`, preset '
            f'`{run.get("preset", {}).get("name")}`, command `{run.get("command")}`'
        )
    preset_a, preset_b = a.get('preset') or {}, b.get('preset') or {}
    changed = sorted(k for k in {*preset_a, *preset_b} if preset_a.get(k) != preset_b.get(k))
    if changed:
        lines.append(f'- the presets differ in: {", ".join(changed)}')
    lines += [
        '',
        '| numbers (%) | compared | identical | max Δ (points) | mean Δ (points) |',
        '|---|---:|---:|---:|---:|',
    ]
    for group in dict.fromkeys(d.group for d in gated):
        deltas = [d.delta for d in diffs if d.group == group]
        same = sum(delta == 0.0 for delta in deltas)
        lines.append(
            f'| {group} | {len(deltas)} | {same} | {max(deltas):.2f} | '
            f'{sum(deltas) / len(deltas):.2f} |'
        )
    for group in one_sided:
        owner = names[0] if group in groups[0] else names[1]
        count = sum(d.group == group for d in diffs)
        lines.append(f'| {group} | only in {owner} ({count}), not compared | — | — | — |')
    moved = sorted((d for d in gated if d.delta > 0.0), key=lambda d: -d.delta)[:largest]
    if moved:
        lines += [
            '',
            f'| largest differences | {names[0]} | {names[1]} | Δ |',
            '|---|---:|---:|---:|',
        ]
        lines += [
            f'| {d.group}: {d.name} | {format_number(d.a, 2)} | {format_number(d.b, 2)} '
            f'| {d.delta:.2f} |'
            for d in moved
        ]
    timings = [
        (s, a.get('timings', {}).get(s, {}), b.get('timings', {}).get(s, {}))
        for s in dict.fromkeys([*a.get('timings', {}), *b.get('timings', {})])
    ]
    if timings:
        lines += ['', f'| stage | {names[0]} min | {names[1]} min |', '|---|---:|---:|']
        for stage, first, second in timings:
            minutes = [r.get('seconds') for r in (first, second)]
            cells = ['—' if m is None else f'{m / 60:.1f}' for m in minutes]
            lines.append(f'| {stage} | {cells[0]} | {cells[1]} |')
    verdict = 'agree' if agree else 'differ'
    lines += [
        '',
        f'The runs {verdict}: largest difference {worst:.2f} points, tolerance {tolerance:g}.',
        '',
    ]
    return '\n'.join(lines), agree


def main_from_args(args: Any) -> int:
    """``tsa experiment compare A B``: print the comparison; exit 1 beyond the tolerance."""
    text, agree = comparison_markdown(
        load_results(args.a),
        load_results(args.b),
        names=(str(args.a), str(args.b)),
        tolerance=args.tolerance,
    )
    print(text)
    return 0 if agree else 1
