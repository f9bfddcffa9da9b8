"""AttackerNode over real DDS: adversarial frames keep the header and match the offline attack."""

import numpy as np
import pytest
import torch

pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from tsa_ros.attacks import AttackConfig, adversarial_loss, least_likely_attack
from tsa_ros.models import ModelConfig, build_model
from tsa_ros.ros import convert, qos
from tsa_ros.ros.attacker_node import AttackerNode, AttackerParams

SIZE = (32, 64)
EPSILON = 8.0  # large enough to move a tiny random network's prediction
SEED = 2


@pytest.fixture
def attacker(ros):
    """(node, probe publisher, list of received frames), discovered and connected."""
    node = ros.add(
        AttackerNode(
            context=ros.context,
            parameter_overrides=[
                Parameter('model.input_size', value=list(SIZE)),
                Parameter('seed', value=SEED),
                Parameter('target', value='teacher'),
                Parameter('attack.epsilon', value=EPSILON),
            ],
        )
    )
    probe = ros.node('probe')
    pub = probe.create_publisher(Image, 'image_in', qos.SENSOR)
    got = []
    sub = probe.create_subscription(Image, 'image_out', got.append, qos.RESULTS)
    assert ros.wait_for(
        lambda: pub.get_subscription_count() > 0 and sub.get_publisher_count() > 0
    ), 'attacker and probe did not discover each other'
    return node, pub, got


def frame():
    rgb = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    header = Header(stamp=Time(sec=42, nanosec=7), frame_id='camera')
    return rgb, convert.image_msg(rgb, 'rgb8', header)


def send(ros, pub, msg, condition):
    """Publish (again every 2 s: the camera QoS is best effort) until ``condition``.

    Up to a minute: on a loaded 2-core machine the first attack (model build included) has
    taken over 30 s; this checks what comes out, not how fast.
    """
    for _ in range(30):
        pub.publish(msg)
        if ros.wait_for(condition, timeout=2.0):
            return True
    return False


def answer(ros, pub, got, msg):
    count = len(got)
    assert send(ros, pub, msg, lambda: len(got) > count), 'no frame came out of the attacker'
    return got[-1]


def test_adversarial_frame_keeps_header_and_equals_offline_attack(ros, attacker):
    node, pub, got = attacker
    rgb, msg = frame()

    out = answer(ros, pub, got, msg)

    header = out.header
    assert (header.stamp.sec, header.stamp.nanosec, header.frame_id) == (42, 7, 'camera')
    assert (out.height, out.width, out.encoding) == (*SIZE, 'rgb8')
    adv = convert.image_to_rgb(out)
    diff = np.abs(adv.astype(int) - rgb.astype(int))
    assert diff.max() <= EPSILON and diff.max() > 0

    torch.manual_seed(SEED)
    model = build_model(ModelConfig(input_size=SIZE)).eval()
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    expected = least_likely_attack(model, x, AttackConfig(epsilon=EPSILON))
    expected = expected[0].round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(adv, expected)

    # The attack works on the attacked network: its prediction moves away from the clean one
    # and towards the clean frame's least likely classes (eq. 8 decreases).
    x_adv = torch.from_numpy(adv.copy()).permute(2, 0, 1)[None].float()
    clean_pred = model.predict(x)
    assert (model.predict(x_adv) == clean_pred).float().mean() < 0.99
    with torch.no_grad():
        targets = model(x).argmin(dim=1)
        assert adversarial_loss(model(x_adv), targets) < adversarial_loss(model(x), targets)
    assert node.health.counters['frames'] >= 1


def test_disabled_attacker_passes_frames_through_and_bad_frames_are_rejected(ros, attacker):
    node, pub, got = attacker
    rgb, msg = frame()
    assert node.set_parameters([Parameter('enabled', value=False)])[0].successful
    assert not node.params.enabled

    out = answer(ros, pub, got, msg)

    assert bytes(out.data) == rgb.tobytes()
    assert (out.header.stamp.sec, out.header.frame_id) == (42, 'camera')

    assert node.set_parameters([Parameter('enabled', value=True)])[0].successful
    # target names the network loaded at start: changing it at run time would make
    # /diagnostics name a network other than the one attacked.
    assert not node.set_parameters([Parameter('target', value='student')])[0].successful
    assert node.params.target == 'teacher'
    msg.encoding = 'not-an-encoding'
    assert send(ros, pub, msg, lambda: node.health.counters['rejected.image'] >= 1)


def test_invalid_target_is_refused():
    with pytest.raises(ValueError, match='target'):
        AttackerParams(target='adaptive')


def test_parameter_services_answer_while_an_attack_runs(ros):
    """Parameter services are not queued behind a frame: the demo switches the attack on and
    off (`enabled`) while frames flow, and an attack takes seconds on a CPU."""
    import time

    from rcl_interfaces.srv import GetParameters

    size = (64, 128)
    ros.add(
        AttackerNode(
            context=ros.context,
            parameter_overrides=[
                Parameter('model.input_size', value=list(size)),
                Parameter('attack.epsilon', value=300.0),  # 304 iterations: seconds of work
            ],
        )
    )
    probe = ros.node('probe')
    pub = probe.create_publisher(Image, 'image_in', qos.SENSOR)
    done = []
    probe.create_subscription(Image, 'image_out', lambda m: done.append(time.monotonic()), 10)
    client = probe.create_client(GetParameters, '/attacker/get_parameters')
    assert ros.wait_for(lambda: pub.get_subscription_count() > 0 and client.service_is_ready())
    rgb = np.zeros((*size, 3), np.uint8)
    msg = convert.image_msg(rgb, 'rgb8', Header(stamp=Time(sec=1), frame_id='camera'))

    sent = time.monotonic()
    pub.publish(msg)
    time.sleep(0.5)  # the attack has begun
    asked = time.monotonic()
    future = client.call_async(GetParameters.Request(names=['enabled']))
    assert ros.wait_for(future.done, timeout=120)
    answered = time.monotonic()
    assert future.result().values[0].bool_value is True
    assert ros.wait_for(lambda: done, timeout=120), 'the attacked frame never came out'
    # The attack was still running when the answer came, and the answer did not wait for it.
    assert answered < done[0], (answered - sent, done[0] - sent)
    assert answered - asked < 1.0, answered - asked
