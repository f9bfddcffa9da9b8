"""``tsa experiment paper`` with the tiny preset: every stage end to end, then a resume."""

import csv
import json
import re

import numpy as np
import torch

from tsa_ros.cli import main
from tsa_ros.experiments.detection import TEACHER_WEIGHTS
from tsa_ros.experiments.paper import STAGES, run_paper
from tsa_ros.experiments.report import report_markdown

# Two sweep values each (α = 0.6 and γ = 1 reuse A+IFM, so three new adaptation runs).
_SHORT = {'alphas': (0.3, 0.6), 'gammas': (1.0, 2.0)}
#: Table 2's fusion rows of T, S, A+IFM, in order.
_FUSION = ('majority', 'posterior', 'weighted', 'confidence', 'gated', 'gated_confidence')


def _numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers(item)
    elif isinstance(value, float):
        yield value


def test_tiny_paper_experiment_end_to_end_and_resume(tiny_root, tmp_path):
    results = run_paper(
        'tiny',
        out=tmp_path,
        run='r',
        data=tiny_root,
        device='cpu',
        progress=False,
        overrides=_SHORT,
    )
    run = tmp_path / 'r'
    expected = [
        'results.json',
        'table1.md',
        'table1.csv',
        'table2.md',
        'table2.csv',
        'sweeps.csv',
        'fig2_alpha.png',
        'fig3_gamma.png',
        'overlays/frame_00.png',
        'models/teacher.pt',
        'models/student.pt',
        'models/adaptive.pt',
        'models/adaptive_ifm.pt',
    ]
    for split in ('minival', 'minitest'):
        for name in ('clean', 'T-AE-1', 'T-AE-10', 'S-AE-1', 'S-AE-10'):
            expected.append(f'ae/{split}/{name}/tsa_synth.json')
    for name in expected:
        assert (run / name).is_file(), name

    columns = ['network', 'metric', 'clean', 'T-AE-1', 'T-AE-10', 'S-AE-1', 'S-AE-10']
    for number, rows in (
        (1, ['T', 'S', 'A']),
        (2, ['T', 'S', 'A', 'A+IFM', *_FUSION]),
    ):
        table = list(csv.reader((run / f'table{number}.csv').open()))
        assert table[0] == columns
        assert [r[0] for r in table[1:] if r[1] == 'miou_ratio_pct'] == rows
        assert [r[0] for r in table[1:] if r[1] == 'miou_pct'] == rows
        assert f'Table {number}' in (run / f'table{number}.md').read_text()

    # The fusion rows' parameters come from mini val, as in `tsa experiment detection`.
    table2 = json.loads((run / 'table2.json').read_text())
    assert table2['fusion_of'] == ['T', 'S', 'A+IFM']
    assert list(table2['fusion_rows']) == list(_FUSION)
    fitted = table2['fusion_parameters']
    assert fitted['from'] == 'minival' and fitted['gate_rule'] == 'fused'
    assert fitted['teacher_weight'] in TEACHER_WEIGHTS
    assert 0.0 <= fitted['gate_threshold'] <= 1.0
    assert fitted['gate_target_fpr'] == 0.05
    assert list(fitted['class_weights']) == ['T', 'S', 'A+IFM']
    for weights in fitted['class_weights'].values():
        assert len(weights) == len(table2['class_names'])
    note = (run / 'table2.md').read_text()
    assert 'fitted on the minival split' in note
    assert all(f'- `{row}`: ' in note for row in _FUSION)

    sweeps = list(csv.DictReader((run / 'sweeps.csv').open()))
    assert [(r['sweep'], float(r['alpha'])) for r in sweeps if r['sweep'] == 'alpha'] == [
        ('alpha', 0.3),
        ('alpha', 0.6),
    ]
    assert {float(r['p']) for r in sweeps if r['sweep'] == 'p'} == {2.0}
    assert [float(r['gamma']) for r in sweeps if r['sweep'] == 'gamma'] == [1.0, 2.0]
    assert {'ratio_s_ae1', 'miou_s_ae10', 'ratio_s_ae10'} <= set(sweeps[0])

    stored = json.loads((run / 'results.json').read_text())
    assert 'git_revision' in stored
    assert stored['preset']['name'] == 'tiny'
    assert set(stored['timings']) == set(STAGES)
    assert stored['table2']['fusion_parameters'] == fitted
    for key in ('table1', 'table2'):
        for row in stored[key]['results'].values():
            for cell in row.values():
                assert cell['miou'] is None or 0.0 <= cell['miou'] <= 1.0
    for row in stored['sweeps']:
        for key in ('miou_clean', 'miou_s_ae1', 'miou_s_ae10'):
            assert row[key] is None or 0.0 <= row[key] <= 1.0
    assert results['git_revision'] == stored['git_revision']
    assert stored['environment']['torch'] == torch.__version__
    assert stored['environment']['cpu_capability'] == torch.backends.cpu.get_cpu_capability()

    # The report puts our numbers beside the paper's and is rebuilt from results.json alone.
    report = (run / 'report.md').read_text()
    assert report == report_markdown(stored)
    for paper_number in (37.98, 80.51, 53.01, 84.95):  # printed with one decimal
        assert f' / {paper_number:.1f} ' in report
    s_clean = 100.0 * stored['table2']['results']['S']['clean']['miou']
    assert f'| S | {s_clean:.1f} / {64.55:.1f} |' in report
    assert '![Fig. 2 analogue](fig2_alpha.png)' in report
    assert '| S-AE ε=10 ratio % (ours) |' in report
    assert '(overlays/frame_00.png)' in report

    # Resume: every stage is skipped, nothing is retrained or rewritten.
    checkpoints = sorted((run / 'models').glob('*.pt'))
    mtimes = [p.stat().st_mtime_ns for p in checkpoints]
    table_mtime = (run / 'table2.csv').stat().st_mtime_ns
    code = main(
        [
            'experiment',
            'paper',
            '--preset',
            'tiny',
            '--data',
            str(tiny_root),
            '--out',
            str(tmp_path),
            '--run',
            'r',
            '--device',
            'cpu',
            '--quiet',
            '--publish',
            str(tmp_path / 'published'),
            '--stages',
            *(stage for stage in STAGES if stage != 'report'),
        ]
    )
    assert code == 0
    assert [p.stat().st_mtime_ns for p in checkpoints] == mtimes
    assert (run / 'table2.csv').stat().st_mtime_ns == table_mtime
    again = json.loads((run / 'results.json').read_text())
    assert all(t['skipped'] for t in again['timings'].values())
    assert again['command'].startswith('tsa experiment paper --preset tiny --data ')

    # --publish copies the report with every file it links, and no checkpoints.
    published = tmp_path / 'published'
    text = (published / 'report.md').read_text()
    links = re.findall(r'\]\(([^)]+)\)', text)
    assert 'fig3_gamma.png' in links
    for link in links:
        assert (published / link).is_file(), link
    assert (published / 'results.json').is_file()
    assert not list(published.rglob('*.pt'))


def test_compare_reads_reports_of_the_live_evaluator(tmp_path, capsys):
    from tsa_ros.evaluation import build_report, write_report
    from tsa_ros.metrics import ConfusionMatrix

    def report(wrong):
        cm = ConfusionMatrix(19)
        gt = np.zeros((1, 4, 4), np.uint8)
        pred = gt.copy()
        pred[0, :wrong] = 1
        cm.update(pred, gt)
        return build_report({'fused': cm}, frames=1, missing={})

    paths = []
    for name, wrong in (('a', 0), ('b', 2)):
        json_path, _ = write_report(report(wrong), tmp_path / f'{name}.json')
        paths.append(str(json_path))
    assert main(['experiment', 'compare', paths[0], paths[0]]) == 0
    assert main(['experiment', 'compare', *paths]) == 1
    assert '| evaluator mIoU: fused | 100.00 | 25.00 | 75.00 |' in capsys.readouterr().out


def test_forcing_a_stage_redoes_the_stages_after_it():
    from tsa_ros.experiments.paper import stages_to_redo

    assert stages_to_redo(['adapt']) == {'adapt', 'ae_sets', 'tables', 'sweeps', 'report'}
    assert stages_to_redo(['report', 'tables']) == {'tables', 'sweeps', 'report'}
    assert stages_to_redo([]) == set()


def test_a_rerun_with_the_same_seed_trains_identical_networks(tiny_root, tmp_path):
    """Same seed, same machine: T, S, A and A+IFM come out bit-identical (re-run check)."""
    from tsa_ros.models import load_checkpoint

    stages = ['data', 'train_teacher', 'train_student', 'adapt']
    for run in ('first', 'second'):
        run_paper('tiny', out=tmp_path, run=run, data=tiny_root, stages=stages, progress=False)
    for name in ('teacher', 'student', 'adaptive', 'adaptive_ifm'):
        first, _ = load_checkpoint(tmp_path / 'first' / 'models' / f'{name}.pt')
        second, _ = load_checkpoint(tmp_path / 'second' / 'models' / f'{name}.pt')
        for key, value in first.state_dict().items():
            assert torch.equal(value, second.state_dict()[key]), (name, key)


def test_compare_reports_identical_runs_and_the_largest_difference(tmp_path, capsys):
    from tsa_ros.experiments.compare import compare_results

    def run(s_clean, s_ae10, sweep_ratio):
        cells = {'clean': {'miou': s_clean}, 'S-AE-10': {'miou': s_ae10}}
        return {
            'preset': {'name': 'default', 'seed': 0},
            'table2': {'results': {'S': cells}},
            'sweeps': [
                {
                    'sweep': 'alpha',
                    'alpha': 0.2,
                    'gamma': 1.0,
                    'p': 1.0,
                    'miou_clean': 0.2,
                    'ratio_s_ae1': sweep_ratio,
                },
            ],
            'timings': {'adapt': {'seconds': 600.0}, 'train_student': {'miou': 0.2}},
        }

    first, second = run(0.20, 0.05, 0.97), run(0.20, 0.06, 0.97)
    diffs = {(d.group, d.name): d.delta for d in compare_results(first, second)}
    assert diffs[('table2 mIoU', 'S clean')] == 0.0
    assert diffs[('training minival mIoU', 'train_student')] == 0.0
    assert abs(diffs[('table2 mIoU', 'S S-AE-10')] - 1.0) < 1e-9
    assert abs(diffs[('table2 ratio', 'S S-AE-10')] - 5.0) < 1e-9  # 25 % vs 30 %
    assert diffs[('sweeps S-AE-1 ratio', 'alpha α=0.2 γ=1 p=1')] == 0.0

    for name, results in (('a', first), ('b', second), ('c', first)):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'results.json').write_text(json.dumps(results))
    same = main(['experiment', 'compare', str(tmp_path / 'a'), str(tmp_path / 'c')])
    assert same == 0
    assert 'largest difference 0.00 points' in capsys.readouterr().out
    differ = main(['experiment', 'compare', str(tmp_path / 'a'), str(tmp_path / 'b')])
    out = capsys.readouterr().out
    assert differ == 1
    assert '| table2 ratio: S S-AE-10 | 25.00 | 30.00 | 5.00 |' in out
    within = main(
        ['experiment', 'compare', str(tmp_path / 'a'), str(tmp_path / 'b'), '--tolerance', '5']
    )
    assert within == 0
    # A whole group only one run has (the sweeps' ε = 10 ratio, newer than the first
    # published run) is listed, not gated; a missing cell inside a shared group fails.
    newer = json.loads(json.dumps(first))
    newer['sweeps'][0]['ratio_s_ae10'] = 0.5
    # ... and so are Table 2's fusion-rule rows.
    newer['table2']['results']['gated'] = json.loads(json.dumps(newer['table2']['results']['S']))
    (tmp_path / 'n').mkdir()
    (tmp_path / 'n' / 'results.json').write_text(json.dumps(newer))
    assert main(['experiment', 'compare', str(tmp_path / 'a'), str(tmp_path / 'n')]) == 0
    out = capsys.readouterr().out
    assert 'sweeps S-AE-10 ratio | only in ' in out
    assert 'table2 fusion rules mIoU | only in ' in out
    del newer['table2']['results']['S']['S-AE-10']
    (tmp_path / 'n' / 'results.json').write_text(json.dumps(newer))
    assert main(['experiment', 'compare', str(tmp_path / 'a'), str(tmp_path / 'n')]) == 1
    capsys.readouterr()

    # A folder without results gets one clear line, not a traceback.
    assert main(['experiment', 'compare', str(tmp_path), str(tmp_path / 'a')]) == 2
    assert 'holds no results.json' in capsys.readouterr().err


def test_a_report_without_sweeps_is_refused_before_any_stage_runs(tmp_path, capsys):
    code = main(
        ['experiment', 'paper', '--preset', 'tiny', '--out', str(tmp_path), '--run', 'r']
        + ['--stages', 'data', 'train_teacher', 'report', '--quiet']
    )
    assert code == 2
    assert "select 'sweeps' too" in capsys.readouterr().err
    assert not (tmp_path / 'r' / 'data').exists()  # nothing was generated or trained
