"""The whole graph, brought up by `tsa up` as separate processes, over real DDS.

Tiny random-initialised networks (test/ros/tiny.yaml, 64x128 frames): the tests check the
plumbing and the logic of the graph, not segmentation quality.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from supervised_fit import fit
from tsa_msgs.msg import FusedSegmentation, ModelWeights, Segmentation

from tsa_ros.data.bag import BagReader, write_bag
from tsa_ros.data.export import export_bag, sequence_frames
from tsa_ros.fusion import majority_vote
from tsa_ros.metrics import ConfusionMatrix
from tsa_ros.models import ModelConfig, build_model, load_checkpoint, save_checkpoint
from tsa_ros.ros import qos
from tsa_ros.ros.convert import image_msg, labels_from_image
from tsa_ros.ros.graph import ROLES

TINY = Path(__file__).with_name('tiny.yaml')
H, W = 64, 128


def role_model(role, config=TINY):
    """The network a role runs in the tiny config (same seed, same init)."""
    sections = yaml.safe_load(Path(config).read_text())
    section = sections[f'/**/{role}']['ros__parameters']
    # A and the learner take S's architecture from the graph description.
    model = section.get('model') or sections['/**/student']['ros__parameters']['model']
    torch.manual_seed(section['seed'])
    model_cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
    return build_model(ModelConfig(**model_cfg)).eval()


def predict(model, rgb):
    with torch.inference_mode():
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        return model.predict(x)[0].numpy().astype(np.uint8)


class Graph:
    """`tsa up ...` in a subprocess; stopped with SIGINT like Ctrl-C."""

    def __init__(self, tmp_path, *args):
        self.logs = tmp_path / 'logs'
        cmd = [sys.executable, '-m', 'tsa_ros.cli', 'up', *args, '--log-dir', str(self.logs)]
        self.proc = subprocess.Popen(cmd)

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def wait(self, timeout):
        """Exit code of a graph that ends by itself (exit_when_done); stopped on timeout."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise

    def log(self, name):
        path = self.logs / f'{name}.log'
        return path.read_text(errors='replace') if path.exists() else ''


def frames(n, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth random images: blocky colour fields look less like noise to the networks.
    small = rng.integers(0, 256, (n, H // 8, W // 8, 3), dtype=np.uint8)
    return [np.kron(f, np.ones((8, 8, 1), np.uint8)) for f in small]


def header(i):
    return Header(stamp=Time(sec=100 + i, nanosec=0), frame_id='camera')


def key(i):
    """stamp_of() of header(i)."""
    return (100 + i) * 10**9


def stamp_of(msg):
    return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec


def test_tsa_graph_fuses_every_frame_and_adapts_a(ros, tmp_path):
    graph = Graph(tmp_path, 'tsa', '--config', str(TINY))
    try:
        probe: Node = ros.node('probe')
        pub = probe.create_publisher(Image, '/camera/image_raw', qos.RESULTS)
        fused, adaptive, weights = {}, {}, []
        probe.create_subscription(
            FusedSegmentation,
            '/tsa/fused/segmentation',
            lambda m: fused.setdefault(stamp_of(m), m),
            qos.RESULTS,
        )
        probe.create_subscription(
            Segmentation,
            '/tsa/adaptive/segmentation',
            lambda m: adaptive.setdefault(stamp_of(m), m),
            qos.RESULTS,
        )
        probe.create_subscription(
            ModelWeights, '/tsa/learner/weights', weights.append, qos.LATCHED
        )
        # Three segmenters and the learner read the camera; fusion reads three results.
        # (Up to 5 minutes: six processes import torch on 2 cores, once over 2 min in CI.)
        assert ros.wait_for(lambda: pub.get_subscription_count() >= 4, timeout=300), (
            'graph did not come up:\n'
            + graph.log('teacher')
            + graph.log('learner')
            + graph.log('lifecycle_manager')
        )
        images = frames(12)

        # Matching is not the same as having discovered us (best-effort readers drop frames
        # from writers they do not know yet): warm up until one frame is fused by all three.
        def complete(stamp):
            return stamp in fused and not list(fused[stamp].missing_roles)

        for k in range(20):
            pub.publish(image_msg(images[0], 'rgb8', header(-50 + k)))
            if ros.wait_for(lambda k=k: complete(key(-50 + k)), timeout=5):
                break
        assert any(complete(key(-50 + k)) for k in range(20)), graph.log('fusion')
        for i, rgb in enumerate(images):
            # One frame at a time, as a slow camera would: each must come out fused.
            for _ in range(3):  # best-effort input: resend once if a frame was dropped
                pub.publish(image_msg(rgb, 'rgb8', header(i)))
                if ros.wait_for(lambda i=i: key(i) in fused, timeout=20):
                    break
            assert key(i) in fused, f'no fused result for frame {i}\n' + graph.log('fusion')
        for i in range(len(images)):
            msg = fused[key(i)]
            assert list(msg.roles) == list(ROLES) and not list(msg.missing_roles)
            assert msg.header.frame_id == 'camera'
            assert (msg.labels.height, msg.labels.width) == (H, W)

        # The learner trained on (frame, teacher posteriors) pairs and sent signed snapshots;
        # the adaptive segmenter swapped them in: same image, newer version, other output.
        assert ros.wait_for(lambda: weights, timeout=60), graph.log('learner')
        before = adaptive[key(0)]
        probe_image = images[0]
        i = len(images)
        for _ in range(10):
            pub.publish(image_msg(probe_image, 'rgb8', header(i)))
            ros.wait_for(lambda i=i: key(i) in adaptive, timeout=10)
            if key(i) in adaptive and adaptive[key(i)].model_version > before.model_version:
                break
            i += 1
        after = adaptive[key(i)]
        assert before.model_version == 0 and after.model_version >= 1
        assert bytes(after.labels.data) != bytes(before.labels.data)
    finally:
        code = graph.stop()
    assert code == 0, 'tsa up did not shut down cleanly'


@pytest.fixture(scope='module')
def tiny_bag(tiny_root, tmp_path_factory):
    out = tmp_path_factory.mktemp('bags') / 'val'
    export_bag(tiny_root, 'val', out, size=(H, W))
    return out


def test_bag_replay_evaluator_matches_offline_evaluation(tmp_path, tiny_bag, ros_domain_id):
    report = tmp_path / 'clean.json'
    graph = Graph(
        tmp_path,
        'replay',
        '--config',
        str(TINY),
        '--bag',
        str(tiny_bag),
        '--rate',
        '0.2',  # slow enough that no segmenter drops a frame while the learner trains
        '--exit-when-done',
        '--report',
        str(report),
    )
    code = graph.wait(timeout=300)
    assert code == 0, graph.log('bag_player') + graph.log('evaluator')
    result = json.loads(report.read_text())

    # Offline: the same static networks on the same ground-truth frames. Under load a
    # segmenter may drop a camera frame (keep-last-1 input, by design); the report lists the
    # stamps each stream was scored on, and the offline evaluation uses exactly those.
    with BagReader(tiny_bag) as reader:
        truth = {f.stamp_ns: f for f in reader.frames() if f.ground_truth is not None}
    assert result['frames'] == len(truth) == 2
    for role in ('teacher', 'student'):
        model = role_model(role)
        stream = result['streams'][role]
        assert stream['stamps'] and set(stream['stamps']) <= set(truth)
        assert len(stream['stamps']) + stream['missing'] == len(truth)
        matrix = ConfusionMatrix()
        for stamp in stream['stamps']:
            matrix.update(predict(model, truth[stamp].image), truth[stamp].ground_truth)
        assert stream['pixels'] == matrix.total
        assert stream['miou'] == pytest.approx(matrix.miou(), abs=1e-12), role


def test_a_replay_starts_when_the_graph_is_active_and_scores_its_first_frame(
    tmp_path, tiny_root, ros_domain_id
):
    # A bag whose very first message carries ground truth, at the recorded 17 Hz: lost
    # unless the player waits until every node is active (the lifecycle manager activates
    # it last) and its camera readers have matched.
    frames = list(sequence_frames(tiny_root, 'val', size=(H, W)))
    first = next(i for i, f in enumerate(frames) if f.ground_truth is not None)
    bag = tmp_path / 'gt_first'
    write_bag(frames[first:], bag)
    report = tmp_path / 'report.json'
    graph = Graph(
        tmp_path,
        'replay',
        '--config',
        str(TINY),
        '--bag',
        str(bag),
        '--exit-when-done',
        '--report',
        str(report),
    )
    code = graph.wait(timeout=300)
    assert code == 0, graph.log('lifecycle_manager') + graph.log('bag_player')
    result = json.loads(report.read_text())
    stamp = frames[first].stamp_ns
    for stream in ('teacher', 'student', 'adaptive', 'fused'):
        assert stamp in result['streams'][stream]['stamps'], (stream, result['streams'][stream])
    manager = graph.log('lifecycle_manager')
    assert 'every node is active' in manager, manager


@pytest.fixture(scope='module')
def trained_triplet(tiny_root, tmp_path_factory):
    """T, S and A fitted for a few seconds on the tiny set, so that they mostly agree.

    Random networks disagree everywhere, which hides what an attack does to agreement. A is
    trained from another seed: an A that has already moved away from S.
    """
    from torch.utils.data import ConcatDataset, DataLoader

    from tsa_ros.data.cityscapes import LabeledDataset

    data = ConcatDataset([LabeledDataset(tiny_root, s, size=(H, W)) for s in ('train', 'val')])
    loader = DataLoader(
        data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    out = tmp_path_factory.mktemp('triplet')
    paths = {}
    for role, steps in (('teacher', 50), ('student', 80), ('adaptive', 80)):
        model = role_model(role)
        fit(model, loader, steps=steps, lr=2e-3)
        paths[role] = save_checkpoint(out / f'{role}.pt', model.eval())
    return paths


def test_attack_injection_hurts_s_and_fusion_follows_the_majority(
    tmp_path, tiny_bag, trained_triplet, ros
):
    config = yaml.safe_load(TINY.read_text())
    # No snapshots during this test: A keeps its own weights.
    config['/**/learner']['ros__parameters']['learner']['snapshot_every'] = 100000
    config_path = tmp_path / 'attack.yaml'
    config_path.write_text(yaml.safe_dump(config))
    probe = ros.node('probe')
    seen = {role: {} for role in ROLES}
    fused = {}
    for role in ROLES:
        probe.create_subscription(
            Image,
            f'/tsa/{role}/labels',
            lambda m, r=role: seen[r].setdefault(stamp_of(m), m),
            qos.RESULTS,
        )
    probe.create_subscription(
        FusedSegmentation,
        '/tsa/fused/segmentation',
        lambda m: fused.setdefault(stamp_of(m), m),
        qos.RESULTS,
    )
    clean, attacked = {}, {}
    probe.create_subscription(
        Image, '/camera/image_clean', lambda m: clean.setdefault(stamp_of(m), m), qos.RESULTS
    )
    probe.create_subscription(
        Image, '/camera/image_raw', lambda m: attacked.setdefault(stamp_of(m), m), qos.RESULTS
    )
    graph = Graph(
        tmp_path,
        'attack_injection',
        '--config',
        str(config_path),
        '--bag',
        str(tiny_bag),
        '--rate',
        '0.1',
        '--exit-when-done',
        '--attack-target',
        'student',
        '--epsilon',
        '8',
        '--teacher-checkpoint',
        str(trained_triplet['teacher']),
        '--student-checkpoint',
        str(trained_triplet['student']),
        '--adaptive-checkpoint',
        str(trained_triplet['adaptive']),
    )
    code = graph.wait(timeout=400)
    assert code == 0, graph.log('attacker') + graph.log('bag_player')

    # Frames fused from all three results whose inputs and outputs the probe saw too.
    complete = sorted(
        s
        for s in fused
        if not list(fused[s].missing_roles)
        and s in clean
        and s in attacked
        and all(s in seen[r] for r in ROLES)
    )
    assert len(complete) >= 10, f'only {len(complete)} frames fused completely'
    models = {role: load_checkpoint(trained_triplet[role])[0] for role in ROLES}
    flips = {role: [] for role in ROLES}
    attacked_dis, clean_dis = [], []
    for stamp in complete:
        labels = [labels_from_image(seen[r][stamp]) for r in ROLES]
        # The fused mask is the majority of the three networks' masks.
        expected = majority_vote(labels, tie='teacher')
        np.testing.assert_array_equal(labels_from_image(fused[stamp].labels), expected)
        adv = np.frombuffer(bytes(attacked[stamp].data), np.uint8).reshape(H, W, 3)
        ref = np.frombuffer(bytes(clean[stamp].data), np.uint8).reshape(H, W, 3)
        assert np.abs(adv.astype(int) - ref).max() <= 8
        # The same frame without the attack, offline: the triplet's clean answer.
        clean_labels = [predict(models[r], ref) for r in ROLES]
        clean_fused = majority_vote(clean_labels, tie='teacher')
        for role, now, before in zip(ROLES, labels, clean_labels, strict=True):
            flips[role].append(np.mean(now != before))
        roles = list(fused[stamp].roles)
        attacked_dis.append(fused[stamp].disagreement[roles.index('student')])
        clean_dis.append(np.mean(clean_labels[1] != clean_fused))
    flipped = {role: float(np.mean(v)) for role, v in flips.items()}
    print(
        f'labels changed by the attack: {flipped}; S vs fused: clean '
        f'{np.mean(clean_dis):.3f}, attacked {np.mean(attacked_dis):.3f}'
    )
    # All three see the injected frames, but the attack was made for S: it transfers less.
    assert flipped['student'] > 0.1, 'the injected frames barely changed S'
    assert flipped['student'] > 2 * max(flipped['teacher'], flipped['adaptive'])
    # S's agreement with the triplet's decision drops: the others outvote it.
    assert np.mean(attacked_dis) > np.mean(clean_dis) + 0.05


def test_looping_replay_fuses_every_pass(tmp_path, tiny_bag, ros):
    """Pass k of --loop moves the stamps by k bag lengths, so passes 2, 3 ... are fused too."""
    with BagReader(tiny_bag) as reader:
        summary = reader.summary()
        pass_ns = reader.duration_ns + round(summary.duration_s * 1e9 / (summary.frames - 1))
    probe = ros.node('probe')
    passes = set()
    probe.create_subscription(
        FusedSegmentation,
        '/tsa/fused/segmentation',
        lambda m: passes.add((stamp_of(m) - summary.start_ns) // pass_ns),
        qos.RESULTS,
    )
    graph = Graph(tmp_path, 'replay', '--config', str(TINY), '--bag', str(tiny_bag), '--loop')
    try:
        assert ros.wait_for(lambda: {2, 3} <= passes, timeout=240), (
            f'fused passes {sorted(passes)}\n' + graph.log('fusion') + graph.log('bag_player')
        )
    finally:
        code = graph.stop()
    assert code == 0


def children(pid):
    """PIDs of the direct children of ``pid`` (the nodes under `tsa up`)."""
    out = []
    for entry in Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / 'stat').read_text()
            except OSError:
                continue
            if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def node_pid(graph, name):
    """PID of the node process `name` under a `tsa up` graph."""
    for pid in children(graph.proc.pid):
        try:
            argv = Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')
        except OSError:
            continue
        if f'__node:={name}'.encode() in argv:
            return pid
    return None


def test_a_crashed_segmenter_is_restarted_while_fusion_carries_on(ros, tmp_path):
    graph = Graph(tmp_path, 'tsa', '--config', str(TINY))
    try:
        probe = ros.node('probe')
        pub = probe.create_publisher(Image, '/camera/image_raw', qos.RESULTS)
        fused = []
        probe.create_subscription(
            FusedSegmentation, '/tsa/fused/segmentation', fused.append, qos.RESULTS
        )
        assert ros.wait_for(lambda: pub.get_subscription_count() >= 4, timeout=120)
        images = frames(4)
        count = [0]

        def send_until(condition, timeout):
            """A 4 Hz camera until ``condition`` holds."""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pub.publish(image_msg(images[count[0] % 4], 'rgb8', header(count[0])))
                count[0] += 1
                if ros.wait_for(condition, timeout=0.25):
                    return True
            return False

        def votes(n, since=0):
            return lambda: any(len(m.roles) == n for m in fused[since:])

        assert send_until(votes(3), 90), 'never fused with three votes'
        pid = node_pid(graph, 'student')
        os.kill(pid, signal.SIGKILL)
        mark = len(fused)

        # The others keep running: frames are fused from T and A (quorum 2 of 3 met).
        def without_student():
            return any(list(m.missing_roles) == ['student'] for m in fused[mark:])

        assert send_until(without_student, 30), graph.log('fusion')
        two = next(m for m in fused[mark:] if list(m.missing_roles) == ['student'])
        assert list(two.roles) == ['teacher', 'adaptive'] and not two.degraded
        # tsa up restarts the student; three votes again.
        mark = len(fused)
        assert send_until(votes(3, mark), 120), 'the student did not come back'
        assert node_pid(graph, 'student') not in (None, pid)
    finally:
        code = graph.stop()
    assert code == 1, 'a node died during the run: tsa up must say so'
