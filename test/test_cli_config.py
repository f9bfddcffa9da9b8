"""The `tsa` command and the YAML <-> dataclass configuration."""

import dataclasses
import subprocess
import sys

import pytest

from tsa_ros.cli import main
from tsa_ros.config import ConfigError, TSAConfig, dump_config, load_config


def test_tsa_help_runs_as_a_console_script():
    out = subprocess.run(
        [sys.executable, '-m', 'tsa_ros.cli', '--help'], check=True, capture_output=True, text=True
    ).stdout
    assert 'usage: tsa' in out and 'model' in out and 'config' in out


def test_tsa_model_reports_erfnet_figures(capsys):
    assert main(['model', '--arch', 'erfnet']) == 0
    out = capsys.readouterr().out
    assert '2,064,191 trainable parameters' in out and '26.60 G conv MACs' in out


def test_config_round_trip(tmp_path):
    config = TSAConfig()
    config.learner.loss.alpha = 0.25
    config.student = dataclasses.replace(config.student, input_size=(128, 256))
    path = tmp_path / 'c.yaml'
    path.write_text(dump_config(config))
    loaded = load_config(path)
    assert loaded == config
    assert loaded.student.input_size == (128, 256)


def test_config_errors_name_the_problem(tmp_path, capsys):
    path = tmp_path / 'bad.yaml'
    path.write_text('learner:\n  loss:\n    alpah: 0.5\n')
    with pytest.raises(ConfigError, match=r'learner\.loss.*alpah'):
        load_config(path)
    path.write_text('learner:\n  loss:\n    alpha: 1.5\n')
    with pytest.raises(ConfigError, match='alpha'):
        load_config(path)
    with pytest.raises(ConfigError, match='not found'):
        load_config(tmp_path / 'missing.yaml')
    assert main(['config', str(path)]) == 2
    assert 'alpha' in capsys.readouterr().err


def test_shipped_system_config_is_the_default():
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / 'config' / 'system.yaml'
    assert load_config(shipped) == TSAConfig(), 'regenerate with: tsa config > config/system.yaml'


def test_bad_input_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    # Bad input: exit 2 with one line naming the problem ...
    args = ['train', '--role', 'student', '--data', str(tmp_path), '--steps', '0']
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'steps must be >= 1' in err and '--traceback' in err
    with pytest.raises(ConfigError, match='steps'):
        main(['--traceback', *args])

    # ... while a ValueError from inside (a bug, not the user's input) is not swallowed.
    import tsa_ros.experiments as experiments

    def broken(*args, **kwargs):
        raise ValueError('internal invariant broken')

    monkeypatch.setattr(experiments, 'make_ae_set', broken)
    with pytest.raises(ValueError, match='internal invariant'):
        main(
            [
                'attack',
                '--root',
                str(tmp_path),
                '--epsilon',
                '0',
                '--size',
                '8',
                '8',
                '--out',
                str(tmp_path / 'o'),
            ]
        )
