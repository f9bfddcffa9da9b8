"""`tsa bench`: every stage measured beside its reference (figures unchecked: speed targets
are benchmarks, not timed tests)."""

import json
import math

import pytest

from tsa_ros.bench import timing
from tsa_ros.cli import main

STAGES = {'network', 'predictor', 'codec', 'fusion', 'attack', 'learner', 'triplet'}


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


def test_quick_bench_reports_every_stage_beside_its_reference(tmp_path, capsys):
    out = tmp_path / 'bench'
    assert main(['bench', '--quick', '--json', '--out', str(out)]) == 0
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
    for key in ('cpu', 'cpu_count', 'threads', 'loadavg', 'torch'):
        assert key in report['machine_before'] and key in report['machine_after']
    assert report['peaks_gflops']['fp32'] > 0
    table = (out / 'bench.md').read_text()
    assert '| stage | figure | min ms |' in table
    assert len([line for line in table.splitlines() if line.startswith('| ')]) == 1 + len(
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
