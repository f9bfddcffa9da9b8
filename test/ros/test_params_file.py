"""config/tsa.yaml cannot drift from the nodes: every key is a parameter the node declares."""

import re
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip('rclpy')
from rclpy.parameter import Parameter

from tsa_ros.data.bag import BagFrame, write_bag
from tsa_ros.data.camera import CameraModel
from tsa_ros.ros.preflight import declared_parameters

REPO = Path(__file__).resolve().parents[2]


def flatten(params, prefix=''):
    for key, value in params.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            yield from flatten(value, name + '.')
        else:
            yield name


def node_classes():
    from tsa_ros.ros.attacker_node import AttackerNode
    from tsa_ros.ros.bag_player_node import BagPlayerNode
    from tsa_ros.ros.evaluator_node import EvaluatorNode
    from tsa_ros.ros.fusion_node import FusionNode
    from tsa_ros.ros.learner_node import LearnerNode
    from tsa_ros.ros.segmenter_node import SegmenterNode

    return {
        'teacher': SegmenterNode,
        'student': SegmenterNode,
        'adaptive': SegmenterNode,
        'learner': LearnerNode,
        'fusion': FusionNode,
        'attacker': AttackerNode,
        'bag_player': BagPlayerNode,
        'evaluator': EvaluatorNode,
    }


@pytest.mark.parametrize(
    'params_file', ['config/tsa.yaml', 'config/cpu.yaml', 'test/ros/tiny.yaml']
)
def test_every_key_is_a_declared_parameter(ros, tmp_path, params_file):
    path = REPO / params_file
    sections = yaml.safe_load(path.read_text())
    bag = tmp_path / 'bag'
    camera = CameraModel.cityscapes_default(16, 8)
    write_bag([BagFrame(1, np.zeros((8, 16, 3), np.uint8), camera)], bag)
    classes = node_classes()
    assert {key.split('/')[-1] for key in sections} == set(classes)
    for key, section in sections.items():
        name = key.split('/')[-1]
        # Small, fast networks: only the declarations matter here, not the sizes.
        overrides = (
            [Parameter('warmup', value=False)]
            if classes[name].__name__ == ('SegmenterNode')
            else []
        )
        if name in ('teacher', 'student', 'adaptive', 'learner', 'attacker'):
            overrides += [
                Parameter('model.input_size', value=[32, 64]),
                Parameter('model.backbone', value='resnet18'),
            ]
        if name == 'bag_player':
            overrides.append(Parameter('bag', value=str(bag)))
        node = classes[name](
            node_name=name,
            context=ros.context,
            parameter_overrides=overrides,
            cli_args=['--ros-args', '--params-file', str(path)],
        )
        try:
            undeclared = [
                k for k in flatten(section['ros__parameters']) if not node.has_parameter(k)
            ]
            assert not undeclared, (
                f'{params_file} [{name}]: not parameters of the node: {undeclared}'
            )
            # tsa up's preflight knows exactly what each node declares.
            executable = 'segmenter' if name in ('teacher', 'student', 'adaptive') else name
            declared = declared_parameters(executable)
            if name in ('teacher', 'student'):  # only A checks weight snapshots
                declared -= {'weights_key_file', 'insecure_unsigned_weights'}
            assert set(node._parameters) == declared, name
        finally:
            close = getattr(node, 'close', None)
            if close is not None:
                close()
            node.destroy_node()


def test_a_misspelt_key_is_an_error_naming_it(ros, tmp_path):
    from tsa_ros.config import ConfigError
    from tsa_ros.ros.fusion_node import FusionNode

    params = tmp_path / 'bad.yaml'
    params.write_text('/**/fusion:\n  ros__parameters:\n    fusion:\n      mdoe: posterior\n')
    with pytest.raises(ConfigError, match=r"'fusion.mdoe' \(did you mean 'fusion.mode'\?\)"):
        FusionNode(
            node_name='fusion',
            context=ros.context,
            cli_args=['--ros-args', '--params-file', str(params)],
        )


def test_a_parameter_of_other_nodes_is_only_a_warning(ros, tmp_path, capfd):
    from tsa_ros.ros.fusion_node import FusionNode

    params = tmp_path / 'shared.yaml'
    params.write_text('/**:\n  ros__parameters:\n    device: cpu\n')  # for the segmenters
    node = FusionNode(
        node_name='fusion',
        context=ros.context,
        cli_args=['--ros-args', '--params-file', str(params)],
    )
    node.destroy_node()
    assert "ignoring parameters this node does not have: ['device']" in capfd.readouterr().err


def test_a_params_file_rcl_cannot_parse_is_one_line_not_a_traceback(tmp_path, ros_domain_id):
    import subprocess
    import sys

    broken = tmp_path / 'broken.yaml'
    broken.write_text('/**/fusion:\n  ros__parameters:\n    fusion: {mode: [unclosed\n')
    cmd = [sys.executable, '-m', 'tsa_ros.ros.fusion_node', '--ros-args']
    out = subprocess.run(
        [*cmd, '--params-file', str(broken)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert 'cannot start' in out.stderr and "Couldn't parse params file" in out.stderr
    assert 'Traceback' not in out.stderr


@pytest.mark.parametrize(
    ('content', 'args', 'message'),
    [
        (
            '/**/fusion:\n  ros__parameters:\n    fusion:\n      mdoe: posterior\n',
            {},
            "node fusion: unknown parameter 'fusion.mdoe' (did you mean 'fusion.mode'?)",
        ),
        (
            '/**/teacher:\n  ros__parameters:\n    publsh_color: false\n',
            {},
            "node teacher: unknown parameter 'publsh_color' (did you mean 'publish_color'?)",
        ),
        (
            '/**/fusion:\n  ros__parameters:\n    roles: [teacher, oracle]\n',
            {},
            "fusion roles ['oracle'] are published by no node",
        ),
        ('/**/fusion:\n  ros__parameters:\n    roles: [teacher\n  x: 1\n', {}, ':4:4: YAML'),
        ('', {'teacher_checkpoint': '/nonexistent/T.pt'}, 'checkpoint not found'),
        ('', {'bag': '/nonexistent/bag'}, 'bag /nonexistent/bag: not found'),
    ],
)
def test_tsa_up_checks_the_whole_graph_before_starting(tmp_path, content, args, message):
    from tsa_ros.config import ConfigError
    from tsa_ros.ros.graph import GraphArgs
    from tsa_ros.ros.up import up

    config = tmp_path / 'params.yaml'
    config.write_text(content or (REPO / 'test/ros/tiny.yaml').read_text())
    graph = 'replay' if 'bag' in args else 'tsa'
    with pytest.raises(ConfigError, match=re.escape(message)):
        up(graph, GraphArgs(config=str(config), **args), dry_run=True)


def test_the_shipped_configs_pass_the_preflight(tmp_path):
    from tsa_ros.ros.graph import GraphArgs
    from tsa_ros.ros.up import up

    for config in ('config/tsa.yaml', 'config/cpu.yaml', 'test/ros/tiny.yaml'):
        assert up('tsa', GraphArgs(config=str(REPO / config)), dry_run=True) == 0
