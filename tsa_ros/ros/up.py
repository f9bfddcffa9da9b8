"""``tsa up``: bring up a graph without ``ros2 launch`` (launch_ros is not on PyPI).

Starts every node of :func:`tsa_ros.ros.graph.describe` as its own process with exactly the
name, namespace, params file, parameter overrides and remappings that the launch files give
``launch_ros.actions.Node``. Ctrl-C (SIGINT/SIGTERM) stops all of them.

A node that dies is restarted (``NodeSpec.respawn``, as the launch files set ``respawn``)
after a back-off of 1 s that doubles up to 30 s while it keeps dying and resets once it has
run for a minute; the other nodes keep running, and fusion's quorum carries the graph
meanwhile. The bag player is not restarted: with ``exit_when_done`` its exit ends the graph
(every node gets SIGINT, so the evaluator writes its report), a failure of it ends the graph
with status 1. Any node that exits non-zero, also while the graph shuts down, is reported
and makes ``tsa up`` exit 1.
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
from tsa_ros.ros.preflight import check_graph


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
    check_graph(graph, args, specs)  # the whole configuration, before any node starts
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
    supervisor = Supervisor(specs, commands, logs)
    print(f'tsa up {graph}: started {", ".join(supervisor.procs)}', flush=True)

    stopping = False

    def request_stop(signum, frame):
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    status = 0
    try:
        while not stopping:
            time.sleep(0.2)
            ended = supervisor.poll(time.monotonic(), exit_when_done=args.exit_when_done)
            if ended is not None:
                status = ended
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_all(supervisor.procs)
    for name, proc in supervisor.procs.items():
        if name not in supervisor.restart_at and proc.returncode not in (0, None):
            print(
                f'tsa up: node {name} exited with {proc.returncode} while stopping',
                file=sys.stderr,
                flush=True,
            )
            status = 1
    return 1 if supervisor.failures else status  # a node died meanwhile: say so


#: Back-off of restarts: first delay, cap, and the run time after which it starts again.
RESTART_DELAY_S, RESTART_DELAY_MAX_S, RESTART_RESET_S = 1.0, 30.0, 60.0


class Supervisor:
    """The graph's processes: starts them, restarts the ones that die, says when to stop."""

    def __init__(self, specs: list[NodeSpec], commands: dict[str, list[str]], logs) -> None:
        self.specs = {spec.name: spec for spec in specs}
        self.commands = commands
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.started: dict[str, float] = {}
        self.delay: dict[str, float] = {}
        self.restart_at: dict[str, float] = {}
        self.restarts: dict[str, int] = dict.fromkeys(commands, 0)
        self.failures = 0
        for name in commands:
            self._start(name, time.monotonic())

    def _start(self, name: str, now: float) -> None:
        out = open(self.logs / f'{name}.log', 'ab') if self.logs else None
        stderr = subprocess.STDOUT if out else None
        self.procs[name] = subprocess.Popen(self.commands[name], stdout=out, stderr=stderr)
        self.started[name] = now

    def poll(self, now: float, exit_when_done: bool = False) -> int | None:
        """Check every node once; the graph's exit status when it should stop, else None."""
        for name, proc in self.procs.items():
            if name in self.restart_at:
                if now >= self.restart_at[name]:
                    del self.restart_at[name]
                    self.restarts[name] += 1
                    print(f'tsa up: restarting {name} (restart {self.restarts[name]})', flush=True)
                    self._start(name, now)
                continue
            code = proc.poll()
            if code is None:
                continue
            spec = self.specs[name]
            if not spec.respawn:
                if code == 0 and exit_when_done:
                    print('tsa up: bag finished, stopping the graph', flush=True)
                    return 0
                print(
                    f'tsa up: node {name} exited with {code}, stopping the graph',
                    file=sys.stderr,
                    flush=True,
                )
                return 1 if code != 0 else 0
            self.failures += 1
            ran = now - self.started[name]
            delay = self.delay.get(name, RESTART_DELAY_S)
            if ran >= RESTART_RESET_S:
                delay = RESTART_DELAY_S
            self.delay[name] = min(2 * delay, RESTART_DELAY_MAX_S)
            self.restart_at[name] = now + delay
            print(
                f'tsa up: node {name} exited with {code} after {ran:.0f} s; the others keep '
                f'running, restarting it in {delay:.0f} s',
                file=sys.stderr,
                flush=True,
            )
        return None


def stop_all(procs: dict[str, subprocess.Popen], timeout: float = 30.0) -> None:
    """SIGINT every node (they shut down cleanly and write reports), then kill stragglers.

    The learner finishes its training step and writes A's final checkpoint first; on a
    loaded 2-core machine that took over 10 s, so stragglers get 30 s before SIGKILL.
    """
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
