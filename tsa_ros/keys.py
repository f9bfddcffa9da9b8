"""The shared secret that signs A's weight snapshots: one key file, never a literal or a parameter.

Whoever can publish accepted weights owns the adaptive student, and with it a vote, so the
learner signs every snapshot (HMAC-SHA256) and the adaptive segmenter checks it. The key lives
in a file readable by its owner only, created by ``tsa keys init`` (``make setup`` runs it when
the file is missing). Its path is the nodes' ``weights_key_file`` parameter, else the
environment variable ``TSA_WEIGHTS_KEY_FILE``, else :func:`default_key_path`. A ROS parameter
holds only the path: parameters are readable by any participant through the node's parameter
services, a file under mode 0600 is not.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from tsa_ros.errors import ConfigError

#: Environment variable naming the key file (below the node parameter, above the default).
KEY_FILE_ENV = 'TSA_WEIGHTS_KEY_FILE'
#: Random bytes in a new key (written as hex); a shorter key in a file is refused.
KEY_BYTES = 32
MIN_KEY_BYTES = 16


class KeyFileError(ConfigError):
    """The weights key file is missing, readable by others or does not hold a key."""


def default_key_path() -> Path:
    """``$XDG_CONFIG_HOME/tsa_ros/weights.key`` (``~/.config/...``): outside any checkout."""
    base = os.environ.get('XDG_CONFIG_HOME') or Path.home() / '.config'
    return Path(base) / 'tsa_ros' / 'weights.key'


def resolve_key_path(path: str | os.PathLike | None = None) -> Path:
    """The key file to use: ``path`` if given, else ``$TSA_WEIGHTS_KEY_FILE``, else the default."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get(KEY_FILE_ENV, '')
    return Path(env).expanduser() if env else default_key_path()


def init_key(path: str | os.PathLike | None = None, exist_ok: bool = False) -> tuple[Path, bool]:
    """Create a new random key file with mode 0600 (its directory 0700 when created).

    Returns (path, created). An existing file is never overwritten: with ``exist_ok`` it is
    checked and kept, otherwise it is an error (replacing a key locks out every node that
    still holds the old one).
    """
    target = resolve_key_path(path)
    if target.exists():
        if not exist_ok:
            raise FileExistsError(f'key file exists: {target} (delete it first to replace it)')
        load_key(target)
        return target, False
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # O_EXCL + mode at creation: the key is never readable by others, not even for a moment.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, 'w') as f:
        f.write(secrets.token_hex(KEY_BYTES) + '\n')
    return target, True


def load_key(path: str | os.PathLike | None = None) -> bytes:
    """The key bytes of a key file, refusing files that others can read or that hold no key."""
    target = resolve_key_path(path)
    hint = f'create one with `tsa keys init --path {target}`'
    try:
        info = target.stat()
    except FileNotFoundError:
        raise KeyFileError(f'no weights key file at {target}; {hint}') from None
    if not stat.S_ISREG(info.st_mode):
        raise KeyFileError(f'weights key file {target} is not a regular file')
    if info.st_mode & 0o077:
        raise KeyFileError(
            f'weights key file {target} is readable by others '
            f'(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {target}`'
        )
    text = target.read_text(encoding='ascii', errors='replace').strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f'weights key file {target} does not hold a hex key; {hint}') from None
    if len(key) < MIN_KEY_BYTES:
        raise KeyFileError(
            f'weights key in {target} has {len(key)} bytes, at least {MIN_KEY_BYTES} needed'
        )
    return key
