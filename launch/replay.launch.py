"""The tsa graph fed by a rosbag2 from `tsa data bag`, plus the evaluator (ground truth from
the bag).

Usage: ros2 launch tsa_ros replay.launch.py bag:=data/val_bag [rate:=0.5] [report:=clean.json]

Nodes, parameters and remappings come from tsa_ros.ros.graph.describe('replay'), the same
description that `tsa up replay` starts without launch_ros.
"""

from tsa_ros.ros.launch_description import generate


def generate_launch_description():
    return generate('replay')
