"""The ``tsa`` command: one entry point for the package's tools.

Subcommands import their heavy dependencies (torch, rclpy) lazily so ``tsa --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


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


def _cmd_model(args: argparse.Namespace) -> int:
    """Parameter count and conv multiply-accumulates of a network."""
    from tsa_ros.models import ModelConfig, build_model, count_conv_macs, count_parameters

    try:
        config = ModelConfig(
            arch=args.arch,
            num_classes=args.classes,
            backbone=args.backbone,
            output_stride=args.output_stride,
            input_size=tuple(args.size),
        )
    except ValueError as exc:
        print(f'tsa model: {exc}', file=sys.stderr)
        return 2
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
    p.add_argument('--preset', default='tiny', choices=['tiny', 'default', 'paper'])
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='tsa',
        description='Redundant teacher/student/adaptive-student segmentation (Bär et al. 2019).',
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

    _add_data_commands(sub)

    from tsa_ros.ros.up import add_arguments, main_from_args

    p = sub.add_parser(
        'up', help='bring up a ROS 2 graph like ros2 launch (tsa, replay, attack_injection)'
    )
    add_arguments(p)
    p.set_defaults(func=main_from_args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 0
    from tsa_ros.config import ConfigError
    from tsa_ros.data.bag import BagError
    from tsa_ros.data.cityscapes import DataError

    try:
        return args.func(args)
    except (
        ConfigError,
        DataError,
        BagError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        # Bad input: one clear line, no traceback.
        print(f'tsa {args.command}: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
