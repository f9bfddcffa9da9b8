"""``tsa up``: bring up a graph without ``ros2 launch`` (launch_ros is not on PyPI).

Starts every node of :func:`tsa_ros.ros.graph.describe` as its own process with exactly the
name, namespace, params file, parameter overrides and remappings that the launch files give
``launch_ros.actions.Node``. Ctrl-C (SIGINT/SIGTERM) stops all of them; when one node fails
the others are stopped too. With ``exit_when_done`` the graph ends when the bag player does,
and every node gets SIGINT so the evaluator writes its report.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from tsa_ros.ros.graph import GraphArgs, NodeSpec, describe


def ros_value(value: object) -> str:
    """A parameter value in the YAML syntax of ``--ros-args -p name:=value``."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        # Always quoted: rcl reads the value as YAML, where on, yes, 123 or 1e3 unquoted
        # would reach the node as a bool or a number (launch_ros passes strings as strings).
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return '[' + ', '.join(ros_value(v) for v in value) + ']'
    return str(value)


def node_command(spec: NodeSpec, params_file: str, python: str = sys.executable) -> list[str]:
    """The command line that runs one node like launch_ros would."""
    cmd = [python, '-m', spec.module, '--ros-args', '-r', f'__node:={spec.name}']
    if spec.namespace:
        cmd += ['-r', f'__ns:={spec.namespace}']
    cmd += ['--params-file', params_file]
    for name, value in spec.parameters.items():
        cmd += ['-p', f'{name}:={ros_value(value)}']
    for src, dst in spec.remappings:
        cmd += ['-r', f'{src}:={dst}']
    return cmd


def up(graph: str, args: GraphArgs, *, dry_run: bool = False, log_dir: str | None = None) -> int:
    """Run a graph until Ctrl-C, a node failure, or (exit_when_done) the end of the bag."""
    specs = describe(graph, args)
    params_file = args.params_file
    if not Path(params_file).is_file():
        raise FileNotFoundError(f'params file not found: {params_file}')
    commands = {spec.name: node_command(spec, params_file) for spec in specs}
    if dry_run:
        print(
            json.dumps(
                [
                    {
                        'executable': s.executable,
                        'name': s.name,
                        'namespace': s.namespace,
                        'parameters': s.parameters,
                        'remappings': s.remappings,
                        'params_file': params_file,
                        'command': commands[s.name],
                    }
                    for s in specs
                ],
                indent=2,
            )
        )
        return 0

    logs = Path(log_dir) if log_dir else None
    if logs:
        logs.mkdir(parents=True, exist_ok=True)
    procs: dict[str, subprocess.Popen] = {}
    for name, cmd in commands.items():
        out = open(logs / f'{name}.log', 'wb') if logs else None
        procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)
    print(f'tsa up {graph}: started {", ".join(procs)}', flush=True)

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        while not stopping:
            time.sleep(0.2)
            for name, proc in procs.items():
                code = proc.poll()
                if code is None:
                    continue
                if name == 'bag_player' and code == 0 and args.exit_when_done:
                    print('tsa up: bag finished, stopping the graph', flush=True)
                elif code != 0:
                    print(
                        f'tsa up: node {name} exited with {code}, stopping the graph',
                        file=sys.stderr,
                        flush=True,
                    )
                    status = 1
                else:
                    continue
                stopping = True
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_all(procs)
    return status


def stop_all(procs: dict[str, subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGINT every node (they shut down cleanly and write reports), then kill stragglers."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def add_arguments(parser) -> None:
    """`tsa up` options: the graph and every GraphArgs field, as in the launch files."""
    from tsa_ros.ros.graph import GRAPHS
    from tsa_ros.ros.params import attribute_docs

    docs = attribute_docs(GraphArgs)
    defaults = GraphArgs()
    parser.add_argument('graph', nargs='?', default='tsa', choices=GRAPHS)
    for name, help_text in docs.items():
        value = getattr(defaults, name)
        flag = '--' + name.replace('_', '-')
        if isinstance(value, bool):
            parser.add_argument(flag, dest=name, action='store_true', help=help_text)
        else:
            parser.add_argument(flag, dest=name, type=type(value), default=value, help=help_text)
    parser.add_argument(
        '--dry-run',
        action='store_true',
        help='print the nodes and their command lines, start nothing',
    )
    parser.add_argument('--log-dir', help="write each node's output to LOG_DIR/<node>.log")


def main_from_args(ns) -> int:
    values = {name: getattr(ns, name) for name in GraphArgs.__dataclass_fields__}
    return up(ns.graph, GraphArgs(**values), dry_run=ns.dry_run, log_dir=ns.log_dir)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog='tsa up', description=__doc__.splitlines()[0])
    add_arguments(parser)
    return main_from_args(parser.parse_args(argv))
