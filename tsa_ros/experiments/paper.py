"""``tsa experiment paper``: the paper's whole experiment as one resumable command.

Bär et al. 2019, sec. 4: train the teacher T and the student S, adapt A from S without and
with the IFM loss, write the least-likely AE sets of T and S (ε = 1, 10) for the mini
validation and mini test sets, evaluate Tables 1 and 2, sweep α (Fig. 2, and p = 2) and γ
(Fig. 3), and write a report. Table 2 also has rows fusing T, S and A+IFM (not in the paper,
which leaves decision fusion open, sec. 3.4, 4.3): majority vote, mean posterior and the
``weighted``, ``confidence``, ``gated`` and ``gated_confidence`` rules of
:mod:`tsa_ros.fusion`, every parameter fitted on the mini validation set's clean frames only,
exactly as ``tsa experiment detection`` does. Everything is built from the stage functions
(:func:`~tsa_ros.data.generate.generate`, :func:`~tsa_ros.learning.train.train`,
:func:`~tsa_ros.experiments.adapt.adapt`, :func:`~tsa_ros.experiments.ae_sets.make_ae_set`,
:func:`~tsa_ros.experiments.tables.evaluate`).

Stages: ``data → train_teacher → train_student → adapt → ae_sets → tables → sweeps →
report``. Each writes a marker ``stages/<stage>.json`` (with its seconds) when it finishes
and is skipped when the marker exists; interrupted training / adaptation resumes from its
state file. The evaluation is never tuned: the report states whatever numbers come out.

Output ``OUT/<run>/``::

    models/            teacher.pt, student.pt, adaptive.pt, adaptive_ifm.pt, sweep_*.pt
    ae/<split>/<set>/  clean, T-AE-1, T-AE-10, S-AE-1, S-AE-10 for minival and minitest
    table1.md/.csv     T, S, A on minival
    table2.md/.csv     T, S, A, A+IFM and the fusion rows of T, S, A+IFM (majority,
                       posterior, weighted, confidence, gated, gated_confidence) on
                       minitest; table2.json also holds the fusion rows' mini-val
                       parameters (fusion_parameters)
    sweeps.csv         one line per (α, β, γ, p): clean mIoU, S-AE-1 and S-AE-10 ratios
                       on minival (ε = 10 is ours: the paper sweeps at ε = 1 only)
    fig2_alpha.png, fig3_gamma.png, overlays/frame_*.png
    results.json       every number, the config, the preset, stage timings, git revision
    report.md          the tables beside the paper's numbers, sweeps, figures, timings

Time budget of the ``default`` preset on a 2-core CPU (256x128 input, batch 3), measured in
the run of ``docs/results.md`` (``results.json`` → ``timings``):

* data: generated beforehand by ``tsa data synth`` (3,300 frames at 512x256, 3.4 min).
* T (DeepLabV3+ ResNet-18, 1,500 steps): 18.7 min, 0.75 s/step. Not the paper's ResNet-50:
  that is ≈ 2-3x slower again and would take the whole budget alone; the teacher only has to
  be the stronger, independent network, which ResNet-18 DeepLabV3+ still is against ERFNet.
* S (ERFNet, 3,000 steps): 15.6 min, 0.31 s/step.
* A and A+IFM (2 x 1,000 steps): 20.7 min, 0.62 s/step (T's forward pass and the feature
  terms on top of S's step).
* AE sets (260 frames, ε = 1 and 10 on T and S): 9.9 min. Tables: 5.1 min (measured
  before Table 2 had the fitted fusion rows, which add one pass of T, S and A+IFM over
  mini val's clean frames).
* Tables 1 + 2 in total: 70 min (< 90 min).
* sweeps: α ∈ {0, 0.2, 0.4, 0.6, 0.8, 0.9} reuses A (α = 0) and A+IFM (α = 0.6); new runs
  α = 0.2, 0.4, 0.8, 0.9, p = 2, γ = 0.5, 2: 7 adaptation runs of 9 min plus their
  evaluations: 85 min measured, ≈ 20 min of it from a test run sharing the cores (< 2 h).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tsa_ros.data.cityscapes import MANIFEST, LabeledDataset
from tsa_ros.data.generate import PRESETS as DATA_PRESETS
from tsa_ros.data.generate import generate
from tsa_ros.errors import ConfigError
from tsa_ros.experiments.adapt import AdaptConfig, adapt
from tsa_ros.experiments.ae_sets import make_ae_set
from tsa_ros.experiments.detection import fit_fusion_rules, fusion_description
from tsa_ros.experiments.report import publish, report_markdown
from tsa_ros.experiments.tables import STANDARD_SETS, evaluate, ratio_table
from tsa_ros.fusion import FusionConfig
from tsa_ros.inference import Predictor, resolve_device
from tsa_ros.learning.losses import TSLossConfig
from tsa_ros.learning.online import LearnerConfig
from tsa_ros.learning.train import TrainConfig, train
from tsa_ros.metrics import miou_ratio
from tsa_ros.models import ModelConfig, load_checkpoint

__all__ = ['PRESETS', 'STAGES', 'ExperimentPreset', 'run_paper']

STAGES = (
    'data',
    'train_teacher',
    'train_student',
    'adapt',
    'ae_sets',
    'tables',
    'sweeps',
    'report',
)
SPLITS = ('minival', 'minitest')
#: Sets each sweep point is scored on: the paper's S-AE ε = 1, and ε = 10 (ours), which
#: separates the points where ε = 1 barely hurts an under-trained student.
SWEEP_SETS = ('clean', 'S-AE-1', 'S-AE-10')


def _sweep_suffix(set_name: str) -> str:
    """'S-AE-10' -> 's_ae10': the key part of a sweep number."""
    who, _, eps = set_name.split('-')
    return f'{who.lower()}_ae{eps}'


#: The numbers of one sweep point, in sweeps.csv's column order.
SWEEP_NUMBERS = ('miou_clean',) + tuple(
    f'{kind}_{_sweep_suffix(n)}' for n in SWEEP_SETS[1:] for kind in ('miou', 'ratio')
)


def stages_to_redo(force: Sequence[str]) -> set[str]:
    """The forced stages and every stage after them: each consumes the outputs before it."""
    first = min((STAGES.index(stage) for stage in force), default=len(STAGES))
    return set(STAGES[first:])


#: Paper sec. 4.3: α = 0.6, β = 0.5, γ = 1, p = 1 for A+IFM; α = 0 is A without IFM.
PAPER_LOSS = TSLossConfig(alpha=0.6, beta=0.5, gamma=1.0, p=1.0)


@dataclass
class ExperimentPreset:
    """Sizes of one run of the whole experiment.

    Attributes:
        name: preset name.
        data_preset: synthetic data preset generated when ``--data`` holds no data set.
        teacher_backbone: DeepLabV3+ backbone of T.
        teacher_steps / student_steps: supervised steps of T and S.
        train_batch: images per supervised step (T and S).
        adapt_steps: J_TS steps of every adaptation run (A, A+IFM, each sweep point).
        adapt_batch: frames per adaptation step (paper: 3).
        alphas: α values of the Fig. 2 sweep (p = 1, β = 0.5, γ = 1).
        gammas: γ values of the Fig. 3 sweep (α = 0.6, p = 1, β = 0.5).
        sweep_p: the extra p of the α sweep (at α = 0.6); None = none.
        eval_batch / ae_batch: images per forward pass in evaluation / attack.
        eval_every / checkpoint_every: of the supervised runs (0 = only at the end).
        adapt_checkpoint_every: state of the adaptation runs every this many steps.
        num_workers: data-loader workers.
        overlay_frames: example frames drawn into ``overlays/``.
        seed: seed of the data generation, training and adaptation.
    """

    name: str
    data_preset: str
    teacher_backbone: str
    teacher_steps: int
    student_steps: int
    train_batch: int
    adapt_steps: int
    adapt_batch: int = 3
    alphas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)
    gammas: tuple[float, ...] = (0.5, 1.0, 2.0)
    sweep_p: float | None = 2.0
    eval_batch: int = 4
    ae_batch: int = 4
    eval_every: int = 0
    checkpoint_every: int = 500
    adapt_checkpoint_every: int = 250
    num_workers: int = 2
    overlay_frames: int = 3
    seed: int = 0


PRESETS = {
    # Seconds: a handful of steps so the test suite runs the whole pipeline.
    'tiny': ExperimentPreset(
        'tiny',
        'tiny',
        'resnet18',
        teacher_steps=3,
        student_steps=3,
        train_batch=2,
        adapt_steps=2,
        adapt_batch=2,
        eval_batch=4,
        checkpoint_every=0,
        adapt_checkpoint_every=50,
        num_workers=0,
        overlay_frames=1,
    ),
    # 2-core CPU: Tables 1 + 2 ≈ 75 min, sweeps ≈ 60 min (arithmetic in the module docstring).
    'default': ExperimentPreset(
        'default',
        'default',
        'resnet18',
        teacher_steps=1500,
        student_steps=3000,
        train_batch=3,
        adapt_steps=1000,
        eval_every=0,
    ),
    # The paper's settings (1024x512, S 75,000 x 6, A 66,667 x 3, ResNet-50): for a GPU.
    'paper': ExperimentPreset(
        'paper',
        'paper',
        'resnet50',
        teacher_steps=75_000,
        student_steps=75_000,
        train_batch=6,
        adapt_steps=66_667,
        eval_every=5000,
        checkpoint_every=5000,
        adapt_checkpoint_every=500,
        num_workers=4,
    ),
}


@dataclass
class PaperConfig:
    """Everything one run depends on (stored in ``results.json``)."""

    preset: ExperimentPreset
    data: str
    run_dir: str
    device: str
    input_size: tuple[int, int]
    teacher: TrainConfig = field(default_factory=TrainConfig)
    student: TrainConfig = field(default_factory=TrainConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    loss_ifm: TSLossConfig = field(default_factory=lambda: PAPER_LOSS)


def git_revision() -> str | None:
    """``git rev-parse HEAD`` of the source tree, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ['git', 'rev-parse', 'HEAD'],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (Linux); None where it cannot be read."""
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass  # not Linux: platform.processor() below is the best there is
    return platform.processor() or None


def environment() -> dict[str, Any]:
    """What the timings and the last bits of the numbers depend on.

    Torch version, threads, CPU model and the SIMD level torch dispatches to (kernels of
    another level sum in another order, so two machines train slightly different networks
    from the same seed), CPU count, platform.
    """
    return {
        'torch': torch.__version__,
        'threads': torch.get_num_threads(),
        'cpu': _cpu_model(),
        'cpu_capability': torch.backends.cpu.get_cpu_capability(),
        'cpu_count': os.cpu_count(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def _log(message: str) -> None:
    print(f'[tsa experiment] {message}', file=sys.stderr, flush=True)


def _loss_key(loss: TSLossConfig) -> str:
    return f'a{loss.alpha:g}_b{loss.beta:g}_g{loss.gamma:g}_p{loss.p:g}'


class _Run:
    """Paths, markers and the stage functions of one run."""

    def __init__(self, cfg: PaperConfig, force: Sequence[str], progress: bool) -> None:
        self.cfg = cfg
        self.dir = Path(cfg.run_dir)
        self.models = self.dir / 'models'
        self.ae = self.dir / 'ae'
        self.markers = self.dir / 'stages'
        self.force = stages_to_redo(force)
        self.progress = progress
        self.device = cfg.device
        self.revision = git_revision()

    # ----------------------------------------------------------------------------- markers
    def marker(self, stage: str) -> Path:
        return self.markers / f'{stage}.json'

    def done(self, stage: str) -> dict[str, Any] | None:
        path = self.marker(stage)
        if stage in self.force or not path.is_file():
            return None
        return json.loads(path.read_text())

    def finish(self, stage: str, seconds: float, **info: Any) -> dict[str, Any]:
        self.markers.mkdir(parents=True, exist_ok=True)
        record = {
            'stage': stage,
            'seconds': round(seconds, 2),
            'git_revision': self.revision,
            **info,
        }
        self.marker(stage).write_text(json.dumps(record, indent=2))
        return record

    # ------------------------------------------------------------------------------ stages
    def data(self) -> dict[str, Any]:
        root = Path(self.cfg.data)
        if (root / MANIFEST).is_file() and 'data' not in self.force:
            return {'generated': False}  # an existing data set (e.g. --data) is used as is
        generate(
            root,
            self.cfg.preset.data_preset,
            seed=self.cfg.preset.seed,
            overwrite=True,  # a folder without manifest is an interrupted generation
            progress=self.progress,
        )
        return {'generated': True}

    def _train(self, config: TrainConfig, stage: str) -> dict[str, Any]:
        state = self.models / f'{config.role}.state.pt'
        resume = state.is_file() and stage not in self.force
        result = train(
            config,
            self.cfg.data,
            self.models,
            resume=resume,
            device=self.device,
            progress=self.progress,
        )
        return {'miou': result['miou'], 'step': result['step'], 'resumed': resume}

    def train_teacher(self) -> dict[str, Any]:
        return self._train(self.cfg.teacher, 'train_teacher')

    def train_student(self) -> dict[str, Any]:
        return self._train(self.cfg.student, 'train_student')

    def _adapt(self, name: str, loss: TSLossConfig, force: bool) -> Path:
        paths = [self.models / f'{name}{s}' for s in ('.pt', '.state.pt', '.log.jsonl')]
        resume = paths[1].is_file() and not force
        if not resume:  # a fresh run: no stale log lines or checkpoint of an older run
            for path in paths:
                path.unlink(missing_ok=True)
        cfg = dataclasses.replace(
            self.cfg.adapt, learner=dataclasses.replace(self.cfg.adapt.learner, loss=loss)
        )
        return adapt(
            self.models / 'teacher.pt',
            self.models / 'student.pt',
            self.cfg.data,
            self.models,
            cfg,
            name=name,
            resume=resume,
            device=self.device,
            progress=self.progress,
        )

    def adapt(self) -> dict[str, Any]:
        force = 'adapt' in self.force
        self._adapt('adaptive', dataclasses.replace(self.cfg.loss_ifm, alpha=0.0), force)
        self._adapt('adaptive_ifm', self.cfg.loss_ifm, force)
        return {}

    def ae_root(self, split: str, name: str) -> Path:
        return self.ae / split / name

    def ae_sets(self) -> dict[str, Any]:
        attacked = {'T': self.models / 'teacher.pt', 'S': self.models / 'student.pt'}
        summary: dict[str, Any] = {}
        for split in SPLITS:
            for name in STANDARD_SETS:
                out = self.ae_root(split, name)
                if (out / MANIFEST).is_file() and 'ae_sets' not in self.force:
                    continue  # the manifest is written last: the set is complete
                if name == 'clean':
                    model, eps = None, 0.0
                else:
                    who, _, eps_text = name.split('-')
                    model, eps = attacked[who], float(eps_text)
                info = make_ae_set(
                    self.cfg.data,
                    split,
                    model,
                    eps,
                    out,
                    size=self.cfg.input_size,
                    batch_size=self.cfg.preset.ae_batch,
                    device=self.device,
                    progress=self.progress,
                    overwrite=True,
                )
                summary[f'{split}/{name}'] = {
                    k: info[k] for k in ('frames', 'epsilon', 'iterations', 'linf_max', 'seconds')
                }
        return summary

    def load(self, name: str):
        model, _ = load_checkpoint(self.models / f'{name}.pt', map_location=self.device)
        return model

    def sets(self, split: str, names: Sequence[str] = STANDARD_SETS) -> dict[str, LabeledDataset]:
        return {n: LabeledDataset(self.ae_root(split, n), split) for n in names}

    def fusion_rules(self, triplet: dict[str, Any]) -> tuple[dict[str, FusionConfig], dict]:
        """The fusion rows of Table 2 and their parameters, fitted on mini val's clean frames.

        Not in the paper (decision fusion is left open in sec. 3.4, 4.3): the fitting of
        ``tsa experiment detection`` (:func:`~tsa_ros.experiments.detection.fit_fusion_rules`,
        its default target FPR for the gate), so the mini-test rows are never tuned on the
        frames they are reported on.
        """
        models = list(triplet.values())  # T, S, A+IFM: the fused triplet, T breaking ties
        predictors = [Predictor(m, device=self.device) for m in models]
        base = FusionConfig(num_classes=models[0].config.num_classes)
        configs, parameters = fit_fusion_rules(
            predictors,
            self.sets('minival', ('clean',))['clean'],
            base,
            split='minival',
            batch_size=self.cfg.preset.eval_batch,
        )
        # Keyed by role (T, S, A) there; by row name here, so A+IFM reads as A+IFM.
        weights = parameters['class_weights'].values()
        parameters['class_weights'] = dict(zip(triplet, weights, strict=True))
        return configs, parameters

    def tables(self) -> dict[str, Any]:
        t, s, a, a_ifm = (self.load(n) for n in ('teacher', 'student', 'adaptive', 'adaptive_ifm'))
        batch = self.cfg.preset.eval_batch
        table1 = evaluate(
            {'T': t, 'S': s, 'A': a}, self.sets('minival'), False, batch, self.device
        )
        table1['split'], table1['table'] = 'minival', 1
        sets2 = self.sets('minitest')
        table2 = evaluate(
            {'T': t, 'S': s, 'A': a, 'A+IFM': a_ifm}, sets2, False, batch, self.device
        )
        # Fusion of T, S and A+IFM (evaluate fuses its first three models); one pass gives
        # every rule, majority vote and mean posterior included.
        triplet = {'T': t, 'S': s, 'A+IFM': a_ifm}
        configs, parameters = self.fusion_rules(triplet)
        fused = evaluate(triplet, sets2, configs, batch, self.device)
        for row in configs:
            table2['rows'].append(row)
            table2['results'][row] = fused['results'][row]
        table2['fusion_of'] = fused['fusion_of']
        table2['fusion_rows'] = {row: fusion_description(row, parameters) for row in configs}
        table2['fusion_parameters'] = parameters
        table2['split'], table2['table'] = 'minitest', 2
        for number, results, what in (
            (1, table1, 'mini validation set'),
            (2, table2, 'mini test set'),
        ):
            markdown, table_csv = ratio_table(results, f'Table {number}: {what}')
            if number == 2:
                markdown += _fusion_note(table2)
            (self.dir / f'table{number}.md').write_text(markdown)
            (self.dir / f'table{number}.csv').write_text(table_csv)
            (self.dir / f'table{number}.json').write_text(json.dumps(results, indent=2))
        return {
            'fusion_teacher_weight': parameters['teacher_weight'],
            'fusion_gate_threshold': parameters['gate_threshold'],
        }

    def sweep_points(self) -> list[tuple[str, TSLossConfig]]:
        base = dataclasses.replace(self.cfg.loss_ifm, p=1.0, beta=0.5, gamma=1.0)
        points = [('alpha', dataclasses.replace(base, alpha=a)) for a in self.cfg.preset.alphas]
        if self.cfg.preset.sweep_p is not None:
            points.append(('p', dataclasses.replace(self.cfg.loss_ifm, p=self.cfg.preset.sweep_p)))
        points += [
            ('gamma', dataclasses.replace(self.cfg.loss_ifm, gamma=g))
            for g in self.cfg.preset.gammas
        ]
        return points

    def sweeps(self) -> dict[str, Any]:
        # A and A+IFM are sweep points already; reuse them instead of adapting again.
        reuse = {
            _loss_key(dataclasses.replace(self.cfg.loss_ifm, alpha=0.0)): 'adaptive',
            _loss_key(self.cfg.loss_ifm): 'adaptive_ifm',
        }
        sets = self.sets('minival', SWEEP_SETS)
        rows, seen = [], {}
        for sweep, loss in self.sweep_points():
            key = _loss_key(loss)
            if key not in seen:
                marker = f'sweep_{key}'
                record = self.done(marker) if 'sweeps' not in self.force else None
                if record is None:
                    start = time.perf_counter()
                    name = reuse.get(key)
                    if name is None:
                        name = f'sweep_{key}'
                        self._adapt(name, loss, 'sweeps' in self.force)
                    res = evaluate(
                        {'A': self.load(name)},
                        sets,
                        False,
                        self.cfg.preset.eval_batch,
                        self.device,
                    )['results']['A']
                    clean = res['clean']['miou']
                    numbers = {'miou_clean': clean}
                    for set_name in SWEEP_SETS[1:]:
                        adv = res[set_name]['miou']
                        ratio = None if clean is None or adv is None else miou_ratio(adv, clean)
                        ratio = None if ratio is None or math.isnan(ratio) else float(ratio)
                        suffix = _sweep_suffix(set_name)
                        numbers[f'miou_{suffix}'], numbers[f'ratio_{suffix}'] = adv, ratio
                    record = self.finish(
                        marker, time.perf_counter() - start, checkpoint=name, **numbers
                    )
                seen[key] = record
            record = seen[key]
            rows.append(
                {
                    'sweep': sweep,
                    **dataclasses.asdict(loss),
                    **{k: record[k] for k in SWEEP_NUMBERS},
                    'checkpoint': record['checkpoint'],
                }
            )
        with (self.dir / 'sweeps.csv').open('w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator='\n')
            writer.writeheader()
            writer.writerows(rows)
        (self.dir / 'sweeps.json').write_text(json.dumps(rows, indent=2))
        return {}

    def report(self) -> dict[str, Any]:
        from tsa_ros.experiments import plots

        rows = json.loads((self.dir / 'sweeps.json').read_text())
        plots.sweep_figure(rows, 'alpha', self.dir / 'fig2_alpha.png', extra='p')
        plots.sweep_figure(rows, 'gamma', self.dir / 'fig3_gamma.png')
        models = {n: self.load(m) for n, m in _OVERLAY_MODELS}
        sets = self.sets('minival', ('clean', 'S-AE-1', 'S-AE-10', 'T-AE-10'))
        frames = min(self.cfg.preset.overlay_frames, len(sets['clean']))
        written = plots.overlays(models, sets, frames, self.dir / 'overlays', self.device)
        return {'overlays': [p.name for p in written]}


def _fusion_note(table: dict[str, Any]) -> str:
    """What Table 2's fusion rows are and where their parameters come from (Markdown)."""
    par = table['fusion_parameters']
    gate = par['gate_threshold']
    triplet = table['fusion_of']
    lines = [
        '',  # ratio_table's text ends with its last row: a blank line before the heading
        '## Fusion rows (not in the paper)',
        '',
        f'Each fuses {", ".join(triplet)} frame by frame ({triplet[-1]} is `A` below). '
        'Every parameter is '
        f"fitted on the {par['from']} split's clean frames only, never on these mini-test "
        f'frames (as in `tsa experiment detection`): teacher weight '
        f'{par["teacher_weight"]:g} of the confidence votes, gate threshold '
        f'{"n/a" if gate is None else f"{gate:.4f}"} (the `{par["gate_rule"]}` suspect rule '
        f'at {100 * par["gate_target_fpr"]:g} % FPR), class weights = per-class IoU; all in '
        '`table2.json` → `fusion_parameters`.',
        '',
    ]
    lines += [f'- `{row}`: {what}' for row, what in table['fusion_rows'].items()]
    return '\n'.join(lines) + '\n'


_OVERLAY_MODELS = (
    ('T', 'teacher'),
    ('S', 'student'),
    ('A', 'adaptive'),
    ('A+IFM', 'adaptive_ifm'),
)


def _input_size(data: Path, preset: ExperimentPreset) -> tuple[int, int]:
    manifest = data / MANIFEST
    if manifest.is_file():
        size = json.loads(manifest.read_text()).get('preset', {}).get('model_input')
        if size and all(size):
            return (int(size[0]), int(size[1]))
    return tuple(DATA_PRESETS[preset.data_preset].model_input)


def build_config(
    preset: ExperimentPreset, data: Path, run_dir: Path, device: str, input_size=None
) -> PaperConfig:
    """The stage configs of one run (the input size comes from the data set's manifest)."""
    size = tuple(input_size) if input_size else _input_size(data, preset)

    def train_cfg(role: str, steps: int, model: ModelConfig) -> TrainConfig:
        return TrainConfig(
            role=role,
            model=model,
            input_size=size,
            steps=steps,
            batch_size=preset.train_batch,
            eval_every=preset.eval_every,
            checkpoint_every=preset.checkpoint_every,
            num_workers=preset.num_workers,
            seed=preset.seed,
        )

    teacher_model = ModelConfig(
        arch='deeplabv3plus', backbone=preset.teacher_backbone, output_stride=16
    )
    return PaperConfig(
        preset=preset,
        data=str(data),
        run_dir=str(run_dir),
        device=device,
        input_size=size,
        teacher=train_cfg('teacher', preset.teacher_steps, teacher_model),
        student=train_cfg('student', preset.student_steps, ModelConfig(arch='erfnet')),
        adapt=AdaptConfig(
            steps=preset.adapt_steps,
            learner=LearnerConfig(batch_size=preset.adapt_batch, queue_size=32),
            checkpoint_every=preset.adapt_checkpoint_every,
            seed=preset.seed,
            num_workers=preset.num_workers,
        ),
    )


def _numbers(run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number in (1, 2):
        path = run_dir / f'table{number}.json'
        if path.is_file():
            out[f'table{number}'] = json.loads(path.read_text())
    path = run_dir / 'sweeps.json'
    if path.is_file():
        out['sweeps'] = json.loads(path.read_text())
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, 'item'):
        return value.item()
    raise TypeError(f'not JSON serialisable: {type(value).__name__}')


def run_paper(
    preset: str | ExperimentPreset = 'default',
    *,
    out: str | Path = 'results',
    run: str | None = None,
    data: str | Path | None = None,
    stages: Sequence[str] | None = None,
    force: Sequence[str] = (),
    device: str = 'auto',
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] = _log,
    command: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) the paper's experiment; returns the ``results.json`` content.

    Args:
        preset: ``'tiny'``, ``'default'``, ``'paper'`` or an :class:`ExperimentPreset`.
        out: parent folder of the run.
        run: run name (default the preset name); files go to ``OUT/<run>/``.
        data: data root; default ``OUT/<run>/data``, generated with the preset's data preset
            when it holds no data set.
        stages: the stages to run (default all, in order); others are not touched.
        force: stages to redo even when finished; the stages after a forced one are redone
            too, since they consume its outputs.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or ``'auto'``.
        progress: progress bars and lines on stderr.
        overrides: :class:`ExperimentPreset` fields to replace (e.g. shorter sweep lists).
        log: sink of one line per stage.
        command: the command line that started the run, stored in ``results.json``.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f'unknown preset {preset!r}; choose from {sorted(PRESETS)}')
        preset = PRESETS[preset]
    preset = dataclasses.replace(preset, **(overrides or {}))
    selected = list(stages) if stages else list(STAGES)
    for stage in (*selected, *force):
        if stage not in STAGES:
            raise ConfigError(f'unknown stage {stage!r}; choose from {STAGES}')
    run_dir = Path(out) / (run or preset.name)
    sweeps_done = (
        run_dir / 'stages' / 'sweeps.json'
    ).is_file() and 'sweeps' not in stages_to_redo(force)
    if 'report' in selected and 'sweeps' not in selected and not sweeps_done:
        # Checked before any stage runs: the report draws Figs. 2-3 from the sweeps.
        raise ConfigError(
            "stage 'report' plots the sweeps, which have not run: select 'sweeps' too, "
            "or leave 'report' out (results.json is written either way)"
        )
    data_root = Path(data) if data is not None else run_dir / 'data'
    dev = str(resolve_device(device))
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(preset.seed)

    timings: dict[str, Any] = {}
    runner: _Run | None = None
    for stage in STAGES:
        if runner is None or stage == 'train_teacher':
            # The input size is known once the data exist (it is in their manifest).
            runner = _Run(build_config(preset, data_root, run_dir, dev), force, progress)
        record = runner.done(stage)
        if stage not in selected:
            timings[stage] = {'skipped': 'not selected', **(record or {})}
            continue
        if record is not None:
            log(f'{stage}: done before ({record["seconds"]} s), skipped')
            timings[stage] = {'skipped': 'done', **record}
            continue
        log(f'{stage}: running')
        start = time.perf_counter()
        info = getattr(runner, stage)()
        record = runner.finish(stage, time.perf_counter() - start, **info)
        log(f'{stage}: finished in {record["seconds"]} s')
        timings[stage] = {'skipped': False, **record}

    results = {
        'paper': 'Bär et al. 2019, sec. 4 (Tables 1-2, Figs. 2-3)',
        'git_revision': git_revision(),
        'command': command,
        'environment': environment(),
        'preset': dataclasses.asdict(preset),
        'config': dataclasses.asdict(runner.cfg),
        'timings': timings,
        **_numbers(run_dir),
    }
    text = json.dumps(results, indent=2, default=_json_default) + '\n'
    (run_dir / 'results.json').write_text(text)
    # The report is built from the JSON as written, exactly as a reader of the file would.
    (run_dir / 'report.md').write_text(report_markdown(json.loads(text)))
    return results


def main_from_args(args: Any) -> int:
    """``tsa experiment paper``: run or resume, then print where the results are."""
    results = run_paper(
        args.preset,
        out=args.out,
        run=args.run,
        data=args.data,
        stages=args.stages,
        force=args.force,
        device=args.device,
        progress=not args.quiet,
        command=shlex.join(['tsa', *getattr(args, 'argv', [])]),
    )
    run_dir = Path(results['config']['run_dir'])
    for number in (1, 2):
        table = run_dir / f'table{number}.md'
        if table.is_file():
            print(table.read_text())
    print(f'wrote {run_dir / "results.json"} and {run_dir / "report.md"}')
    if args.publish:
        copied = publish(run_dir, args.publish)
        print(f'published {len(copied)} files to {args.publish}')
    return 0
