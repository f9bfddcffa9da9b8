"""tsa experiment length-study: S's mIoU and S-AE ratios over checkpoints of one training run."""

import json

import pytest

from tsa_ros.cli import main
from tsa_ros.learning.train import TrainConfig, train


@pytest.fixture(scope='module')
def steps(tiny_root, tmp_path_factory):
    """Checkpoints of one tiny run of S after 1 and 3 steps (keep_steps)."""
    out = tmp_path_factory.mktemp('run')
    cfg = TrainConfig(steps=3, batch_size=2, num_workers=0, eval_every=0, keep_steps=(1, 3))
    train(cfg, tiny_root, out, device='cpu', progress=False)
    return [out / 'student.step3.pt', out / 'student.step1.pt']  # any order


def test_study_scores_every_checkpoint_and_resumes(tiny_root, steps, tmp_path, capsys):
    out = tmp_path / 'study'
    argv = ['experiment', 'length-study', '--data', str(tiny_root), '--split', 'minival']
    argv += ['--checkpoints', *map(str, steps), '--out', str(out), '--quiet']
    assert main(argv) == 0
    result = json.loads((out / 'study.json').read_text())
    assert [p['step'] for p in result['points']] == [1, 3]
    for point in result['points']:
        for key in ('miou_clean', 'miou_eps1', 'ratio_eps1', 'miou_eps10', 'ratio_eps10'):
            assert point[key] is None or 0.0 <= point[key] <= 1.5
    table = (out / 'study.md').read_text()
    assert (
        '| step | clean mIoU | S-AE ε=1 mIoU | S-AE ε=10 mIoU | ratio ε=1 | ratio ε=10 |' in table
    )
    assert (out / 'study.png').stat().st_size > 1000
    assert 'length-study' in result['command']

    # The AE sets are reused: a second run writes none and gives the same numbers.
    manifests = sorted(out.glob('ae/*/*/tsa_synth.json'))
    assert len(manifests) == 6  # 2 checkpoints x (clean, eps 1, eps 10)
    mtimes = [m.stat().st_mtime_ns for m in manifests]
    assert main(argv) == 0
    assert [m.stat().st_mtime_ns for m in manifests] == mtimes
    assert json.loads((out / 'study.json').read_text())['points'] == result['points']
    capsys.readouterr()

    assert main([*argv[:-1], '--epsilon', '0']) == 2  # epsilons must be > 0
    assert 'epsilons must be > 0' in capsys.readouterr().err
