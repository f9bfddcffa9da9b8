"""The evaluator: live mIoU per stream over real DDS, missing streams, reports, bag replay."""

import json
import math

import numpy as np
import pytest

pytest.importorskip('rclpy')
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Empty, Header
from tsa_msgs.msg import EvaluationStatus

from tsa_ros.evaluation import build_report, load_report, report_markdown, write_report
from tsa_ros.metrics import ConfusionMatrix, miou_ratio
from tsa_ros.ros import qos
from tsa_ros.ros.convert import image_msg
from tsa_ros.ros.evaluator_node import EvaluatorNode

H, W = 32, 48


def scene(rng, n):
    """``n`` ground-truth maps (trainIds, some ignore pixels)."""
    gt = rng.integers(0, 19, (n, H, W), dtype=np.uint8)
    gt[:, :4] = 255
    return gt


def corrupt(rng, gt, fraction=0.3):
    """A copy of ``gt`` with ``fraction`` of the pixels set to random classes."""
    out = gt.copy()
    mask = rng.random(gt.shape) < fraction
    out[mask] = rng.integers(0, 19, int(mask.sum()), dtype=np.uint8)
    return out


def offline(preds, gts):
    cm = ConfusionMatrix()
    for pred, gt in zip(preds, gts, strict=True):
        cm.update(pred, gt)
    return cm


# --------------------------------------------------------------------------- pure report


def test_build_report_numbers_ratios_and_markdown(tmp_path):
    rng = np.random.default_rng(0)
    gt = scene(rng, 2)
    good, bad = offline(corrupt(rng, gt, 0.1), gt), offline(corrupt(rng, gt, 0.6), gt)
    clean = build_report({'teacher': good, 'fused': good}, 2, {})
    report = build_report(
        {'teacher': bad, 'fused': good, 'new': ConfusionMatrix()}, 2, {'new': 2}, clean=clean
    )
    teacher = report['streams']['teacher']
    assert teacher['miou'] == bad.miou() and teacher['pixels'] == bad.total
    assert teacher['iou']['road'] == bad.iou()[0]
    assert teacher['miou_ratio'] == pytest.approx(bad.miou() / good.miou())
    assert report['streams']['fused']['miou_ratio'] == 1.0
    # No data and no clean counterpart: null, not NaN, so the file is strict JSON.
    assert report['streams']['new']['miou'] is None
    assert report['streams']['new']['miou_ratio'] is None
    assert report['streams']['new']['missing'] == 2
    assert ConfusionMatrix.from_dict(teacher['confusion']).matrix.tolist() == bad.matrix.tolist()

    json_path, md_path = write_report(report, tmp_path / 'run')
    assert (json_path.name, md_path.name) == ('run.json', 'run.md')
    assert load_report(tmp_path / 'run.json') == json.loads(json.dumps(report))
    markdown = md_path.read_text()
    assert report_markdown(report) == markdown
    assert f'| teacher | {100 * bad.miou():.2f} | {100 * good.miou():.2f} |' in markdown
    assert f'{100 * bad.miou() / good.miou():.2f} | all |' in markdown  # %, whole runs
    assert '| road |' in markdown and 'mIoU ratio' in markdown
    with pytest.raises(FileNotFoundError, match='nowhere'):
        load_report(tmp_path / 'nowhere.json')


# --------------------------------------------------------------------------- ROS

BASE_NS = 1_600_000_000 * 10**9


def header(i):
    sec, nanosec = divmod(BASE_NS + i * 58_823_529, 10**9)
    out = Header(frame_id='cam_left')
    out.stamp.sec, out.stamp.nanosec = sec, nanosec
    return out


def evaluator(ros, streams, **params):
    overrides = [Parameter('streams', value=list(streams))]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(EvaluatorNode(context=ros.context, parameter_overrides=overrides))


class Feeder:
    """A probe that publishes ground truth and labels and records the evaluator's status."""

    def __init__(self, ros, streams):
        self.ros = ros
        self.node = ros.node('feeder')
        self.gt = self.node.create_publisher(Image, 'ground_truth', qos.RESULTS)
        self.labels = {
            s: self.node.create_publisher(Image, f'{s}/labels', qos.RESULTS) for s in streams
        }
        self.status = []
        self.node.create_subscription(
            EvaluationStatus, '/evaluator/status', self.status.append, qos.RESULTS
        )
        self.report = self.node.create_publisher(Empty, '/evaluator/write_report', qos.RESULTS)

    def connect(self, node):
        pubs = [self.gt, self.report, *self.labels.values()]
        assert self.ros.wait_for(lambda: all(p.get_subscription_count() for p in pubs))
        assert self.ros.wait_for(lambda: node.status_pub.get_subscription_count() > 0)

    def frames(self):
        return self.status[-1].frames if self.status else 0


def test_status_miou_per_stream_equals_offline(ros):
    rng = np.random.default_rng(1)
    n = 4
    gt = scene(rng, n)
    preds = {'teacher': corrupt(rng, gt, 0.2), 'student': corrupt(rng, gt, 0.5)}
    node = evaluator(ros, preds, timeout_s=10.0)  # long: a loaded machine is slow
    feed = Feeder(ros, preds)
    feed.connect(node)
    for i in range(n):
        feed.gt.publish(image_msg(gt[i], 'mono8', header(i)))
        for stream, labels in preds.items():
            feed.labels[stream].publish(image_msg(labels[i], 'mono8', header(i)))
    assert ros.wait_for(lambda: feed.frames() == n, timeout=20)
    last = feed.status[-1]
    assert list(last.streams) == ['teacher', 'student'] and list(last.missing) == [0, 0]
    for k, stream in enumerate(last.streams):
        assert last.miou[k] == np.float32(offline(preds[stream], gt).miou())
    assert last.header.frame_id == 'cam_left'
    assert (last.header.stamp.sec, last.header.stamp.nanosec) == (
        header(n - 1).stamp.sec,
        header(n - 1).stamp.nanosec,
    )
    assert node.report()['streams']['student']['miou'] == offline(preds['student'], gt).miou()


def test_silent_stream_counts_missing_and_size_mismatch_is_rejected(ros):
    rng = np.random.default_rng(2)
    gt = scene(rng, 4)
    teacher = corrupt(rng, gt, 0.3)
    node = evaluator(ros, ['teacher', 'silent'], timeout_s=1.5)
    feed = Feeder(ros, ['teacher'])
    feed.connect(node)
    for i in range(4):
        feed.gt.publish(image_msg(gt[i], 'mono8', header(i)))
        # The last frame's labels have the wrong size: rejected, counted missing.
        labels = teacher[i] if i < 3 else teacher[i][: H // 2, : W // 2]
        feed.labels['teacher'].publish(image_msg(labels, 'mono8', header(i)))
    assert ros.wait_for(lambda: feed.frames() == 4, timeout=20)
    last = feed.status[-1]
    assert list(last.missing) == [1, 4]
    assert last.miou[0] == np.float32(offline(teacher[:3], gt[:3]).miou())
    assert math.isnan(last.miou[1])
    assert node.health.counters['rejected.size_mismatch'] == 1


def test_report_on_demand_and_on_close_with_clean_ratios(ros, tmp_path):
    rng = np.random.default_rng(3)
    gt = scene(rng, 3)
    clean_preds = corrupt(rng, gt, 0.1)
    adv_preds = corrupt(rng, gt, 0.5)
    clean_cm = offline(clean_preds, gt)
    write_report(build_report({'adaptive': clean_cm}, 3, {}), tmp_path / 'clean')

    with pytest.raises(FileNotFoundError, match='missing_clean'):
        EvaluatorNode(
            context=ros.context,
            parameter_overrides=[
                Parameter('clean_report', value=str(tmp_path / 'missing_clean.json'))
            ],
        )

    node = evaluator(
        ros,
        ['adaptive'],
        timeout_s=10.0,
        report_path=str(tmp_path / 'adv.json'),
        clean_report=str(tmp_path / 'clean.json'),
    )
    feed = Feeder(ros, ['adaptive'])
    feed.connect(node)

    def send(i):
        feed.gt.publish(image_msg(gt[i], 'mono8', header(i)))
        feed.labels['adaptive'].publish(image_msg(adv_preds[i], 'mono8', header(i)))

    send(0)
    assert ros.wait_for(lambda: feed.frames() == 1, timeout=20)
    feed.report.publish(Empty())
    assert ros.wait_for(lambda: (tmp_path / 'adv.md').exists(), timeout=10)
    assert load_report(tmp_path / 'adv.json')['frames'] == 1

    send(1)
    send(2)
    assert ros.wait_for(lambda: feed.frames() == 3, timeout=20)
    node.close()
    report = load_report(tmp_path / 'adv.json')
    adv = offline(adv_preds, gt).miou()
    entry = report['streams']['adaptive']
    assert report['frames'] == 3 and entry['missing'] == 0
    assert entry['miou'] == adv and entry['clean_miou'] == clean_cm.miou()
    assert entry['miou_ratio'] == miou_ratio(adv, clean_cm.miou())
    assert entry['miou_ratio'] < 1.0
    assert f'{100 * miou_ratio(adv, clean_cm.miou()):.2f}' in (tmp_path / 'adv.md').read_text()


def test_bag_replay_exact_stream_scores_one(ros, tmp_path):
    from tsa_ros.data.bag import TOPIC_IMAGE, BagFrame, BagReader, sequence_stamps, write_bag
    from tsa_ros.data.camera import CameraModel
    from tsa_ros.ros.bag_player_node import BagPlayerNode

    rng = np.random.default_rng(4)
    camera = CameraModel.cityscapes_default(W, H)
    labelled = (1, 3, 4)
    gts = scene(rng, 6)
    stamps = sequence_stamps(6, BASE_NS)
    write_bag(
        [
            BagFrame(
                stamp,
                rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
                camera,
                ground_truth=gts[i] if i in labelled else None,
            )
            for i, stamp in enumerate(stamps)
        ],
        tmp_path / 'bag',
    )
    with BagReader(tmp_path / 'bag') as reader:  # the ground truth as the bag holds it
        truth = {f.stamp_ns: f.ground_truth for f in reader.frames()}
    corrupted = {s: corrupt(rng, gts[i]) for i, s in enumerate(stamps)}

    player = ros.add(
        BagPlayerNode(
            context=ros.context,
            parameter_overrides=[
                Parameter('bag', value=str(tmp_path / 'bag')),
                Parameter('rate', value=1.0),
                Parameter('wait_for_subscribers', value=1),
                Parameter('wait_timeout_s', value=30.0),
            ],
        )
    )
    node = ros.add(
        EvaluatorNode(
            context=ros.context,
            cli_args=['--ros-args', '-r', 'ground_truth:=/camera/ground_truth'],
            parameter_overrides=[
                Parameter('streams', value=['exact', 'corrupt']),
                Parameter('timeout_s', value=2.0),
            ],
        )
    )

    # A stand-in segmenter: labels every camera frame from what it knows of that stamp.
    seg = ros.node('segmenter')
    pubs = {s: seg.create_publisher(Image, f'{s}/labels', qos.RESULTS) for s in node.streams}

    def on_image(msg):
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        exact = truth[stamp] if truth[stamp] is not None else np.zeros((H, W), np.uint8)
        pubs['exact'].publish(image_msg(exact, 'mono8', msg.header))
        pubs['corrupt'].publish(image_msg(corrupted[stamp], 'mono8', msg.header))

    status = []
    seg.create_subscription(EvaluationStatus, '/evaluator/status', status.append, qos.RESULTS)
    assert ros.wait_for(lambda: node.gt_sub.get_publisher_count() > 0)
    assert ros.wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()))
    # Reliable (not qos.SENSOR like a real segmenter): on a busy machine a depth-1 best-effort
    # reader drops frames, and this test is about the evaluator, not about load shedding.
    seg.create_subscription(Image, TOPIC_IMAGE, on_image, qos.RESULTS)  # starts the replay

    assert ros.wait_for(lambda: status and status[-1].frames == len(labelled), timeout=20)
    assert player.done.wait(10)
    last = status[-1]
    assert list(last.missing) == [0, 0]
    assert last.miou[0] == 1.0
    expected = offline([corrupted[stamps[i]] for i in labelled], gts[list(labelled)])
    assert last.miou[1] == np.float32(expected.miou())
    # Frames without ground truth are dropped at the timeout, not evaluated.
    assert ros.wait_for(
        lambda: node.health.counters['frames_without_ground_truth'] == 3, timeout=20
    )
    assert node.evaluation.frames == len(labelled)


def test_a_run_that_scored_no_frame_fails(ros, tmp_path):
    """An evaluator that scored nothing writes its (empty) report, says why in one line and
    exits 1, so `tsa up replay --report ...` cannot end with status 0 and an empty report."""
    import signal
    import subprocess
    import sys
    import time

    report = tmp_path / 'empty.json'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'tsa_ros.ros.evaluator_node', '--ros-args']
        + ['-r', '__node:=evaluator_no_frame', '-p', f'report_path:={report}'],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    probe = ros.node('probe')
    # A name of its own: an 'evaluator' of an earlier test may linger in DDS discovery.
    assert ros.wait_for(lambda: 'evaluator_no_frame' in probe.get_node_names(), timeout=60), (
        proc.poll()
    )
    time.sleep(1.0)  # configured and active (autostart), with nothing to score
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1, out
    assert 'scored no frame' in out and 'Traceback' not in out
    assert load_report(report)['frames'] == 0
