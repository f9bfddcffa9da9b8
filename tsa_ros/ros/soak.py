"""``tsa soak``: the graph under a steady camera for minutes, measured from outside.

Brings up the ``tsa`` graph (:func:`tsa_ros.ros.graph.describe`, the nodes ``tsa up`` starts,
supervised and restarted the same way) and feeds it frames of the synthetic world at a fixed
camera rate. Every ``--sample-s`` it records, per node, the resident memory of the process
(/proc) and the counters the node publishes on ``/diagnostics``, and the latency from a
frame's publication to its fused mask (percentiles over the interval). The run ends with a
drain (no camera) and a verdict:

* **flat memory**: no node's peak RSS in the last third of the run exceeds its peak in the
  middle third by more than ``--max-growth-mb`` (the first third is warm-up: allocator
  arenas, lazily built kernels);
* **complete accounting**: every camera frame is, for every segmenter, segmented, skipped by
  admission, rejected or known lost (stamp gaps), and every frame the triplet admitted is
  fused, flagged degraded or dropped below quorum.

Writes ``soak.csv`` (one row per sample), ``soak.png`` (memory, latency and counts over time)
and ``summary.json`` (the verdict, the machine, the command); exits 1 when the verdict fails.
"""

from __future__ import annotations

import csv
import json
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tsa_ros.errors import ConfigError
from tsa_ros.ros.graph import ROLES, GraphArgs, describe, load_params_file

#: Counters of a segmenter that account for one camera frame each.
SEGMENTER_ACCOUNTS = (
    'frames',
    'skipped.admission',
    'skipped.inactive',
    'skipped.disabled',
    'lost.camera',
)
#: Counters of the fusion node that account for one admitted frame each.
FUSION_ACCOUNTS = ('fused', 'frames.dropped_below_quorum')


@dataclass
class SoakArgs:
    """What ``tsa soak`` runs.

    Attributes:
        minutes: Length of the measured run (after the warm-up).
        rate: Camera rate in frames per second.
        admission_hz: Frames per second the triplet segments (tsa up --admission-hz);
            0 = every frame.
        config: Params file of the graph ('' = the package's, by device: cpu.yaml or tsa.yaml).
        device: Device of every network.
        out: Directory for soak.csv, soak.png, summary.json and the nodes' logs.
        sample_s: Seconds between two samples.
        max_growth_mb: Largest accepted growth of a node's peak RSS (last third of the run
            against the middle third).
        warmup_timeout_s: Longest wait for the first fused mask with three votes.
    """

    minutes: float = 10.0
    rate: float = 17.0
    admission_hz: float = 1.0
    config: str = ''
    device: str = 'cpu'
    out: str = 'results/soak'
    sample_s: float = 5.0
    max_growth_mb: float = 40.0
    warmup_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ConfigError(f'--minutes must be > 0, got {self.minutes}')
        if not self.rate > 0:
            raise ConfigError(f'--rate must be > 0, got {self.rate}')
        if not self.sample_s > 0:
            raise ConfigError(f'--sample-s must be > 0, got {self.sample_s}')
        if self.sample_s * 6 > 60 * self.minutes:
            raise ConfigError(
                f'--minutes {self.minutes} gives fewer than 6 samples of {self.sample_s} s: '
                'too short to tell growth from noise'
            )


# ------------------------------------------------------------------------- the world
def camera_size(params_file: str) -> tuple[int, int]:
    """(height, width) of the camera: the student's network input in the params file."""
    data = load_params_file(params_file)
    for key, value in data.items():
        if str(key).rstrip('/').split('/')[-1] == 'student':
            model = ((value or {}).get('ros__parameters') or {}).get('model') or {}
            if 'input_size' in model:
                height, width = model['input_size']
                return int(height), int(width)
    return 512, 1024  # ModelConfig's default


def world_frames(height: int, width: int, snippets: int = 2, seed: int = 0) -> list[np.ndarray]:
    """Frames of ``snippets`` synthetic drives (30 frames each), in driving order."""
    from tsa_ros.data.camera import CameraModel
    from tsa_ros.data.synth import render_frame, sample_scene
    from tsa_ros.data.synth.scene import NUM_FRAMES

    frames = []
    for k in range(snippets):
        scene = sample_scene(
            np.random.default_rng(seed + k), CameraModel.cityscapes_default(width, height)
        )
        frames += [render_frame(scene, i, scene.camera)[0] for i in range(NUM_FRAMES)]
    return frames


# ------------------------------------------------------------------------- measuring
def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (0 when it is gone)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
    except OSError:
        pass  # the node died between two samples: the supervisor restarts it
    return 0.0


def counter(values: dict[str, str], key: str) -> int:
    try:
        return int(float(values.get(key, 0)))
    except ValueError:
        return 0


def total(values: dict[str, str], prefix: str) -> int:
    return sum(counter(values, k) for k in values if k.startswith(prefix))


def accounted_camera_frames(values: dict[str, str]) -> int:
    """Camera frames a segmenter (or the learner) has accounted for."""
    return sum(counter(values, k) for k in SEGMENTER_ACCOUNTS) + total(values, 'rejected.')


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {'p50': None, 'p90': None, 'p99': None, 'max': None}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {'p50': float(p50), 'p90': float(p90), 'p99': float(p99), 'max': float(max(values))}


def memory_growth(samples: list[dict], nodes: Sequence[str]) -> dict[str, float]:
    """Per node: peak RSS of the last third of the samples minus that of the middle third."""
    n = len(samples)
    middle, last = samples[n // 3 : 2 * n // 3], samples[2 * n // 3 :]
    out = {}
    for name in nodes:
        peak_mid = max(s['rss_mb'][name] for s in middle)
        peak_last = max(s['rss_mb'][name] for s in last)
        out[name] = round(peak_last - peak_mid, 1)
    return out


@dataclass
class Verdict:
    """What the soak found; ``ok`` when memory is flat and every frame is accounted for."""

    published: int
    growth_mb: dict[str, float]
    unaccounted: dict[str, int]
    admitted: dict[str, int]
    fusion_accounted: int
    latency_ms: dict[str, float | None]
    restarts: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(
    published: int,
    base: dict[str, dict[str, str]],
    final: dict[str, dict[str, str]],
    samples: list[dict],
    latencies: list[float],
    restarts: dict[str, int],
    max_growth_mb: float,
) -> Verdict:
    """The verdict of a soak from the counters before and after it and the samples."""

    def delta(node, fn):
        return fn(final.get(node, {})) - fn(base.get(node, {}))

    accounting_nodes = (*ROLES, 'learner')
    unaccounted = {n: published - delta(n, accounted_camera_frames) for n in accounting_nodes}
    admitted = {r: delta(r, lambda v: counter(v, 'frames')) for r in ROLES}
    fusion_accounted = delta('fusion', lambda v: sum(counter(v, k) for k in FUSION_ACCOUNTS))
    nodes = list(samples[0]['rss_mb']) if samples else []
    growth = memory_growth(samples, nodes) if len(samples) >= 3 else {}
    problems = []
    for name, mb in growth.items():
        if mb > max_growth_mb:
            problems.append(f'{name}: peak RSS grew by {mb} MB (limit {max_growth_mb} MB)')
    for name, missing in unaccounted.items():
        if missing:
            problems.append(f'{name}: {missing} of {published} camera frames not accounted for')
    if fusion_accounted < max(admitted.values(), default=0):
        problems.append(
            f'fusion accounted for {fusion_accounted} frames, the segmenters admitted '
            f'up to {max(admitted.values())}'
        )
    if any(restarts.values()):
        problems.append(f'nodes restarted: {restarts}')
    return Verdict(
        published,
        growth,
        unaccounted,
        admitted,
        fusion_accounted,
        percentiles(latencies),
        restarts,
        problems,
    )


# ------------------------------------------------------------------------- output
def write_csv(path: Path, samples: list[dict]) -> None:
    """One row per sample: RSS per node, latency percentiles, the cumulative counts."""
    nodes = list(samples[0]['rss_mb']) if samples else []
    keys = list(samples[0]['counts']) if samples else []
    percent = ('p50', 'p90', 'p99')
    with path.open('w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                'time_s',
                *(f'rss_mb.{n}' for n in nodes),
                *(f'latency_{p}_ms' for p in percent),
                *keys,
            ]
        )
        for s in samples:
            lat = s['latency_ms']
            writer.writerow(
                [
                    f'{s["time_s"]:.1f}',
                    *(f'{s["rss_mb"][n]:.1f}' for n in nodes),
                    *('' if lat[p] is None else f'{lat[p]:.1f}' for p in percent),
                    *(s['counts'][k] for k in keys),
                ]
            )


def plot(path: Path, samples: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    t = [s['time_s'] / 60 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    for name in samples[0]['rss_mb']:
        axes[0].plot(t, [s['rss_mb'][name] for s in samples], label=name)
    axes[0].set_ylabel('RSS (MB)')
    axes[0].legend(fontsize=8, ncol=4)
    for p in ('p50', 'p90', 'p99'):
        axes[1].plot(t, [s['latency_ms'][p] or np.nan for s in samples], label=p)
    axes[1].set_ylabel('camera -> fused (ms)')
    axes[1].legend(fontsize=8)
    series = {
        'camera frames': lambda c: c['camera_frames'],
        'admitted (fewest of T, S, A)': lambda c: min(c[f'admitted.{r}'] for r in ROLES),
        'fused': lambda c: c['fused'],
        'fused with 3 votes': lambda c: c['complete'],
        'degraded': lambda c: c['degraded'] + c['dropped'],
        'lost in a queue (most of T, S, A)': lambda c: max(c[f'lost.{r}'] for r in ROLES),
        'rejected': lambda c: c['rejected'],
    }
    for label, value in series.items():
        axes[2].plot(t, [value(s['counts']) for s in samples], label=label)
    axes[2].set_yscale('symlog')
    axes[2].set_ylabel('frames (cumulative)')
    axes[2].set_xlabel('minutes')
    axes[2].legend(fontsize=8, ncol=2)
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ------------------------------------------------------------------------- the run
class Probe:
    """The soak's own ROS node: the camera, and ears on /diagnostics and the fused masks."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from tsa_msgs.msg import FusedSegmentation

        from tsa_ros.ros import qos

        self.node = node
        self.lock = threading.Lock()
        self.latest: dict[str, dict[str, str]] = {}
        self.sent: dict[int, float] = {}  # stamp -> monotonic time of publication
        self.latencies: list[float] = []  # ms, since the last take_latencies()
        self.all_latencies: list[float] = []
        self.fused_votes: list[int] = []
        self.camera = node.create_publisher(Image, '/camera/image_raw', qos.RESULTS)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, qos.RESULTS)
        node.create_subscription(
            FusedSegmentation, '/tsa/fused/segmentation', self._on_fused, qos.RESULTS
        )

    def _on_diag(self, array) -> None:
        with self.lock:
            for status in array.status:
                name = status.name.rsplit('/', 1)[-1]
                self.latest[name] = {kv.key: kv.value for kv in status.values}

    def _on_fused(self, msg) -> None:
        now = time.monotonic()
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        with self.lock:
            sent = self.sent.pop(stamp, None)
            self.fused_votes.append(len(msg.roles))
            if sent is not None:
                ms = 1e3 * (now - sent)
                self.latencies.append(ms)
                self.all_latencies.append(ms)

    def publish(self, rgb: np.ndarray, stamp_ns: int) -> None:
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        from tsa_ros.ros.convert import image_msg

        header = Header(
            stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id='camera'
        )
        with self.lock:
            self.sent[stamp_ns] = time.monotonic()
            if len(self.sent) > 10_000:  # frames never fused (skipped by admission)
                for old in sorted(self.sent)[:5000]:
                    del self.sent[old]
        self.camera.publish(image_msg(rgb, 'rgb8', header))

    def counters(self) -> dict[str, dict[str, str]]:
        with self.lock:
            return {k: dict(v) for k, v in self.latest.items()}

    def take_latencies(self) -> list[float]:
        with self.lock:
            out, self.latencies = self.latencies, []
            return out


def counts(published: int, latest: dict, base: dict) -> dict[str, int]:
    """The CSV's cumulative counts since the start of the measured run (per network where
    the networks differ: admission and queue losses are each node's own)."""

    def d(node, fn):
        return fn(latest.get(node, {})) - fn(base.get(node, {}))

    def c(node, key):
        return d(node, lambda v: counter(v, key))

    out = {'camera_frames': published}
    for role in ROLES:
        out[f'admitted.{role}'] = c(role, 'frames')
        out[f'skipped.{role}'] = c(role, 'skipped.admission')
        out[f'lost.{role}'] = c(role, 'lost.camera')
    out |= {
        'fused': c('fusion', 'fused'),
        'complete': c('fusion', 'frames.complete'),
        'partial': c('fusion', 'frames.partial'),
        'degraded': c('fusion', 'frames.degraded'),
        'dropped': c('fusion', 'frames.dropped_below_quorum'),
        'rejected': sum(d(n, lambda v: total(v, 'rejected.')) for n in latest),
        'in_flight': published - min(d(r, accounted_camera_frames) for r in ROLES),
    }
    return out


def machine() -> dict:
    from tsa_ros.experiments.paper import environment

    return environment() | {'loadavg_start': os.getloadavg()}


def soak(args: SoakArgs, log=print) -> Verdict:
    """Run the soak (see the module docstring); writes the outputs to ``args.out``."""
    from contextlib import ExitStack

    from tsa_ros.ros.background import background_node
    from tsa_ros.ros.preflight import check_graph
    from tsa_ros.ros.up import Supervisor, node_command, stop_all

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    graph = GraphArgs(config=args.config, device=args.device, admission_hz=args.admission_hz)
    specs = describe('tsa', graph)
    check_graph('tsa', graph, specs)
    height, width = camera_size(graph.params_file)
    log(f'tsa soak: rendering the synthetic world at {width}x{height}')
    frames = world_frames(height, width)
    env = machine()

    commands = {s.name: node_command(s, graph.params_file) for s in specs}
    (out / 'logs').mkdir(exist_ok=True)
    supervisor = Supervisor(specs, commands, out / 'logs')
    spun = ExitStack()
    node = spun.enter_context(background_node('tsa_soak'))
    probe = Probe(node)
    period = 1.0 / args.rate
    stamp0 = time.time_ns()
    index = 0

    def tick(deadline: float) -> None:
        """Publish camera frames at the rate until ``deadline``; keep the graph supervised."""
        nonlocal index
        while True:
            now = time.monotonic()
            if now >= deadline:
                return
            due = start_t + index * period
            if due > now:
                time.sleep(min(due - now, deadline - now, 0.05))
                continue
            probe.publish(frames[index % len(frames)], stamp0 + round(index * period * 1e9))
            index += 1
            if index % 10 == 0:
                supervisor.poll(now)

    samples: list[dict] = []
    try:
        log(f'tsa soak: nodes {", ".join(commands)}; logs in {out / "logs"}')
        start_t = time.monotonic()
        deadline = start_t + args.warmup_timeout_s
        while not any(v == len(ROLES) for v in probe.fused_votes):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f'no fused mask with three votes after {args.warmup_timeout_s:.0f} s; '
                    f'see {out / "logs"}'
                )
            tick(time.monotonic() + 1.0)
        log('tsa soak: the graph fuses three votes; draining the warm-up')
        warm_until = index
        time.sleep(5)  # the warm-up's frames drain, counters settle (published every 1 s)
        # The measured run starts on a fresh stamp: a gap the admission sees as a new slot.
        base = probe.counters()
        # (10 s: longer than the admission's pause, so the gap is not counted as lost).
        stamp0 += round(index * period * 1e9) + 10 * 10**9
        index = 0
        probe.take_latencies()
        probe.all_latencies.clear()
        restarts0 = dict(supervisor.restarts)
        start_t = time.monotonic()
        end_t = start_t + 60 * args.minutes
        log(f'tsa soak: {args.minutes} min at {args.rate} Hz (warm-up took {warm_until} frames)')
        while time.monotonic() < end_t:
            tick(min(end_t, time.monotonic() + args.sample_s))
            sample = {
                'time_s': time.monotonic() - start_t,
                'rss_mb': {n: rss_mb(p.pid) for n, p in supervisor.procs.items()},
                'latency_ms': percentiles(probe.take_latencies()),
                'counts': counts(index, probe.counters(), base),
            }
            samples.append(sample)
        log('tsa soak: camera stopped; draining')
        published = index
        drain_end = time.monotonic() + 30
        while time.monotonic() < drain_end:
            latest = probe.counters()
            if counts(published, latest, base)['in_flight'] <= 0:
                break
            time.sleep(0.5)
        time.sleep(5)  # fusion's timeout for the last frames, then one more diagnostics tick
        final = probe.counters()
        restarts = {n: supervisor.restarts[n] - restarts0[n] for n in restarts0}
    finally:
        stop_all(supervisor.procs)
        spun.close()

    verdict = judge(
        published, base, final, samples, probe.all_latencies, restarts, args.max_growth_mb
    )
    write_csv(out / 'soak.csv', samples)
    title = (
        f'tsa soak: {args.minutes} min, camera {args.rate} Hz, admission {args.admission_hz} Hz, '
        f'{width}x{height} — {"ok" if verdict.ok else "FAILED"}'
    )
    plot(out / 'soak.png', samples, title)
    summary = {
        'args': asdict(args),
        'config': graph.params_file,
        'camera_size': [height, width],
        'machine': env | {'loadavg_end': os.getloadavg()},
        'verdict': asdict(verdict) | {'ok': verdict.ok},
        'final_counters': final,
    }
    (out / 'summary.json').write_text(json.dumps(summary, indent=2))
    return verdict


def add_arguments(parser) -> None:
    from tsa_ros.ros.params import attribute_docs

    docs = attribute_docs(SoakArgs)
    defaults = SoakArgs()
    for name, help_text in docs.items():
        value = getattr(defaults, name)
        flag = '--' + name.replace('_', '-')
        parser.add_argument(flag, dest=name, type=type(value), default=value, help=help_text)


def main_from_args(ns) -> int:
    args = SoakArgs(**{name: getattr(ns, name) for name in SoakArgs.__dataclass_fields__})
    verdict = soak(args)
    lat = verdict.latency_ms

    def fmt(v):
        return '-' if v is None else f'{v:.0f}'

    print(
        f'tsa soak: {verdict.published} camera frames; admitted {verdict.admitted}; '
        f'fusion accounted {verdict.fusion_accounted}; latency p50 {fmt(lat["p50"])} ms, '
        f'p99 {fmt(lat["p99"])} ms; RSS growth {verdict.growth_mb} MB'
    )
    print(f'tsa soak: wrote {args.out}/soak.csv, soak.png, summary.json')
    if not verdict.ok:
        for problem in verdict.problems:
            print(f'tsa soak: FAILED: {problem}')
        return 1
    print('tsa soak: ok (flat memory, every frame accounted for)')
    return 0
