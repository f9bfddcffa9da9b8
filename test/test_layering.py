"""The core stays ROS-free: only tsa_ros/ros/ may import rclpy, message packages or tsa_ros.ros.

``tsa_ros/cli.py`` is the command line: it dispatches to both layers (``tsa up`` runs the
graph) and is the one core file allowed to reach into ``tsa_ros.ros``, lazily.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'tsa_ros'
ROS_MODULES = {
    'rclpy',
    'tsa_msgs',
    'sensor_msgs',
    'std_msgs',
    'diagnostic_msgs',
    'builtin_interfaces',
    'rcl_interfaces',
    'launch',
    'launch_ros',
}
ENTRY_POINTS = {PACKAGE / 'cli.py'}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported_modules(source, module, is_package=False):
    """Full names of every module ``source`` imports, at any depth, relative ones resolved."""
    package = module.split('.') if is_package else module.split('.')[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = '.'.join([*base, *([node.module] if node.module else [])])
            yield name
            yield from (f'{name}.{alias.name}' for alias in node.names)


def is_ros(module):
    return module.split('.')[0] in ROS_MODULES or module.startswith('tsa_ros.ros')


def core_files():
    return [
        p
        for p in sorted(PACKAGE.rglob('*.py'))
        if PACKAGE / 'ros' not in p.parents and p not in ENTRY_POINTS
    ]


def test_no_ros_imports_outside_the_ros_layer():
    offenders = []
    for path in core_files():
        names = imported_modules(path.read_text(), module_name(path), path.name == '__init__.py')
        found = sorted({m for m in names if is_ros(m)})
        if found:
            offenders.append(f'{path.relative_to(PACKAGE.parent)}: {found}')
    assert not offenders, 'ROS imported outside tsa_ros/ros/:\n' + '\n'.join(offenders)
    assert len(core_files()) > 5  # the scan saw the package


def test_the_scan_sees_nested_and_relative_imports():
    source = (
        'import numpy\n'
        'def f():\n'
        '    from ..ros import convert\n'
        '    from . import labels\n'
        '    import tsa_ros.ros.qos\n'
    )
    found = {m for m in imported_modules(source, 'tsa_ros.data.example') if is_ros(m)}
    assert found == {'tsa_ros.ros', 'tsa_ros.ros.convert', 'tsa_ros.ros.qos'}


def test_importing_the_whole_core_loads_no_ros_module():
    # Transitively: a core module that imports another core module that imports ROS fails.
    modules = [module_name(p) for p in core_files()]
    code = (
        'import importlib, json, sys\n'
        f'for name in {modules!r}:\n'
        '    importlib.import_module(name)\n'
        'print(json.dumps(sorted(sys.modules)))\n'
    )
    out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True, text=True)
    loaded = [m for m in json.loads(out.stdout) if is_ros(m)]
    assert not loaded, f'importing the core loaded ROS modules: {loaded}'
