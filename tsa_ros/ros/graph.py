"""The one description of the T-S-A graphs, used by the launch files and by ``tsa up``.

``describe(graph, args)`` returns the nodes of a graph as plain data (executable, name,
namespace, parameter overrides, remappings). ``launch/*.launch.py`` turn it into
``launch_ros`` Node actions (:mod:`tsa_ros.ros.launch_description`); ``tsa up`` starts the same
nodes as processes (:mod:`tsa_ros.ros.up`). Both read the same params file. Nothing here needs
rclpy or launch, so the description is testable everywhere.

Graphs:

* ``tsa``: segmenters for T, S and A on the camera topic, the learner and the fusion node.

Every graph also runs the lifecycle manager, which configures and activates the other
(lifecycle) nodes and activates the bag player last (:mod:`tsa_ros.ros.lifecycle`).
* ``replay``: ``tsa`` fed by the bag player, plus the evaluator (ground truth from the bag).
* ``attack_injection``: ``replay`` with the attacker between the bag and perception: the bag
  plays to ``/camera/image_clean`` and the attacker publishes least-likely adversarial frames
  against T or S on the topic the segmenters consume.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tsa_ros.errors import ConfigError

GRAPHS = ('tsa', 'replay', 'attack_injection')
ROLES = ('teacher', 'student', 'adaptive')


def cpu_only(device: str) -> bool:
    """Whether ``device`` means the CPU: 'cpu', or 'auto' on a machine without CUDA."""
    if device == 'auto':
        import torch  # only for 'auto': the description stays light otherwise

        return not torch.cuda.is_available()
    return device == 'cpu'


def default_config(device: str = 'cuda') -> str:
    """The package's params file for ``device``: config/cpu.yaml (networks that keep up on a
    2-core CPU) when it means the CPU, else config/tsa.yaml (the paper's networks, for a GPU);
    of the installed package (share/), else of this source tree."""
    return package_config('cpu.yaml' if cpu_only(device) else 'tsa.yaml')


def package_config(name: str) -> str:
    """A file of the package's config/ folder: of the installed package (share/), else of
    this source tree."""
    try:
        from ament_index_python.packages import get_package_share_directory

        shared = Path(get_package_share_directory('tsa_ros')) / 'config' / name
        if shared.is_file():
            return str(shared)
    except Exception:  # not installed as an ament package: use the source tree
        pass
    return str(Path(__file__).resolve().parents[2] / 'config' / name)


@dataclass(frozen=True)
class LaunchArgument:
    """A launch argument: name, default (a string, as launch passes them), help, choices."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] | None = None


@dataclass
class GraphArgs:
    """The arguments of every graph, with the same names in launch files and ``tsa up``.

    Attributes:
        config: Params file (ros__parameters form) for all nodes; '' = the package's
            cpu.yaml when device is cpu (or auto without CUDA), else its tsa.yaml.
        device: Device of every network: cpu, cuda, cuda:N or auto.
        namespace: Namespace of the graph's nodes and topics.
        image_topic: Camera topic the segmenters and the learner consume.
        admission_hz: Frames per second the triplet segments, chosen by header stamp so that
            T, S, A and the learner all take the same frames (0 = every frame). Set it at or
            below the rate the slowest network sustains.
        teacher_checkpoint: tsa checkpoint of T ('' = random weights, demo only).
        student_checkpoint: tsa checkpoint of S, the start of A ('' = random weights).
        adaptive_checkpoint: tsa checkpoint A starts from, e.g. the learner's last
            checkpoint_path ('' = student_checkpoint, i.e. A = S).
        bag: rosbag2 to replay (replay and attack_injection graphs).
        rate: Replay rate factor (1.0 = as recorded); 0 = the params file's bag_player
            rate (cpu.yaml: 0.2, slow enough that T, S and A segment every frame of an
            11-17 Hz bag on 2 cores; tsa.yaml: 1.0).
        loop: Replay the bag in a loop.
        exit_when_done: Stop the graph when the bag has been played once.
        attack_target: Static network the attacker differentiates: teacher or student.
        epsilon: L-inf bound of the attack in gray values (paper: 1 or 10).
        report: Where the evaluator writes its report ('' = no file).
        clean_report: Report of a clean run, for mIoU ratios in the attacked run's report.
    """

    config: str = ''
    device: str = 'cpu'
    namespace: str = 'tsa'
    image_topic: str = '/camera/image_raw'
    admission_hz: float = 0.0
    teacher_checkpoint: str = ''
    student_checkpoint: str = ''
    adaptive_checkpoint: str = ''
    bag: str = ''
    rate: float = 0.0
    loop: bool = False
    exit_when_done: bool = False
    attack_target: str = 'student'
    epsilon: float = 1.0
    report: str = ''
    clean_report: str = ''

    def __post_init__(self) -> None:
        if self.attack_target not in ('teacher', 'student'):
            raise ConfigError(
                f'attack_target must be teacher or student, not {self.attack_target!r}'
            )
        if not self.rate >= 0:
            raise ConfigError(f"rate must be > 0 (0 = the params file's), got {self.rate}")
        if self.epsilon < 0:
            raise ConfigError(f'epsilon must be >= 0, got {self.epsilon}')
        if not self.admission_hz >= 0:
            raise ConfigError(
                f'admission_hz must be >= 0 (0 = every frame), got {self.admission_hz}'
            )
        self.namespace = self.namespace.strip('/')

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> GraphArgs:
        """Build from launch-style strings ('true', '1.0' ...)."""
        kwargs: dict[str, Any] = {}
        for field in fields(cls):
            if field.name not in values:
                continue
            raw = values[field.name]
            if field.type in ('bool', bool):
                kwargs[field.name] = str(raw).lower() in ('1', 'true', 'yes', 'on')
            elif field.type in ('float', float):
                kwargs[field.name] = float(raw)
            else:
                kwargs[field.name] = str(raw)
        return cls(**kwargs)

    @property
    def params_file(self) -> str:
        return self.config or default_config(self.device)


def launch_arguments(graph: str) -> list[LaunchArgument]:
    """The launch arguments a graph uses, with defaults and descriptions from GraphArgs."""
    from tsa_ros.ros.params import attribute_docs

    docs = attribute_docs(GraphArgs)
    defaults = GraphArgs()
    names = [
        'config',
        'device',
        'namespace',
        'image_topic',
        'admission_hz',
        'teacher_checkpoint',
        'student_checkpoint',
        'adaptive_checkpoint',
    ]
    if graph in ('replay', 'attack_injection'):
        names += ['bag', 'rate', 'loop', 'exit_when_done', 'report', 'clean_report']
    if graph == 'attack_injection':
        names += ['attack_target', 'epsilon']
    choices = {
        'device': None,
        'attack_target': ('teacher', 'student'),
        'loop': ('true', 'false'),
        'exit_when_done': ('true', 'false'),
    }
    out = []
    for name in names:
        value = getattr(defaults, name)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        out.append(LaunchArgument(name, text, docs[name], choices.get(name)))
    return out


@dataclass(frozen=True)
class NodeSpec:
    """One node of a graph: what launch_ros.actions.Node and ``tsa up`` both need."""

    executable: str
    name: str
    namespace: str
    parameters: dict[str, Any]
    remappings: tuple[tuple[str, str], ...] = ()
    #: Restarted when it dies (the others keep running; fusion's quorum carries the graph).
    #: Not the bag player: its end is the end of a replay.
    respawn: bool = True
    #: A lifecycle node (tsa_ros.ros.lifecycle) that the graph's lifecycle manager drives.
    managed: bool = True

    @property
    def module(self) -> str:
        """Python module whose main() runs the node (console script = executable)."""
        return f'tsa_ros.ros.{self.executable}_node'


def load_params_file(path: str) -> dict[str, Any]:
    """The params file as a mapping; a YAML error is one line naming the file and line."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f'cannot read params file {path}: {exc.strerror}') from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, 'problem_mark', None)
        where = f'{path}:{mark.line + 1}:{mark.column + 1}' if mark else path
        problem = getattr(exc, 'problem', None) or str(exc).splitlines()[0]
        raise ConfigError(f'{where}: YAML syntax error: {problem}') from None
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: not a params file (expected node sections at the top)')
    return data


def role_network(params_file: str, role: str) -> dict[str, Any]:
    """``seed`` and ``model.*`` of a role's section in the params file (flattened)."""
    data = load_params_file(params_file)
    section = {}
    for key, value in data.items():
        if str(key).rstrip('/').split('/')[-1] == role:
            section = (value or {}).get('ros__parameters', {})
    out = {f'model.{k}': v for k, v in (section.get('model') or {}).items()}
    if 'seed' in section:
        out['seed'] = section['seed']
    return out


def describe(graph: str, args: GraphArgs | None = None) -> list[NodeSpec]:
    """The nodes of ``graph``; parameters here override the params file."""
    if graph not in GRAPHS:
        raise ConfigError(f'unknown graph {graph!r}; choose from {GRAPHS}')
    args = args or GraphArgs()
    ns = '/' + args.namespace if args.namespace else ''
    image = (('image', args.image_topic),)
    checkpoints = {
        'teacher': args.teacher_checkpoint,
        'student': args.student_checkpoint,
        'adaptive': args.adaptive_checkpoint or args.student_checkpoint,
    }
    # A starts as S and the learner trains a copy of S: both take S's architecture, so the
    # three cannot disagree (a mismatch would reject every snapshot at run time). Seeds stay
    # per section: they matter only for random weights (tests, demos).
    student_net = {
        k: v for k, v in role_network(args.params_file, 'student').items() if k != 'seed'
    }
    nodes = []
    for role in ROLES:
        params = {
            'role': role,
            'device': args.device,
            'checkpoint': checkpoints[role],
            'admission_hz': args.admission_hz,
        }
        remap = image
        if role == 'teacher':
            params['publish_posteriors'] = True
        if role == 'adaptive':
            params.update(student_net)
            remap = image + (('weights', f'{ns}/learner/weights'),)
        nodes.append(NodeSpec('segmenter', role, ns, params, remap))
    learner = {
        'device': args.device,
        'checkpoint': args.student_checkpoint,
        # The A the adaptive segmenter starts from: the learner trains on from it.
        'initial_checkpoint': args.adaptive_checkpoint,
        'admission_hz': args.admission_hz,
        **student_net,
    }
    nodes.append(NodeSpec('learner', 'learner', ns, learner, image))
    nodes.append(NodeSpec('fusion', 'fusion', ns, {}, image))  # camera for fused/overlay

    if graph in ('replay', 'attack_injection'):
        if not args.bag:
            raise ConfigError(f'the {graph} graph needs a bag (launch argument bag:=PATH)')
        player = {
            'bag': args.bag,
            **({'rate': args.rate} if args.rate else {}),
            'loop': args.loop,
            'exit_when_done': args.exit_when_done,
            # At the bag's end, wait for the frames still queued in the graph to be fused.
            'drain_topic': f'{ns}/fused/segmentation',
        }
        remap = ()
        if graph == 'attack_injection':
            remap = (('/camera/image_raw', '/camera/image_clean'),)
        nodes.append(NodeSpec('bag_player', 'bag_player', ns, player, remap, respawn=False))
        evaluator = {'report_path': args.report, 'clean_report': args.clean_report}
        nodes.append(
            NodeSpec(
                'evaluator',
                'evaluator',
                ns,
                evaluator,
                (('ground_truth', '/camera/ground_truth'),),
            )
        )
    if graph in ('replay', 'attack_injection'):
        # The player publishes nothing until the manager activates it (every other node
        # active), and then waits for the camera's readers: T, S, A and the learner, or
        # the attacker in front of them.
        player = next(n for n in nodes if n.executable == 'bag_player')
        player.parameters['wait_for_subscribers'] = 1 if graph == 'attack_injection' else 4
    if graph == 'attack_injection':
        target = args.attack_target
        attacker = {
            'target': target,
            'device': args.device,
            'checkpoint': checkpoints[target],
            'attack.epsilon': args.epsilon,
            **role_network(args.params_file, target),
        }
        nodes.append(
            NodeSpec(
                'attacker',
                'attacker',
                ns,
                attacker,
                (('image_in', '/camera/image_clean'), ('image_out', args.image_topic)),
            )
        )
    for spec in nodes:
        spec.parameters['autostart'] = False  # the lifecycle manager starts them
    names = [spec.name for spec in nodes]
    last = [spec.name for spec in nodes if spec.executable == 'bag_player']
    manager: dict[str, Any] = {'nodes': names}
    if last:  # (an empty list has no type rcl could read)
        manager['activate_last'] = last
    nodes.append(NodeSpec('lifecycle_manager', 'lifecycle_manager', ns, manager, managed=False))
    return nodes
