"""``tsa demo``: the whole method on one machine, in one command, with a report to read.

1. **Data**: a demo-size synthetic world (``--preset demo``; cached in ``--data``).
2. **Networks**: T (DeepLabV3+ ResNet-18) and S (ERFNet) trained on its labeled split, and
   A adapted from S offline with J_TS (paper sec. 3.3) as a head start (cached in ``--runs``
   while the training settings are unchanged).
3. **Camera frames**: labeled frames of mini test, and their adversarial versions (the
   iterative least-likely attack, eqs. 7-10, on S at eps = 1 and 10 and on T at eps = 10;
   cached): the same frames in every phase, so the phases compare.
4. **The graph** (``tsa up tsa``'s nodes, supervised): T, S and A segment the camera topic,
   the learner keeps training A online, the fusion node votes. The demo is the camera: it
   plays the phases one after another (clean, then each attack) and sends the next frame
   when the fused mask of the previous one arrived (or the fusion timeout passed), so no
   frame queues and every frame is scored. ``tsa record`` writes every topic to MCAP.
5. **The report**: ``OUT/index.html`` (:mod:`tsa_ros.demo_report`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from tsa_ros.demo_report import STREAMS, DemoRun, FrameRecord, Phase, PhaseImages, write_report
from tsa_ros.errors import ConfigError

PHASES = (
    Phase('clean'),
    Phase('S-AE eps=1', 'student', 1.0),
    Phase('S-AE eps=10', 'student', 10.0),
    Phase('T-AE eps=10', 'teacher', 10.0),
)


@dataclass
class DemoArgs:
    """What ``tsa demo`` runs.

    Attributes:
        quick: Tiny world, tiny networks, a few training steps and frames: the mechanics in
            about two minutes (the numbers mean nothing).
        out: Directory of the report (index.html, report.json, PNGs, recording/, logs/).
        data: Data root ('' = data/demo, data/demo-quick with --quick); generated when missing.
        runs: Directory of the trained networks and cached attacks ('' = runs/demo,
            runs/demo-quick with --quick); reused while their settings are unchanged.
        device: Device of every network: cpu, cuda or auto.
        frames: Camera frames per phase (0 = 24, 2 with --quick).
        rate: Camera frames per second at most (the next frame also waits for the fused
            mask of the previous one); 0 = as fast as the graph answers.
        teacher_steps: Training steps of T (0 = 400, 10 with --quick).
        student_steps: Training steps of S (0 = 1000, 10 with --quick; an ERFNet step costs
            about half a DeepLabV3+ ResNet-18 step here).
        adapt_steps: Offline adaptation steps of A before the graph starts (0 = 150, 4 with
            --quick).
        record: Record the graph's topics to OUT/recording (tsa record: a rosbag2 of one MCAP).
    """

    quick: bool = False
    out: str = 'results/demo'
    data: str = ''
    runs: str = ''
    device: str = 'cpu'
    frames: int = 0
    rate: float = 2.0
    teacher_steps: int = 0
    student_steps: int = 0
    adapt_steps: int = 0
    record: bool = True

    def __post_init__(self) -> None:
        suffix = '-quick' if self.quick else ''
        self.data = self.data or f'data/demo{suffix}'
        self.runs = self.runs or f'runs/demo{suffix}'
        self.frames = self.frames or (2 if self.quick else 24)
        self.teacher_steps = self.teacher_steps or (10 if self.quick else 400)
        self.student_steps = self.student_steps or (10 if self.quick else 1000)
        self.adapt_steps = self.adapt_steps or (4 if self.quick else 150)
        for name in ('frames', 'teacher_steps', 'student_steps', 'adapt_steps'):
            if getattr(self, name) < 1:
                raise ConfigError(f'--{name.replace("_", "-")} must be >= 1')
        if not self.rate >= 0:
            raise ConfigError('--rate must be >= 0 (0 = as fast as the graph answers)')


def log(message: str) -> None:
    print(f'tsa demo: {message}', flush=True)


# ------------------------------------------------------------------------- 1-3: offline
def ensure_data(args: DemoArgs) -> Path:
    from tsa_ros.data.generate import MANIFEST, generate

    root = Path(args.data)
    if (root / MANIFEST).is_file():
        log(f'data: {root} (cached)')
        return root
    preset = 'tiny' if args.quick else 'demo'
    log(f'data: generating the {preset} world in {root}')
    # overwrite: a world without its manifest is one whose generation was interrupted
    generate(root, preset=preset, seed=0, workers=2, overwrite=True, progress=True)
    return root


def _train_config(args: DemoArgs, role: str):
    from tsa_ros.learning.train import TrainConfig
    from tsa_ros.models import ModelConfig

    if role == 'teacher':
        model = ModelConfig(arch='deeplabv3plus', backbone='resnet18', output_stride=16)
    else:
        model = ModelConfig(arch='erfnet')
    # Adam 5e-4 with poly decay: a few hundred steps learn the large classes; the paper's
    # 1e-4 is tuned for 75,000 steps.
    return TrainConfig(
        role=role,
        model=model,
        steps=args.teacher_steps if role == 'teacher' else args.student_steps,
        batch_size=2 if args.quick else 6,
        lr=5e-4,
        eval_every=0,
        eval_split='minival',
        num_workers=1,
        checkpoint_every=0,
    )


def _cached(path: Path, settings: dict) -> bool:
    """True when ``path`` exists and was made with ``settings`` (kept beside it as JSON)."""
    stamp = path.with_suffix('.settings.json')
    return path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings


def _mark(path: Path, settings: dict) -> None:
    path.with_suffix('.settings.json').write_text(json.dumps(settings, indent=2))


def ensure_networks(args: DemoArgs, root: Path) -> dict[str, dict]:
    """T and S trained (or cached), A adapted from S; role -> {'checkpoint', 'arch', ...}."""
    from tsa_ros.experiments.adapt import AdaptConfig, adapt
    from tsa_ros.learning.online import LearnerConfig
    from tsa_ros.learning.train import train

    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    networks: dict[str, dict] = {}
    for role in ('teacher', 'student'):
        config = _train_config(args, role)
        settings = {'data': str(root.resolve()), 'config': dataclasses.asdict(config)}
        settings = json.loads(json.dumps(settings, default=str))
        path = runs / f'{role}.pt'
        if _cached(path, settings):
            result = json.loads(path.with_suffix('.result.json').read_text())
            log(f'{role}: {path} (cached, mIoU mini val {result["miou"]:.1%})')
        else:
            log(f'training the {role}: {config.steps} steps (progress and ETA below)')
            start = time.monotonic()
            result = train(config, root, runs, device=args.device, progress=True)
            result = {'miou': float(result['miou']), 'seconds': time.monotonic() - start}
            path.with_suffix('.result.json').write_text(json.dumps(result))
            _mark(path, settings)
        networks[role] = {'checkpoint': str(path), 'val_miou': 100 * result['miou']}
        networks[role]['trained'] = (
            f'{config.steps} steps, batch {config.batch_size}, Adam {config.lr:g} poly, '
            f'{result.get("seconds", 0) / 60:.1f} min'
        )

    cfg = AdaptConfig(
        steps=args.adapt_steps,
        learner=LearnerConfig(lr=1e-4, batch_size=3),
        split='train_extra',  # unlabeled frames of other cities (paper eq. 2)
        checkpoint_every=args.adapt_steps,
        num_workers=1,
    )
    settings = {
        'teacher': _sha256(runs / 'teacher.pt'),
        'student': _sha256(runs / 'student.pt'),
        'config': json.loads(json.dumps(dataclasses.asdict(cfg), default=str)),
    }
    path = runs / 'adaptive.pt'
    if _cached(path, settings):
        log(f'adaptive: {path} (cached)')
    else:
        log(f'adapting A from S with J_TS: {cfg.steps} steps')
        start = time.monotonic()
        adapt(
            networks['teacher']['checkpoint'],
            networks['student']['checkpoint'],
            root,
            runs,
            cfg,
            device=args.device,
            progress=True,
        )
        path.with_suffix('.result.json').write_text(
            json.dumps({'seconds': time.monotonic() - start})
        )
        _mark(path, settings)
    seconds = json.loads(path.with_suffix('.result.json').read_text())['seconds']
    networks['adaptive'] = {
        'checkpoint': str(path),
        'val_miou': None,
        'trained': f'S adapted with J_TS (alpha 0.6): {cfg.steps} steps offline '
        f'({seconds / 60:.1f} min), then online in the graph',
    }
    from tsa_ros.models import load_checkpoint
    from tsa_ros.ros.common import arch_id

    for info in networks.values():
        model, _ = load_checkpoint(info['checkpoint'])
        info['arch'] = arch_id(model.config)
        info['input_size'] = list(model.config.input_size)
    return networks


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def camera_frames(root: Path, size: tuple[int, int], count: int):
    """(stems, frames (N, H, W, 3) uint8, labels (N, H, W) uint8) of mini test."""
    from tsa_ros.data.cityscapes import LabeledDataset

    data = LabeledDataset(root, 'minitest', size=size)
    if len(data) < count:
        raise ConfigError(f'mini test of {root} has {len(data)} frames, the demo needs {count}')
    stems, frames, labels = [], [], []
    for i in range(count):
        image, label = data[i]
        stems.append(data.frames[i].stem)
        frames.append(image.round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
        labels.append(label.numpy().astype(np.uint8))
    return stems, np.stack(frames), np.stack(labels)


def adversarial_frames(
    args: DemoArgs, networks: dict, frames: np.ndarray, phase: Phase
) -> np.ndarray:
    """The frames attacked as ``phase`` says (cached per checkpoint, epsilon and frames)."""
    import torch

    from tsa_ros.attacks import AttackConfig, least_likely_attack
    from tsa_ros.models import load_checkpoint

    if not phase.target:
        return frames
    checkpoint = Path(networks[phase.target]['checkpoint'])
    key = hashlib.sha256(
        _sha256(checkpoint).encode() + frames.tobytes() + str(phase.epsilon).encode()
    ).hexdigest()[:16]
    cache = Path(args.runs) / f'ae-{phase.target}-eps{phase.epsilon:g}-{key}.npy'
    if cache.is_file():
        return np.load(cache)
    model, _ = load_checkpoint(checkpoint)
    model.eval()
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    config = AttackConfig(epsilon=phase.epsilon)
    adv = torch.cat([least_likely_attack(model, b, config) for b in x.split(4)])
    out = adv.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous().numpy()
    np.save(cache, out)
    return out


# ------------------------------------------------------------------------- 4: the graph
def graph_params(networks: dict, quick: bool) -> dict:
    """The params file of the demo's graph (the shape of config/tsa.yaml)."""
    from tsa_ros.models import load_checkpoint

    def model_section(role):
        model, _ = load_checkpoint(networks[role]['checkpoint'])
        c = model.config
        section = {'arch': c.arch, 'num_classes': c.num_classes, 'input_size': list(c.input_size)}
        if c.arch == 'deeplabv3plus':
            section |= {'backbone': c.backbone, 'output_stride': c.output_stride}
        return section

    def section(**kwargs):
        return {'ros__parameters': kwargs}

    return {
        '/**/teacher': section(
            role='teacher',
            resize=False,
            publish_posteriors=True,
            posteriors_scale=0.5,
            posteriors_encoding='float16',
            model=model_section('teacher'),
            warmup=False,
        ),
        '/**/student': section(
            role='student', resize=False, model=model_section('student'), warmup=False
        ),
        '/**/adaptive': section(role='adaptive', resize=False, warmup=False),
        '/**/learner': section(
            resize=False,
            checkpoint_path='',  # every demo run starts from the cached offline A
            checkpoint_every_s=3600.0,
            learner={
                'lr': 1e-5,  # the paper's online rate; 1e-4 made A diverge within 50 steps
                'batch_size': 1 if quick else 2,
                'queue_size': 8,
                'snapshot_every': 2 if quick else 10,
                'nice': 10,
                'loss': {'alpha': 0.6, 'beta': 0.5, 'gamma': 1.0, 'p': 1.0},
            },
        ),
        '/**/fusion': section(
            roles=['teacher', 'student', 'adaptive'],
            timeout_s=10.0,
            quorum=2,
            fusion={'mode': 'majority', 'tie': 'teacher', 'suspect_threshold': 0.2},
        ),
    }


class Camera:
    """The demo's own ROS node: publishes the frames and hears what the graph answers."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from tsa_msgs.msg import FusedSegmentation, LearnerStatus

        from tsa_ros.ros import qos

        self.node = node
        self.lock = threading.Lock()
        self.labels: dict[tuple[int, str], np.ndarray] = {}  # (stamp, stream) -> labels
        self.fused: dict[int, object] = {}  # stamp -> FusedSegmentation
        self.fused_at: dict[int, float] = {}
        self.learner: list[dict] = []
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.publisher = node.create_publisher(Image, '/camera/image_raw', qos.RESULTS)
        for role in STREAMS[:3]:
            node.create_subscription(
                Image, f'/tsa/{role}/labels', self._labels_cb(role), qos.RESULTS
            )
        node.create_subscription(
            FusedSegmentation, '/tsa/fused/segmentation', self._on_fused, qos.RESULTS
        )
        node.create_subscription(LearnerStatus, '/tsa/learner/status', self._on_status, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, qos.RESULTS)
        self.t0 = time.monotonic()

    def _labels_cb(self, role):
        from tsa_ros.ros.convert import labels_from_image

        def callback(msg):
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            with self.lock:
                self.labels[stamp, role] = labels_from_image(msg).copy()

        return callback

    def _on_fused(self, msg) -> None:
        from tsa_ros.ros.convert import labels_from_image

        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        labels = labels_from_image(msg.labels).copy()
        with self.lock:
            self.fused[stamp] = msg
            self.labels[stamp, 'fused'] = labels
            self.fused_at[stamp] = time.monotonic()

    def _on_status(self, msg) -> None:
        with self.lock:
            self.learner.append(
                {
                    'time_s': time.monotonic() - self.t0,
                    'step': int(msg.step),
                    'version': int(msg.snapshot_version),
                    'ce': float(msg.ce_loss),
                    'fm': float(msg.fm_loss),
                    'ifm': float(msg.ifm_loss),
                }
            )

    def _on_diag(self, array) -> None:
        with self.lock:
            for status in array.status:
                name = status.name.rsplit('/', 1)[-1]
                self.diagnostics[name] = {kv.key: kv.value for kv in status.values}

    def publish(self, rgb: np.ndarray, stamp: int) -> float:
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        from tsa_ros.ros.convert import image_msg

        header = Header(stamp=Time(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id='camera')
        self.publisher.publish(image_msg(rgb, 'rgb8', header))
        return time.monotonic()

    def votes(self, stamp: int) -> int:
        """How many roles voted on the fused mask of ``stamp`` (0 before it arrives)."""
        with self.lock:
            msg = self.fused.get(stamp)
            return 0 if msg is None else len(msg.roles)

    def answered(self, stamp: int) -> bool:
        """The fused mask and every label map of the roles that voted have arrived."""
        with self.lock:
            msg = self.fused.get(stamp)
            return msg is not None and all((stamp, r) in self.labels for r in msg.roles)

    def counters(self) -> dict[str, float]:
        from tsa_ros.ros.soak import counter, total

        with self.lock:
            diag = {k: dict(v) for k, v in self.diagnostics.items()}
        return {
            'time_s': time.monotonic() - self.t0,
            'skipped': sum(total(diag.get(r, {}), 'skipped.') for r in STREAMS[:3]),
            'lost': sum(counter(diag.get(r, {}), 'lost.camera') for r in STREAMS[:3]),
            'degraded': counter(diag.get('fusion', {}), 'frames.degraded'),
        }


def run_graph(
    args: DemoArgs,
    run: DemoRun,
    networks: dict,
    phase_frames: dict[str, np.ndarray],
    clean: np.ndarray,
    truth: np.ndarray,
) -> None:
    """Bring the graph up, play every phase, fill ``run``; the graph is stopped after."""
    from contextlib import ExitStack

    from tsa_ros.ros.background import background_node
    from tsa_ros.ros.graph import GraphArgs, describe
    from tsa_ros.ros.preflight import check_graph
    from tsa_ros.ros.up import Supervisor, node_command, stop_all

    out = Path(args.out)
    params_file = out / 'graph.yaml'
    params_text = yaml.safe_dump(graph_params(networks, args.quick), sort_keys=False)
    params_file.write_text(params_text)
    run.config = params_text
    graph = GraphArgs(
        config=str(params_file),
        device=args.device,
        teacher_checkpoint=networks['teacher']['checkpoint'],
        student_checkpoint=networks['student']['checkpoint'],
        adaptive_checkpoint=networks['adaptive']['checkpoint'],
    )
    specs = describe('tsa', graph)
    check_graph('tsa', graph, specs)
    commands = {s.name: node_command(s, str(params_file)) for s in specs}
    logs = out / 'logs'
    logs.mkdir(parents=True, exist_ok=True)
    recorder = None
    if args.record:
        shutil.rmtree(out / 'recording', ignore_errors=True)  # tsa record never overwrites
        with open(logs / 'record.log', 'wb') as record_log:  # the child keeps its own copy
            recorder = subprocess.Popen(
                [sys.executable, '-m', 'tsa_ros.cli', 'record', '--out', str(out / 'recording')],
                stdout=record_log,
                stderr=subprocess.STDOUT,
            )
    log(f'graph: starting {", ".join(commands)} (logs in {logs})')
    supervisor = Supervisor(specs, commands, logs)
    spun = ExitStack()
    node = spun.enter_context(background_node('tsa_demo'))
    camera = Camera(node)
    stamp = 0

    def play(rgb: np.ndarray, timeout: float) -> tuple[int, float, bool]:
        nonlocal stamp
        stamp = max(stamp + 10**6, time.time_ns())  # the camera's clock, strictly increasing
        sent = camera.publish(rgb, stamp)
        deadline = sent + timeout
        while time.monotonic() < deadline and not camera.answered(stamp):
            time.sleep(0.01)
            supervisor.poll(time.monotonic())
        answered = camera.answered(stamp)
        if args.rate > 0:  # a camera of this rate: the learner trains meanwhile
            time.sleep(max(0.0, sent + 1.0 / args.rate - time.monotonic()))
        return stamp, sent, answered

    try:
        # Warm-up: until a frame is fused with three votes (every node loaded and active).
        start = time.monotonic()
        while True:
            s, _, ok = play(clean[0], timeout=5.0)
            if ok and camera.votes(s) == 3:
                break
            if time.monotonic() - start > 300:
                raise RuntimeError(f'the graph fused no frame with three votes; see {logs}')
        log(f'graph: ready after {time.monotonic() - start:.0f} s')
        time.sleep(1.0)
        camera.t0 = time.monotonic()
        camera.learner.clear()
        for phase in run.phases:
            shown = phase_frames[phase.name]
            log(f'phase {phase.name}: {len(shown)} frames')
            began = time.monotonic() - camera.t0
            for i, rgb in enumerate(shown):
                s, sent, ok = play(rgb, timeout=30.0)
                if not ok:
                    time.sleep(0.5)  # a label map of a role that voted may still arrive
                record_frame(run, camera, phase, i, s, sent, truth[i])
                if i == len(shown) // 2 or phase.name not in run.images:
                    run.images[phase.name] = phase_images(camera, s, clean[i], rgb, truth[i])
                run.counters.append(camera.counters())
            run.phase_times[phase.name] = (began, time.monotonic() - camera.t0)
        time.sleep(2.0)  # the last learner status
        run.learner = list(camera.learner)
    finally:
        stop_all(supervisor.procs)
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)  # tsa record closes the MCAP file
            try:
                recorder.wait(15)
            except subprocess.TimeoutExpired:
                recorder.kill()
        spun.close()
    if any(supervisor.restarts.values()):
        run.notes.append(f'nodes restarted during the demo: {supervisor.restarts}')


def record_frame(run, camera, phase, index, stamp, sent, truth) -> None:
    with camera.lock:
        msg = camera.fused.get(stamp)
        labels = {s: camera.labels.get((stamp, s)) for s in STREAMS}
    for stream, prediction in labels.items():
        if prediction is not None:
            run.score(phase.name, stream, prediction, truth)
    if msg is None:
        run.frames.append(
            FrameRecord(
                phase.name, index, time.monotonic() - camera.t0, None, [], [], {}, '', True
            )  # fmt: skip
        )
        return
    run.frames.append(
        FrameRecord(
            phase=phase.name,
            index=index,
            time_s=camera.fused_at[stamp] - camera.t0,
            latency_ms=1e3 * (camera.fused_at[stamp] - sent),
            roles=list(msg.roles),
            missing_roles=list(msg.missing_roles),
            disagreement={r: float(d) for r, d in zip(msg.roles, msg.disagreement, strict=True)},
            suspected_role=msg.suspected_role,
            degraded=bool(msg.degraded),
        )
    )


def phase_images(camera, stamp, clean, shown, truth) -> PhaseImages:
    with camera.lock:
        labels = {s: camera.labels[(stamp, s)] for s in STREAMS if (stamp, s) in camera.labels}
    return PhaseImages(clean=clean, shown=shown, labels=labels, ground_truth=truth)


# ------------------------------------------------------------------------- the command
def demo(args: DemoArgs) -> Path:
    from tsa_ros.experiments.paper import environment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    root = ensure_data(args)
    networks = ensure_networks(args, root)
    size = tuple(networks['student']['input_size'])
    stems, clean, truth = camera_frames(root, size, args.frames)
    log(f'attacks: {", ".join(p.name for p in PHASES if p.target)} on {len(stems)} frames')
    phase_frames = {p.name: adversarial_frames(args, networks, clean, p) for p in PHASES}
    run = DemoRun(phases=list(PHASES), frame_ids=stems, networks=networks)
    run.environment = environment() | {'loadavg_start': os.getloadavg()}
    run.command = 'tsa demo ' + shlex.join(sys.argv[2:] if sys.argv[1:2] == ['demo'] else [])
    run.notes += [
        'The demo is the camera: it sends the next frame when the fused mask of the previous '
        'one has arrived, so no frame queues (a real camera would be throttled by admission).',
        'A keeps learning online during every phase, from whatever the camera shows and T '
        'answers: in the attack phases that includes the adversarial frames, and under T-AE '
        "T's wrong posteriors are A's targets (as on a vehicle under attack).",
        f'Networks see {size[1]}x{size[0]}; T and S are trained for minutes on a CPU, so their '
        'absolute mIoU is low: read the ratios between phases.',
    ]
    run_graph(args, run, networks, phase_frames, clean, truth)
    run.environment['loadavg_end'] = os.getloadavg()
    run.environment['demo_seconds'] = round(time.monotonic() - began, 1)
    page = write_report(run, out)
    log(f'report: {page.resolve()} ({time.monotonic() - began:.0f} s in all)')
    if args.record:
        mcap = (out / 'recording' / 'recording.mcap').resolve()
        log(f'recording: {mcap} (a rosbag2; Foxglove and Lichtblick open the .mcap)')
    return page


def add_arguments(parser) -> None:
    from tsa_ros.ros.params import attribute_docs

    docs = attribute_docs(DemoArgs)
    defaults = DemoArgs.__dataclass_fields__
    for name, help_text in docs.items():
        default = defaults[name].default
        flag = '--' + name.replace('_', '-')
        if name == 'record':
            parser.add_argument(
                '--no-record',
                dest='record',
                action='store_false',
                help='do not record; by default: ' + help_text[0].lower() + help_text[1:],
            )
        elif isinstance(default, bool):
            parser.add_argument(flag, dest=name, action='store_true', help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=type(default), default=default,
                                help=help_text)  # fmt: skip


def main_from_args(ns) -> int:
    args = DemoArgs(**{name: getattr(ns, name) for name in DemoArgs.__dataclass_fields__})
    demo(args)
    return 0
