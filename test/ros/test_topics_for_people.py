"""The viewer layouts (config/tsa.rviz, config/tsa.foxglove.json) show what the graph publishes.

The graph is the real one: the nodes of `describe('tsa')` with the tiny networks of
test/ros/tiny.yaml, their parameters and remappings from the same command line `tsa up` gives
them, started in this process (a few seconds instead of a minute of processes) and talking
over real DDS.
"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tsa_msgs.msg import LearnerStatus

from tsa_ros.data.labels import colorize, overlay
from tsa_ros.fusion import DISAGREEMENT_COLORS, majority_vote
from tsa_ros.ros import convert, qos
from tsa_ros.ros.graph import GraphArgs, describe
from tsa_ros.ros.up import node_command

REPO = Path(__file__).resolve().parents[2]
RVIZ = REPO / 'config' / 'tsa.rviz'
FOXGLOVE = REPO / 'config' / 'tsa.foxglove.json'
TINY = Path(__file__).with_name('tiny.yaml')
H, W = 64, 128
CAMERA = GraphArgs().image_topic
ROLES = ('teacher', 'student', 'adaptive')
RVIZ_QOS = {
    'Best Effort': QoSReliabilityPolicy.BEST_EFFORT,
    'Reliable': QoSReliabilityPolicy.RELIABLE,
    'Volatile': QoSDurabilityPolicy.VOLATILE,
    'Transient Local': QoSDurabilityPolicy.TRANSIENT_LOCAL,
}


def rviz_displays():
    """(display class, topic, reliability, durability) of every display with a topic."""
    found = []

    def walk(displays):
        for display in displays or ():
            walk(display.get('Displays'))  # groups
            topic = display.get('Topic')
            if isinstance(topic, dict):
                found.append(
                    (
                        display['Class'],
                        topic['Value'],
                        RVIZ_QOS[topic['Reliability Policy']],
                        RVIZ_QOS[topic['Durability Policy']],
                    )
                )

    walk(yaml.safe_load(RVIZ.read_text())['Visualization Manager']['Displays'])
    return found


def foxglove_panels():
    """{panel id: (panel type, [topics it reads], [message paths it plots])}."""
    layout = json.loads(FOXGLOVE.read_text())
    panels = {}
    for panel, config in layout['configById'].items():
        kind = panel.split('!')[0]
        topics, paths = [], []
        if 'imageMode' in config:
            topics.append(config['imageMode']['imageTopic'])
        if 'topicPath' in config:
            topics.append(config['topicPath'])
        for path in config.get('paths', ()):
            paths.append(path['value'])
            topics.append(path['value'].split('.')[0])  # ROS topic names hold no '.'
        panels[panel] = (kind, topics, paths)

    def leaves(node):
        if isinstance(node, str):
            return [node]
        return leaves(node['first']) + leaves(node['second'])

    assert sorted(leaves(layout['layout'])) == sorted(panels), 'a panel is configured, not shown'
    return panels


def layout_topics():
    return {t for _, t, _, _ in rviz_displays()} | {
        t for _, topics, _ in foxglove_panels().values() for t in topics
    }


def test_the_layouts_show_the_topics_for_people():
    displays = {d[1]: d for d in rviz_displays()}
    expected = {CAMERA, '/tsa/fused/overlay', '/tsa/fused/disagreement', '/tsa/legend'}
    expected |= {f'/tsa/{role}/color' for role in ROLES}
    assert expected <= set(displays)
    for topic, (kind, _, reliability, durability) in displays.items():
        assert kind == 'rviz_default_plugins/Image'
        # As published: camera drivers best effort, our outputs reliable, the legend latched.
        want = (
            QoSReliabilityPolicy.BEST_EFFORT if topic == CAMERA else QoSReliabilityPolicy.RELIABLE
        )
        assert reliability == want, topic
        latched = topic == '/tsa/legend'
        assert durability == (
            QoSDurabilityPolicy.TRANSIENT_LOCAL if latched else QoSDurabilityPolicy.VOLATILE
        ), topic

    panels = foxglove_panels()
    images = {t for kind, topics, _ in panels.values() if kind == 'Image' for t in topics}
    assert expected <= images
    (plot,) = [paths for kind, _, paths in panels.values() if kind == 'Plot']
    fields = LearnerStatus.get_fields_and_field_types()
    for loss in ('ce_loss', 'fm_loss', 'ifm_loss', 'ts_loss'):
        assert f'/tsa/learner/status.{loss}' in plot and loss in fields
    raw = [topics for kind, topics, _ in panels.values() if kind == 'RawMessages']
    assert raw == [['/tsa/fused/segmentation']]


# --------------------------------------------------------------------------- the real graph
NODE_CLASSES = {
    'segmenter': 'tsa_ros.ros.segmenter_node:SegmenterNode',
    'learner': 'tsa_ros.ros.learner_node:LearnerNode',
    'fusion': 'tsa_ros.ros.fusion_node:FusionNode',
}


def fusion_spec():
    return next(s for s in describe('tsa', GraphArgs(config=str(TINY))) if s.name == 'fusion')


#: Whether the graph description gives fusion the camera (for fused/overlay).
@pytest.fixture
def graph(ros):
    """The `tsa` graph's nodes in this process: {name: node}."""
    import importlib

    nodes = {}
    for spec in describe('tsa', GraphArgs(config=str(TINY))):
        if spec.executable not in NODE_CLASSES:
            continue  # the lifecycle manager: each node activates itself instead
        # Started on their own, so the nodes configure and activate themselves.
        spec = dataclasses.replace(spec, parameters={**spec.parameters, 'autostart': True})
        command = node_command(spec, str(TINY))
        args = command[command.index('--ros-args') :]
        module, cls = NODE_CLASSES[spec.executable].split(':')
        node_class = getattr(importlib.import_module(module), cls)
        nodes[spec.name] = ros.add(node_class(spec.name, context=ros.context, cli_args=args))
    assert set(nodes) == {*ROLES, 'learner', 'fusion'}
    return nodes


def test_every_topic_of_the_layouts_is_published_by_the_graph(ros, graph):
    probe = ros.node('viewer')
    topics = layout_topics()
    assert len(topics) >= 10
    # Watch the images as rviz would (fusion reads the camera only for a fused/overlay viewer).
    for _, topic, reliability, durability in rviz_displays():
        if topic != CAMERA:
            profile = QoSProfile(depth=1, reliability=reliability, durability=durability)
            probe.create_subscription(Image, topic, lambda m: None, profile)

    def publishers(topic):
        return [p for p in probe.get_publishers_info_by_topic(topic) if p.node_name != 'viewer']

    def camera_readers():
        return {r.node_name for r in probe.get_subscriptions_info_by_topic(CAMERA)}

    def ready():
        return all(publishers(t) for t in topics - {CAMERA}) and 'fusion' in camera_readers()

    assert ros.wait_for(ready, timeout=30), (
        f'unpublished: {sorted(t for t in topics - {CAMERA} if not publishers(t))}, '
        f'camera readers: {sorted(camera_readers())}'
    )
    types = dict(probe.get_topic_names_and_types())
    image_topics = {t for _, t, _, _ in rviz_displays()}
    for topic in image_topics - {CAMERA}:
        assert types[topic] == ['sensor_msgs/msg/Image'], topic
        (pub,) = publishers(topic)
        # What the display asks for, the publisher offers (reliable, latched for the legend).
        assert pub.qos_profile.reliability == QoSReliabilityPolicy.RELIABLE, topic
        if topic == '/tsa/legend':
            assert pub.qos_profile.durability == QoSDurabilityPolicy.TRANSIENT_LOCAL
    assert types['/tsa/learner/status'] == ['tsa_msgs/msg/LearnerStatus']
    assert types['/tsa/fused/segmentation'] == ['tsa_msgs/msg/FusedSegmentation']
    # The camera is not ours to publish: the triplet, the learner and fusion read it.
    assert {*ROLES, 'learner', 'fusion'} <= camera_readers()


def test_the_graph_gives_fusion_the_camera():
    assert ('image', CAMERA) in fusion_spec().remappings


def test_overlay_and_disagreement_of_a_frame_fused_by_the_graph(ros, graph):
    probe = ros.node('viewer')
    camera = probe.create_publisher(Image, CAMERA, qos.RESULTS)
    got = {name: {} for name in (*ROLES, 'fused', 'overlay', 'disagreement')}
    topics = {role: f'/tsa/{role}/labels' for role in ROLES}
    topics |= {
        'fused': '/tsa/fused/labels',
        'overlay': '/tsa/fused/overlay',
        'disagreement': '/tsa/fused/disagreement',
    }
    for name, topic in topics.items():
        probe.create_subscription(
            Image,
            topic,
            lambda m, name=name: got[name].setdefault(m.header.stamp.sec, m),
            qos.RESULTS,
        )
    fusion = graph['fusion']
    assert ros.wait_for(
        lambda: (
            camera.get_subscription_count() >= 5
            and fusion._overlay_pub.get_subscription_count() > 0
            and fusion._disagreement_pub.get_subscription_count() > 0
        ),
        timeout=30,
    ), 'the viewer and the graph did not discover each other'

    rng = np.random.default_rng(0)
    frames = {}
    for sec in (100, 101):  # one at a time: the segmenters keep only the newest frame
        small = rng.integers(0, 256, (H // 8, W // 8, 3), dtype=np.uint8)
        frames[sec] = np.kron(small, np.ones((8, 8, 1), np.uint8))
        header = Header(stamp=Time(sec=sec, nanosec=3), frame_id='camera')
        camera.publish(convert.image_msg(frames[sec], 'rgb8', header))
        assert ros.wait_for(lambda s=sec: all(s in got[n] for n in got), timeout=60), (
            f'frame {sec}: nothing on ' + ', '.join(n for n in got if sec not in got[n])
        )

    for sec, rgb in frames.items():
        for name in ('overlay', 'disagreement'):
            msg = got[name][sec]
            assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (sec, 3)
            assert msg.header.frame_id == 'camera'
            assert (msg.height, msg.width, msg.encoding) == (H, W, 'rgb8')
        labels = np.stack([convert.labels_from_image(got[r][sec]) for r in ROLES])
        fused = convert.labels_from_image(got['fused'][sec])
        np.testing.assert_array_equal(fused, majority_vote(labels))
        np.testing.assert_array_equal(
            convert.image_to_rgb(got['overlay'][sec]), overlay(rgb, colorize(fused), 0.5)
        )
        dis = convert.image_to_rgb(got['disagreement'][sec])
        dissent = (labels != fused).sum(axis=0)  # networks voting another label, per pixel
        assert dissent.any(), 'random networks that agree everywhere test nothing here'
        # Black exactly where the three agree, yellow where one dissents, red where two do.
        for count, name in ((0, '0'), (1, '1'), (2, '2')):
            is_colour = (dis == DISAGREEMENT_COLORS[name]).all(axis=-1)
            np.testing.assert_array_equal(is_colour, dissent == count, err_msg=name)
