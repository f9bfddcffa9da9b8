"""SegmenterNode over real DDS: outputs, posteriors, rejections and the adaptive weight swap."""

import hashlib

import numpy as np
import pytest
import torch

pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tsa_msgs.msg import LabelInfo, ModelWeights, Segmentation

from tsa_ros.inference import Predictor
from tsa_ros.keys import load_key
from tsa_ros.models import ModelConfig, build_model
from tsa_ros.ros import convert, qos
from tsa_ros.ros.segmenter_node import SegmenterNode

SIZE = (32, 64)
CONFIG = ModelConfig(input_size=SIZE)
LINEAGE = 'a1b2c3d4e5f60718'


def key():
    return load_key()  # the suite's key file (conftest), found through TSA_WEIGHTS_KEY_FILE


def snapshot(version, state, lineage=LINEAGE, signing_key=None, step=None):
    """A ModelWeights as a learner holding the key would publish it."""
    return convert.weights_msg(
        Header(),
        lineage,
        version,
        10 * version if step is None else step,
        'erfnet',
        CONFIG.to_dict(),
        state,
        key() if signing_key is None else signing_key,
    )


def make_node(ros, seed=0, **params):
    # fp32: labels are compared with an offline fp32 predictor pixel for pixel ('auto' may
    # time bf16 the fastest on a CPU that has it).
    params.setdefault('backend', 'channels_last')
    overrides = [
        Parameter('model.input_size', value=list(SIZE)),
        Parameter('seed', value=seed),
    ]
    overrides += [Parameter(name, value=value) for name, value in params.items()]
    return ros.add(SegmenterNode(context=ros.context, parameter_overrides=overrides))


def offline_model(seed):
    torch.manual_seed(seed)
    return build_model(CONFIG).eval()


def offline_labels(seed, rgb):
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    return offline_model(seed).predict(x)[0].numpy().astype(np.uint8)


def good_header(stamp=(1000, 5)):
    return Header(stamp=Time(sec=stamp[0], nanosec=stamp[1]), frame_id='camera')


def frame(seed, size=SIZE, stamp=(1000, 5)):
    rgb = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    header = Header(stamp=Time(sec=stamp[0], nanosec=stamp[1]), frame_id='camera')
    return rgb, convert.image_msg(rgb, 'rgb8', header)


class Probe:
    """Publishes camera frames to the segmenter and records everything it publishes."""

    def __init__(self, ros, node_name='segmenter'):
        self.ros = ros
        self.node = ros.node('probe')
        self.image_pub = self.node.create_publisher(Image, 'image', qos.SENSOR)
        self.weights_pub = self.node.create_publisher(ModelWeights, 'weights', qos.LATCHED)
        self.got = {}
        self.subs = []
        for topic, msg_type, profile in (
            ('labels', Image, qos.RESULTS),
            ('color', Image, qos.RESULTS),
            ('segmentation', Segmentation, qos.RESULTS),
            ('label_info', LabelInfo, qos.LATCHED),
        ):
            name = topic if topic == 'label_info' else f'{node_name}/{topic}'
            self.got[topic] = []
            self.subs.append(
                self.node.create_subscription(msg_type, name, self.got[topic].append, profile)
            )

    def connect(self, topics=('labels', 'color', 'segmentation')):
        index = {'labels': 0, 'color': 1, 'segmentation': 2}
        assert self.ros.wait_for(
            lambda: (
                self.image_pub.get_subscription_count() > 0
                and all(self.subs[index[t]].get_publisher_count() > 0 for t in topics)
            )
        ), 'segmenter and probe did not discover each other'

    def send(self, msg, condition, timeout=30.0):
        """Publish (again every 2 s: the camera QoS is best effort) until ``condition``."""
        for _ in range(int(timeout / 2)):
            self.image_pub.publish(msg)
            if self.ros.wait_for(condition, timeout=2.0):
                return True
        return False

    def answer(self, msg, topics=('labels', 'segmentation')):
        """Send a frame and return the next message of each topic."""
        counts = {t: len(self.got[t]) for t in topics}
        assert self.send(msg, lambda: all(len(self.got[t]) > counts[t] for t in topics))
        return [self.got[t][-1] for t in topics]


def assert_header(msg, stamp=(1000, 5)):
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == stamp
    assert msg.header.frame_id == 'camera'


def test_frame_gives_labels_color_and_segmentation_like_offline_predict(ros):
    node = make_node(ros, seed=3)
    probe = Probe(ros)
    probe.connect()
    rgb, msg = frame(0)

    labels_msg, color_msg, seg = probe.answer(msg, ('labels', 'color', 'segmentation'))

    for out in (labels_msg, color_msg, seg, seg.labels):
        assert_header(out)
    labels = convert.labels_from_image(labels_msg)
    assert labels_msg.encoding == 'mono8' and labels.shape == SIZE
    assert labels.max() <= 18
    np.testing.assert_array_equal(labels, offline_labels(3, rgb))
    np.testing.assert_array_equal(convert.labels_from_image(seg.labels), labels)
    color = convert.image_to_rgb(color_msg)
    assert color_msg.encoding == 'rgb8' and color.shape == (*SIZE, 3)
    assert (seg.role, seg.arch, seg.model_version) == ('student', 'erfnet', 0)
    assert seg.inference_time_ms > 0
    assert len(seg.posteriors) == 0  # off by default
    assert ros.wait_for(lambda: probe.got['label_info'])
    assert list(probe.got['label_info'][-1].train_ids) == list(range(19))
    assert node.health.counters['frames'] >= 1


def test_posteriors_have_the_scaled_shape_and_sum_to_one(ros):
    make_node(ros, seed=1, role='teacher', publish_posteriors=True, posteriors_scale=0.25)
    probe = Probe(ros)
    probe.connect(('segmentation',))
    rgb, msg = frame(1)

    (seg,) = probe.answer(msg, ('segmentation',))

    assert seg.role == 'teacher'
    assert seg.posteriors_encoding == Segmentation.POSTERIORS_FLOAT16
    probs = convert.posteriors_from_msg(seg)
    assert probs.shape == (19, SIZE[0] // 4, SIZE[1] // 4)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-2)
    # Area resampling of the offline posteriors: 4x4 block means.
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        expected = torch.nn.functional.avg_pool2d(offline_model(1).posteriors(x), 4)[0]
    np.testing.assert_allclose(probs, expected.numpy(), atol=2e-3)


def test_bad_frames_are_rejected_and_the_node_keeps_answering(ros):
    node = make_node(ros)
    probe = Probe(ros)
    probe.connect()
    counters = node.health.counters

    _, bad_encoding = frame(2)
    bad_encoding.encoding = '32FC7'
    assert probe.send(bad_encoding, lambda: counters['rejected.image'] >= 1)
    _, bad_size = frame(2, size=(30, 64))  # ERFNet needs multiples of 8
    assert probe.send(bad_size, lambda: counters['rejected.size'] >= 1)
    # Over the pixel budget (default 4x the network input): refused from the header alone,
    # so an 8K frame costs no decode, resize or inference (its data here is empty).
    huge = Image(header=good_header(), height=4320, width=7680, encoding='rgb8', step=3 * 7680)
    assert probe.send(huge, lambda: counters['rejected.oversized'] >= 1)
    _, over = frame(2, size=(SIZE[0] * 2, SIZE[1] * 2 + 8))
    assert probe.send(over, lambda: counters['rejected.oversized'] >= 2)
    assert counters['rejected.image'] == 1
    assert not probe.got['labels'] and not probe.got['segmentation']

    rgb, good = frame(3)
    (labels_msg,) = probe.answer(good, ('labels',))
    np.testing.assert_array_equal(convert.labels_from_image(labels_msg), offline_labels(0, rgb))


def test_resize_runs_the_network_at_input_size_and_labels_at_frame_size(ros):
    make_node(ros, resize=True, publish_posteriors=True, posteriors_scale=0.5)
    probe = Probe(ros)
    probe.connect()
    rgb, msg = frame(4, size=(36, 60))  # not a multiple of 8: fine when resizing

    labels_msg, seg = probe.answer(msg)

    # Over DDS exactly what the offline inference path gives for the same frame.
    offline = Predictor(offline_model(0), device='cpu', input_size=SIZE)
    want = offline.predict(rgb, posteriors_scale=0.5)
    assert (labels_msg.height, labels_msg.width) == (36, 60)
    np.testing.assert_array_equal(convert.labels_from_image(labels_msg), want.labels)
    probs = convert.posteriors_from_msg(seg)
    assert probs.shape == want.posteriors.shape == (19, 18, 30)
    np.testing.assert_allclose(probs, want.posteriors, atol=1e-3)  # float16 on the wire


def test_adaptive_swaps_signed_weights_and_rejects_bad_ones(ros):
    node = make_node(ros, seed=0, role='adaptive')
    probe = Probe(ros, 'segmenter')
    probe.connect()
    assert ros.wait_for(lambda: probe.weights_pub.get_subscription_count() > 0)
    rgb, msg = frame(5)
    before, after = offline_labels(0, rgb), offline_labels(1, rgb)
    assert (before != after).any(), 'the two seeds must segment the frame differently'

    labels_msg, seg = probe.answer(msg)
    np.testing.assert_array_equal(convert.labels_from_image(labels_msg), before)
    assert seg.model_version == 0

    state = offline_model(1).state_dict()
    probe.weights_pub.publish(snapshot(1, state, signing_key=b'wrong-key-wrong-key'))
    assert ros.wait_for(lambda: node.health.counters['rejected.weights'] >= 1)
    labels_msg, seg = probe.answer(msg)
    np.testing.assert_array_equal(convert.labels_from_image(labels_msg), before)
    assert seg.model_version == 0 and node.model_version == 0

    probe.weights_pub.publish(snapshot(2, state))
    assert ros.wait_for(lambda: node.model_version == 2)
    labels_msg, seg = probe.answer(msg)
    np.testing.assert_array_equal(convert.labels_from_image(labels_msg), after)
    assert seg.model_version == 2 and seg.role == 'adaptive'

    # A correctly signed but older snapshot must not roll the weights back.
    probe.weights_pub.publish(snapshot(1, offline_model(0).state_dict()))
    assert ros.wait_for(lambda: node.health.counters['rejected.weights_version'] >= 1)
    assert node.model_version == 2
    labels_msg, _ = probe.answer(msg)
    np.testing.assert_array_equal(convert.labels_from_image(labels_msg), after)


def test_a_rogue_key_holder_cannot_crash_or_freeze_a(ros):
    """Every malformed snapshot signed with the real key is one counted rejection."""
    node = make_node(ros, seed=0, role='adaptive', max_version_step=100)
    probe = Probe(ros, 'segmenter')
    probe.connect()
    assert ros.wait_for(lambda: probe.weights_pub.get_subscription_count() > 0)
    rgb, msg = frame(6)
    good = offline_model(1).state_dict()
    probe.weights_pub.publish(snapshot(1, good))
    assert ros.wait_for(lambda: node.model_version == 1)
    after = offline_labels(1, rgb)

    truncated = snapshot(2, good)
    payload = bytes(truncated.payload)[:-100]
    truncated.payload = payload
    truncated.sha256 = hashlib.sha256(payload).hexdigest()
    truncated.signature = convert.sign(key(), LINEAGE, 2, 20, 'erfnet', truncated.sha256)
    nan_state = {k: v.clone() for k, v in good.items()}
    next(v for v in nan_state.values() if v.is_floating_point()).fill_(float('nan'))
    float64 = {k: v.double() if v.is_floating_point() else v for k, v in good.items()}
    wrong_shape = dict(good, **{'net.output_conv.bias': torch.zeros(3)})
    missing = {k: v for k, v in good.items() if k != 'net.output_conv.bias'}
    wrong_arch = snapshot(2, good)
    wrong_arch.arch_id = 'deeplabv3plus-resnet50-os16'
    wrong_arch.signature = convert.sign(
        key(), LINEAGE, 2, 20, wrong_arch.arch_id, wrong_arch.sha256
    )
    other_config = convert.weights_msg(
        Header(), LINEAGE, 2, 20, 'erfnet', dict(CONFIG.to_dict(), num_classes=7), good, key()
    )
    bad_json = snapshot(2, good)
    bad_json.config_json = '{"arch": '
    rogues = [
        truncated,
        snapshot(2, nan_state),
        snapshot(2, float64),
        snapshot(2, wrong_shape),
        snapshot(2, missing),
        wrong_arch,
        other_config,
        bad_json,
    ]
    rejected = node.health.counters['rejected.weights']
    for n, bad in enumerate(rogues, start=1):  # latched depth 1: one by one
        probe.weights_pub.publish(bad)
        assert ros.wait_for(lambda n=n: node.health.counters['rejected.weights'] == rejected + n)
    assert node.model_version == 1

    # A far-off version (a key holder's mistake) is refused, so genuine snapshots still load.
    probe.weights_pub.publish(snapshot(4_000_000_000, offline_model(2).state_dict()))
    assert ros.wait_for(lambda: node.health.counters['rejected.weights_step'] == 1)
    probe.weights_pub.publish(snapshot(2, good))
    assert ros.wait_for(lambda: node.model_version == 2)
    labels_msg, seg = probe.answer(msg)
    np.testing.assert_array_equal(convert.labels_from_image(labels_msg), after)


def test_a_restarted_learner_starts_a_lineage_that_a_adopts(ros):
    node = make_node(ros, seed=0, role='adaptive')
    probe = Probe(ros, 'segmenter')
    probe.connect()
    assert ros.wait_for(lambda: probe.weights_pub.get_subscription_count() > 0)
    probe.weights_pub.publish(snapshot(7, offline_model(1).state_dict()))
    assert ros.wait_for(lambda: node.model_version == 7)

    # The learner restarted without a checkpoint: a new lineage from version 1 is adopted.
    probe.weights_pub.publish(snapshot(1, offline_model(2).state_dict(), lineage='f' * 16))
    assert ros.wait_for(lambda: node.model_version == 1)
    assert node.health.counters['weights_lineage_changes'] == 1
    rgb, msg = frame(7)
    (labels_msg,) = probe.answer(msg, ('labels',))
    np.testing.assert_array_equal(convert.labels_from_image(labels_msg), offline_labels(2, rgb))

    # A recorded snapshot of the retired lineage cannot roll A back.
    probe.weights_pub.publish(snapshot(8, offline_model(1).state_dict()))
    assert ros.wait_for(lambda: node.health.counters['rejected.weights_lineage'] == 1)
    assert node.model_version == 1


def test_adaptive_without_a_key_file_refuses_to_start(ros, tmp_path, monkeypatch):
    from tsa_ros.keys import KeyFileError

    monkeypatch.setenv('TSA_WEIGHTS_KEY_FILE', str(tmp_path / 'missing.key'))
    with pytest.raises(KeyFileError, match='no weights key file'):
        make_node(ros, role='adaptive')
    loose = tmp_path / 'loose.key'
    loose.write_text('00' * 32)
    loose.chmod(0o644)
    with pytest.raises(KeyFileError, match='readable by others'):
        make_node(ros, role='adaptive', weights_key_file=str(loose))
    # The explicit unsigned demo mode starts, and then takes unsigned snapshots.
    node = make_node(ros, role='adaptive', insecure_unsigned_weights=True)
    probe = Probe(ros, 'segmenter')
    assert ros.wait_for(lambda: probe.weights_pub.get_subscription_count() > 0)
    unsigned = convert.weights_msg(
        Header(), LINEAGE, 1, 10, 'erfnet', CONFIG.to_dict(), offline_model(1).state_dict(), None
    )
    assert unsigned.signature == ''
    probe.weights_pub.publish(unsigned)
    assert ros.wait_for(lambda: node.model_version == 1)


def test_invalid_role_is_refused():
    from tsa_ros.ros.segmenter_node import SegmenterParams

    with pytest.raises(ValueError, match='role'):
        SegmenterParams(role='oracle')
    with pytest.raises(ValueError, match='posteriors_encoding'):
        SegmenterParams(posteriors_encoding='float64')


def test_configure_refuses_a_checkpoint_that_does_not_fit_the_role(ros, tmp_path):
    from tsa_ros.errors import ConfigError
    from tsa_ros.models import save_checkpoint

    deeplab = ModelConfig(arch='deeplabv3plus', backbone='resnet18', input_size=SIZE)
    wrong_arch = save_checkpoint(tmp_path / 'deeplab.pt', build_model(deeplab))
    wrong_classes = save_checkpoint(
        tmp_path / 'seven.pt', build_model(ModelConfig(num_classes=7, input_size=SIZE))
    )
    # A must run S's architecture (model.*): the learner's snapshots are S-shaped.
    with pytest.raises(ConfigError, match='must run erfnet'):
        make_node(ros, role='adaptive', checkpoint=str(wrong_arch))
    # T may be any architecture, but every network must predict the 19 trainIds.
    make_node(ros, role='teacher', checkpoint=str(wrong_arch))
    with pytest.raises(ConfigError, match='predicts 7 classes'):
        make_node(ros, role='student', checkpoint=str(wrong_classes))


def call(ros, client, value, timeout=20.0):
    """SetBool ``value`` on ``client``; the response."""
    from std_srvs.srv import SetBool

    assert client.wait_for_service(timeout_sec=timeout), f'{client.srv_name} not offered'
    future = client.call_async(SetBool.Request(data=value))
    assert ros.wait_for(future.done, timeout=timeout), f'{client.srv_name} did not answer'
    return future.result()


def test_enable_service_drops_and_counts_frames_while_disabled(ros):
    from std_srvs.srv import SetBool

    node = make_node(ros, seed=3)
    probe = Probe(ros)
    probe.connect()
    client = probe.node.create_client(SetBool, 'segmenter/enable')
    _, msg = frame(0)
    probe.answer(msg)
    frames = node.health.counters['frames']

    response = call(ros, client, False)
    assert response.success and 'disabled' in response.message
    labels = len(probe.got['labels'])
    for stamp in range(3):  # one by one: the camera queue holds only the newest frame
        _, msg = frame(stamp, stamp=(2000 + stamp, 0))
        assert probe.send(msg, lambda n=stamp: node.health.counters['skipped.disabled'] > n)
    assert node.health.counters['frames'] == frames and len(probe.got['labels']) == labels
    values = {kv.key: kv.value for kv in node.health.snapshot().values}
    assert values['enabled'] == 'False'

    assert call(ros, client, True).success
    _, msg = frame(1, stamp=(3000, 0))
    probe.answer(msg)  # segmenting again
    assert node.health.counters['frames'] == frames + 1
    assert node.health.counters['skipped.disabled'] == 3


def test_input_qos_parameters_choose_the_camera_subscription(ros):
    from rclpy.qos import QoSReliabilityPolicy

    from tsa_ros.errors import ConfigError

    def camera_sub(name, **params):
        values = {'model.input_size': list(SIZE), 'warmup': False, **params}
        overrides = [Parameter(k, value=v) for k, v in values.items()]
        node = ros.add(SegmenterNode(name, context=ros.context, parameter_overrides=overrides))
        (sub,) = [s for s in node.subscriptions if s.topic_name.endswith('/image')]
        return sub.qos_profile

    default = camera_sub('default')
    assert default.reliability == QoSReliabilityPolicy.BEST_EFFORT and default.depth == 1
    admitted = camera_sub('admitted', admission_hz=2.0)
    assert admitted.reliability == QoSReliabilityPolicy.BEST_EFFORT
    assert admitted.depth == qos.ADMITTED_SENSOR.depth
    reliable = camera_sub(
        'reliable', **{'input_qos.reliability': 'reliable', 'input_qos.depth': 4}
    )
    assert reliable.reliability == QoSReliabilityPolicy.RELIABLE and reliable.depth == 4
    # A reliable reader does not match a best-effort camera, a reliable one it does.
    probe = ros.node('qos_probe')
    best_effort = probe.create_publisher(Image, 'image', qos.SENSOR)
    reliable_pub = probe.create_publisher(Image, 'image', qos.RESULTS)
    assert ros.wait_for(lambda: reliable_pub.get_subscription_count() == 3, timeout=20)
    assert best_effort.get_subscription_count() == 2  # only the best-effort readers

    with pytest.raises(ConfigError, match='reliability must be one of'):
        camera_sub('bad', **{'input_qos.reliability': 'fast'})


def test_enable_answers_while_a_frame_is_being_segmented(ros):
    import threading
    import time

    from std_srvs.srv import SetBool

    node = make_node(ros, seed=3)
    probe = Probe(ros)
    probe.connect()
    client = probe.node.create_client(SetBool, 'segmenter/enable')
    started, release = threading.Event(), threading.Event()
    predict = node._predictor.predict

    def slow_predict(*args, **kwargs):  # a network that takes as long as the test says
        started.set()
        release.wait(timeout=30)
        return predict(*args, **kwargs)

    node._predictor.predict = slow_predict
    _, msg = frame(0)
    probe.image_pub.publish(msg)
    assert started.wait(timeout=20), 'the frame did not reach the network'
    begin = time.monotonic()
    try:
        response = call(ros, client, False, timeout=5)
        assert response.success and time.monotonic() - begin < 5
        assert not release.is_set() and not probe.got['labels'], 'answered after the frame'
    finally:
        release.set()
    assert ros.wait_for(lambda: probe.got['labels'], timeout=20)  # the frame in flight ends


def test_a_segmenter_takes_its_share_of_the_cores_unless_told(ros):
    from tsa_ros.threads import segmenter_threads

    auto = make_node(ros, warmup=False)
    assert torch.get_num_threads() == segmenter_threads(0)
    values = {kv.key: kv.value for kv in auto.health.snapshot().values}
    assert values['num_threads'] == str(segmenter_threads(0))
    make_node(ros, warmup=False, num_threads=2)
    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match='num_threads must be >= 0'):
        make_node(ros, warmup=False, num_threads=-1)
