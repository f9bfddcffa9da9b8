"""LearnerNode over real DDS: joins frames with teacher posteriors, trains A, signs snapshots."""

import numpy as np
import pytest
import torch

pytest.importorskip('rclpy')
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tsa_msgs.msg import LearnerStatus, ModelWeights, Segmentation

from tsa_ros.keys import load_key
from tsa_ros.models import ModelConfig, build_model
from tsa_ros.ros import convert, qos
from tsa_ros.ros.learner_node import LearnerNode

H, W, C = 32, 64, 19
CONFIG = ModelConfig(input_size=(H, W))


def make_learner(ros, checkpoint='', **overrides):
    values = {
        'model.input_size': [H, W],
        'seed': 0,
        'learner.lr': 1e-3,
        'learner.batch_size': 1,
        'learner.queue_size': 4,
        'learner.snapshot_every': 2,
        'device': 'cpu',
        'checkpoint_path': checkpoint,
        'join_timeout_s': 0.5,
        'status_period_s': 0.2,
        **overrides,
    }
    params = [Parameter(name, value=value) for name, value in values.items()]
    return ros.add(LearnerNode(context=ros.context, parameter_overrides=params))


class Probe:
    """Publishes camera frames and teacher results; records the learner's outputs."""

    def __init__(self, ros, name='probe'):
        self.ros = ros
        self.node = ros.node(name)
        self.image_pub = self.node.create_publisher(Image, 'image', qos.SENSOR)
        self.teacher_pub = self.node.create_publisher(
            Segmentation, 'teacher/segmentation', qos.RESULTS
        )
        self.weights, self.status = [], []
        self.node.create_subscription(
            ModelWeights, 'learner/weights', self.weights.append, qos.LATCHED
        )
        self.node.create_subscription(
            LearnerStatus, 'learner/status', self.status.append, qos.RESULTS
        )
        self.rng = np.random.default_rng(0)
        assert ros.wait_for(
            lambda: (
                self.image_pub.get_subscription_count() > 0
                and self.teacher_pub.get_subscription_count() > 0
                and self.node.count_publishers('learner/status') > 0
            ),
            timeout=20,
        ), 'DDS discovery between probe and learner failed'

    def send(self, index, teacher=True, posteriors=True, scale=1):
        header = Header(frame_id='camera')
        header.stamp.sec, header.stamp.nanosec = 100 + index, 5
        rgb = self.rng.integers(0, 256, (H * scale, W * scale, 3), dtype=np.uint8)
        self.image_pub.publish(convert.image_msg(rgb, 'rgb8', header))
        if teacher:
            logits = torch.from_numpy(self.rng.normal(size=(C, H // 2, W // 2))).float()
            probs = torch.softmax(logits, 0).numpy() if posteriors else None
            labels = self.rng.integers(0, C, (H * scale, W * scale), dtype=np.uint8)
            self.teacher_pub.publish(
                convert.segmentation_msg(header, 'teacher', 'deeplab', 0, labels, probs)
            )


def student_state():
    torch.manual_seed(0)  # the learner's S: no checkpoint, seed 0
    return build_model(CONFIG).state_dict()


def test_learner_trains_and_publishes_signed_snapshots(ros, tmp_path):
    path = tmp_path / 'adaptive.pt'
    node = make_learner(ros, str(path), checkpoint_every_s=0.0)
    probe = Probe(ros)
    for index in range(6):
        probe.send(index)
        ros.wait_for(lambda i=index: node.health.counters['pairs.submitted'] > i, timeout=5)

    assert ros.wait_for(lambda: any(m.version >= 1 for m in probe.weights), timeout=60), (
        'no weight snapshot with version >= 1 arrived'
    )
    msg = probe.weights[-1]
    assert len(msg.lineage) == 16 and msg.signature
    assert msg.version >= 1 and msg.step >= 2 and msg.arch_id == 'erfnet'
    state = convert.verify_weights(msg, load_key(), 'erfnet', CONFIG.to_dict())
    s_state = student_state()
    assert state.keys() == s_state.keys()
    assert any(not torch.equal(state[k], s_state[k]) for k in state), 'A is still S'
    # A wrong key must not verify: the signature really covers the snapshot.
    with pytest.raises(convert.MessageError, match='signature'):
        convert.verify_weights(msg, b'other-key-other-key', 'erfnet', CONFIG.to_dict())

    assert ros.wait_for(
        lambda: probe.status and probe.status[-1].snapshot_version >= 1, timeout=10
    ), 'no LearnerStatus after the first snapshot'
    status = probe.status[-1]
    assert status.step >= 2 and status.frames_received >= 1
    assert np.isfinite(status.ts_loss) and status.learning_rate == pytest.approx(1e-3)
    # checkpoint_every_s = 0: every snapshot is checkpointed while training runs.
    assert ros.wait_for(lambda: node.health.counters['checkpoints.written'] >= 1, timeout=10)
    assert path.is_file()
    assert not list(tmp_path.glob('.*.tmp')), 'a temporary checkpoint file was left behind'


def test_unmatched_frame_is_not_trained_and_no_posteriors_is_rejected(ros):
    node = make_learner(ros)
    probe = Probe(ros)
    probe.send(0)
    assert ros.wait_for(lambda: node.learner.stats.frames_received == 1, timeout=10)

    probe.send(1, teacher=False)  # the teacher never answers this frame
    assert ros.wait_for(lambda: node.health.counters['image.unmatched'] == 1, timeout=10), (
        'a frame without a teacher result did not time out'
    )
    probe.send(2, posteriors=False)  # the teacher answers without posteriors
    assert ros.wait_for(lambda: node.health.counters['rejected.no_posteriors'] == 1, timeout=10), (
        'a teacher result without posteriors was not rejected'
    )
    assert ros.wait_for(lambda: node.health.counters['image.unmatched'] == 2, timeout=10)
    # A frame of another size than model.input_size (resize is off) is rejected outright.
    header = Header(frame_id='camera')
    header.stamp.sec = 150
    probe.image_pub.publish(
        convert.image_msg(np.zeros((H * 2, W * 2, 3), np.uint8), 'rgb8', header)
    )
    assert ros.wait_for(lambda: node.health.counters['rejected.size'] == 1, timeout=10)
    assert node.learner.stats.frames_received == 1, 'an unmatched frame reached the learner'
    assert node.health.counters['pairs.submitted'] == 1


def test_checkpoint_resume_continues_step_and_version(ros, tmp_path):
    path = tmp_path / 'adaptive.pt'
    node = make_learner(ros, str(path))
    probe = Probe(ros)
    for index in range(4):
        probe.send(index)
        ros.wait_for(lambda i=index: node.health.counters['pairs.submitted'] > i, timeout=5)
    assert ros.wait_for(lambda: node.learner.stats.snapshot_version >= 1, timeout=60)
    old_step, old_version = node.learner.stats.step, node.learner.stats.snapshot_version
    lineage = node._ckpt.lineage

    ros.executor.remove_node(node)
    ros.nodes.remove(node)
    node.close()  # final checkpoint
    node.destroy_node()
    assert path.is_file()

    resumed = make_learner(ros, str(path), resize=True)
    assert resumed.learner.stats.step >= old_step
    assert resumed.learner.stats.step > 0
    # The resumed A is latched at once, under a version >= the last one published.
    later = Probe(ros, 'probe_after_restart')
    assert ros.wait_for(lambda: later.weights, timeout=20), 'resumed A was not latched'
    assert later.weights[-1].version >= old_version >= 1
    assert later.weights[-1].lineage == lineage, 'a resumed learner must keep its lineage'
    assert later.weights[-1].step == resumed.learner.stats.step
    assert ros.wait_for(lambda: later.status, timeout=10)
    assert later.status[-1].snapshot_version >= old_version
    # resize:=true: a frame twice the model size is resized and trained on.
    later.send(20, scale=2)
    assert ros.wait_for(lambda: resumed.health.counters['pairs.submitted'] == 1, timeout=10)
    assert resumed.health.counters['rejected.size'] == 0


def test_enable_service_pauses_training_and_drops_inputs(ros):
    from std_srvs.srv import SetBool

    node = make_learner(ros, **{'input_qos.depth': 4})
    probe = Probe(ros)
    client = probe.node.create_client(SetBool, 'learner/enable')
    assert client.wait_for_service(timeout_sec=20), 'learner/enable not offered'

    def call(value):
        future = client.call_async(SetBool.Request(data=value))
        assert ros.wait_for(future.done, timeout=60), 'learner/enable did not answer'
        return future.result()

    assert node.learner.running
    response = call(False)
    assert response.success and 'paused' in response.message
    assert not node.learner.running, 'the training thread still runs'
    step = node.learner.stats.step
    for index in range(3):
        probe.send(index)
        assert ros.wait_for(
            lambda i=index: (
                node.health.counters['skipped.disabled'] > i
                and node.health.counters['skipped.disabled_teacher'] > i
            ),
            timeout=10,
        )
    assert node.health.counters['frames'] == 0 and node.learner.stats.frames_received == 0
    assert node.learner.stats.step == step

    assert call(True).success and node.learner.running
    probe.send(10)
    assert ros.wait_for(lambda: node.health.counters['pairs.submitted'] == 1, timeout=10)
    assert ros.wait_for(lambda: node.learner.stats.step > step, timeout=60), 'no training'
    assert node.health.counters['skipped.disabled'] == 3


def test_the_learner_trains_on_from_the_adapted_a_the_graph_starts_with(ros, tmp_path):
    """With adaptive_checkpoint (e.g. `tsa adapt`'s output) A starts adapted; the learner
    must start from the same A, or its first snapshot (S plus a few steps) replaces it."""
    from tsa_ros.errors import ConfigError
    from tsa_ros.models import save_checkpoint

    torch.manual_seed(5)  # other weights than S (seed 0)
    adapted = build_model(CONFIG)
    path = save_checkpoint(tmp_path / 'adaptive.pt', adapted)
    node = make_learner(ros, initial_checkpoint=str(path))
    start = node.learner.latest_snapshot().state_dict
    for name, tensor in adapted.state_dict().items():
        assert torch.equal(start[name], tensor), name
    node.close()

    deeplab = ModelConfig(arch='deeplabv3plus', backbone='resnet18', input_size=(H, W))
    other = save_checkpoint(tmp_path / 'other.pt', build_model(deeplab))
    with pytest.raises(ConfigError, match='initial_checkpoint'):
        make_learner(ros, initial_checkpoint=str(other))


def test_the_learner_yields_when_a_segmenter_loses_camera_frames(ros):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    node = make_learner(ros, yield_s=4.0)
    probe = Probe(ros)
    diagnostics = probe.node.create_publisher(DiagnosticArray, '/diagnostics', qos.RESULTS)
    assert ros.wait_for(lambda: diagnostics.get_subscription_count() > 0, timeout=20)

    def report(name, role, lost):
        values = [KeyValue(key='lost.camera', value=str(lost))]
        if role:
            values.append(KeyValue(key='role', value=role))
        diagnostics.publish(DiagnosticArray(status=[DiagnosticStatus(name=name, values=values)]))

    # Baselines, a segmenter of another graph, and a node that is no segmenter: no yield.
    for lost in (5, 9):
        report('/student', 'student', 5)
        report('/other/student', 'student', lost)
        report('/learner', '', lost)
    report('/student', 'student', 5)  # in order after the others (one reliable writer)
    assert ros.wait_for(lambda: node.health.counters['diagnostics.seen'] >= 7, timeout=10)
    assert list(node._lost_seen) == ['/student']
    assert node.health.counters['yields'] == 0 and not node.learner.held

    report('/student', 'student', 8)  # S lost 3 frames in its queue since its last report
    assert ros.wait_for(lambda: node.health.counters['yields'] == 1, timeout=10)
    for index in range(3):
        probe.send(index)
    held_steps = []
    while node.learner.held:
        held_steps.append(node.learner.stats.step)
        ros.wait_for(lambda: False, timeout=0.05)
    assert held_steps and set(held_steps) == {0}, 'A trained while the learner held'
    assert node.health.counters['pairs.submitted'] >= 1
    # The hold ends by itself and training takes the queued frames.
    assert ros.wait_for(lambda: node.learner.stats.step > 0, timeout=60), 'no training after'
    assert node.learner.stats.holds == 1
