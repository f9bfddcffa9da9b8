"""Camera-to-fused latency through the running ``tsa`` graph, and the size of every topic's
messages: the graph rows of ``tsa bench``.

The graph is the one ``tsa up`` brings up (same params file, same processes; the fusion
waits for all three votes, the learner writes no checkpoint). One camera frame at a time goes
in and the next only after its fused mask came out, so nothing queues; between two frames
this process runs each segmenter's network bare, in the backend that segmenter chose, at the
segmenters' thread budget, on an idle graph: the slowest is the reference of the latency.
Each segmenter's own ``inference_time_ms`` (on its Segmentation message) splits the latency
into the network's time inside the graph and the rest (transport, decoding, fusion): the
ROS overhead. Both are measured twice: with the learner paused (its ``~/enable`` service)
and with it training on the frames, as it does in operation.

``tsa bench`` runs this module in a process of its own (``python -m tsa_ros.ros.graph_bench
--json``): the bench is core code and stays free of rclpy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from tsa_ros.ros.graph import ROLES, GraphArgs, describe, role_network

#: Topics whose messages are sized: the graph's own namespace and the camera.
GRAPH_NAMESPACE = '/tsa'


def _network_configs(params_file: str) -> dict[str, Any]:
    """ModelConfig of T and S (A = S) from the params file's sections."""
    from tsa_ros.models import ModelConfig

    out = {}
    for role in ('teacher', 'student'):
        model = {
            key.removeprefix('model.'): value
            for key, value in role_network(params_file, role).items()
            if key.startswith('model.')
        }
        if 'input_size' in model:
            model['input_size'] = tuple(model['input_size'])
        out[role] = ModelConfig(**model)
    return out


class _BareForward:
    """Each segmenter's network, bare, in this process: the backend that segmenter chose at
    warm-up (it reports it on /diagnostics), inference mode, at the segmenters' thread budget
    (tsa_ros.threads), one frame."""

    def __init__(self, params_file: str, backends: dict[str, str]) -> None:
        import torch

        from tsa_ros.models import build_model
        from tsa_ros.threads import segmenter_threads

        self.threads = segmenter_threads()
        self.backends = backends
        configs = _network_configs(params_file)
        self.nets = {}
        for role, backend in backends.items():
            cfg = configs['teacher' if role == 'teacher' else 'student']  # A is an S
            torch.manual_seed(0)
            net = build_model(cfg).eval()
            x = torch.zeros((1, 3, *cfg.input_size))
            if backend != 'eager':
                net = net.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            self.nets[role] = (net, x, backend == 'bf16')
        self.times: dict[str, list[float]] = {role: [] for role in self.nets}

    def run(self) -> None:
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for role, (net, x, bf16) in self.nets.items():
                start = time.perf_counter()
                with (
                    torch.inference_mode(),
                    torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16),
                ):
                    net(x).argmax(dim=1)
                self.times[role].append(1e3 * (time.perf_counter() - start))
        finally:
            torch.set_num_threads(previous)


class _Probe:
    """This tool's node: the camera, the triplet's and fusion's outputs by stamp, and a raw
    subscription on every topic of the graph to size its messages."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image
        from std_srvs.srv import SetBool
        from tsa_msgs.msg import FusedSegmentation, Segmentation

        from tsa_ros.ros import qos

        self.node = node
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.sent: dict[int, float] = {}
        self.arrived: dict[int, dict[str, float]] = {}  # stamp -> stream -> monotonic time
        self.inference_ms: dict[int, dict[str, float]] = {}
        self.votes: dict[int, int] = {}
        self.sizes: dict[str, list[int]] = {}
        self.types: dict[str, str] = {}
        self.camera = node.create_publisher(Image, '/camera/image_raw', qos.RESULTS)
        for role in ROLES:
            node.create_subscription(
                Segmentation,
                f'{GRAPH_NAMESPACE}/{role}/segmentation',
                lambda msg, role=role: self._on_segmentation(role, msg),
                qos.RESULTS,
            )
        node.create_subscription(
            FusedSegmentation, f'{GRAPH_NAMESPACE}/fused/segmentation', self._on_fused, qos.RESULTS
        )
        self.enable = node.create_client(SetBool, f'{GRAPH_NAMESPACE}/learner/enable')
        self.backends: dict[str, str] = {}  # role -> the backend its segmenter runs
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, qos.RESULTS)

    def _on_diag(self, array) -> None:
        for status in array.status:
            values = {kv.key: kv.value for kv in status.values}
            if values.get('role') in ROLES and 'backend' in values:
                with self.cond:
                    self.backends[values['role']] = values['backend']
                    self.cond.notify_all()

    @staticmethod
    def _stamp(msg) -> int:
        return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec

    def _on_segmentation(self, role: str, msg) -> None:
        now, stamp = time.monotonic(), self._stamp(msg)
        with self.cond:
            self.arrived.setdefault(stamp, {})[role] = now
            self.inference_ms.setdefault(stamp, {})[role] = float(msg.inference_time_ms)
            self.cond.notify_all()

    def _on_fused(self, msg) -> None:
        now, stamp = time.monotonic(), self._stamp(msg)
        with self.cond:
            self.arrived.setdefault(stamp, {})['fused'] = now
            self.votes[stamp] = len(msg.roles)
            self.cond.notify_all()

    def publish(self, rgb: np.ndarray, stamp_ns: int) -> None:
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        from tsa_ros.ros.convert import image_msg

        header = Header(
            stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id='camera'
        )
        msg = image_msg(rgb, 'rgb8', header)
        with self.cond:
            self.sent[stamp_ns] = time.monotonic()
        self.camera.publish(msg)

    def wait_complete(self, stamp: int, timeout: float) -> bool:
        """Until the fused mask and all three segmentations of ``stamp`` arrived."""
        want = {'fused', *ROLES}
        with self.cond:
            return self.cond.wait_for(
                lambda: want <= set(self.arrived.get(stamp, ())), timeout=timeout
            )

    def set_learner(self, enable: bool, timeout: float = 60.0) -> None:
        from std_srvs.srv import SetBool

        if not self.enable.wait_for_service(timeout_sec=timeout):
            raise RuntimeError('the learner offers no ~/enable service')
        future = self.enable.call_async(SetBool.Request(data=enable))
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f'the learner did not answer ~/enable {enable}')
            time.sleep(0.05)
        if not future.result().success:
            raise RuntimeError(f'learner ~/enable {enable}: {future.result().message}')

    def size_topics(self) -> None:
        """A raw subscription on every topic of the graph, with its publishers' QoS (a
        latched topic's last message arrives too)."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from tsa_ros.ros.schemas import message_class

        for topic, types in self.node.get_topic_names_and_types():
            if not (topic.startswith(GRAPH_NAMESPACE + '/') or topic == '/camera/image_raw'):
                continue
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            latched = any(
                i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos
            )
            reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
            profile = QoSProfile(
                depth=5,
                reliability=ReliabilityPolicy.RELIABLE
                if reliable
                else ReliabilityPolicy.BEST_EFFORT,
                durability=DurabilityPolicy.TRANSIENT_LOCAL
                if latched
                else DurabilityPolicy.VOLATILE,
            )
            self.types[topic] = types[0]
            self.node.create_subscription(
                message_class(types[0]),
                topic,
                lambda data, topic=topic: self._on_raw(topic, data),
                profile,
                raw=True,
            )

    def _on_raw(self, topic: str, data: bytes) -> None:
        with self.lock:
            self.sizes.setdefault(topic, []).append(len(data))


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def measure(
    config: str = '',
    *,
    device: str = 'cpu',
    frames: int = 10,
    warmup_timeout_s: float = 300.0,
    frame_timeout_s: float = 60.0,
    log=print,
) -> dict[str, Any]:
    """Bring the ``tsa`` graph up, time ``frames`` frames per learner phase; see the module
    docstring. Returns ``{'camera_size', 'threads', 'phases': {...}, 'messages': [...]}``."""
    from tsa_ros.ros.background import background_node
    from tsa_ros.ros.preflight import check_graph
    from tsa_ros.ros.soak import camera_size, world_frames
    from tsa_ros.ros.up import Supervisor, node_command, stop_all

    graph = GraphArgs(config=config, device=device)
    specs = describe('tsa', graph)
    for spec in specs:
        if spec.name == 'learner':
            spec.parameters['checkpoint_path'] = ''  # a bench leaves no A behind
        if spec.name == 'fusion':
            # Fusion waits for all three votes: a network slower than the fusion's timeout
            # (T at 512x1024 on a CPU) would otherwise be left out of the latency.
            spec.parameters['timeout_s'] = frame_timeout_s
    check_graph('tsa', graph, specs)
    height, width = camera_size(graph.params_file)
    images = world_frames(height, width, snippets=1)
    logs = Path(tempfile.mkdtemp(prefix='tsa-graph-bench-'))
    commands = {s.name: node_command(s, graph.params_file) for s in specs}
    supervisor = Supervisor(specs, commands, logs)
    stack = ExitStack()
    stamp = time.time_ns()
    index = 0

    def send() -> int:
        nonlocal stamp, index
        stamp += 100_000_000  # 10 Hz stamps: every frame is a new admission slot
        probe.publish(images[index % len(images)], stamp)
        index += 1
        return stamp

    try:
        node = stack.enter_context(background_node('tsa_graph_bench'))
        probe = _Probe(node)
        log(f'graph bench: {width}x{height} camera, nodes in {logs}')
        deadline = time.monotonic() + warmup_timeout_s
        complete = 0
        while complete < 3:  # three frames in a row through all of T, S, A and fusion
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f'no complete frame within {warmup_timeout_s:.0f} s; see {logs}'
                )
            supervisor.poll(time.monotonic())
            complete = complete + 1 if probe.wait_complete(send(), 10.0) else 0
        with probe.cond:  # the backends the segmenters chose at warm-up (1 Hz diagnostics)
            if not probe.cond.wait_for(lambda: set(ROLES) <= set(probe.backends), 10.0):
                raise RuntimeError(f'segmenters reported no backend on /diagnostics; see {logs}')
            backends = {role: probe.backends[role] for role in ROLES}
        bare = _BareForward(graph.params_file, backends)
        log(f'graph bench: backends {backends}, {bare.threads} thread(s) per segmenter')
        phases = {}
        for phase, training in (('learner paused', False), ('learner training', True)):
            probe.set_learner(training)
            latency, overhead, slowest = [], [], []
            for _ in range(frames):
                if not training:
                    bare.run()  # interleaved with the frames, on the idle graph
                sent = send()
                if not probe.wait_complete(sent, frame_timeout_s):
                    raise RuntimeError(f'a frame took over {frame_timeout_s:.0f} s; see {logs}')
                with probe.lock:
                    arrived, inference = probe.arrived[sent], probe.inference_ms[sent]
                    t0 = probe.sent[sent]
                if probe.votes[sent] != len(ROLES):
                    raise RuntimeError(f'frame fused from {probe.votes[sent]} votes; see {logs}')
                total = 1e3 * (arrived['fused'] - t0)
                latency.append(total)
                slowest.append(max(inference.values()))
                overhead.append(total - max(inference.values()))
                time.sleep(0.2)  # the fusion node's bookkeeping, the learner's step start
            phases[phase] = {
                'latency_ms': latency,
                'slowest_inference_ms': slowest,
                'overhead_ms': overhead,
            }
            log(
                f'graph bench: {phase}: camera->fused median {np.median(latency):.1f} ms, '
                f'overhead {np.median(overhead):.1f} ms'
            )
        # Sized last: a subscriber on the colour and overlay topics makes the segmenters
        # render them, work the latency above leaves out (no viewer in operation).
        probe.size_topics()
        time.sleep(1.0)  # the raw subscriptions match their publishers
        for _ in range(3):
            probe.wait_complete(send(), frame_timeout_s)
        time.sleep(2.0)  # a learner snapshot or a diagnostics tick still due
        with probe.lock:
            messages = [
                {
                    'topic': topic,
                    'type': probe.types[topic],
                    'bytes': int(np.median(sizes)),
                    'messages': len(sizes),
                }
                for topic, sizes in sorted(probe.sizes.items())
            ]
    finally:
        stack.close()
        stop_all(supervisor.procs)
    return {
        'camera_size': [height, width],
        'config': graph.params_file,
        'threads': bare.threads,
        'backends': bare.backends,
        'bare_forward_ms': bare.times,
        'phases': phases,
        'messages': messages,
        'loadavg': os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m tsa_ros.ros.graph_bench', description=__doc__)
    parser.add_argument('--config', default='', help="params file ('' = the package's cpu.yaml)")
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--frames', type=int, default=10, help='frames per learner phase')
    parser.add_argument('--json', action='store_true', help='print the result as JSON')
    args = parser.parse_args(argv)
    result = measure(
        args.config,
        device=args.device,
        frames=args.frames,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    print(json.dumps(result, indent=2) if args.json else result)
    return 0


if __name__ == '__main__':
    sys.exit(main())
