"""Supervised training run: CLI, checkpoints, log, exact resume and a 2-process DDP run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from supervised_fit import fit

from tsa_ros.cli import main
from tsa_ros.learning.train import TrainConfig, resolve, train
from tsa_ros.models import ModelConfig, build_model, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _small(**kw):
    # Few workers and tiny batches: the whole file must stay quick on two shared cores.
    base = dict(role='student', steps=8, batch_size=2, num_workers=0, eval_every=0)
    base.update(kw)
    return TrainConfig(**base)


def test_resolve_takes_input_size_from_the_preset(tiny_root, tmp_path):
    cfg = resolve(TrainConfig(role='teacher'), tiny_root)
    assert cfg.input_size == (64, 128)
    assert cfg.model.arch == 'deeplabv3plus' and cfg.model.input_size == (64, 128)
    assert cfg.augment.crop_size == (64, 128)
    assert resolve(TrainConfig(), tmp_path).input_size == (512, 1024)  # no manifest
    with pytest.raises(ValueError, match='role'):
        TrainConfig(role='adaptive')


def test_cli_student_run_writes_checkpoint_and_log(tiny_root, tmp_path, capsys):
    config = tmp_path / 'train.yaml'
    config.write_text('num_workers: 0\neval_every: 3\nseed: 1\n')
    out = tmp_path / 'run'
    args = ['train', '--role', 'student', '--data', str(tiny_root), '--out', str(out)]
    args += ['--config', str(config), '--steps', '6', '--batch-size', '2', '--device', 'cpu']
    assert main(args) == 0
    model, meta = load_checkpoint(out / 'student.pt')
    assert meta['config'].arch == 'erfnet' and meta['config'].input_size == (64, 128)
    assert meta['extra']['step'] == 6
    assert 0.0 <= meta['extra']['miou'] <= 1.0
    records = [json.loads(line) for line in (out / 'student.log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in records] == [3, 6]
    for record in records:
        assert set(record) == {'step', 'loss', 'miou', 'lr', 'seconds'}
        assert 0.0 <= record['miou'] <= 1.0 and record['loss'] > 0
    assert (out / 'student.state.pt').is_file()
    assert 'step 6' in capsys.readouterr().out


def test_kept_steps_are_copies_of_the_checkpoint_at_that_step(tiny_root, tmp_path):
    out = tmp_path / 'run'
    train(_small(steps=4, keep_steps=[3, 1]), tiny_root, out, device='cpu', progress=False)
    assert sorted(p.name for p in out.glob('student.step*.pt')) == [
        'student.step1.pt',
        'student.step3.pt',
    ]
    _, meta = load_checkpoint(out / 'student.step3.pt')
    assert meta['extra']['step'] == 3 and meta['extra']['steps'] == 4
    with pytest.raises(ValueError, match='keep_steps'):
        TrainConfig(keep_steps=(0,))


def test_cli_rejects_bad_input(tmp_path, capsys):
    missing = tmp_path / 'nowhere'
    args = ['train', '--role', 'student', '--data', str(missing), '--out', str(tmp_path)]
    assert main(args) == 2
    assert 'data root not found' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['train', '--role', 'coach', '--data', str(tmp_path)])


def test_fit_loss_decreases_on_a_fixed_batch(tiny_root):
    from tsa_ros.data.cityscapes import LabeledDataset

    torch.manual_seed(0)
    data = LabeledDataset(tiny_root, 'train', size=(64, 128))
    batch = (
        torch.stack([data[i][0] for i in range(2)]),
        torch.stack([data[i][1] for i in range(2)]),
    )
    model = build_model(ModelConfig(input_size=(64, 128)))
    losses = fit(model, [batch], steps=20, lr=1e-3)
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3


def test_resume_equals_an_uninterrupted_run(tiny_root, tmp_path):
    # 8 train images, batch 2: 4 steps per epoch, so the resumed part crosses an epoch.
    full = train(_small(), tiny_root, tmp_path / 'full', device='cpu', progress=False)
    part = tmp_path / 'part'
    first = train(_small(), tiny_root, part, device='cpu', progress=False, stop_after=3)
    assert first['step'] == 3
    assert load_checkpoint(part / 'student.pt')[1]['extra']['step'] == 3
    second = train(_small(), tiny_root, part, resume=True, device='cpu', progress=False)
    assert second['step'] == full['step'] == 8
    a, meta_a = load_checkpoint(tmp_path / 'full' / 'student.pt')
    b, meta_b = load_checkpoint(part / 'student.pt')
    assert meta_b['extra']['step'] == 8
    assert meta_a['sha256'] == meta_b['sha256']  # bit-equal weights and BN statistics
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    with pytest.raises(FileNotFoundError):
        train(_small(), tiny_root, tmp_path / 'empty', resume=True, device='cpu')


def test_torchrun_two_processes(tiny_root, tmp_path):
    out = tmp_path / 'ddp'
    config = tmp_path / 'ddp.yaml'
    config.write_text('num_workers: 0\n')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2']
    cmd += ['--standalone', '-m', 'tsa_ros.cli', 'train', '--role', 'student']
    cmd += ['--data', str(tiny_root), '--out', str(out), '--steps', '4', '--batch-size', '2']
    cmd += ['--device', 'cpu', '--config', str(config)]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    _, meta = load_checkpoint(out / 'student.pt')
    assert meta['extra']['step'] == 4
    assert 0.0 <= meta['extra']['miou'] <= 1.0
    assert len((out / 'student.log.jsonl').read_text().splitlines()) == 1  # rank 0 only
