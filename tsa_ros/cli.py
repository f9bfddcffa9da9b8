"""The ``tsa`` command: one entry point for the package's tools.

Subcommands import their heavy dependencies (torch, rclpy) when they run; building the parser
imports the experiment presets and the graph description, which import torch, so ``tsa
--help`` takes a second or two. Bad input (the types in :data:`USER_ERRORS`) prints one line
and exits 2; anything else is a bug and keeps its traceback (``--traceback`` shows it for
bad input too).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tsa_ros.errors import ConfigError

#: A job estimated longer than this gets a warning with its ETA (``tsa train``, ``tsa adapt``).
LONG_JOB_S = 30 * 60


def _shows_default(action: argparse.Action) -> bool:
    """Whether --help states the action's default: not for flags, nor for "nothing" defaults."""
    if isinstance(action, argparse.BooleanOptionalAction):
        return action.default is not None  # --x / --no-x: which one applies unless given
    if action.nargs == 0 or not (action.option_strings or action.nargs in ('?', '*')):
        return False  # a flag's absence is its default; required positionals have none
    # None / '' / [] mean "not given": "(default: None)" would say nothing (the help says it).
    return action.default not in (None, '', [], (), argparse.SUPPRESS)


def _default_text(action: argparse.Action) -> str:
    """A default as it would be typed: lists as their items (--size 512 1024), --x / --no-x."""
    value = action.default
    if isinstance(action, argparse.BooleanOptionalAction):
        return next(o for o in action.option_strings if o.startswith('--no-') != bool(value))
    if isinstance(value, list | tuple):
        return ' '.join(str(v) for v in value)
    return str(value)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help that states every default and keeps the line breaks of descriptions."""

    def _format_action(self, action: argparse.Action) -> str:
        # argparse prints no help column for an action without help: give it one.
        if not action.help and _shows_default(action):
            action = copy.copy(action)
            action.help = self._get_help_string(action)
        return super()._format_action(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        # Help that already names its default ("(default: all cores)", "%(default)s") keeps
        # its own words.
        if not _shows_default(action) or 'default' in text.lower():
            return text
        shown = 'default: ' + _default_text(action).replace('%', '%%')
        return f'{text} ({shown})' if text.strip() else shown


class _Parser(argparse.ArgumentParser):
    """Every ``tsa`` parser: defaults in --help, and no prefix matching of long options.

    ``add_subparsers`` creates subparsers of the parser's own class, so subcommands defined
    in other modules (``tsa up``, ``tsa bench`` ...) get the same behaviour.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault('formatter_class', _HelpFormatter)
        # "--step 5" silently meaning --steps 5 hides typos: a newcomer should see an error.
        kwargs.setdefault('allow_abbrev', False)
        super().__init__(*args, **kwargs)


@contextlib.contextmanager
def _user_input() -> Iterator[None]:
    """Around code that validates what the user typed: its ValueErrors are bad input."""
    try:
        yield
    except ConfigError:
        raise
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _cmd_info(args: argparse.Namespace) -> int:
    """Versions, device and whether the ROS 2 side is usable."""
    import platform

    import numpy
    import torch

    import tsa_ros

    print(f'tsa_ros {tsa_ros.__version__} on Python {platform.python_version()}')
    print(f'torch {torch.__version__}, numpy {numpy.__version__}')
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'not available'
    print(f'cuda: {cuda}')
    from tsa_ros.ros.env import ros_problem

    problem = ros_problem()
    print('ROS 2: rclpy and tsa_msgs importable' if problem is None else f'ROS 2: {problem}')
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    """Print the default configuration, or validate and print a YAML file."""
    from tsa_ros.config import dump_config, load_config

    print(dump_config(load_config(args.file)), end='')
    return 0


def _cmd_keys(args: argparse.Namespace) -> int:
    """Create the weights key file (mode 0600), or print where the nodes look for it."""
    from tsa_ros.keys import init_key, load_key, resolve_key_path

    if args.keys_command == 'path':
        path = resolve_key_path(args.path)
        load_key(path)  # one clear error if it is missing or others can read it
        print(path)
        return 0
    path, created = init_key(args.path, exist_ok=args.exist_ok)
    print(f'{"created" if created else "kept existing"} weights key file {path} (mode 0600)')
    return 0


def _cmd_model(args: argparse.Namespace) -> int:
    """Parameter count and conv multiply-accumulates of a network."""
    from tsa_ros.models import ModelConfig, build_model, count_conv_macs, count_parameters

    with _user_input():
        config = ModelConfig(
            arch=args.arch,
            num_classes=args.classes,
            backbone=args.backbone,
            output_stride=args.output_stride,
            input_size=tuple(args.size),
        )
    model = build_model(config)
    macs = count_conv_macs(model, input_size=config.input_size)
    name = args.arch if args.arch == 'erfnet' else f'{args.arch}-{args.backbone}'
    height, width = config.input_size
    print(
        f'{name}: {count_parameters(model):,} trainable parameters, '
        f'{macs / 1e9:.2f} G conv MACs at 1x3x{height}x{width}, '
        f'{len(model.feature_layers)} feature taps'
    )
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    """Generate the synthetic Cityscapes-layout driving world."""
    from tsa_ros.data.generate import generate

    manifest = generate(
        args.out, args.preset, seed=args.seed, workers=args.workers, overwrite=args.overwrite
    )
    hist = sorted(manifest['class_histogram'].items(), key=lambda kv: -kv[1])
    print(f'wrote {args.out} ({args.preset}, seed {args.seed}) in {manifest["seconds"]} s')
    print('class histogram (share of labeled pixels):')
    for name, share in hist:
        print(f'  {name:<14} {100 * share:6.2f} %')
    return 0


def _cmd_data_bag(args: argparse.Namespace) -> int:
    """Write a split's sequence snippets as a rosbag2."""
    from tsa_ros.data.export import export_bag

    summary = export_bag(
        args.root,
        args.split,
        args.out,
        storage=args.format,
        size=tuple(args.size) if args.size else None,
        overwrite=args.overwrite,
    )
    print(
        f'wrote {summary.path} ({summary.storage}): {summary.frames} frames, '
        f'{summary.ground_truth} with ground truth, {summary.duration_s:.1f} s'
    )
    for topic, count in sorted(summary.topics.items()):
        print(f'  {topic}: {count}')
    return 0


def _cmd_data_sheet(args: argparse.Namespace) -> int:
    """Contact sheet PNG of images and colourised labels."""
    from tsa_ros.data.contact_sheet import contact_sheet

    path = contact_sheet(args.root, args.out, split=args.split, count=args.count)
    print(f'wrote {path}')
    return 0


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser('data', help='synthetic data, Cityscapes layout, rosbag2 export')
    data_sub = data.add_subparsers(dest='data_command', metavar='DATA_COMMAND', required=True)

    p = data_sub.add_parser('synth', help='generate the synthetic driving world')
    p.add_argument('--out', required=True, help='output root (Cityscapes layout)')
    p.add_argument('--preset', default='tiny', choices=['tiny', 'demo', 'default', 'paper'])
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--workers', type=int, default=None, help='processes (default: all cores)')
    p.add_argument('--overwrite', action='store_true', help='write into a non-empty folder')
    p.set_defaults(func=_cmd_data_synth)

    p = data_sub.add_parser('bag', help='write sequence snippets of a split as a rosbag2')
    p.add_argument('--root', required=True, help='data root in the Cityscapes layout')
    p.add_argument('--split', default='val', help='split (val, test, minival, minitest ...)')
    p.add_argument('--out', required=True, help='bag directory to create')
    p.add_argument('--format', default='sqlite3', choices=['sqlite3', 'mcap'])
    p.add_argument(
        '--size',
        type=int,
        nargs=2,
        metavar=('H', 'W'),
        help='resize frames (default: native size)',
    )
    p.add_argument('--overwrite', action='store_true')
    p.set_defaults(func=_cmd_data_bag)

    p = data_sub.add_parser('sheet', help='contact sheet PNG of images and labels')
    p.add_argument('--root', required=True)
    p.add_argument('--split', default='train')
    p.add_argument('--count', type=int, default=8)
    p.add_argument('--out', required=True)
    p.set_defaults(func=_cmd_data_sheet)


def _device(name: str | None) -> str:
    from tsa_ros.inference import resolve_device

    with _user_input():
        return str(resolve_device(name))


def _cmd_attack(args: argparse.Namespace) -> int:
    """Write the least-likely AEs (or, at epsilon 0, the clean images) of a split."""
    from tsa_ros.experiments import make_ae_set

    if args.checkpoint is None and (args.epsilon > 0 or args.size is None):
        raise ConfigError('--checkpoint is required (or --epsilon 0 with --size for a clean set)')
    summary = make_ae_set(
        args.root,
        args.split,
        args.checkpoint,
        args.epsilon,
        args.out,
        size=tuple(args.size) if args.size else None,
        batch_size=args.batch_size,
        device=_device(args.device),
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    height, width = summary['size']
    check = 'ok' if summary['linf_ok'] else 'VIOLATED'
    print(
        f'wrote {summary["out"]}: {summary["frames"]} images of {args.split} at {height}x{width}, '
        f'epsilon {summary["epsilon"]:g}, {summary["iterations"]} iterations, '
        f'max |adv - clean| = {summary["linf_max"]} ({check}), '
        f'{summary["seconds"]:.1f} s ({summary["per_image_s"]:.3f} s/image)'
    )
    return 0 if summary['linf_ok'] else 1


def _add_attack_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('attack', help='write least-likely adversarial examples of a split')
    p.add_argument('--root', required=True, help='source data root (Cityscapes layout)')
    p.add_argument('--split', default='minival', help='split (minival, minitest, val ...)')
    p.add_argument('--checkpoint', help='attacked network (optional for --epsilon 0)')
    p.add_argument('--epsilon', type=float, required=True, help='L-inf bound (0 = clean set)')
    p.add_argument('--out', required=True, help='output root of the AE set')
    p.add_argument(
        '--size', type=int, nargs=2, metavar=('H', 'W'), help='default: the model input size'
    )
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--device', help='torch device (default: cuda if available)')
    p.add_argument('--overwrite', action='store_true', help='replace a set in --out')
    p.add_argument('--quiet', action='store_true', help='no progress line')
    p.set_defaults(func=_cmd_attack)


def _name_value(option: str, text: str) -> tuple[str, str]:
    name, sep, value = text.partition('=')
    if not sep or not name or not value:
        raise ConfigError(f'{option} expects NAME=PATH, got {text!r}')
    return name, value


def _cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate networks on clean and AE sets; write the paper's robustness table."""
    from pathlib import Path

    from tsa_ros.data.cityscapes import LabeledDataset
    from tsa_ros.experiments import evaluate, write_results
    from tsa_ros.inference import BACKENDS
    from tsa_ros.models import load_checkpoint

    if args.backend not in BACKENDS:
        raise ConfigError(f'--backend must be one of {BACKENDS}, got {args.backend!r}')
    device = _device(args.device)
    model_args = [_name_value('--model', m) for m in args.model]
    set_args = [_name_value('--set', s) for s in args.set]
    for option, pairs in (('--model', model_args), ('--set', set_args)):
        names = [name for name, _ in pairs]
        if len(set(names)) != len(names):
            raise ConfigError(f'{option} names must be unique, got {names}')
    for name, root in set_args:
        if not Path(root).is_dir():
            raise FileNotFoundError(f'set {name!r}: root {root} does not exist')
    size = tuple(args.size) if args.size else None
    sets = {name: LabeledDataset(root, args.split, size) for name, root in set_args}
    models, checkpoints = {}, {}
    for name, path in model_args:
        models[name], meta = load_checkpoint(path, map_location=device)
        checkpoints[name] = {
            'path': meta['path'],
            'sha256': meta['sha256'],
            'config': meta['config'].to_dict(),
        }
    results = evaluate(
        models,
        sets,
        args.fusion,
        args.batch_size,
        device,
        progress=not args.quiet,
        backend=args.backend,
    )
    results['backend'] = args.backend
    results['checkpoints'] = checkpoints
    results['split'] = args.split
    table = args.table or {'minival': 1, 'minitest': 2}.get(args.split)
    what = {'minival': 'mini validation set', 'minitest': 'mini test set'}.get(
        args.split, f'split {args.split}'
    )
    title = f'Table {table}: {what}' if table else what
    results['table'] = table
    paths = write_results(results, args.out, title)
    print(paths['markdown'].read_text(), end='')
    print(f'wrote {paths["json"]}, {paths["markdown"]}, {paths["csv"]}')
    return 0


def _add_eval_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('eval', help='mIoU of networks on clean / AE sets (Tables 1 and 2)')
    p.add_argument(
        '--model', action='append', required=True, metavar='NAME=CKPT', help='repeat: T, S, A'
    )
    p.add_argument(
        '--set',
        action='append',
        required=True,
        metavar='NAME=ROOT',
        help='repeat: clean, T-AE-1, T-AE-10, S-AE-1, S-AE-10 (others are extra columns)',
    )
    p.add_argument('--split', default='minival')
    p.add_argument('--fusion', action='store_true', help='add majority / posterior fusion rows')
    p.add_argument('--out', required=True, help='folder for results.json, table.md, table.csv')
    p.add_argument('--table', type=int, choices=[1, 2], help='title (default: from --split)')
    p.add_argument(
        '--size', type=int, nargs=2, metavar=('H', 'W'), help='resize sets (default: as stored)'
    )
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--device', help='torch device (default: cuda if available)')
    p.add_argument('--quiet', action='store_true', help='no progress bar (frames done, fps)')
    p.add_argument(
        '--backend',
        default='auto',
        help='how the networks run: auto, eager, channels_last, bf16 (bfloat16 hardware '
        'only), onnxruntime; e.g. bf16 against channels_last for its cost in mIoU',
    )
    p.set_defaults(func=_cmd_eval)


def _preset_steps(preset, job: str) -> int:
    """The steps an :class:`~tsa_ros.experiments.paper.ExperimentPreset` gives ``job``."""
    return {
        'teacher': preset.teacher_steps,
        'student': preset.student_steps,
        'adapt': preset.adapt_steps,
    }[job]


def default_steps(job: str, data: str | Path) -> tuple[int, str]:
    """Steps of ``job`` ('teacher', 'student' or 'adapt') when neither --steps nor --config sets
    them, and where the number comes from.

    A synthetic data root names its preset in its manifest; the step counts of ``tsa
    experiment paper`` for that preset apply (``tsa demo``'s for the demo world). Without a
    manifest (real Cityscapes) or for a preset without step counts: the paper's numbers.
    """
    from tsa_ros.data.cityscapes import MANIFEST
    from tsa_ros.experiments.paper import PRESETS

    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f'data root not found: {root}')
    paper = _preset_steps(PRESETS['paper'], job)
    manifest = root / MANIFEST
    if not manifest.is_file():
        return paper, f"the paper's number (no {MANIFEST} in {root}: real Cityscapes)"
    try:
        name = json.loads(manifest.read_text())['preset']['name']
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f'{manifest}: no preset name in it ({exc})') from exc
    where = f'the {name!r} preset named in {manifest}'
    for preset in PRESETS.values():
        if preset.data_preset == name:
            return _preset_steps(preset, job), f'{where}, as tsa experiment paper runs it'
    if name == 'demo':
        from tsa_ros.ros.demo import DemoArgs  # no rclpy at import: only the defaults

        demo = DemoArgs()
        steps = {'teacher': demo.teacher_steps, 'student': demo.student_steps}
        return steps.get(job, demo.adapt_steps), f'{where}, as tsa demo'
    return paper, f"the paper's number ({where} has no step counts)"


def _config_sets(path: str | None, key: str) -> bool:
    """Whether the YAML config file sets ``key`` itself (rather than leaving the default)."""
    if path is None:
        return False
    import yaml

    data = yaml.safe_load(Path(path).read_text())  # load_config has validated it
    return isinstance(data, dict) and key in data


def _steps(job: str, args: argparse.Namespace, configured: int) -> tuple[int, str]:
    """The step count to run (``configured``: the config's) and where it comes from."""
    if args.steps is not None:
        return args.steps, '--steps'
    if _config_sets(args.config, 'steps'):
        return configured, f'--config {args.config}'
    steps, source = default_steps(job, args.data)
    return steps, f'{source}; --steps overrides'


def _duration(seconds: float) -> str:
    minutes, hours = seconds / 60, seconds / 3600
    if minutes < 90:
        return f'{minutes:.0f} min'
    if hours < 48:
        return f'{hours:.1f} h' if hours < 10 else f'{hours:.0f} h'
    return f'{hours / 24:.1f} days'


def eta_warning(
    command: str, steps: int, seconds_per_step: float, limit_s: float = LONG_JOB_S
) -> str | None:
    """The warning before a job of ``steps`` at ``seconds_per_step`` longer than ``limit_s``."""
    total = steps * seconds_per_step
    if total <= limit_s:
        return None
    pace = f'{seconds_per_step:.2g}' if seconds_per_step < 10 else f'{seconds_per_step:.0f}'
    return (
        f'tsa {command}: {steps:,} steps at ~{pace} s/step here: about {_duration(total)}. '
        'Ctrl-C stops; --resume continues from the last checkpoint.'
    )


def _warn_if_long(command: str) -> Callable[[int, float], None]:
    """The ``on_pace`` callback of train / adapt: one warning line above the progress bar."""

    def report(steps: int, seconds_per_step: float) -> None:
        message = eta_warning(command, steps, seconds_per_step)
        if message:
            from tqdm import tqdm

            tqdm.write(message, file=sys.stderr)

    return report


def _cmd_train(args: argparse.Namespace) -> int:
    """Supervised training of the teacher or the student (paper sec. 4.2)."""
    import dataclasses
    import os

    from tsa_ros.config import load_config
    from tsa_ros.learning.train import TrainConfig, train

    config = load_config(args.config, TrainConfig)
    overrides = {'role': args.role}
    overrides['steps'], source = _steps(args.role, args, config.steps)
    if args.batch_size is not None:
        overrides['batch_size'] = args.batch_size
    with _user_input():
        config = dataclasses.replace(config, **overrides)
    main_rank = int(os.environ.get('RANK', '0')) == 0  # under torchrun only rank 0 reports
    if main_rank:
        print(f'tsa train: {config.steps:,} steps ({source})', flush=True)
    result = train(
        config,
        args.data,
        args.out,
        resume=args.resume,
        device=args.device,
        on_pace=_warn_if_long('train'),
    )
    if main_rank:
        print(
            f'{args.role}: step {result["step"]}, mIoU {result["miou"]:.4f}, '
            f'checkpoint {result["checkpoint"]}'
        )
    return 0


def _cmd_adapt(args: argparse.Namespace) -> int:
    """Adapt A from S with T's posteriors on the unlabeled split (J_TS, eqs. 3-6)."""
    import dataclasses

    from tsa_ros.config import load_config
    from tsa_ros.experiments.adapt import AdaptConfig, adapt

    cfg = load_config(args.config, AdaptConfig)
    steps, source = _steps('adapt', args, cfg.steps)
    overrides = {'steps': steps}
    if args.finetune_steps is not None:
        overrides['finetune_steps'] = args.finetune_steps
    loss = cfg.learner.loss
    with _user_input():
        if not args.ifm:
            loss = dataclasses.replace(loss, alpha=0.0)  # the paper's baseline: CE only
        elif args.alpha is not None:
            loss = dataclasses.replace(loss, alpha=args.alpha)
        learner = dataclasses.replace(cfg.learner, loss=loss)
        cfg = dataclasses.replace(cfg, learner=learner, **overrides)
    print(f'tsa adapt: {cfg.steps:,} steps ({source})', flush=True)
    name = args.name or ('adaptive_ifm' if args.ifm else 'adaptive')
    path = adapt(
        args.teacher,
        args.student,
        args.data,
        args.out,
        cfg,
        name=name,
        resume=args.resume,
        device=args.device,
        on_pace=_warn_if_long('adapt'),
    )
    print(f'wrote {path} (alpha {loss.alpha}, beta {loss.beta}, gamma {loss.gamma}, p {loss.p})')
    return 0


_STEPS_HELP = (
    "optimisation steps (default: the --config's if it sets them, else those tsa experiment "
    "paper runs for the data's synthetic preset, the paper's {paper:,} on Cityscapes)"
)


def _paper_steps(job: str) -> int:
    from tsa_ros.experiments.paper import PRESETS

    return _preset_steps(PRESETS['paper'], job)


def _add_adapt_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('adapt', help='adapt A from S on the unlabeled split (J_TS)')
    p.add_argument('--teacher', required=True, help='checkpoint of T')
    p.add_argument('--student', required=True, help='checkpoint of S (A starts as S)')
    p.add_argument('--data', required=True, help='data root (Cityscapes layout)')
    p.add_argument('--out', default='runs', help='output folder')
    p.add_argument('--config', help='YAML with AdaptConfig fields (steps, learner, ...)')
    p.add_argument(
        '--ifm',
        action=argparse.BooleanOptionalAction,
        default=True,
        help='with the IFM loss (alpha from the config, paper 0.6) or without '
        '(--no-ifm: alpha = 0)',
    )
    p.add_argument(
        '--alpha', type=float, help="override alpha (with --ifm; default: the config's)"
    )
    p.add_argument('--steps', type=int, help=_STEPS_HELP.format(paper=_paper_steps('adapt')))
    p.add_argument(
        '--finetune-steps',
        type=int,
        help="steps of the optional fine-tuning (default: the config's, 0 = none)",
    )
    p.add_argument('--name', help='output name (default adaptive / adaptive_ifm)')
    p.add_argument('--resume', action='store_true', help='continue from OUT/<name>.state.pt')
    p.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto')
    p.set_defaults(func=_cmd_adapt)


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser('train', help='train the teacher or the student on the labeled split')
    p.add_argument('--role', required=True, choices=['teacher', 'student'], help='what to train')
    p.add_argument('--data', required=True, help='data root in the Cityscapes layout')
    p.add_argument('--config', help='YAML mapping onto TrainConfig (default: its defaults)')
    p.add_argument('--out', default='runs', help='output folder (default: runs)')
    p.add_argument('--steps', type=int, help=_STEPS_HELP.format(paper=_paper_steps('student')))
    p.add_argument(
        '--batch-size', type=int, help="images per step and process (default: the config's)"
    )
    p.add_argument('--resume', action='store_true', help='continue from OUT/<role>.state.pt')
    p.add_argument('--device', default='auto', choices=['cpu', 'cuda', 'auto'])
    p.set_defaults(func=_cmd_train)


def _add_experiment_command(sub: argparse._SubParsersAction) -> None:
    from tsa_ros.experiments.paper import PRESETS, STAGES, main_from_args

    p = sub.add_parser('experiment', help='whole experiments as one resumable command')
    which = p.add_subparsers(dest='experiment', metavar='EXPERIMENT', required=True)
    q = which.add_parser(
        'paper', help="the paper's experiment: T, S, A, AE sets, Tables 1-2, Figs. 2-3"
    )
    q.add_argument('--preset', default='default', choices=sorted(PRESETS))
    q.add_argument('--data', help='data root (default: OUT/RUN/data, generated if absent)')
    q.add_argument('--out', default='results', help='parent folder of the run')
    q.add_argument('--run', help='run name (default: the preset name)')
    q.add_argument(
        '--stages',
        nargs='+',
        choices=STAGES,
        metavar='STAGE',
        help=f'subset of {STAGES} (default: all)',
    )
    q.add_argument(
        '--force',
        nargs='+',
        default=[],
        choices=STAGES,
        metavar='STAGE',
        help='redo these stages and the ones after them',
    )
    q.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto')
    q.add_argument('--quiet', action='store_true', help='no progress bars')
    q.add_argument(
        '--publish',
        metavar='DIR',
        help='copy report.md, results.json, tables, plots and overlays into DIR afterwards',
    )
    q.set_defaults(func=main_from_args)

    from tsa_ros.experiments import compare

    q = which.add_parser(
        'compare', help='compare the tables and sweeps of two runs (re-run within noise?)'
    )
    q.add_argument('a', help='run folder or results.json')
    q.add_argument('b', help='run folder or results.json')
    q.add_argument(
        '--tolerance',
        type=float,
        default=0.0,
        help='largest allowed difference in percentage points (exit 1 beyond it)',
    )
    q.set_defaults(func=compare.main_from_args)

    from tsa_ros.experiments import study

    q = which.add_parser(
        'length-study',
        help="S's clean mIoU and S-AE ratios against training length (checkpoints of one run)",
    )
    q.add_argument('--data', required=True, help='data root (Cityscapes layout)')
    q.add_argument(
        '--checkpoints', nargs='+', required=True, help='S at several steps (tsa train keep_steps)'
    )
    q.add_argument('--out', required=True, help='output folder (AE sets cached in OUT/ae)')
    q.add_argument('--split', default='minitest', help='split the numbers are measured on')
    q.add_argument(
        '--epsilon', type=float, nargs='+', default=[1.0, 10.0], help='attack strengths'
    )
    q.add_argument('--batch-size', type=int, default=4)
    q.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N or auto')
    q.add_argument('--quiet', action='store_true', help='no progress lines')
    q.set_defaults(func=study.main_from_args)

    from tsa_ros.experiments import detection

    q = which.add_parser(
        'detection', help='frame-level detection of an attacked network: ROC, AUROC, suspects'
    )
    q.add_argument('--data', required=True, help='data root (Cityscapes layout)')
    for role, who in (('teacher', 'T'), ('student', 'S'), ('adaptive', 'A')):
        q.add_argument(f'--{role}', required=True, help=f'checkpoint of {who}')
    q.add_argument('--out', required=True, help='output folder (AE sets cached in OUT/ae)')
    q.add_argument('--split', default='minitest', help='split the numbers are reported on')
    q.add_argument(
        '--threshold-split', default='minival', help='split that sets thresholds, picks the rule'
    )
    q.add_argument(
        '--epsilon', type=float, nargs='+', default=[1.0, 10.0], help='attack strengths'
    )
    q.add_argument('--fpr', type=float, default=0.05, help='target false-positive rate')
    q.add_argument('--batch-size', type=int, default=4)
    q.add_argument('--device', default='auto', help='cpu, cuda, cuda:N or auto')
    q.add_argument('--quiet', action='store_true', help='no progress lines')
    q.set_defaults(func=detection.main_from_args)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog='tsa',
        description='Redundant teacher/student/adaptive-student segmentation (Bär et al. 2019).',
    )
    parser.add_argument(
        '--traceback',
        action='store_true',
        help='show the traceback of bad-input errors too (bugs always show one)',
    )
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')

    p = sub.add_parser('info', help='versions, device and ROS 2 availability')
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser('config', help='print the default config or validate a YAML config')
    p.add_argument('file', nargs='?', help='YAML config to validate (default: print defaults)')
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser('model', help='parameter count and MACs of a network')
    p.add_argument('--arch', default='erfnet', choices=['erfnet', 'deeplabv3plus'])
    p.add_argument('--backbone', default='resnet50', choices=['resnet18', 'resnet50', 'resnet101'])
    p.add_argument('--output-stride', type=int, default=16, choices=[8, 16])
    p.add_argument('--classes', type=int, default=19)
    p.add_argument('--size', type=int, nargs=2, default=[512, 1024], metavar=('H', 'W'))
    p.set_defaults(func=_cmd_model)

    p = sub.add_parser('keys', help='the key file that signs weight snapshots')
    keys = p.add_subparsers(dest='keys_command', metavar='KEYS_COMMAND', required=True)
    q = keys.add_parser('init', help='create a new random key file with mode 0600')
    q.add_argument(
        '--path', help='key file (default: $TSA_WEIGHTS_KEY_FILE, else ~/.config/tsa_ros/)'
    )
    q.add_argument(
        '--exist-ok', action='store_true', help='keep (and check) a key file that exists'
    )
    q = keys.add_parser('path', help='print the key file the nodes use, after checking it')
    q.add_argument('--path', help='key file to check instead of the default')
    p.set_defaults(func=_cmd_keys)

    _add_data_commands(sub)
    _add_train_command(sub)
    _add_adapt_command(sub)
    _add_attack_command(sub)
    _add_eval_command(sub)
    _add_experiment_command(sub)

    from tsa_ros.ros.up import add_arguments, main_from_args

    p = sub.add_parser(
        'up', help='bring up a ROS 2 graph like ros2 launch (tsa, replay, attack_injection)'
    )
    add_arguments(p)
    p.set_defaults(func=main_from_args)

    from tsa_ros import bench

    p = sub.add_parser('bench', help='what every stage costs on this machine, beside its floor')
    bench.add_arguments(p)
    p.set_defaults(func=bench.main_from_args)

    from tsa_ros.ros import demo

    p = sub.add_parser(
        'demo', help='the whole method in one run: data, T/S/A, the graph under attack, a report'
    )
    demo.add_arguments(p)
    p.set_defaults(func=demo.main_from_args)

    from tsa_ros.ros import soak

    p = sub.add_parser(
        'soak', help='the tsa graph under a steady synthetic camera: memory, latency, accounting'
    )
    soak.add_arguments(p)
    p.set_defaults(func=soak.main_from_args)

    from tsa_ros.ros import record

    p = sub.add_parser(
        'record', help="record the graph's topics to MCAP (Foxglove / Lichtblick open it)"
    )
    record.add_arguments(p)
    p.set_defaults(func=record.main_from_args)

    from tsa_ros.ros import view

    p = sub.add_parser(
        'view',
        help="live view in Foxglove / Lichtblick: a Foxglove WebSocket server on the graph's "
        'topics',
    )
    view.add_arguments(p)
    p.set_defaults(func=view.main_from_args)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input (a file, a value), not a bug."""
    from tsa_ros.data.bag import BagError
    from tsa_ros.data.cityscapes import DataError
    from tsa_ros.models.checkpoint import CheckpointError

    return (
        ConfigError,
        DataError,
        BagError,
        CheckpointError,
        FileExistsError,
        FileNotFoundError,
        NotADirectoryError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, recorded by commands that write results
    if not getattr(args, 'func', None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except user_errors() as exc:
        if args.traceback:
            raise
        # Bad input: one clear line, no traceback.
        print(f'tsa {args.command}: {exc} (--traceback for details)', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.traceback:
            raise
        # Ctrl-C is how a user stops a long job: say so, without a traceback (130 = SIGINT).
        print(f'\ntsa {args.command}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
