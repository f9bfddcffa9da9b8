"""tsa record over real DDS: raw CDR into an MCAP file with ros2msg schemas, read back."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
from mcap.reader import make_reader
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tsa_msgs.msg import FusedSegmentation, LabelInfo

from tsa_ros.data.bag import BagReader
from tsa_ros.errors import ConfigError
from tsa_ros.ros import convert, qos
from tsa_ros.ros.record import Recorder, bag_qos, resolve_topics, subscription_qos

H, W = 6, 8


def header(sec):
    h = Header(frame_id='camera')
    h.stamp.sec, h.stamp.nanosec = sec, 5
    return h


def rgb(i):
    return np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8)


def labels(i):
    return np.random.default_rng(100 + i).integers(0, 19, (H, W), dtype=np.uint8)


def fused_msg(i):
    msg = FusedSegmentation(header=header(300 + i), fusion_mode='majority', tie_rule='teacher')
    msg.labels = convert.image_msg(labels(i), 'mono8', msg.header)
    msg.roles, msg.model_versions = ['teacher', 'student', 'adaptive'], [0, 0, i]
    msg.disagreement = [0.0, 0.25, 0.5]
    msg.quorum, msg.suspected_role = 2, 'adaptive'
    return msg


def read_mcap(path):
    """{topic: (schema, channel, [raw messages])} with the mcap package's own reader."""
    out = {}
    with open(path, 'rb') as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        assert summary is not None, 'the MCAP file has no summary: it was not closed'
        for channel in summary.channels.values():
            out[channel.topic] = (summary.schemas[channel.schema_id], channel, [])
        for _, channel, message in reader.iter_messages():
            out[channel.topic][2].append(message)
    return out


def test_records_camera_fused_and_latched_topics_into_mcap_with_ros2_schemas(ros, tmp_path):
    probe = ros.node('probe')
    # Latched before the recorder exists: transient local must still bring it in.
    info_pub = probe.create_publisher(LabelInfo, '/tsa/label_info', qos.LATCHED)
    info_pub.publish(convert.label_info_msg(header(1)))
    camera = probe.create_publisher(Image, '/camera/image_raw', qos.RESULTS)

    out = tmp_path / 'run'
    recorder = Recorder(
        ros.node('recorder'),
        out,
        topics=['/camera/image_raw', 'fused/segmentation', 'label_info', 'fused/labels'],
        discovery_period_s=0.1,
    )
    recorder.start()
    # fused/segmentation appears only after the recorder started.
    fused = probe.create_publisher(FusedSegmentation, '/tsa/fused/segmentation', qos.RESULTS)
    assert ros.wait_for(
        lambda: (
            camera.get_subscription_count()
            and fused.get_subscription_count()
            and recorder.taps.publisher_count('/camera/image_raw')
            and recorder.taps.publisher_count('/tsa/fused/segmentation')
        ),
        timeout=20,
    ), 'the recorder did not subscribe to the topics'
    for i in range(3):
        camera.publish(convert.image_msg(rgb(i), 'rgb8', header(300 + i)))
        fused.publish(fused_msg(i))
        time.sleep(0.05)
    want = {'/camera/image_raw': 3, '/tsa/fused/segmentation': 3, '/tsa/label_info': 1}
    assert ros.wait_for(lambda: recorder.counts() == want, timeout=20), recorder.counts()
    summary = recorder.stop()

    assert summary.mcap == out / 'run.mcap' and summary.mcap.is_file()
    assert summary.topics['/tsa/fused/segmentation'] == ('tsa_msgs/msg/FusedSegmentation', 3)
    assert '/tsa/fused/labels' not in summary.topics  # no publisher: not in the file

    topics = read_mcap(summary.mcap)
    assert set(topics) == set(want)
    for topic, name, deps in [
        ('/camera/image_raw', 'sensor_msgs/msg/Image', ['MSG: std_msgs/Header']),
        (
            '/tsa/fused/segmentation',
            'tsa_msgs/msg/FusedSegmentation',
            ['MSG: std_msgs/Header', 'MSG: sensor_msgs/Image', 'MSG: builtin_interfaces/Time'],
        ),
        ('/tsa/label_info', 'tsa_msgs/msg/LabelInfo', ['MSG: std_msgs/Header']),
    ]:
        schema, channel, messages = topics[topic]
        assert (schema.name, schema.encoding, channel.message_encoding) == (name, 'ros2msg', 'cdr')
        text = schema.data.decode()
        assert text.startswith(('std_msgs/Header header\n')), text[:80]
        for dep in deps:
            assert f'{"=" * 80}\n{dep}\n' in text, (topic, dep)
        assert len(messages) == want[topic]
        # rosbag2 keeps the publishers' QoS with each channel (ros2 bag play re-offers it).
        assert 'offered_qos_profiles' in channel.metadata
    assert (
        'durability: transient_local'
        in (topics['/tsa/label_info'][1].metadata['offered_qos_profiles'])
    )

    images = [deserialize_message(m.data, Image) for m in topics['/camera/image_raw'][2]]
    for i, msg in enumerate(images):
        assert msg.header.stamp.sec == 300 + i
        np.testing.assert_array_equal(convert.image_to_rgb(msg), rgb(i))
    for i, m in enumerate(topics['/tsa/fused/segmentation'][2]):
        msg = deserialize_message(m.data, FusedSegmentation)
        assert (msg.header.stamp.sec, msg.suspected_role, list(msg.model_versions)) == (
            300 + i,
            'adaptive',
            [0, 0, i],
        )
        np.testing.assert_array_equal(convert.labels_from_image(msg.labels), labels(i))
    info = deserialize_message(topics['/tsa/label_info'][2][0].data, LabelInfo)
    assert list(info.class_names)[:2] == ['road', 'sidewalk'] and info.ignore_id == 255

    # The same directory is a rosbag2 bag that the package's own reader (and ros2 bag) opens.
    with BagReader(out) as bag:
        assert bag.storage == 'mcap'
        assert bag.topics['/tsa/fused/segmentation'] == ('tsa_msgs/msg/FusedSegmentation', 3)


def test_bad_output_and_topic_names_are_one_line_errors(ros, tmp_path):
    node = ros.node('recorder')
    taken = tmp_path / 'taken'
    taken.mkdir()
    with pytest.raises(ConfigError, match='already exists'):
        Recorder(node, taken, topics=['/x']).start()
    blocked = tmp_path / 'file'
    blocked.write_text('')
    with pytest.raises(ConfigError, match='cannot write a recording'):
        Recorder(node, blocked / 'run', topics=['/x']).start()
    with pytest.raises(ConfigError, match='invalid topic name'):
        resolve_topics(['/bad topic'])
    assert resolve_topics(['fused/labels', '/diagnostics', 'fused/labels'], 'robot') == [
        '/robot/fused/labels',
        '/diagnostics',
    ]


def test_tsa_record_closes_the_file_on_sigterm(ros, tmp_path):
    probe = ros.node('probe')
    pub = probe.create_publisher(Image, '/camera/image_raw', qos.RESULTS)
    out = tmp_path / 'cli'
    proc = subprocess.Popen(
        [sys.executable, '-m', 'tsa_ros.cli', 'record', '--out', str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert ros.wait_for(lambda: pub.get_subscription_count() > 0, timeout=60), 'no recorder'
        time.sleep(1.0)  # the recorder's side of the match, which we cannot see from here
        for i in range(2):
            pub.publish(convert.image_msg(rgb(i), 'rgb8', header(400 + i)))
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert 'Traceback' not in output
    topics = read_mcap(out / 'cli.mcap')
    assert [
        deserialize_message(m.data, Image).header.stamp.sec for m in topics['/camera/image_raw'][2]
    ] == [400, 401]
    assert '2 messages on 1 topics' in output


def test_subscriptions_match_what_the_publishers_offer():
    from rclpy.qos import QoSDurabilityPolicy as D
    from rclpy.qos import QoSReliabilityPolicy as R

    def chosen(topic, *offers):
        profile = subscription_qos(topic, list(offers))
        return profile.reliability, profile.durability

    assert chosen('/camera/image_raw', qos.RESULTS) == (R.BEST_EFFORT, D.VOLATILE)
    assert chosen('/tsa/fused/labels', qos.RESULTS) == (R.RELIABLE, D.VOLATILE)
    assert chosen('/tsa/fused/labels', qos.RESULTS, qos.SENSOR) == (R.BEST_EFFORT, D.VOLATILE)
    assert chosen('/tsa/label_info', qos.LATCHED) == (R.RELIABLE, D.TRANSIENT_LOCAL)
    # One volatile writer: a transient-local reader would not match it.
    assert chosen('/tsa/label_info', qos.LATCHED, qos.RESULTS) == (R.RELIABLE, D.VOLATILE)
    stored = bag_qos(qos.LATCHED)
    assert (stored.durability.name, stored.reliability.name, stored.depth) == (
        'TRANSIENT_LOCAL',
        'RELIABLE',
        1,
    )
