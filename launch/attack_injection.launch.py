"""Replay with the attacker injecting least-likely adversarial frames (against T or S) on the
camera topic the segmenters consume; the bag plays to /camera/image_clean.

Usage: ros2 launch tsa_ros attack_injection.launch.py bag:=data/val_bag
    attack_target:=student epsilon:=1

Nodes, parameters and remappings come from tsa_ros.ros.graph.describe('attack_injection'), the same
description that `tsa up attack_injection` starts without launch_ros.
"""

from tsa_ros.ros.launch_description import generate


def generate_launch_description():
    return generate('attack_injection')
