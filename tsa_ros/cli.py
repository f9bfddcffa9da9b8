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
    from tsa_ros.config import ConfigError, dump_config, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f'tsa config: {exc}', file=sys.stderr)
        return 2
    print(dump_config(config), end='')
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, 'func', None):
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == '__main__':
    sys.exit(main())
