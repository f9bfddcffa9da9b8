"""The README's graph section, run as written (default config, default rate) on tiny data.

A newcomer copies these commands; they must end with reports that scored frames, not with
an exit status of 0 and an empty report. Only the data root is swapped for the tiny set,
and the first command (`tsa up tsa` with placeholder checkpoints, a graph that runs until
Ctrl-C) is left out.
"""

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip('rclpy')

REPO = Path(__file__).resolve().parents[2]
TSA = Path(sys.executable).parent / 'tsa'


def readme_graph_commands() -> list[list[str]]:
    """The commands of the first bash block after 'Bring it up on this machine'."""
    text = (REPO / 'README.md').read_text()
    section = text.split('Bring it up on this machine', 1)[1]
    block = section.split('```bash\n', 1)[1].split('```', 1)[0]
    return [shlex.split(line, comments=True) for line in block.replace('\\\n', ' ').splitlines()]


def test_the_readme_lists_the_graph_commands_this_test_runs():
    commands = readme_graph_commands()
    assert [c[:3] for c in commands] == [
        ['.venv/bin/tsa', 'up', 'tsa'],
        ['.venv/bin/tsa', 'data', 'bag'],
        ['.venv/bin/tsa', 'up', 'replay'],
        ['.venv/bin/tsa', 'up', 'attack_injection'],
        ['.venv/bin/tsa', 'up', 'replay'],
    ]


def test_the_readme_graph_commands_run_as_written_and_score_frames(
    tiny_root, tmp_path, module_ros_env
):
    if not TSA.exists():
        pytest.skip(f'no tsa entry point beside {sys.executable}')
    outputs = []
    for command in readme_graph_commands()[1:]:
        argv = [
            str(TSA),
            *(str(tiny_root) if a == 'data/synth-default' else a for a in command[1:]),
        ]
        done = subprocess.run(
            argv, cwd=tmp_path, env=module_ros_env, capture_output=True, text=True, timeout=900
        )
        log = done.stdout[-4000:] + done.stderr[-4000:]
        assert done.returncode == 0, f'{shlex.join(command)}:\n{log}'
        assert 'Unable to start transition' not in done.stderr, log
        outputs.append(done.stdout)

    clean = json.loads((tmp_path / 'runs' / 'clean.json').read_text())
    attacked = json.loads((tmp_path / 'runs' / 's_ae.json').read_text())
    # Scored, not empty. (Which streams meet each of the tiny bag's two ground-truth frames
    # depends on the machine's load: the README's figure is for an idle one.)
    for report in (clean, attacked):
        assert report['frames'] > 0
        assert report['streams']['fused']['pixels'] > 0
    assert attacked['clean']
    assert attacked['streams']['fused']['compared_frames'] > 0
    assert (tmp_path / 'runs' / 's_ae.md').read_text().count('%') > 0
    assert 'bag_player' in outputs[-1]  # the dry run lists the nodes
    shutil.rmtree(tmp_path / 'data')  # the bag is tens of MB at 128x256
