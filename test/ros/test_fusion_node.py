"""FusionNode over real DDS: joins the triplet's results by stamp, fuses, names suspects."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tsa_msgs.msg import FusedSegmentation, Segmentation

from tsa_ros import fusion
from tsa_ros.data.labels import colorize
from tsa_ros.ros import convert, qos
from tsa_ros.ros.fusion_node import FusionNode

H, W, C = 16, 32, 19
ROLES = ('teacher', 'student', 'adaptive')


def make_fusion(ros, **overrides):
    values = {'timeout_s': 0.3, **overrides}
    params = [Parameter(name, value=value) for name, value in values.items()]
    return ros.add(FusionNode(context=ros.context, parameter_overrides=params))


class Probe:
    """One publisher per role; records fused/segmentation, fused/labels and fused/color."""

    def __init__(self, ros):
        self.ros = ros
        self.node = ros.node('probe')
        self.pubs = {
            role: self.node.create_publisher(Segmentation, f'{role}/segmentation', qos.RESULTS)
            for role in ROLES
        }
        self.fused, self.labels, self.color, self.diagnostics = [], [], [], []
        subs = [
            self.node.create_subscription(
                FusedSegmentation, 'fused/segmentation', self.fused.append, qos.RESULTS
            ),
            self.node.create_subscription(Image, 'fused/labels', self.labels.append, qos.RESULTS),
            self.node.create_subscription(Image, 'fused/color', self.color.append, qos.RESULTS),
        ]
        self.node.create_subscription(
            DiagnosticArray, '/diagnostics', self.diagnostics.append, qos.RESULTS
        )
        assert ros.wait_for(
            lambda: (
                all(p.get_subscription_count() > 0 for p in self.pubs.values())
                and all(s.get_publisher_count() > 0 for s in subs)
            ),
            timeout=20,
        ), 'DDS discovery between probe and fusion failed'

    def send(self, index, labels, roles=ROLES, posteriors=None):
        header = Header(frame_id='camera')
        header.stamp.sec, header.stamp.nanosec = 200 + index, 7
        for role in roles:
            probs = None if posteriors is None else posteriors.get(role)
            self.pubs[role].publish(
                convert.segmentation_msg(header, role, 'erfnet', index, labels[role], probs)
            )
        return header.stamp.sec

    def by_stamp(self):
        return {m.header.stamp.sec: m for m in self.fused}


def decoded(msg):
    return np.array(convert.labels_from_image(msg))


def test_fuses_three_results_per_stamp_and_names_the_suspect(ros):
    node = make_fusion(ros, timeout_s=5.0)  # long: every frame must complete, not time out
    probe = Probe(ros)
    rng = np.random.default_rng(1)
    sent = {}
    for index in range(4):
        labels = {r: rng.integers(0, C, (H, W), dtype=np.uint8) for r in ROLES}
        labels['adaptive'][: H // 2] = labels['teacher'][: H // 2]  # some agreement
        sent[probe.send(index, labels)] = labels
        time.sleep(0.02)
    # T and A agree everywhere, S is wrong everywhere: S is the suspect.
    teacher = rng.integers(0, C, (H, W), dtype=np.uint8)
    attacked = {'teacher': teacher, 'student': (teacher + 1) % C, 'adaptive': teacher.copy()}
    attacked_sec = probe.send(9, attacked)
    sent[attacked_sec] = attacked

    assert ros.wait_for(lambda: len(probe.fused) >= 5 and len(probe.color) >= 5, timeout=10)
    fused = probe.by_stamp()
    assert sorted(fused) == sorted(sent), 'one FusedSegmentation per stamp, with that stamp'
    for sec, labels in sent.items():
        msg = fused[sec]
        maps = [labels[r] for r in ROLES]
        expected = fusion.majority_vote(maps)
        assert msg.header.stamp.nanosec == 7 and msg.header.frame_id == 'camera'
        assert (msg.fusion_mode, msg.tie_rule) == ('majority', 'teacher')
        assert list(msg.roles) == list(ROLES) and list(msg.missing_roles) == []
        assert list(msg.model_versions) == [sec - 200] * 3
        np.testing.assert_array_equal(decoded(msg.labels), expected)
        dis = fusion.disagreement(maps, expected)
        np.testing.assert_allclose(msg.disagreement, dis, rtol=1e-6)
        index = fusion.suspect(dis)
        assert msg.suspected_role == ('' if index is None else ROLES[index])
    assert fused[attacked_sec].suspected_role == 'student'
    np.testing.assert_allclose(fused[attacked_sec].disagreement, [0.0, 1.0, 0.0])
    assert node.health.counters['suspected.student'] >= 1
    # The mono8 and rgb8 outputs carry the same mask and header.
    labels_msg = next(m for m in probe.labels if m.header.stamp.sec == attacked_sec)
    np.testing.assert_array_equal(decoded(labels_msg), teacher)
    color_msg = next(m for m in probe.color if m.header.stamp.sec == attacked_sec)
    np.testing.assert_array_equal(convert.image_to_rgb(color_msg), colorize(teacher))


def test_silent_role_times_out_and_is_reported(ros):
    node = make_fusion(ros, timeout_s=0.3)
    probe = Probe(ros)
    rng = np.random.default_rng(2)
    sent = {}
    for index in range(3):
        labels = {r: rng.integers(0, C, (H, W), dtype=np.uint8) for r in ROLES}
        sent[probe.send(index, labels, roles=('teacher', 'adaptive'))] = labels

    assert ros.wait_for(lambda: len(probe.fused) >= 3, timeout=10), 'partial frames were lost'
    for msg in probe.fused:
        labels = sent[msg.header.stamp.sec]
        assert list(msg.missing_roles) == ['student']
        assert list(msg.roles) == ['teacher', 'adaptive']
        # Two votes: every disagreement is a tie, which the teacher rule gives to T.
        np.testing.assert_array_equal(decoded(msg.labels), labels['teacher'])
    assert node.health.counters['missing.student'] == 3

    def warned():
        for array in probe.diagnostics:
            for status in array.status:
                if status.name.endswith('fusion') and status.level == DiagnosticStatus.WARN:
                    values = {kv.key: kv.value for kv in status.values}
                    if 'student' in status.message and values.get('missing.student') == '3':
                        return True
        return False

    assert ros.wait_for(warned, timeout=5), '/diagnostics did not name the silent role'
    assert all(m.quorum == 2 and not m.degraded for m in probe.fused)
    assert node.health.counters['frames.partial'] == 3


@pytest.mark.parametrize('below_quorum', ['flag', 'drop'])
def test_a_single_network_is_never_published_as_a_majority(ros, below_quorum):
    node = make_fusion(ros, timeout_s=0.3, below_quorum=below_quorum)
    probe = Probe(ros)
    rng = np.random.default_rng(3)
    labels = {r: rng.integers(0, C, (H, W), dtype=np.uint8) for r in ROLES}
    for index in range(3):
        probe.send(index, labels, roles=('student',))
    probe.send(3, labels)  # a complete frame after them: quorum met again
    assert ros.wait_for(lambda: probe.labels and node.health.counters['fused'] == 1, timeout=10)
    assert len(probe.labels) == 1, 'a one-vote frame reached fused/labels'
    counters = node.health.counters
    if below_quorum == 'flag':
        assert ros.wait_for(lambda: len(probe.fused) == 4, timeout=5)
        degraded = [m for m in probe.fused if m.degraded]
        assert len(degraded) == 3 and counters['frames.degraded'] == 3
        assert all(list(m.roles) == ['student'] and m.quorum == 2 for m in degraded)
        assert sorted(degraded[0].missing_roles) == ['adaptive', 'teacher']
    else:
        time.sleep(0.5)
        assert len(probe.fused) == 1 and not probe.fused[0].degraded
        assert counters['frames.dropped_below_quorum'] == 3
    assert counters['frames.complete'] == 1


def test_quorum_must_fit_the_roles():
    from tsa_ros.ros.fusion_node import FusionNodeParams

    with pytest.raises(ValueError, match='quorum'):
        FusionNodeParams(quorum=4)
    with pytest.raises(ValueError, match='quorum'):
        FusionNodeParams(roles=['teacher'], quorum=2)
    with pytest.raises(ValueError, match='below_quorum'):
        FusionNodeParams(below_quorum='hide')


def test_twenty_frames_give_twenty_results(ros):
    make_fusion(ros, timeout_s=2.0)
    probe = Probe(ros)
    rng = np.random.default_rng(3)
    stamps = []
    for index in range(20):
        labels = {r: rng.integers(0, C, (H, W), dtype=np.uint8) for r in ROLES}
        stamps.append(probe.send(index, labels))
        time.sleep(0.05)  # a 20 Hz camera; a burst could overrun the depth-10 input queues
    assert ros.wait_for(lambda: len(probe.fused) >= 20, timeout=30)
    time.sleep(0.5)  # nothing more (no duplicates) may come
    assert sorted(m.header.stamp.sec for m in probe.fused) == stamps
    assert all(not m.missing_roles for m in probe.fused)


def test_size_mismatch_is_rejected_and_posterior_mode_falls_back(ros):
    weights = [2.0, 1.0, 1.0]
    node = make_fusion(
        ros, **{'timeout_s': 2.0, 'fusion.mode': 'posterior', 'fusion.weights': weights}
    )
    probe = Probe(ros)
    rng = np.random.default_rng(4)

    def softmax(shape):
        logits = rng.normal(size=shape)
        e = np.exp(logits - logits.max(axis=0))
        return (e / e.sum(axis=0)).astype(np.float32)

    # Posteriors at half resolution from every role: posterior fusion of the upsampled maps.
    labels = {r: rng.integers(0, C, (H, W), dtype=np.uint8) for r in ROLES}
    probs = {r: softmax((C, H // 2, W // 2)) for r in ROLES}
    ok_sec = probe.send(0, labels, posteriors=probs)
    # The student lacks posteriors: majority vote for this frame.
    fallback_sec = probe.send(1, labels, posteriors={'teacher': probs['teacher']})
    # The student's labels have another size: the frame is rejected.
    bad = dict(labels, student=rng.integers(0, C, (H, W + 8), dtype=np.uint8))
    bad_sec = probe.send(2, bad, posteriors=probs)

    assert ros.wait_for(lambda: len(probe.fused) >= 2, timeout=10)
    assert ros.wait_for(lambda: node.health.counters['rejected.size'] == 1, timeout=10)
    fused = probe.by_stamp()
    assert bad_sec not in fused, 'a frame with label maps of different sizes was fused'
    assert fused[ok_sec].fusion_mode == 'posterior'
    upsampled = [
        F.interpolate(torch.from_numpy(probs[r])[None], size=(H, W), mode='bilinear')[0]
        for r in ROLES
    ]
    expected = fusion.posterior_fusion_labels(upsampled, weights=weights)
    np.testing.assert_array_equal(decoded(fused[ok_sec].labels), expected)
    assert fused[fallback_sec].fusion_mode == 'majority'
    np.testing.assert_array_equal(
        decoded(fused[fallback_sec].labels), fusion.majority_vote([labels[r] for r in ROLES])
    )
    assert node.health.counters['fallback.no_posteriors'] == 1


# --------------------------------------------------------------------------- for people
class PeopleProbe(Probe):
    """A Probe that also plays the camera and watches fused/overlay, fused/disagreement
    and the latched legend, as rviz or Foxglove would."""

    def __init__(self, ros, node):
        self.camera_pub = ros.node('camera').create_publisher(Image, 'image', qos.SENSOR)
        super().__init__(ros)
        self.overlay, self.disagreement = [], []
        subs = [
            self.node.create_subscription(Image, topic, got.append, qos.RESULTS)
            for topic, got in (
                ('fused/overlay', self.overlay),
                ('fused/disagreement', self.disagreement),
            )
        ]
        assert ros.wait_for(
            lambda: (
                self.camera_pub.get_subscription_count() > 0
                and all(s.get_publisher_count() > 0 for s in subs)
                and node._overlay_pub.get_subscription_count() > 0
                and node._disagreement_pub.get_subscription_count() > 0
            ),
            timeout=20,
        ), 'DDS discovery between the viewer and fusion failed'

    def camera(self, index, rgb):
        header = Header(frame_id='camera')
        header.stamp.sec, header.stamp.nanosec = 200 + index, 7
        self.camera_pub.publish(convert.image_msg(rgb, 'rgb8', header))


def test_overlay_and_disagreement_images_follow_the_camera_frame(ros):
    from tsa_ros.data.labels import legend, overlay
    from tsa_ros.fusion import DISAGREEMENT_COLORS

    node = make_fusion(ros, timeout_s=5.0, overlay_alpha=0.4)
    probe = PeopleProbe(ros, node)
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    teacher = rng.integers(0, C, (H, W), dtype=np.uint8)
    student, adaptive = teacher.copy(), teacher.copy()
    student[:, : W // 4] = (teacher[:, : W // 4] + 1) % C  # S alone dissents: 1
    student[:, W // 4 : W // 2] = (teacher[:, W // 4 : W // 2] + 1) % C
    adaptive[:, W // 4 : W // 2] = (teacher[:, W // 4 : W // 2] + 2) % C  # all differ: 2
    adaptive[:, -4:] = teacher[:, -4:] = student[:, -4:] = 255  # nobody votes: grey
    labels = {'teacher': teacher, 'student': student, 'adaptive': adaptive}

    probe.camera(0, rgb)
    assert ros.wait_for(lambda: len(node._frames) == 1, timeout=10), 'frame not kept'
    probe.send(0, labels)
    assert ros.wait_for(lambda: probe.overlay and probe.disagreement, timeout=10)

    fused = fusion.majority_vote([teacher, student, adaptive])
    for msg in (probe.overlay[0], probe.disagreement[0]):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (200, 7)
        assert msg.header.frame_id == 'camera'
        assert (msg.height, msg.width, msg.encoding) == (H, W, 'rgb8')
    np.testing.assert_array_equal(
        convert.image_to_rgb(probe.overlay[0]), overlay(rgb, colorize(fused), 0.4)
    )
    dis = convert.image_to_rgb(probe.disagreement[0])
    colours = {
        '0': dis[:, W // 2 : -4],
        '1': dis[:, : W // 4],
        '2': dis[:, W // 4 : W // 2],
        'ignore': dis[:, -4:],
    }
    for name, region in colours.items():
        assert (region == DISAGREEMENT_COLORS[name]).all(), f'{name} region'
    assert len(node._frames) == 0, 'the used frame was kept'

    # A frame of another size than the masks gives no overlay, and says why.
    probe.camera(1, rgb[: H // 2])
    assert ros.wait_for(lambda: len(node._frames) == 1, timeout=10)
    probe.send(1, labels)
    assert ros.wait_for(lambda: len(probe.disagreement) == 2, timeout=10)
    assert ros.wait_for(lambda: node.health.counters['rejected.overlay_size'] == 1, timeout=5)
    # A fused frame whose camera frame never came: counted, the other outputs still go out.
    probe.send(2, labels)
    assert ros.wait_for(lambda: len(probe.disagreement) == 3, timeout=10)
    assert node.health.counters['overlay.no_frame'] == 1
    assert len(probe.overlay) == 1

    # The legend is latched: a viewer that starts now still gets it.
    late, legends = ros.node('late_viewer'), []
    late.create_subscription(Image, 'legend', legends.append, qos.LATCHED)
    assert ros.wait_for(lambda: legends, timeout=10), 'legend not latched'
    np.testing.assert_array_equal(convert.image_to_rgb(legends[0]), legend())


def test_fusion_reads_the_camera_only_for_a_viewer_and_keeps_few_frames(ros):
    node = make_fusion(ros, overlay_frames=3)
    camera = ros.node('camera').create_publisher(Image, 'image', qos.SENSOR)
    viewer = ros.node('viewer')
    # Without a viewer of fused/overlay, no camera frame is even delivered to fusion.
    assert ros.wait_for(lambda: viewer.count_publishers('fused/overlay') > 0, timeout=20)
    time.sleep(0.5)
    assert camera.get_subscription_count() == 0, 'fusion reads an unwatched camera'

    rgb = np.zeros((H, W, 3), np.uint8)
    header = Header(frame_id='camera')

    def send(first, count):
        for sec in range(first, first + count):
            header.stamp.sec = sec
            camera.publish(convert.image_msg(rgb, 'rgb8', header))
            time.sleep(0.02)

    sub = viewer.create_subscription(Image, 'fused/overlay', lambda m: None, qos.RESULTS)
    assert ros.wait_for(lambda: camera.get_subscription_count() == 1, timeout=20)
    send(0, 8)
    assert ros.wait_for(lambda: 5 * 10**9 in node._frames and 7 * 10**9 in node._frames)
    assert sorted(node._frames) == [s * 10**9 for s in (5, 6, 7)], 'not the newest three'

    # The viewer leaves: fusion stops reading the camera and frees the frames it kept.
    viewer.destroy_subscription(sub)
    assert ros.wait_for(lambda: camera.get_subscription_count() == 0, timeout=20)
    assert ros.wait_for(lambda: not node._frames, timeout=5), 'frames kept without a viewer'


# --------------------------------------------------------------------------- other modes
def test_gated_mode_keeps_the_teacher_unless_it_is_the_suspect(ros):
    node = make_fusion(
        ros, **{'timeout_s': 5.0, 'fusion.mode': 'gated', 'fusion.suspect_threshold': 0.3}
    )
    probe = Probe(ros)
    rng = np.random.default_rng(6)
    teacher = rng.integers(0, C, (H, W), dtype=np.uint8)
    others = teacher.copy()
    others[: H // 4] = (teacher[: H // 4] + 1) % C  # S and A agree against T on a quarter
    frames = {
        # Clean-like: the majority vote would follow S and A there; the gate keeps T
        # (T's disagreement with the vote, 0.25, is under the threshold).
        'clean': ({'teacher': teacher, 'student': others, 'adaptive': others.copy()}, teacher),
        # T attacked: wrong everywhere, flagged, the others' majority replaces it.
        'T': ({'teacher': (others + 2) % C, 'student': others, 'adaptive': others.copy()}, others),
        # S attacked: flagged, but the teacher's labels were never in doubt.
        'S': ({'teacher': teacher, 'student': (teacher + 3) % C, 'adaptive': teacher}, teacher),
    }
    stamps = {probe.send(i, labels): name for i, (name, (labels, _)) in enumerate(frames.items())}
    assert ros.wait_for(lambda: len(probe.fused) >= 3, timeout=10)
    suspects = {'clean': '', 'T': 'teacher', 'S': 'student'}
    for sec, msg in probe.by_stamp().items():
        name = stamps[sec]
        labels, expected = frames[name]
        assert msg.fusion_mode == 'gated'
        np.testing.assert_array_equal(decoded(msg.labels), expected)
        assert msg.suspected_role == suspects[name], name
        # The disagreement is the one with the published mask.
        maps = [labels[r] for r in ROLES]
        np.testing.assert_allclose(msg.disagreement, fusion.disagreement(maps, expected))
    assert not np.array_equal(fusion.majority_vote(list(frames['clean'][0].values())), teacher)
    assert node.health.counters['suspected.teacher'] == 1
    assert node.health.counters['suspected.student'] == 1


def _confident(labels, confidence):
    """(C, H, W) float32 posteriors: ``confidence`` on ``labels``, the rest spread evenly."""
    conf = np.broadcast_to(np.asarray(confidence, np.float32), labels.shape)
    probs = np.broadcast_to(((1 - conf) / (C - 1))[None], (C, H, W)).copy()
    np.put_along_axis(probs, labels[None].astype(np.intp), conf[None], axis=0)
    return probs


def test_gated_confidence_mode_weighs_the_votes_and_falls_back_to_gated(ros):
    weights = [2.0, 1.0, 1.0]
    cfg = {
        'timeout_s': 5.0,
        'fusion.mode': 'gated_confidence',
        'fusion.weights': weights,
        'fusion.suspect_threshold': 0.6,
    }
    node = make_fusion(ros, **cfg)
    probe = Probe(ros)
    rng = np.random.default_rng(7)
    teacher = rng.integers(0, C, (H, W), dtype=np.uint8)
    others = teacher.copy()
    others[: H // 2] = (teacher[: H // 2] + 1) % C  # S and A against T on the top half
    labels = {'teacher': teacher, 'student': others, 'adaptive': others.copy()}
    # T is unsure (0.3) on the top quarter, sure (0.9) elsewhere; S and A say 0.5 throughout:
    # 2 * 0.3 < 0.5 + 0.5 < 2 * 0.9, so S and A win the top quarter and T the second one.
    t_conf = np.full((H, W), 0.9, np.float32)
    t_conf[: H // 4] = 0.3
    probs = {
        'teacher': _confident(teacher, t_conf),
        'student': _confident(others, 0.5),
        'adaptive': _confident(others, 0.5),
    }
    expected = teacher.copy()
    expected[: H // 4] = others[: H // 4]
    ok_sec = probe.send(0, labels, posteriors=probs)
    fallback_sec = probe.send(1, labels, posteriors={'teacher': probs['teacher']})

    assert ros.wait_for(lambda: len(probe.fused) >= 2, timeout=10)
    fused = probe.by_stamp()
    assert fused[ok_sec].fusion_mode == 'gated_confidence'
    np.testing.assert_array_equal(decoded(fused[ok_sec].labels), expected)
    # The same numbers as the core, fed with the posteriors as the messages carry them.
    sent = {r: p.astype(np.float16).astype(np.float32) for r, p in probs.items()}
    core = fusion.fuse_roles(ROLES, labels, sent, node.config)
    np.testing.assert_array_equal(decoded(fused[ok_sec].labels), core.result.labels)
    # The student sent no posteriors: the label-only gate, i.e. the teacher's labels.
    assert fused[fallback_sec].fusion_mode == 'gated'
    np.testing.assert_array_equal(decoded(fused[fallback_sec].labels), teacher)
    assert node.health.counters['fallback.no_posteriors'] == 1


def test_weighted_mode_reads_per_class_weights_per_role(ros):
    # The teacher counts 3 for classes 0-9 and 0.5 for the others, the students 1 each.
    weights = np.ones((len(ROLES), C))
    weights[0, :10], weights[0, 10:] = 3.0, 0.5
    node = make_fusion(
        ros,
        **{
            'timeout_s': 5.0,
            'fusion.mode': 'weighted',
            'fusion.class_weights': weights.ravel().tolist(),
        },
    )
    probe = Probe(ros)
    rng = np.random.default_rng(8)
    teacher = rng.integers(0, C, (H, W), dtype=np.uint8)
    others = (teacher + 1) % C
    labels = {'teacher': teacher, 'student': others, 'adaptive': others.copy()}
    sec = probe.send(0, labels)
    assert ros.wait_for(lambda: len(probe.fused) >= 1, timeout=10)
    msg = probe.by_stamp()[sec]
    assert msg.fusion_mode == 'weighted'
    expected = np.where(teacher < 10, teacher, others)
    np.testing.assert_array_equal(decoded(msg.labels), expected)
    maps = [labels[r] for r in ROLES]
    np.testing.assert_array_equal(expected, fusion.weighted_vote(maps, weights))
    assert node.config.class_weights == tuple(weights.ravel())
