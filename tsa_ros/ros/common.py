"""What every tsa_ros node shares: the network parameters, the main() shape, the signing key."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import rclpy
import torch
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from tsa_ros.admission import FrameAdmission
from tsa_ros.data.labels import NUM_CLASSES
from tsa_ros.errors import ConfigError
from tsa_ros.inference import resolve_device
from tsa_ros.keys import KEY_FILE_ENV, default_key_path, load_key, resolve_key_path
from tsa_ros.models import ModelConfig, build_model, load_checkpoint
from tsa_ros.ros.env import use_dds_profile
from tsa_ros.ros.params import declare_dataclass, declare_once
from tsa_ros.sync import stamp_ns


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


#: Default pixel budget of a frame, as a multiple of the network input's pixels: a Cityscapes
#: camera frame (1024x2048) is 4x the paper's 512x1024 network input.
PIXEL_BUDGET_FACTOR = 4


def declare_pixel_budget(node: Node, config: ModelConfig) -> int:
    """Declare ``max_pixels`` (0 = 4x the network input) and return the budget in pixels.

    Frames above it are rejected and counted from their header, before any copy or resize:
    an 8K frame would otherwise reach full-resolution inference (or a resize of 33 M pixels)
    on every camera tick.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    value = declare_once(
        node,
        'max_pixels',
        0,
        ParameterDescriptor(
            description='largest frame (height x width) accepted; 0 = '
            f'{PIXEL_BUDGET_FACTOR} x the network input (model.input_size)',
            read_only=True,
        ),
    ).value
    if value < 0:
        raise ConfigError(f'max_pixels must be >= 0 (0 = automatic), got {value}')
    height, width = config.input_size
    return int(value) or PIXEL_BUDGET_FACTOR * height * width


def arch_id(config: ModelConfig) -> str:
    """A short architecture id, e.g. 'erfnet' or 'deeplabv3plus-resnet50-os16'."""
    if config.arch == 'erfnet':
        return 'erfnet'
    return f'{config.arch}-{config.backbone}-os{config.output_stride}'


def declare_network(node: Node, default: ModelConfig | None = None, strict_arch: bool = False):
    """Declare `checkpoint`, `seed`, `device` and `model.*`; load the network, eval mode.

    The network must predict the 19 Cityscapes trainIds. ``strict_arch``: a checkpoint must
    hold the architecture `model.*` declares (the adaptive student, whose snapshots come
    from the learner's copy of S).

    Returns (model on its device, the ModelConfig, the torch.device).
    """
    params = declare_dataclass(node, NetworkParams())
    config = declare_dataclass(node, default or ModelConfig(), 'model')
    device = resolve_device(params.device)
    if params.checkpoint:
        model, _ = load_checkpoint(params.checkpoint, map_location='cpu')
        if strict_arch and arch_id(model.config) != arch_id(config):
            # A and the learner's copy of S must be one architecture, or every snapshot
            # would be rejected at run time.
            raise ConfigError(
                f'checkpoint {params.checkpoint} holds {arch_id(model.config)}, but this '
                f"node must run {arch_id(config)} (model.*: the student's architecture)"
            )
        config = model.config
        node.get_logger().info(f'loaded {arch_id(config)} from {params.checkpoint}')
    else:
        torch.manual_seed(params.seed)
        model = build_model(config)
        node.get_logger().warning(
            f'no checkpoint given: {arch_id(config)} has random weights (seed {params.seed})'
        )
    if config.num_classes != NUM_CLASSES:
        raise ConfigError(
            f'{arch_id(config)} predicts {config.num_classes} classes; the graph fuses and '
            f'evaluates the {NUM_CLASSES} Cityscapes trainIds'
        )
    return model.to(device).eval(), config, device


def weights_key(node: Node) -> bytes | None:
    """The HMAC key for weight snapshots, from the key file (tsa_ros.keys); None = unsigned.

    Declares ``weights_key_file`` (path; default ``$TSA_WEIGHTS_KEY_FILE``, else the user's
    default key file) and ``insecure_unsigned_weights`` (an explicit demo/test mode in which
    snapshots are neither signed nor checked: anyone on the graph can then replace A's
    weights). Without a usable key file and without that opt-in, raises KeyFileError, which
    ``run`` turns into one 'cannot start' line.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    path = declare_once(
        node,
        'weights_key_file',
        '',
        ParameterDescriptor(
            description='file holding the HMAC key for weight snapshots (mode 0600; default: '
            f'env {KEY_FILE_ENV}, else {default_key_path()})',
            read_only=True,
        ),
    ).value
    unsigned = declare_once(
        node,
        'insecure_unsigned_weights',
        False,
        ParameterDescriptor(
            description='demo/test only: publish and accept weight snapshots unsigned',
            read_only=True,
        ),
    ).value
    if unsigned:
        node.get_logger().warning(
            'INSECURE: insecure_unsigned_weights is set; weight snapshots are neither signed '
            'nor checked, so any participant can replace the adaptive student (demo/test only)'
        )
        return None
    key = load_key(path or None)
    node.get_logger().info(f'weights key from {resolve_key_path(path or None)}')
    return key


def admit_frame(admission: FrameAdmission, health, header) -> bool:
    """Admission of a camera frame (tsa_ros.admission), counted on the node's Health:
    ``skipped.admission`` for frames not taken, ``lost.camera`` for frames the stamps show
    this node never received."""
    lost = admission.lost
    admitted = admission.admit(stamp_ns(header))
    if admission.lost > lost:
        health.count('lost.camera', admission.lost - lost)
    if not admitted:
        health.count('skipped.admission')
    return admitted


def run(node_factory: Callable[[], Node], args: Sequence[str] | None = None, threads: int = 2):
    """The one shape of every node's main(): init, spin, treat Ctrl-C as a normal exit.

    A node that cannot start (bad parameter, missing file, a params file rcl cannot parse)
    exits with status 2 after one clear log line instead of a traceback.

    Ctrl-C and SIGTERM end the spin with the context still valid: rclpy's own handlers shut
    it down first, and then close() could neither publish the lifecycle's shutdown transition
    ("Unable to start transition") nor log ("Failed to publish log message to rosout").
    """
    import signal

    use_dds_profile()  # before the participant exists: it reads the profile once
    try:
        init = rclpy.init(
            args=args if args is not None else sys.argv,
            signal_handler_options=SignalHandlerOptions.NO,
        )
    except _rclpy.RCLError as exc:  # e.g. a YAML syntax error in --params-file
        rclpy.logging.get_logger('tsa_ros').fatal(f'cannot start: {exc}')
        sys.exit(2)
    stopping = []

    def stop(signum, frame):
        # Only the first signal stops: Ctrl-C under tsa up arrives twice (the terminal's and
        # tsa up's), and a second KeyboardInterrupt would cut close() short.
        if not stopping:
            stopping.append(signum)
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    with init:
        node = None
        try:
            node = node_factory()
            executor = MultiThreadedExecutor(num_threads=threads)
            executor.add_node(node)
            while rclpy.ok():
                # Short waits: the wait itself is in C, Python's signal handler runs between.
                executor.spin_once(timeout_sec=0.2)
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except _rclpy.RCLError:
            # The context was shut down while a callback was publishing ("context is not
            # valid"): a normal end. An RCLError while the context is fine is a real failure.
            if rclpy.ok():
                raise
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
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    # A node that ran but failed at its task (an evaluator that scored nothing) says so.
    status = getattr(node, 'exit_status', 0)
    if status:
        sys.exit(status)
