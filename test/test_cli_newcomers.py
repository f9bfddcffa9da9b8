"""The `tsa` command for newcomers: defaults in --help, no flag abbreviations, step counts that
follow the data, a warning before long jobs."""

import argparse
import json

import pytest

from tsa_ros.cli import LONG_JOB_S, build_parser, default_steps, eta_warning, main
from tsa_ros.experiments.paper import PRESETS


def parsers(parser, path=('tsa',)):
    """Every (command path, parser) below ``parser``, itself included."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from parsers(sub, (*path, name))


def shown_defaults(parser):
    """Options whose --help must state a default: they take a value and have a real one."""
    for action in parser._actions:
        if action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction):
            continue  # flags: absent is the default
        if not (action.option_strings or action.nargs in ('?', '*')):
            continue
        if action.default in (None, '', [], (), argparse.SUPPRESS):
            continue
        yield action


def help_entry(help_text, action):
    """The lines of ``action``'s entry in ``help_text``, whitespace collapsed."""
    name = action.option_strings[0] if action.option_strings else None
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        first = stripped.split()[0] if stripped else ''
        if (name and first.rstrip(',') == name) or (not name and first.startswith('{')):
            entry = [stripped]
            for nxt in lines[i + 1 :]:
                if not nxt.startswith(' ' * 10) or not nxt.strip():
                    break
                entry.append(nxt.strip())
            return ' '.join(entry)
    raise AssertionError(f'{name or action.dest} not in the help:\n{help_text}')


def test_every_help_shows_every_default():
    seen, checked = set(), 0
    for path, parser in parsers(build_parser()):
        seen.add(' '.join(path))
        text = parser.format_help()
        for action in shown_defaults(parser):
            entry = help_entry(text, action)
            assert 'default' in entry.lower(), f'{" ".join(path)}: {entry}'
            checked += 1
        assert '(default: None)' not in text, ' '.join(path)
    # The walk reached the subcommands of other modules and the nested ones.
    for command in ('tsa up', 'tsa bench', 'tsa soak', 'tsa data synth', 'tsa experiment paper'):
        assert command in seen
    assert checked > 50


def test_defaults_read_as_typed(capsys):
    with pytest.raises(SystemExit):
        main(['model', '--help'])
    text = ' '.join(capsys.readouterr().out.split())
    assert '--size H W default: 512 1024' in text
    assert '--arch {erfnet,deeplabv3plus} default: erfnet' in text


@pytest.mark.parametrize(
    'argv, flag',
    [
        (['train', '--role', 'student', '--data', 'nowhere', '--step', '5'], '--step'),
        (['adapt', '--teacher', 't', '--student', 's', '--data', 'd', '--ste', '5'], '--ste'),
        (['experiment', 'paper', '--pre', 'tiny'], '--pre'),
        (['--trace', 'info'], '--trace'),
    ],
)
def test_abbreviated_flags_are_errors_naming_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f'unrecognized arguments: {flag}' in err


def test_step_default_follows_the_tiny_preset(tiny_root, capsys):
    tiny = PRESETS['tiny']
    for job, expected in (
        ('teacher', tiny.teacher_steps),
        ('student', tiny.student_steps),
        ('adapt', tiny.adapt_steps),
    ):
        steps, source = default_steps(job, tiny_root)
        assert steps == expected, job
        assert "'tiny' preset" in source and 'tsa_synth.json' in source
    assert PRESETS['paper'].student_steps != tiny.student_steps  # the check can fail


def test_step_default_without_manifest_is_the_papers(tmp_path):
    paper = PRESETS['paper']
    assert default_steps('student', tmp_path)[0] == paper.student_steps
    assert default_steps('adapt', tmp_path)[0] == paper.adapt_steps
    assert 'real Cityscapes' in default_steps('teacher', tmp_path)[1]
    with pytest.raises(FileNotFoundError, match='data root not found'):
        default_steps('student', tmp_path / 'missing')


def test_step_default_of_a_preset_without_steps_and_of_a_broken_manifest(tmp_path):
    from tsa_ros.errors import ConfigError

    (tmp_path / 'tsa_synth.json').write_text(json.dumps({'preset': {'name': 'custom'}}))
    steps, source = default_steps('teacher', tmp_path)
    assert steps == PRESETS['paper'].teacher_steps and 'custom' in source
    (tmp_path / 'tsa_synth.json').write_text('{not json')
    with pytest.raises(ConfigError, match='tsa_synth.json'):
        default_steps('teacher', tmp_path)


def test_train_says_how_many_steps_and_why(tiny_root, tmp_path, monkeypatch, capsys):
    import tsa_ros.learning.train as train_module

    ran = {}

    def fake_train(config, root, out, **kwargs):
        ran['steps'] = config.steps
        return {'step': config.steps, 'miou': 0.0, 'checkpoint': str(out)}

    monkeypatch.setattr(train_module, 'train', fake_train)
    argv = ['train', '--role', 'teacher', '--data', str(tiny_root), '--out', str(tmp_path)]
    assert main(argv) == 0
    assert ran['steps'] == PRESETS['tiny'].teacher_steps
    out = capsys.readouterr().out
    assert f'tsa train: {PRESETS["tiny"].teacher_steps} steps' in out and '--steps' in out

    config = tmp_path / 'c.yaml'
    config.write_text('steps: 7\n')
    assert main([*argv, '--config', str(config)]) == 0
    assert ran['steps'] == 7 and f'--config {config}' in capsys.readouterr().out
    assert main([*argv, '--config', str(config), '--steps', '9']) == 0
    assert ran['steps'] == 9


def test_eta_warning_starts_past_thirty_minutes():
    assert LONG_JOB_S == 30 * 60
    assert eta_warning('train', 1800, 1.0) is None  # exactly 30 min: no warning
    assert eta_warning('train', 100, 0.5) is None
    message = eta_warning('train', 1801, 1.0)
    assert message == (
        'tsa train: 1,801 steps at ~1 s/step here: about 30 min. '
        'Ctrl-C stops; --resume continues from the last checkpoint.'
    )
    assert eta_warning('train', 75_000, 0.8).startswith(
        'tsa train: 75,000 steps at ~0.8 s/step here: about 17 h. '
    )
    assert 'about 4.6 days' in eta_warning('adapt', 66_667, 6.0)
    assert 'about 2.5 h' in eta_warning('adapt', 3000, 3.0)


def test_pace_probe_reports_once_after_the_warm_up_step(monkeypatch):
    import tsa_ros.learning.train as train_module

    clock = iter([10.0, 10.6])  # after step 1, after step 4: 0.2 s/step
    monkeypatch.setattr(train_module.time, 'perf_counter', lambda: next(clock))
    calls = []
    probe = train_module.PaceProbe(500, lambda steps, pace: calls.append((steps, pace)))
    for _ in range(10):
        probe.step()
    assert calls == [(500, pytest.approx(0.2))]


def test_ctrl_c_ends_a_command_with_one_line(monkeypatch, capsys):
    import tsa_ros.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, '_cmd_info', interrupted)
    assert main(['info']) == 130
    assert capsys.readouterr().err.strip() == 'tsa info: interrupted'
    with pytest.raises(KeyboardInterrupt):
        main(['--traceback', 'info'])
