"""``tsa experiment length-study``: does S's vulnerability grow with what it has learned?

Not in the paper. Our under-trained S keeps 95 % of its mIoU under its own ε = 1 attack
where the paper's keeps 24 %, and S's ε sweep hints that the ε = 1 damage grows with
training. The study scores checkpoints of one training run of S taken at several steps
(``tsa train`` with ``keep_steps``): for each, the clean mIoU and the mIoU ratio of the
least-likely attack on S itself (S-AE, eqs. 7-10) at every ε, on one split.

Each checkpoint's AE sets are written once under ``out/ae/`` and reused by a re-run, so an
interrupted study resumes; ``study.json`` holds every number, ``study.md`` the table and
``study.png`` the curves.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tsa_ros.data.cityscapes import MANIFEST, LabeledDataset
from tsa_ros.errors import ConfigError
from tsa_ros.experiments.ae_sets import make_ae_set
from tsa_ros.experiments.tables import evaluate
from tsa_ros.metrics import format_number, miou_ratio, percent
from tsa_ros.models import load_checkpoint

__all__ = ['length_study', 'study_markdown']

_STEP = re.compile(r'\.step(\d+)\.pt$')


def _step(path: Path, meta: dict[str, Any]) -> int:
    """Training step of a checkpoint: its ``extra.step``, else the ``.step<N>.pt`` name."""
    step = (meta.get('extra') or {}).get('step')
    if step is None:
        match = _STEP.search(path.name)
        if match is None:
            raise ConfigError(f'{path}: no training step in the checkpoint or its name')
        step = int(match.group(1))
    return int(step)


def length_study(
    data: str | Path,
    checkpoints: Sequence[str | Path],
    out: str | Path,
    *,
    split: str = 'minitest',
    epsilons: Sequence[float] = (1.0, 10.0),
    batch_size: int = 4,
    device: str = 'cpu',
    progress: bool = True,
    command: str = '',
) -> dict[str, Any]:
    """Clean mIoU and S-AE ratios of every checkpoint; writes study.json/.md/.png to ``out``.

    Args:
        data: data root (Cityscapes layout).
        checkpoints: checkpoints of S at different training steps (any order).
        out: output folder (AE sets are cached in ``out/ae``).
        split: split the numbers are measured on.
        epsilons: attack strengths in gray values (the paper's ε = 1 and our ε = 10).
        batch_size: images per forward pass (attack and evaluation).
        device: torch device.
        progress: progress lines of the attack on stderr.
        command: the command line, stored in study.json.

    Returns:
        ``{'split', 'epsilons', 'points': [{'step', 'checkpoint', 'miou_clean', 'miou_eps<ε>',
        'ratio_eps<ε>', 'train_miou'}, ...], 'command'}`` with fractions, sorted by step.
    """
    if not checkpoints:
        raise ConfigError('length study: need at least one checkpoint')
    if any(not eps > 0 for eps in epsilons):
        raise ConfigError(f'length study: epsilons must be > 0, got {list(epsilons)}')
    out = Path(out)
    loaded = []
    for path in map(Path, checkpoints):
        model, meta = load_checkpoint(path, map_location=device)
        loaded.append((_step(path, meta), path, model, meta))
    loaded.sort(key=lambda item: item[0])
    steps = [step for step, *_ in loaded]
    if len(set(steps)) != len(steps):
        raise ConfigError(f'length study: two checkpoints share a training step: {steps}')

    points = []
    for step, path, model, meta in loaded:
        size = tuple(model.config.input_size)
        sets = {}
        for eps in (0.0, *epsilons):
            name = 'clean' if eps == 0 else f'eps{eps:g}'
            root = out / 'ae' / f'step{step}' / name
            if not (root / MANIFEST).is_file():  # written last: a set without it is partial
                make_ae_set(
                    data,
                    split,
                    model if eps > 0 else None,
                    eps,
                    root,
                    size=size,
                    batch_size=batch_size,
                    device=device,
                    progress=progress,
                    overwrite=True,
                    checkpoint_meta={'path': str(path), 'sha256': meta['sha256']},
                )
            sets[name] = LabeledDataset(root, split)
        cells = evaluate({'S': model}, sets, batch_size=batch_size, device=device)
        cells = cells['results']['S']
        clean = cells['clean']['miou']
        point: dict[str, Any] = {
            'step': step,
            'checkpoint': str(path),
            'train_miou': (meta.get('extra') or {}).get('miou'),
            'miou_clean': clean,
        }
        for eps in epsilons:
            adv = cells[f'eps{eps:g}']['miou']
            ratio = None if adv is None or clean is None else miou_ratio(adv, clean)
            point[f'miou_eps{eps:g}'], point[f'ratio_eps{eps:g}'] = adv, ratio
        points.append(point)

    result = {'split': split, 'epsilons': list(epsilons), 'points': points, 'command': command}
    out.mkdir(parents=True, exist_ok=True)
    (out / 'study.json').write_text(json.dumps(result, indent=2) + '\n')
    (out / 'study.md').write_text(study_markdown(result))
    _figure(result, out / 'study.png')
    return result


def study_markdown(result: dict[str, Any]) -> str:
    """The study as a Markdown table (percent), with the command that produced it."""
    eps = [f'{e:g}' for e in result['epsilons']]
    head = ['step', 'clean mIoU'] + [f'S-AE ε={e} mIoU' for e in eps]
    head += [f'ratio ε={e}' for e in eps]
    lines = [
        f'# S against training length ({result["split"]})',
        '',
        'mIoU and mIoU ratio (S-AE / clean) in %; S attacked by its own least-likely attack.',
        '',
        '| ' + ' | '.join(head) + ' |',
        '|' + '---:|' * len(head),
    ]
    for point in result['points']:
        cells = [str(point['step']), format_number(percent(point['miou_clean']))]
        cells += [format_number(percent(point[f'miou_eps{e}'])) for e in eps]
        cells += [format_number(percent(point[f'ratio_eps{e}'])) for e in eps]
        lines.append('| ' + ' | '.join(cells) + ' |')
    if result.get('command'):
        lines += ['', f'Command: `{result["command"]}`']
    return '\n'.join(lines) + '\n'


def _figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    steps = [p['step'] for p in result['points']]

    def series(key: str) -> list[float]:
        values = [percent(p[key]) for p in result['points']]
        return [float('nan') if v is None else v for v in values]

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(steps, series('miou_clean'), 'o-', label='clean')
    for e in result['epsilons']:
        left.plot(steps, series(f'miou_eps{e:g}'), 's--', label=f'S-AE ε = {e:g}')
        right.plot(steps, series(f'ratio_eps{e:g}'), 'o-', label=f'ε = {e:g}')
    left.set_ylabel('mean IoU [%]')
    right.set_ylabel('mIoU ratio S-AE / clean [%]')
    for ax, title in ((left, 'Performance'), (right, 'Robustness')):
        ax.set_xscale('log')
        ax.set_xlabel('training step of S')
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f'S against training length ({result["split"]})')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main_from_args(args: Any) -> int:
    """``tsa experiment length-study``: run (or resume) and print the table."""
    result = length_study(
        args.data,
        args.checkpoints,
        args.out,
        split=args.split,
        epsilons=args.epsilon,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
        command=shlex.join(['tsa', *getattr(args, 'argv', [])]),
    )
    print(study_markdown(result), end='')
    print(f'wrote {Path(args.out) / "study.json"}, study.md and study.png')
    return 0
