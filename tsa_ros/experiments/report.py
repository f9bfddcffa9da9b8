"""``report.md`` of a ``tsa experiment paper`` run: its numbers beside the paper's.

Built only from ``results.json`` (:func:`report_markdown`), so a committed report can be
checked against the committed numbers. Ratios and mIoU in percent; ``—`` where the paper
reports nothing (fusion rows, sweep points only drawn in its figures).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tsa_ros.experiments.paper_reference import CLEAN_MIOU, SWEEP_POINTS, TABLES
from tsa_ros.experiments.tables import STANDARD_SETS
from tsa_ros.metrics import format_number, miou_ratio, percent

__all__ = ['PUBLISHED', 'publish', 'report_markdown']

#: The small files of a run worth keeping in a repository (no checkpoints, no AE sets).
PUBLISHED = (
    'report.md',
    'results.json',
    'table*.md',
    'table*.csv',
    'sweeps.csv',
    'fig*.png',
    'overlays/*.png',
)

_HEADERS = ('clean mIoU', 'T-AE ε=1', 'T-AE ε=10', 'S-AE ε=1', 'S-AE ε=10')
_TABLE_STAGES = ('data', 'train_teacher', 'train_student', 'adapt', 'ae_sets', 'tables')
_SPLIT_NAMES = {'minival': 'mini validation', 'minitest': 'mini test'}


def _ours(table: Mapping[str, Any], row: str, column: str) -> tuple[float | None, float | None]:
    """(mIoU %, ratio %) of one cell of an evaluated table; None where undefined."""
    cells = table['results'][row]
    miou = cells.get(column, {}).get('miou')
    clean = cells.get('clean', {}).get('miou')
    ratio = None if miou is None or clean is None else percent(miou_ratio(miou, clean))
    return percent(miou), ratio


def _table(number: int, table: Mapping[str, Any]) -> list[str]:
    split = _SPLIT_NAMES.get(table.get('split', ''), table.get('split', ''))
    lines = [
        f'### Table {number}: mIoU ratio adversarial / clean (%), {split} set',
        '',
        'Each cell is *ours / paper*; the first column is the clean mIoU (%).',
        '',
        '| network | ' + ' | '.join(_HEADERS) + ' |',
        '|---|' + '---:|' * len(_HEADERS),
    ]
    paper_ratio = TABLES.get(number, {})
    paper_clean = CLEAN_MIOU.get(number, {})
    for row in table['rows']:
        cells = []
        for column in STANDARD_SETS:
            miou, ratio = _ours(table, row, column)
            if column == 'clean':
                ours, paper = miou, paper_clean.get(row)
            else:
                ours, paper = ratio, paper_ratio.get(row, {}).get(column)
            cells.append(f'{format_number(ours)} / {format_number(paper)}')
        lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
    fused = table.get('fusion_of') or []
    if fused:
        rows = [row for row in table.get('rows', []) if row in table.get('fusion_rows', {})]
        rows = rows or ['majority', 'posterior']  # a run from before the fusion-rule rows
        names = ', '.join(f'`{row}`' for row in rows)
        lines += ['', f'{names} fuse {", ".join(fused)} (not in the paper).']
    return lines + ['']


def _sweeps(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        '### Sweeps (Figs. 2-3): mini validation set, β = 0.5',
        '',
        '| sweep | α | γ | p | clean mIoU % (ours / paper) | S-AE ε=1 ratio % (ours / paper) '
        '| S-AE ε=10 ratio % (ours) |',
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for row in rows:
        key = (float(row['alpha']), float(row['gamma']), float(row['p']))
        paper = SWEEP_POINTS.get(key, (None, None))
        clean, ratio = percent(row['miou_clean']), percent(row['ratio_s_ae1'])
        ratio10 = percent(row.get('ratio_s_ae10'))  # absent in runs before the ε = 10 column
        lines.append(
            f'| {row["sweep"]} | {row["alpha"]:g} | {row["gamma"]:g} | {row["p"]:g} | '
            f'{format_number(clean)} / {format_number(paper[0])} | '
            f'{format_number(ratio)} / {format_number(paper[1])} | {format_number(ratio10)} |'
        )
    figures = ['![Fig. 2 analogue](fig2_alpha.png)', '', '![Fig. 3 analogue](fig3_gamma.png)']
    return [*lines, '', *figures, '']


def _timings(timings: Mapping[str, Any]) -> list[str]:
    lines = ['### Stage timings', '', '| stage | minutes |', '|---|---:|']
    total = {'tables': 0.0, 'sweeps': 0.0}
    for stage, record in timings.items():
        seconds = record.get('seconds')
        if seconds is None:
            continue
        lines.append(f'| {stage} | {seconds / 60:.1f} |')
        total['tables' if stage in _TABLE_STAGES else 'sweeps'] += seconds
    lines += [
        '',
        f'Tables 1-2 (data … tables): {total["tables"] / 60:.1f} min; '
        f'sweeps and report: {total["sweeps"] / 60:.1f} min.',
        '',
    ]
    return lines


def report_markdown(results: Mapping[str, Any], command: str | None = None) -> str:
    """The Markdown report of one run from its ``results.json`` content."""
    preset = results.get('preset', {})
    config = results.get('config', {})
    env = results.get('environment', {})
    lines = [
        f'# tsa experiment paper — run `{preset.get("name", "?")}`',
        '',
        f'- git revision: `{results.get("git_revision")}`',
        f'- device: `{config.get("device")}`'
        + (f', torch {env["torch"]}, {env["threads"]} threads' if env else '')
        + (f', CPU {env["cpu"]} ({env.get("cpu_capability")})' if env.get('cpu') else ''),
        f'- data: `{config.get("data")}`, network input {config.get("input_size")} (H, W)',
        f'- teacher DeepLabV3+ {preset.get("teacher_backbone")} {preset.get("teacher_steps")} '
        f'steps, student ERFNet {preset.get("student_steps")} steps (batch '
        f'{preset.get("train_batch")}), adaptation {preset.get("adapt_steps")} steps (batch '
        f'{preset.get("adapt_batch")}) per run',
    ]
    command = command or results.get('command')
    if command:
        lines.append(f'- command: `{command}`')
    lines.append('')
    for number in (1, 2):
        table = results.get(f'table{number}')
        if table:
            lines += _table(number, table)
    if results.get('sweeps'):
        lines += _sweeps(results['sweeps'])
    overlays = results.get('timings', {}).get('report', {}).get('overlays') or []
    if overlays:
        lines += [
            '### Example frames (mini val: clean, S-AE ε=1 and 10, T-AE ε=10; '
            'fused = majority of T, S, A+IFM)',
            '',
        ]
        lines += [f'![{name}](overlays/{name})' for name in overlays] + ['']
    if results.get('timings'):
        lines += _timings(results['timings'])
    return '\n'.join(lines)


def publish(run_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy the report and the files it links (:data:`PUBLISHED`) from a run into ``dest``."""
    run_dir, dest = Path(run_dir), Path(dest)
    if not (run_dir / 'report.md').is_file():
        raise FileNotFoundError(f'{run_dir} holds no report.md: run the experiment first')
    copied = []
    for pattern in PUBLISHED:
        for path in sorted(run_dir.glob(pattern)):
            target = dest / path.relative_to(run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied.append(target)
    return copied
