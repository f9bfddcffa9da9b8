"""``tsa soak``: a bounded soak of the tiny graph, and the verdict's rules on made-up samples."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('rclpy')

from tsa_ros.errors import ConfigError
from tsa_ros.ros.soak import SoakArgs, judge

TINY = Path(__file__).with_name('tiny.yaml')
NODES = ('teacher', 'student', 'adaptive', 'learner', 'fusion')


def samples(rss_of_node):
    """Nine samples; ``rss_of_node(name, i)`` gives the RSS of sample i."""
    return [{'time_s': 5.0 * i, 'rss_mb': {n: rss_of_node(n, i) for n in NODES}} for i in range(9)]


def counters(camera_frames, admitted, fused):
    per_net = {'frames': admitted, 'skipped.admission': camera_frames - admitted}
    return {
        **{r: dict(per_net) for r in ('teacher', 'student', 'adaptive', 'learner')},
        'fusion': {'fused': fused},
    }


def test_the_verdict_passes_a_flat_fully_accounted_run():
    verdict = judge(100, {}, counters(100, 10, 10), samples(lambda n, i: 300.0), [50.0], {}, 40.0)
    assert verdict.ok, verdict.problems
    assert verdict.latency_ms['p50'] == 50.0


def test_the_verdict_names_a_node_whose_memory_grows():
    # The first third is warm-up and may grow; afterwards 20 MB per sample is a leak.
    leak = samples(lambda n, i: 300.0 + (20 * i if n == 'adaptive' else 0))
    verdict = judge(100, {}, counters(100, 10, 10), leak, [], {}, 40.0)
    assert not verdict.ok
    assert verdict.problems == ['adaptive: peak RSS grew by 60.0 MB (limit 40.0 MB)']


def test_the_verdict_names_unaccounted_frames_and_unfused_admitted_ones():
    final = counters(100, 10, 8)
    final['student']['skipped.admission'] -= 3  # three frames vanished in the student
    verdict = judge(100, {}, final, samples(lambda n, i: 300.0), [], {}, 40.0)
    assert 'student: 3 of 100 camera frames not accounted for' in verdict.problems
    assert any(p.startswith('fusion accounted for 8 frames') for p in verdict.problems)


def test_a_soak_too_short_to_judge_is_refused():
    with pytest.raises(ConfigError, match='fewer than 6 samples'):
        SoakArgs(minutes=0.2, sample_s=5.0)


def test_a_bounded_soak_of_the_tiny_graph_is_flat_and_accounts_for_every_frame(tmp_path):
    out = tmp_path / 'soak'
    cmd = [sys.executable, '-m', 'tsa_ros.cli', 'soak', '--minutes', '1', '--rate', '30']
    cmd += ['--admission-hz', '2', '--sample-s', '3', '--config', str(TINY), '--out', str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    assert 'ok (flat memory, every frame accounted for)' in run.stdout
    summary = json.loads((out / 'summary.json').read_text())
    verdict = summary['verdict']
    assert verdict['ok'] and verdict['published'] >= 0.9 * 60 * 30
    assert all(v == 0 for v in verdict['unaccounted'].values())
    # The triplet admitted the same frames, about 2 per second.
    admitted = verdict['admitted'].values()
    assert max(admitted) - min(admitted) <= 2 and 90 <= min(admitted) <= 130, admitted
    assert summary['machine']['cpu'] and len(summary['machine']['loadavg_end']) == 3
    with (out / 'soak.csv').open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 15
    assert {f'rss_mb.{n}' for n in NODES} <= set(rows[0])
    assert all(float(r[f'rss_mb.{n}']) > 50 for r in rows for n in NODES)
    assert int(rows[-1]['camera_frames']) == verdict['published']
    assert (out / 'soak.png').stat().st_size > 10_000
