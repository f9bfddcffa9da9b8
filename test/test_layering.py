"""The core stays ROS-free: only tsa_ros/ros/ may import rclpy or message packages."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'tsa_ros'
ROS_MODULES = {
    'rclpy',
    'tsa_msgs',
    'sensor_msgs',
    'std_msgs',
    'diagnostic_msgs',
    'builtin_interfaces',
    'launch',
    'launch_ros',
}


def imported_modules(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module.split('.')[0]


def test_no_ros_imports_outside_the_ros_layer():
    offenders = []
    for path in sorted(PACKAGE.rglob('*.py')):
        if PACKAGE / 'ros' in path.parents:
            continue
        found = ROS_MODULES.intersection(imported_modules(path))
        if found:
            offenders.append(f'{path.relative_to(PACKAGE.parent)}: {sorted(found)}')
    assert not offenders, 'ROS imported outside tsa_ros/ros/:\n' + '\n'.join(offenders)
    assert len(list(PACKAGE.rglob('*.py'))) > 5  # the scan saw the package
