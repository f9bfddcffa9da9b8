"""ROS parameters declared from the core's configuration dataclasses (one config truth).

``declare_dataclass(node, LearnerConfig(), prefix='learner')`` declares ``learner.lr``,
``learner.loss.alpha`` ... with the dataclass defaults and the descriptions from the class
docstring's ``Attributes:`` section, reads them back (params files and ``-p`` overrides
included) and builds the dataclass, whose own validation then names any bad value.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import re
import types
import typing
from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node

from tsa_ros.config import ConfigError, from_dict

T = TypeVar('T')

_SCALARS = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
}
_ARRAYS = {
    int: ParameterType.PARAMETER_INTEGER_ARRAY,
    float: ParameterType.PARAMETER_DOUBLE_ARRAY,
    str: ParameterType.PARAMETER_STRING_ARRAY,
    bool: ParameterType.PARAMETER_BOOL_ARRAY,
}


def attribute_docs(cls: type) -> dict[str, str]:
    """Field descriptions from a Google-style ``Attributes:`` docstring section."""
    doc = inspect.getdoc(cls) or ''
    match = re.search(r'^Attributes:\n((?:[ \t]+.*\n?|\n)+)', doc, re.MULTILINE)
    if not match:
        return {}
    docs: dict[str, str] = {}
    current = None
    for line in match.group(1).splitlines():
        item = re.match(r'^\s{2,4}(\w+)(?: \([^)]*\))?:\s*(.*)$', line)
        if item:
            current = item.group(1)
            docs[current] = item.group(2).strip()
        elif current and line.strip():
            docs[current] += ' ' + line.strip()
    return docs


def _ros_type(tp: Any) -> tuple[int, bool]:
    """(ParameterType, optional) for an annotation."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if typing.get_origin(tp) in (tuple, list, collections.abc.Sequence):
        inner = typing.get_args(tp)[0]
        return _ARRAYS[inner], optional
    return _SCALARS[tp], optional


def _ros_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def declare_dataclass(
    node: Node,
    config: T,
    prefix: str = '',
    *,
    writable: collections.abc.Collection[str] = (),
    exclude: collections.abc.Collection[str] = (),
) -> T:
    """Declare every field of ``config`` (recursively) as a parameter; return the values read.

    Every parameter is read-only except the full names in ``writable`` (switches a user may
    flip at run time; the node applies them in a post-set callback). Full names in
    ``exclude`` are not declared and keep ``config``'s value (a fact another parameter of
    the node already holds, such as the learner's device). Optional fields whose default is
    None are declared with dynamic typing, so a params file may set a number or leave them
    unset. Raises ConfigError naming the parameter on a value the dataclass rejects.
    """
    data = _declare(node, type(config), config, prefix, frozenset(writable), frozenset(exclude))
    try:
        return from_dict(type(config), data, prefix.rstrip('.') or type(config).__name__)
    except ConfigError as exc:
        raise ConfigError(f'parameter {exc}') from exc


def _declare(
    node: Node, cls: type, config: Any, prefix: str, writable: frozenset, exclude: frozenset
) -> dict:
    hints = typing.get_type_hints(cls)
    docs = attribute_docs(cls)
    data = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        name = f'{prefix}.{field.name}' if prefix else field.name
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            data[field.name] = _declare(node, type(value), value, name, writable, exclude)
            continue
        if name in exclude:
            data[field.name] = _ros_value(value)
            continue
        ptype, optional = _ros_type(hints[field.name])
        descriptor = ParameterDescriptor(
            name=name,
            description=docs.get(field.name, field.name.replace('_', ' ')),
            read_only=name not in writable,
        )
        if value is None or (isinstance(value, tuple | list) and not value):
            # rclpy cannot infer a type from None or [] (it would pick BYTE_ARRAY for []).
            descriptor.dynamic_typing = True
            param = declare_once(node, name, _ros_value(value), descriptor)
        else:
            descriptor.type = ptype
            param = declare_once(node, name, _ros_value(value), descriptor)
        got = param.value
        data[field.name] = None if (optional and got is None) else got
    return data


def declare_once(node: Node, name: str, value: Any, descriptor: ParameterDescriptor):
    """Declare a parameter, or return it when a earlier configure already declared it.

    Lifecycle nodes declare their parameters in ``configure``, which runs again after a
    ``cleanup``; parameters stay declared (read-only ones cannot be undeclared).
    """
    if node.has_parameter(name):
        return node.get_parameter(name)
    return node.declare_parameter(name, value, descriptor)


def check_overrides(node: Node) -> None:
    """Refuse misspelt parameters set from a params file or ``-p``; warn about foreign ones.

    rclpy silently ignores values for undeclared parameters, so ``fusion.mdoe`` would leave
    the default in force without a word. An undeclared name inside a group the node owns
    (``fusion.*``) or close to a declared name is a ConfigError naming the likely intent; any
    other (a ``/**`` section meant for other nodes) is logged once and ignored. Call at the
    end of a node's declarations.
    """
    overrides = getattr(node, '_parameter_overrides', {}) or {}
    unknown = sorted(name for name in overrides if not node.has_parameter(name))
    if not unknown:
        return
    names = sorted(node._parameters)
    groups = {name.split('.')[0] for name in names if '.' in name}
    errors, foreign = [], []
    for name in unknown:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.8)
        if close:
            errors.append(f'{name!r} (did you mean {close[0]!r}?)')
        elif '.' in name and name.split('.')[0] in groups:
            errors.append(f'{name!r} (not a {name.split(".")[0]}.* parameter)')
        else:
            foreign.append(name)
    if errors:
        raise ConfigError(
            f'node {node.get_name()}: unknown parameter(s) {", ".join(errors)}; '
            'see docs/ros_parameters.md'
        )
    node.get_logger().warning(f'ignoring parameters this node does not have: {foreign}')
