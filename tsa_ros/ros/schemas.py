"""ROS 2 message definitions as rosbag2 and Foxglove want them, for raw (CDR) relaying.

``tsa record`` and ``tsa view`` pass messages on as the serialized bytes they receive and
describe each topic's type with a ``ros2msg`` schema: the type's definition followed by the
definitions it depends on, each after a line of 80 ``=`` and a ``MSG: pkg/Type`` line — the
text ``ros2 bag record -s mcap`` writes, which Foxglove and Lichtblick decode natively.

The definitions come from the ``rosbags`` type store of ROS 2 Kilted (the same store
:mod:`tsa_ros.data.bag` writes bags with) plus ``tsa_msgs`` from its ``.msg`` files; a type
of any other package is read from that package's installed ``.msg`` files.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from rosbags.typesys import TypesysError, get_types_from_msg, get_typestore

from tsa_ros.data.bag import _store_name
from tsa_ros.errors import ConfigError

#: Schema encoding of a ROS 2 .msg definition (MCAP and Foxglove WebSocket name it so).
SCHEMA_ENCODING = 'ros2msg'
#: Message encoding of ROS 2 serialized messages.
MESSAGE_ENCODING = 'cdr'

# The source tree's msg/ folder: tsa_msgs' definitions when no installed package is found.
_SOURCE_MSG_DIR = Path(__file__).resolve().parents[2] / 'msg'

_lock = threading.Lock()
# How rosbags names the type it has no definition of.
_UNKNOWN = re.compile(r"Type '([^']+)' is unknown")


def _package_msg_dir(package: str) -> Path | None:
    """``share/<package>/msg`` from the ament index, else of this Python's prefix (the venv)."""
    candidates = []
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(package)))
    except (ImportError, LookupError, OSError, ValueError):
        pass  # no ament index (a venv without a sourced workspace): try the prefix
    candidates.append(Path(sys.prefix) / 'share' / package)
    for share in candidates:
        if (share / 'msg').is_dir():
            return share / 'msg'
    return None


def _msg_types(package: str, folder: Path) -> dict[str, Any]:
    types: dict[str, Any] = {}
    for path in sorted(folder.glob('*.msg')):
        types.update(get_types_from_msg(path.read_text(), f'{package}/msg/{path.stem}'))
    return types


@lru_cache(maxsize=1)
def typestore() -> Any:
    """The Kilted type store with tsa_msgs registered (a private one: bag.py's stays pure)."""
    store = get_typestore(_store_name())
    folder = _package_msg_dir('tsa_msgs')
    if folder is None and _SOURCE_MSG_DIR.is_dir():
        folder = _SOURCE_MSG_DIR
    if folder is not None:
        store.register(_msg_types('tsa_msgs', folder))
    return store


def _package(msgtype: str) -> str:
    return msgtype.split('/')[0]


def check_type_name(msgtype: str) -> None:
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] != 'msg' or not all(parts):
        raise ConfigError(f'{msgtype!r} is not a ROS 2 message type name (pkg/msg/Type)')


def message_definition(msgtype: str) -> str:
    """The ros2msg schema text of ``msgtype`` (e.g. 'sensor_msgs/msg/Image').

    Raises ConfigError when the type, or a type it uses, has no definition here.
    """
    return definition_and_hash(msgtype)[0]


def definition_and_hash(msgtype: str) -> tuple[str, str]:
    """The ros2msg schema text of ``msgtype`` and its RIHS01 type hash (rosbag2 metadata)."""
    check_type_name(msgtype)
    store = typestore()
    with _lock:  # registering is not thread-safe; recorder and relay discover in callbacks
        tried: set[str] = set()
        while True:
            try:
                text = store.generate_msgdef(msgtype, ros_version=2)[0]
                return text, store.hash_rihs01(msgtype)
            except (KeyError, TypesysError) as exc:
                found = _UNKNOWN.search(str(exc))
                missing = found.group(1) if found else msgtype
                package = _package(missing)
                folder = None if package in tried else _package_msg_dir(package)
                tried.add(package)
                if folder is None:
                    needed = '' if missing == msgtype else f' (used by {msgtype})'
                    raise ConfigError(
                        f'unknown message type {missing}{needed}: package {package} has no '
                        'message definitions here'
                    ) from None
                try:
                    store.register(_msg_types(package, folder))
                except (OSError, TypesysError) as exc:
                    raise ConfigError(f'cannot read the messages of {package}: {exc}') from None


def message_class(msgtype: str) -> type:
    """The rclpy message class of a type name such as 'tsa_msgs/msg/FusedSegmentation'."""
    check_type_name(msgtype)
    package, kind, name = msgtype.split('/')
    try:
        return getattr(importlib.import_module(f'{package}.{kind}'), name)
    except (ImportError, AttributeError):
        raise ConfigError(f'message type {msgtype} is not installed in this Python') from None
