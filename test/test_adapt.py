"""tsa adapt: A adapted from S with T's posteriors through the OnlineLearner step."""

import json

import pytest
import torch

from tsa_ros.experiments.adapt import AdaptConfig, adapt
from tsa_ros.learning.losses import TSLossConfig
from tsa_ros.learning.online import LearnerConfig
from tsa_ros.models import ModelConfig, build_model, load_checkpoint, save_checkpoint

SIZE = (64, 128)  # the tiny preset's network input


@pytest.fixture(scope='module')
def pair(tmp_path_factory):
    out = tmp_path_factory.mktemp('pair')
    torch.manual_seed(1)
    # Any network can teach; a second ERFNet keeps the test fast.
    teacher = build_model(ModelConfig(input_size=SIZE))
    torch.manual_seed(2)
    student = build_model(ModelConfig(input_size=SIZE))
    return save_checkpoint(out / 'T.pt', teacher), save_checkpoint(out / 'S.pt', student)


def config(steps, alpha=0.6, finetune=0):
    learner = LearnerConfig(lr=1e-3, batch_size=2, loss=TSLossConfig(alpha=alpha))
    return AdaptConfig(
        steps=steps, learner=learner, finetune_steps=finetune, checkpoint_every=2, num_workers=0
    )


def weights(path):
    return load_checkpoint(path)[0].state_dict()


def test_adapt_moves_a_away_from_s_and_logs(pair, tiny_root, tmp_path):
    teacher, student = pair
    ckpt = adapt(teacher, student, tiny_root, tmp_path, config(4), device='cpu', progress=False)
    a, s = weights(ckpt), weights(student)
    assert any(not torch.equal(a[k], s[k]) for k in s)
    assert load_checkpoint(ckpt)[1]['extra']['step'] == 4
    lines = [json.loads(x) for x in (tmp_path / 'adaptive.log.jsonl').read_text().splitlines()]
    assert [x['step'] for x in lines] == [2, 4]
    assert lines[-1]['fm'] > 0 and lines[-1]['ce'] > 0


def test_resume_gives_the_uninterrupted_result(pair, tiny_root, tmp_path):
    teacher, student = pair
    straight = adapt(
        teacher, student, tiny_root, tmp_path / 'a', config(4), device='cpu', progress=False
    )
    adapt(teacher, student, tiny_root, tmp_path / 'b', config(2), device='cpu', progress=False)
    resumed = adapt(
        teacher,
        student,
        tiny_root,
        tmp_path / 'b',
        config(4),
        resume=True,
        device='cpu',
        progress=False,
    )
    a, b = weights(straight), weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_finetune_runs_without_ifm(pair, tiny_root, tmp_path):
    teacher, student = pair
    ckpt = adapt(
        teacher, student, tiny_root, tmp_path, config(2, finetune=2), device='cpu', progress=False
    )
    assert load_checkpoint(ckpt)[1]['extra']['step'] == 4


def test_tsa_adapt_command_no_ifm(pair, tiny_root, tmp_path, capsys):
    from tsa_ros.cli import main

    teacher, student = pair
    config = tmp_path / 'adapt.yaml'
    config.write_text(
        'learner:\n  batch_size: 2\n  lr: 0.001\ncheckpoint_every: 2\nnum_workers: 0\n'
    )
    assert (
        main(
            [
                'adapt',
                '--teacher',
                str(teacher),
                '--student',
                str(student),
                '--data',
                str(tiny_root),
                '--out',
                str(tmp_path),
                '--config',
                str(config),
                '--steps',
                '2',
                '--no-ifm',
                '--device',
                'cpu',
            ]
        )
        == 0
    )
    assert 'alpha 0.0' in capsys.readouterr().out
    assert (tmp_path / 'adaptive.pt').is_file()
