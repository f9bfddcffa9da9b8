"""One configuration truth: typed dataclasses, loaded from and written to YAML.

Each part of the core owns the dataclass of its hyper-parameters (``ModelConfig``,
``TSLossConfig``, ``LearnerConfig``, ``AttackConfig``, ``FusionConfig``); :class:`TSAConfig`
composes them. Experiment configs and the ROS nodes' parameters are read through these classes,
so a misspelt key is an error that names it, not a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tsa_ros.attacks import AttackConfig
from tsa_ros.errors import ConfigError
from tsa_ros.fusion import FusionConfig
from tsa_ros.learning.online import LearnerConfig
from tsa_ros.models import ModelConfig

T = TypeVar('T')

__all__ = ['ConfigError', 'TSAConfig', 'dump_config', 'from_dict', 'load_config', 'to_dict']


def _teacher_default() -> ModelConfig:
    return ModelConfig(arch='deeplabv3plus', backbone='resnet50', output_stride=16)


@dataclass
class TSAConfig:
    """The whole T-S-A system: the three networks, A's learner, the attack and the fusion."""

    teacher: ModelConfig = field(default_factory=_teacher_default)
    student: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)


def _convert(tp: Any, value: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type (nested dataclasses, tuples, optionals)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except (ConfigError, TypeError, ValueError):
                continue
        raise ConfigError(f'{where}: {value!r} does not fit {tp}')
    if origin is tuple and isinstance(value, list | tuple):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f'{where}: expected {len(args)} values, got {list(value)!r}')
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f'{where}: expected {tp.__name__}, got {value!r}')
    return value


def from_dict(cls: type[T], data: Any, where: str = '') -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with a clear error."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f'{where or cls.__name__}: expected a mapping, got {data!r}')
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f'{where or cls.__name__}: unknown key(s) {unknown}; allowed: {sorted(names)}'
        )
    kwargs = {k: _convert(hints[k], v, f'{where}.{k}' if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f'{where or cls.__name__}: {exc}') from exc


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    return obj


def load_config(path: str | Path | None = None, cls: type[T] = TSAConfig) -> T:
    """Load ``cls`` from a YAML file; missing keys take the dataclass defaults."""
    if path is None:
        return cls()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f'config file not found: {path}')
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML ({exc})') from exc
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f'{path}: {exc}') from exc


def dump_config(config: Any) -> str:
    """YAML text of a config dataclass, loadable by :func:`load_config`."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
