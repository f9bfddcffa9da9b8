"""What every tsa_ros node shares: the network parameters, the main() shape, the signing key."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import rclpy
import torch
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node

from tsa_ros.inference import resolve_device
from tsa_ros.models import ModelConfig, build_model, load_checkpoint
from tsa_ros.ros.params import declare_dataclass

#: Used when neither the `weights_key` parameter nor TSA_WEIGHTS_KEY is set (demo and tests).
DEMO_KEY = 'tsa-demo-key-change-me'


@dataclass
class NetworkParams:
    """Where a node's network comes from.

    Attributes:
        checkpoint: Path of a tsa checkpoint (tsa train); empty = random weights from
            `model.*` and `seed` (tests and demos only).
        seed: Seed of the random initialisation when no checkpoint is given.
        device: 'cpu', 'cuda', 'cuda:N' or 'auto' (cuda when available).
    """

    checkpoint: str = ''
    seed: int = 0
    device: str = 'cpu'


def arch_id(config: ModelConfig) -> str:
    """A short architecture id, e.g. 'erfnet' or 'deeplabv3plus-resnet50-os16'."""
    if config.arch == 'erfnet':
        return 'erfnet'
    return f'{config.arch}-{config.backbone}-os{config.output_stride}'


def declare_network(node: Node, default: ModelConfig | None = None):
    """Declare `checkpoint`, `seed`, `device` and `model.*`; load the network, eval mode.

    Returns (model on its device, the ModelConfig, the torch.device).
    """
    params = declare_dataclass(node, NetworkParams())
    config = declare_dataclass(node, default or ModelConfig(), 'model')
    device = resolve_device(params.device)
    if params.checkpoint:
        model, _ = load_checkpoint(params.checkpoint, map_location='cpu')
        config = model.config
        node.get_logger().info(f'loaded {arch_id(config)} from {params.checkpoint}')
    else:
        torch.manual_seed(params.seed)
        model = build_model(config)
        node.get_logger().warning(
            f'no checkpoint given: {arch_id(config)} has random weights (seed {params.seed})'
        )
    return model.to(device).eval(), config, device


def weights_key(node: Node) -> bytes:
    """The HMAC key for weight snapshots: parameter, else TSA_WEIGHTS_KEY, else the demo key."""
    from rcl_interfaces.msg import ParameterDescriptor

    value = node.declare_parameter(
        'weights_key',
        '',
        ParameterDescriptor(
            description='HMAC key for weight snapshots (default: env TSA_WEIGHTS_KEY)',
            read_only=True,
        ),
    ).value
    key = value or os.environ.get('TSA_WEIGHTS_KEY', '')
    if not key:
        node.get_logger().warning('weights_key not set: using the demo key (not for vehicles)')
        key = DEMO_KEY
    return key.encode()


def run(node_factory: Callable[[], Node], args: Sequence[str] | None = None, threads: int = 2):
    """The one shape of every node's main(): init, spin, treat Ctrl-C as a normal exit.

    A node that cannot start (bad parameter, missing file, a params file rcl cannot parse)
    exits with status 2 after one clear log line instead of a traceback.
    """
    try:
        init = rclpy.init(args=args if args is not None else sys.argv)
    except _rclpy.RCLError as exc:  # e.g. a YAML syntax error in --params-file
        rclpy.logging.get_logger('tsa_ros').fatal(f'cannot start: {exc}')
        sys.exit(2)
    with init:
        node = None
        try:
            node = node_factory()
            executor = MultiThreadedExecutor(num_threads=threads)
            executor.add_node(node)
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except (ValueError, OSError) as exc:  # ConfigError, CheckpointError, BagError, files
            if node is not None:
                raise
            rclpy.logging.get_logger('tsa_ros').fatal(f'cannot start: {exc}')
            sys.exit(2)
        finally:
            if node is not None:
                close = getattr(node, 'close', None)
                if close is not None:
                    close()
                node.destroy_node()
