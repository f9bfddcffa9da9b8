"""The package's Fast DDS profile (config/fastdds.xml): best-effort camera frames larger than
Fast DDS's default shared-memory segment still arrive whole between two tsa_ros processes."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('rclpy')

from tsa_ros.ros.env import FASTDDS_PROFILE_VARS, use_dds_profile

FRAMES = 10

SUBSCRIBER = textwrap.dedent(
    """
    import sys, time
    from sensor_msgs.msg import Image
    from tsa_ros.ros import qos
    from tsa_ros.ros.background import background_node

    got = []
    with background_node('big_frames_sub') as node:
        node.create_subscription(Image, '/big', lambda m: got.append(m.width), qos.SENSOR)
        print('ready', flush=True)
        end = time.monotonic() + float(sys.argv[1])
        while time.monotonic() < end and len(got) < %d:
            time.sleep(0.05)
    print(len(got), flush=True)
    """
    % FRAMES
)

PUBLISHER = textwrap.dedent(
    """
    import time
    import numpy as np
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    from tsa_ros.ros import qos
    from tsa_ros.ros.background import background_node
    from tsa_ros.ros.convert import image_msg

    with background_node('big_frames_pub') as node:
        pub = node.create_publisher(Image, '/big', qos.RESULTS)
        deadline = time.monotonic() + 30
        while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        frame = np.zeros((512, 1024, 3), np.uint8)  # 1.5 MB, three default SHM segments
        for _ in range(%d):
            pub.publish(image_msg(frame, 'rgb8', Header()))
            time.sleep(0.2)
        time.sleep(1.0)
    """
    % FRAMES
)


def test_use_dds_profile_points_fast_dds_at_the_package_profile_unless_chosen():
    env = {}
    profile = use_dds_profile(env)
    assert profile.endswith('fastdds.xml') and env[FASTDDS_PROFILE_VARS[0]] == profile
    mine = {FASTDDS_PROFILE_VARS[1]: '/etc/my_fastdds.xml'}
    assert use_dds_profile(mine) == '/etc/my_fastdds.xml'
    assert FASTDDS_PROFILE_VARS[0] not in mine  # the user's choice stands
    other = {'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}
    assert use_dds_profile(other) is None and len(other) == 1


def test_best_effort_frames_of_1_5_mb_arrive_whole(ros_domain_id, monkeypatch):
    for var in FASTDDS_PROFILE_VARS:
        monkeypatch.delenv(var, raising=False)
    sub = subprocess.Popen(
        [sys.executable, '-c', SUBSCRIBER, '60'], stdout=subprocess.PIPE, text=True
    )
    try:
        assert sub.stdout.readline().strip() == 'ready'
        subprocess.run([sys.executable, '-c', PUBLISHER], check=True, timeout=90)
        out, _ = sub.communicate(timeout=90)
    finally:
        sub.kill()
    # Without the profile, 2 of 10 arrived here (the frames went as UDP fragments).
    assert int(out.strip().splitlines()[-1]) == FRAMES
