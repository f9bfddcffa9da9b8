"""launch_ros glue: a LaunchDescription for a graph of :mod:`tsa_ros.ros.graph`.

The launch files are one line each (``generate_launch_description = ...('tsa')``), so the
nodes, parameters and remappings come from the same :func:`tsa_ros.ros.graph.describe` that
``tsa up`` uses. launch and launch_ros are imported here only, when a launch file runs.
"""

from __future__ import annotations

from tsa_ros.ros.graph import GraphArgs, describe, launch_arguments

#: Seconds before launch restarts a node that died (``tsa up`` backs off from 1 s to 30 s).
RESPAWN_DELAY_S = 2.0


def node_kwargs(graph: str, values: dict[str, str]) -> list[dict]:
    """The keyword arguments of each launch_ros node action of ``graph``, as plain data.

    ``values`` are launch-argument strings. Each dict holds what ``launch_ros.actions.Node``
    takes (package, executable, name, namespace, parameters, remappings, respawn ...) plus
    ``managed`` (a ``LifecycleNode`` action) and ``shutdown_on_exit`` (the bag player under
    ``exit_when_done``). Kept free of launch imports so the parity with ``tsa up`` is tested
    where launch_ros is not installed.
    """
    args = GraphArgs.from_strings(values)
    nodes = []
    for spec in describe(graph, args):
        kwargs = dict(
            package='tsa_ros',
            executable=spec.executable,
            name=spec.name,
            namespace=spec.namespace,
            parameters=[args.params_file, dict(spec.parameters)],
            remappings=list(spec.remappings),
            output='screen',
            emulate_tty=True,
            managed=spec.managed,
            shutdown_on_exit=spec.executable == 'bag_player' and args.exit_when_done,
        )
        if spec.respawn:
            kwargs.update(respawn=True, respawn_delay=RESPAWN_DELAY_S)
        nodes.append(kwargs)
    return nodes


def node_actions(graph: str, values: dict[str, str]) -> list:
    """launch_ros actions for ``graph`` with launch-argument strings ``values``.

    Managed nodes become ``LifecycleNode`` actions (their transitions can be observed and
    requested from launch), driven to active by the graph's lifecycle manager. Nodes that
    die are respawned; the bag player is not, and with ``exit_when_done`` its exit shuts the
    whole launch down, as ``tsa up`` does, so the evaluator writes its report.
    """
    from launch.actions import Shutdown
    from launch_ros.actions import LifecycleNode, Node

    actions = []
    for kwargs in node_kwargs(graph, values):
        action = LifecycleNode if kwargs.pop('managed') else Node
        if kwargs.pop('shutdown_on_exit'):
            kwargs['on_exit'] = [Shutdown(reason='the bag has been played (exit_when_done)')]
        actions.append(action(**kwargs))
    return actions


def generate(graph: str):
    """The LaunchDescription of ``graph``: its arguments, then its nodes."""
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.substitutions import LaunchConfiguration

    from launch import LaunchDescription

    arguments = launch_arguments(graph)

    def build(context):
        values = {a.name: LaunchConfiguration(a.name).perform(context) for a in arguments}
        return node_actions(graph, values)

    declared = [
        DeclareLaunchArgument(
            a.name,
            default_value=a.default,
            description=a.description,
            **({'choices': list(a.choices)} if a.choices else {}),
        )
        for a in arguments
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=build)])
