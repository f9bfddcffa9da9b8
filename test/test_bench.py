"""`tsa bench`: every stage measured beside its reference (figures unchecked: speed targets
are benchmarks, not timed tests)."""

import json
import math
from pathlib import Path

import pytest

from tsa_ros.bench import timing
from tsa_ros.cli import main

STAGES = {'network', 'predictor', 'codec', 'fusion', 'attack', 'learner', 'triplet', 'graph'}
TINY_PARAMS = Path(__file__).parent / 'ros' / 'tiny.yaml'


def test_interleave_runs_the_cases_round_robin_after_the_warmup():
    calls = []
    times = timing.interleave(
        {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, 3, warmup=1
    )
    assert calls == ['a', 'b'] * 4
    assert {name: len(t.samples) for name, t in times.items()} == {'a': 3, 'b': 3}
    assert times['a'].min <= times['a'].median
    with pytest.raises(ValueError, match='repeats'):
        timing.interleave({'a': lambda: None}, 0)


def test_quick_bench_reports_every_stage_beside_its_reference(tmp_path, capsys, ros_domain_id):
    out = tmp_path / 'bench'
    argv = ['bench', '--quick', '--json', '--out', str(out), '--params', str(TINY_PARAMS)]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads((out / 'bench.json').read_text()) == report
    assert {row['stage'] for row in report['rows']} == STAGES
    for row in report['rows']:
        assert row['ms'] > 0 and row['reference_ms'] > 0, row
        assert math.isclose(row['ratio'], row['ms'] / row['reference_ms']), row
        assert row['median_ms'] >= row['ms'], row
    figures = [row['figure'] for row in report['rows']]
    for tie in ('teacher', 'posterior', 'ignore'):
        assert any(f'tie={tie}' in f for f in figures)
    assert any(f.startswith('T deeplabv3plus') for f in figures)
    assert any(f.startswith('teacher in the triplet, 1 thread(s) each') for f in figures)
    # The running graph: both learner phases, and every topic of the triplet sized.
    for phase in ('learner paused', 'learner training'):
        assert any(f.startswith('camera -> fused') and f.endswith(phase) for f in figures)
    sizes = {m['topic']: m['bytes'] for m in report['messages']}
    camera = sizes['/camera/image_raw']
    assert camera > 128 * 64 * 3  # an rgb8 frame of the tiny camera, and its header
    for role in ('teacher', 'student', 'adaptive', 'fused'):
        assert sizes[f'/tsa/{role}/segmentation'] > 128 * 64  # labels, one byte a pixel
    assert sizes['/tsa/learner/weights'] > 1e6  # an ERFNet's weights, latched
    for key in ('cpu', 'cpu_count', 'threads', 'loadavg', 'torch'):
        assert key in report['machine_before'] and key in report['machine_after']
    assert report['peaks_gflops']['fp32'] > 0
    table = (out / 'bench.md').read_text()
    assert '| stage | figure | min ms |' in table
    assert '| 128x64 | /camera/image_raw | sensor_msgs/msg/Image |' in table
    rows = table.split('Messages of the tsa graph')[0]
    assert len([line for line in rows.splitlines() if line.startswith('| ')]) == 1 + len(
        report['rows']
    )


@pytest.mark.parametrize(
    ('size', 'message'), [('512by1024', 'must be HxW'), ('100x200', 'multiples of 8')]
)
def test_bench_refuses_a_bad_size_in_one_line(size, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(['bench', '--sizes', size])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
