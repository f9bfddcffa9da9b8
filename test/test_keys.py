"""The weights key file and the snapshot gate: no key in the source, none readable by others."""

import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tsa_ros.keys import (
    KEY_FILE_ENV,
    KeyFileError,
    default_key_path,
    init_key,
    load_key,
    resolve_key_path,
)
from tsa_ros.learning.snapshot_gate import SnapshotGate

PACKAGE = Path(__file__).resolve().parents[1] / 'tsa_ros'


def test_init_creates_a_private_random_key_and_never_overwrites(tmp_path):
    path, created = init_key(tmp_path / 'sub' / 'weights.key')
    assert created and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    key = load_key(path)
    assert len(key) == 32
    other, _ = init_key(tmp_path / 'other.key')
    assert load_key(other) != key, 'two keys must differ'
    with pytest.raises(FileExistsError, match='exists'):
        init_key(path)
    assert init_key(path, exist_ok=True) == (path, False)
    assert load_key(path) == key


@pytest.mark.parametrize(
    ('content', 'mode', 'match'),
    [
        ('ab' * 32, 0o644, 'readable by others'),
        ('ab' * 32, 0o640, 'readable by others'),
        ('not a key at all', 0o600, 'does not hold a hex key'),
        ('ab' * 8, 0o600, 'at least 16'),
        ('', 0o600, 'at least 16'),
    ],
)
def test_load_refuses_a_key_file_others_can_read_or_without_a_key(tmp_path, content, mode, match):
    path = tmp_path / 'weights.key'
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(KeyFileError, match=match):
        load_key(path)


def test_missing_key_file_names_the_path_and_the_fix(tmp_path):
    with pytest.raises(KeyFileError, match='tsa keys init') as info:
        load_key(tmp_path / 'nope.key')
    assert 'nope.key' in str(info.value)
    with pytest.raises(KeyFileError, match='not a regular file'):
        load_key(tmp_path)


def test_key_path_order_is_parameter_then_environment_then_user_config(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CONFIG_HOME', str(tmp_path / 'xdg'))
    monkeypatch.delenv(KEY_FILE_ENV)
    assert default_key_path() == tmp_path / 'xdg' / 'tsa_ros' / 'weights.key'
    assert resolve_key_path() == default_key_path()
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / 'env.key'))
    assert resolve_key_path() == tmp_path / 'env.key'
    assert resolve_key_path(tmp_path / 'param.key') == tmp_path / 'param.key'


def test_tsa_keys_init_and_path(tmp_path):
    path = tmp_path / 'cli.key'
    tsa = [sys.executable, '-m', 'tsa_ros.cli']
    done = subprocess.run([*tsa, 'keys', 'init', '--path', str(path)], capture_output=True)
    assert done.returncode == 0 and stat.S_IMODE(path.stat().st_mode) == 0o600
    again = subprocess.run([*tsa, 'keys', 'init', '--path', str(path)], capture_output=True)
    assert again.returncode == 2 and b'exists' in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, 'one line, no traceback'
    kept = subprocess.run([*tsa, 'keys', 'init', '--path', str(path), '--exist-ok'])
    assert kept.returncode == 0
    shown = subprocess.run([*tsa, 'keys', 'path', '--path', str(path)], capture_output=True)
    assert shown.stdout.decode().strip() == str(path)


def test_no_key_literal_in_the_package():
    """The key comes from a file only: no demo key, no hex secret, no key parameter."""
    for source in PACKAGE.rglob('*.py'):
        text = source.read_text()
        assert 'DEMO_KEY' not in text, source
        assert not re.search(r"'weights_key'", text), f'{source}: the key is not a parameter'
        assert not re.search(r"""['"][0-9a-fA-F]{32,}['"]""", text), f'{source}: hex literal'
        assert not re.search(r"""key\s*=\s*b?['"][^'"]+['"]""", text), f'{source}: key literal'


# --------------------------------------------------------------------------- snapshot gate
def test_gate_orders_versions_within_a_lineage_and_bounds_the_step():
    gate = SnapshotGate(max_step=100)
    assert gate.check('aa', 5).accepted and not gate.check('aa', 5).new_lineage
    assert gate.commit('aa', 5)
    assert gate.check('aa', 5).reason == 'weights_version'
    assert gate.check('aa', 4).reason == 'weights_version'
    assert gate.check('aa', 105).accepted
    assert gate.check('aa', 106).reason == 'weights_step'
    assert gate.check('aa', 2**32 - 1).reason == 'weights_step'
    assert gate.check('', 6).reason == 'weights_lineage'
    # The far-off version was not committed: the genuine next one still loads.
    assert gate.commit('aa', 6) and gate.version == 6


def test_gate_adopts_a_new_lineage_and_retires_the_old_one():
    gate = SnapshotGate()
    gate.commit('old', 40)
    verdict = gate.check('new', 1)
    assert verdict.accepted and verdict.new_lineage
    assert gate.commit('new', 1) and (gate.lineage, gate.version) == ('new', 1)
    assert gate.check('old', 41).reason == 'weights_lineage'  # a replay cannot roll A back
    assert not gate.commit('old', 41)
    assert gate.check('new', 2).accepted


def test_gate_commit_refuses_what_no_longer_passes():
    gate = SnapshotGate()
    assert gate.check('aa', 3).accepted and gate.check('aa', 2).accepted
    assert gate.commit('aa', 3)
    assert not gate.commit('aa', 2), 'a slower load of an older snapshot must not win'
    assert gate.version == 3
    with pytest.raises(ValueError, match='max_step'):
        SnapshotGate(max_step=0)
