"""One description of the graph: launch files, `tsa up` and the params file agree."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tsa_ros.ros.graph import GRAPHS, GraphArgs, describe, launch_arguments
from tsa_ros.ros.up import node_command

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / 'launch'
PARAMS = REPO / 'config' / 'tsa.yaml'


def launch_graph_name(path):
    """The graph a launch file builds: it must be `return generate('<graph>')` and no more."""
    tree = ast.parse(path.read_text())
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert func.name == 'generate_launch_description'
    (ret,) = func.body
    call = ret.value
    assert isinstance(call, ast.Call) and call.func.id == 'generate'
    return call.args[0].value


MANAGER = 'lifecycle_manager'


@pytest.mark.parametrize('graph', GRAPHS)
def test_each_launch_file_delegates_to_the_graph_description(graph):
    assert launch_graph_name(LAUNCH / f'{graph}.launch.py') == graph


def test_graphs_have_the_expected_nodes_and_wiring():
    args = GraphArgs(bag='/data/bag', attack_target='student', epsilon=10)
    names = {g: [s.name for s in describe(g, args)] for g in GRAPHS}
    assert names['tsa'] == ['teacher', 'student', 'adaptive', 'learner', 'fusion', MANAGER]
    assert names['replay'] == names['tsa'][:-1] + ['bag_player', 'evaluator', MANAGER]
    assert names['attack_injection'] == names['replay'][:-1] + ['attacker', MANAGER]
    specs = {s.name: s for s in describe('attack_injection', args)}
    # The manager drives every other node, and activates the player when they are active.
    manager = specs[MANAGER].parameters
    assert manager['nodes'] == names['attack_injection'][:-1]
    assert manager['activate_last'] == ['bag_player']
    assert 'activate_last' not in describe('tsa', args)[-1].parameters
    assert not specs[MANAGER].managed
    assert all(s.parameters['autostart'] is False for s in specs.values() if s.managed)
    assert specs['bag_player'].parameters['wait_for_subscribers'] == 1  # the attacker
    assert ('image', '/camera/image_raw') in specs['student'].remappings
    assert ('weights', '/tsa/learner/weights') in specs['adaptive'].remappings
    assert specs['bag_player'].remappings == (('/camera/image_raw', '/camera/image_clean'),)
    assert specs['attacker'].remappings == (
        ('image_in', '/camera/image_clean'),
        ('image_out', '/camera/image_raw'),
    )
    # White box: the attacker gets the attacked role's model config and seed.
    params = Path(args.params_file)  # device cpu: config/cpu.yaml
    assert params.name == 'cpu.yaml'
    student = yaml.safe_load(params.read_text())['/**/student']['ros__parameters']
    assert specs['attacker'].parameters['model.arch'] == student['model']['arch']
    assert specs['attacker'].parameters['seed'] == student['seed']
    assert specs['attacker'].parameters['attack.epsilon'] == 10
    # A and the learner take S's architecture, so their snapshots always fit each other.
    for name in ('adaptive', 'learner'):
        for key, value in student['model'].items():
            assert specs[name].parameters[f'model.{key}'] == value
        assert 'learner.device' not in specs[name].parameters
    with pytest.raises(ValueError, match='needs a bag'):
        describe('replay', GraphArgs())


def test_tsa_up_dry_run_prints_the_same_description(tmp_path):
    bag = tmp_path / 'bag'  # the preflight wants a bag that exists
    bag.mkdir()
    (bag / 'metadata.yaml').write_text('rosbag2_bagfile_information: {}\n')
    out = subprocess.run(
        [
            sys.executable,
            '-m',
            'tsa_ros.cli',
            'up',
            'attack_injection',
            '--bag',
            str(bag),
            '--epsilon',
            '10',
            '--device',
            'cpu',
            '--loop',
            '--dry-run',
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    printed = json.loads(out)
    args = GraphArgs(bag=str(bag), epsilon=10.0, loop=True)
    expected = describe('attack_injection', args)
    assert [p['name'] for p in printed] == [s.name for s in expected]
    for entry, spec in zip(printed, expected, strict=True):
        assert entry['parameters'] == json.loads(json.dumps(spec.parameters))
        assert [tuple(r) for r in entry['remappings']] == list(spec.remappings)
        assert entry['command'][1:] == node_command(spec, args.params_file)[1:]


def test_the_default_params_file_follows_the_device():
    import torch

    assert Path(GraphArgs(device='cpu').params_file) == REPO / 'config' / 'cpu.yaml'
    assert Path(GraphArgs(device='cuda:0').params_file) == PARAMS
    auto = 'tsa.yaml' if torch.cuda.is_available() else 'cpu.yaml'
    assert Path(GraphArgs(device='auto').params_file).name == auto
    assert GraphArgs(device='cpu', config='/x/my.yaml').params_file == '/x/my.yaml'
    # The CPU config keeps up on 2 cores: small networks, T lighter than the paper's.
    cpu = yaml.safe_load((REPO / 'config' / 'cpu.yaml').read_text())
    teacher = cpu['/**/teacher']['ros__parameters']['model']
    assert teacher['backbone'] == 'resnet18' and teacher['input_size'] == [128, 256]


def test_launch_arguments_cover_graph_args():
    names = {a.name for a in launch_arguments('attack_injection')}
    assert names == set(GraphArgs.__dataclass_fields__)
    assert all(a.description for a in launch_arguments('attack_injection'))


@pytest.mark.parametrize('graph', GRAPHS)
def test_launch_files_and_tsa_up_give_every_node_the_same_parameters(graph, tmp_path):
    """The launch path (argument strings -> node kwargs) and the `tsa up` path (options ->
    command lines) agree on every node's name, parameters, remappings and restart policy."""
    import argparse

    from tsa_ros.ros.launch_description import RESPAWN_DELAY_S, node_kwargs
    from tsa_ros.ros.up import add_arguments, ros_value

    given = {'bag': '/data/bag', 'epsilon': '10', 'report': 'on', 'device': 'cpu'}
    given |= {'exit_when_done': 'true', 'admission_hz': '2', 'attack_target': 'teacher'}
    names = {a.name for a in launch_arguments(graph)}
    strings = {a.name: a.default for a in launch_arguments(graph)}
    strings |= {k: v for k, v in given.items() if k in names}
    launched = node_kwargs(graph, strings)

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = [graph]
    for key, value in given.items():
        if key in names:
            flag = '--' + key.replace('_', '-')
            argv += [flag] if value == 'true' else [flag, value]
    ns = parser.parse_args(argv)
    up_args = GraphArgs(**{k: getattr(ns, k) for k in GraphArgs.__dataclass_fields__})
    specs = describe(graph, up_args)

    assert [n['name'] for n in launched] == [s.name for s in specs]
    for node, spec in zip(launched, specs, strict=True):
        params_file, parameters = node['parameters']
        assert params_file == up_args.params_file
        assert parameters == spec.parameters, spec.name
        assert node['remappings'] == list(spec.remappings)
        assert (node['executable'], node['namespace']) == (spec.executable, spec.namespace)
        assert node['managed'] == spec.managed
        assert node.get('respawn', False) == spec.respawn
        if spec.respawn:
            assert node['respawn_delay'] == RESPAWN_DELAY_S
        # The bag player's exit ends the launch under exit_when_done, as it ends `tsa up`.
        assert node['shutdown_on_exit'] == (spec.executable == 'bag_player')
        # And `tsa up` hands the node the same values (typed as rcl reads them).
        command = node_command(spec, params_file)
        for name, value in parameters.items():
            assert f'{name}:={ros_value(value)}' in command, name
    if graph != 'tsa':
        evaluator = next(n for n in launched if n['name'] == 'evaluator')
        assert evaluator['parameters'][1]['report_path'] == 'on'  # a string, not a bool


def test_launch_ros_builds_the_same_nodes():
    """Only where launch_ros is installed (a real ROS 2 install); PyPI has no wheel."""
    pytest.importorskip('launch_ros')
    from launch import LaunchContext
    from tsa_ros.ros.launch_description import generate

    for graph in GRAPHS:
        description = generate(graph)
        context = LaunchContext()
        for action in description.entities[:-1]:
            context.launch_configurations[action.name] = action.default_value[0].text
        context.launch_configurations['bag'] = '/data/bag'
        nodes = description.entities[-1].execute(context)
        args = GraphArgs.from_strings(dict(context.launch_configurations))
        specs = describe(graph, args)
        assert [n.node_name for n in nodes] == [s.name for s in specs]
        assert [n.node_executable for n in nodes] == [s.executable for s in specs]


def test_parameter_reference_is_current():
    from tsa_ros.ros.reference import markdown

    shipped = (REPO / 'docs' / 'ros_parameters.md').read_text()
    assert shipped == markdown(), (
        'regenerate: python -m tsa_ros.ros.reference > docs/ros_parameters.md'
    )


def test_overrides_keep_their_type_as_rcl_reads_them(ros):
    """Strings that YAML would read as bools or numbers stay strings, like launch_ros's."""
    import yaml
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.node import Node

    from tsa_ros.ros.up import ros_value

    values = {'report': 'on', 'bag': '123', 'device': 'cuda:0', 'empty': '', 'rate': 0.5}
    values |= {'loop': True, 'size': [64, 128]}
    for value in values.values():
        assert yaml.safe_load(ros_value(value)) == value
    args = ['--ros-args'] + [a for k, v in values.items() for a in ('-p', f'{k}:={ros_value(v)}')]
    context = ros.rclpy.Context()
    ros.rclpy.init(context=context, args=args, domain_id=ros.context.get_domain_id())
    try:
        node = Node('typed', context=context)
        for name, value in values.items():
            got = node.declare_parameter(name, value, ParameterDescriptor()).value
            assert got == value and type(got) is type(value), name
        node.destroy_node()
    finally:
        ros.rclpy.shutdown(context=context)
