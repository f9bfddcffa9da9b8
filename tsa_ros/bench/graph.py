"""The graph rows of ``tsa bench``: camera-to-fused latency through the running ``tsa`` graph
against the slowest network's bare forward pass, the ROS overhead, and message sizes per topic.

The measurement brings up real nodes and talks DDS, so it lives in the ROS layer
(:mod:`tsa_ros.ros.graph_bench`) and runs in a process of its own; this module only starts it
and turns its JSON into rows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np

from tsa_ros.bench.figures import Row

__all__ = ['graph_rows', 'run_graph_bench']


def run_graph_bench(
    params_file: str = '', frames: int = 10, device: str = 'cpu', log=print
) -> dict[str, Any] | None:
    """The ROS layer's measurement (see :mod:`tsa_ros.ros.graph_bench`); None when it could not
    run (no ROS 2 in this Python, a graph that does not come up), with the reason logged."""
    cmd = [sys.executable, '-m', 'tsa_ros.ros.graph_bench', '--json', '--frames', str(frames)]
    cmd += ['--device', device, '--config', params_file]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        # e.g. ModuleNotFoundError: rclpy where ROS 2 is not installed (`make setup`)
        tail = proc.stderr.strip().splitlines()[-3:]
        log('graph rows skipped: the graph measurement failed: ' + ' | '.join(tail))
        return None
    return json.loads(proc.stdout)


def graph_rows(result: dict[str, Any]) -> list[Row]:
    """Per learner phase: camera->fused against the slowest bare forward, the ROS overhead
    against the slowest in-node inference, and that inference against its bare forward (how
    much the processes of the graph slow each other down)."""
    height, width = result['camera_size']
    bare = {role: min(times) for role, times in result['bare_forward_ms'].items()}
    slowest_role = max(bare, key=bare.get)
    threads, backend = result['threads'], result['backends'][slowest_role]
    reference = (
        f'bare forward of {slowest_role} ({backend}, {threads} thread{"s" * (threads > 1)})'
    )
    rows = []
    for phase, p in result['phases'].items():
        where = f'{width}x{height}, {phase}'
        slowest = min(p['slowest_inference_ms'])
        for figure, key, ref_name, ref_ms in (
            ('camera -> fused', 'latency_ms', reference, bare[slowest_role]),
            (
                'ROS overhead (camera -> fused - slowest in-node inference)',
                'overhead_ms',
                'slowest in-node inference',
                slowest,
            ),
            ('slowest in-node inference', 'slowest_inference_ms', reference, bare[slowest_role]),
        ):
            values = p[key]
            rows.append(
                Row(
                    'graph',
                    f'{figure} {where}',
                    min(values),
                    float(np.median(values)),
                    ref_name,
                    ref_ms,
                )
            )
    return rows


def messages_markdown(messages: list[dict[str, Any]]) -> list[str]:
    """The message-size table's lines."""
    lines = [
        '| camera | topic | type | bytes per message | messages seen |',
        '|---|---|---|--:|--:|',
    ]
    for m in messages:
        lines.append(
            f'| {m.get("camera", "")} | {m["topic"]} | {m["type"]} | {m["bytes"]:,} | '
            f'{m["messages"]} |'
        )
    return lines
