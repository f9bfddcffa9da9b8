"""Three segmenters (T, S, A) on the camera topic, the learner that adapts A, the fusion node.

Usage: ros2 launch tsa_ros tsa.launch.py [device:=cuda] [teacher_checkpoint:=T.pt]
    [student_checkpoint:=S.pt]

Nodes, parameters and remappings come from tsa_ros.ros.graph.describe('tsa'), the same
description that `tsa up tsa` starts without launch_ros.
"""

from tsa_ros.ros.launch_description import generate


def generate_launch_description():
    return generate('tsa')
