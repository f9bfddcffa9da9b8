"""DDS-Security in this environment: docs/security.md says the wheels' Fast DDS lacks it.

A tripwire, not a protection: it keeps the documented finding true and fails the day a
wheel ships the security libraries (then `tsa up --secure` can be built).
"""

import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytest.importorskip('rclpy')

ROOT = Path(__file__).resolve().parents[2]
PROBE = (
    "import rclpy; rclpy.init(args=['--ros-args', '--enclave', '/tsa']); "
    "rclpy.create_node('security_probe')"
)


def test_enforced_security_cannot_start_a_node_with_the_wheels(tmp_path, ros_domain_id):
    enclave = tmp_path / 'keystore' / 'enclaves' / 'tsa'
    enclave.mkdir(parents=True)
    for name in (
        'identity_ca.cert.pem',
        'cert.pem',
        'key.pem',
        'permissions_ca.cert.pem',
        'governance.p7s',
        'permissions.p7s',
    ):
        (enclave / name).write_text('placeholder')
    env = {
        **os.environ,
        'ROS_SECURITY_ENABLE': 'true',
        'ROS_SECURITY_STRATEGY': 'Enforce',
        'ROS_SECURITY_KEYSTORE': str(tmp_path / 'keystore'),
    }
    done = subprocess.run(
        [sys.executable, '-c', PROBE], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0, 'a secured node started: DDS-Security is available now'
    assert "doesn't have the security libraries" in done.stderr, done.stderr[-2000:]


def test_policy_names_the_graph_and_gives_the_weights_topic_to_the_learner_only():
    policy = ElementTree.parse(ROOT / 'config' / 'security' / 'policy.xml').getroot()
    enclaves = {e.get('path'): e for e in policy.iter('enclave')}
    assert set(enclaves) == {
        f'/tsa/{n}'
        for n in ('camera', 'teacher', 'student', 'adaptive', 'learner', 'fusion', 'evaluator')
    }
    publishers = [
        path
        for path, enclave in enclaves.items()
        for topics in enclave.iter('topics')
        if topics.get('publish') == 'ALLOW'
        for topic in topics.iter('topic')
        if topic.text in ('~/weights', '/tsa/learner/weights')
    ]
    assert publishers == ['/tsa/learner']
    readers = {
        path
        for path, enclave in enclaves.items()
        for topics in enclave.iter('topics')
        if topics.get('subscribe') == 'ALLOW'
        for topic in topics.iter('topic')
        if topic.text == '/camera/image_raw'
    }
    assert readers == {'/tsa/teacher', '/tsa/student', '/tsa/adaptive', '/tsa/learner'}
