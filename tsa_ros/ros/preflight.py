"""Checks of a whole graph's configuration before any node starts (``tsa up``, ``--dry-run``).

A node checks its own parameters when it starts (:func:`tsa_ros.ros.params.check_overrides`),
but by then the other nodes are up and a replay may have begun. Here the params file and the
launch arguments are checked against every node of the graph first, each problem one
:class:`~tsa_ros.errors.ConfigError` line: a YAML syntax error (file and line), a misspelt
key (with the nearest valid one), fusion roles that no node publishes, a bag or checkpoint
that does not exist.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from tsa_ros.errors import ConfigError
from tsa_ros.ros.graph import ROLES, GraphArgs, NodeSpec, load_params_file

#: Parameters some nodes declare beyond their dataclasses (tsa_ros.ros.common; the key ones
#: only the adaptive segmenter and the learner), and the ones rclpy declares on every node.
_KEY_PARAMS = {'weights_key_file', 'insecure_unsigned_weights'}
_EXTRA = {
    'segmenter': _KEY_PARAMS | {'max_pixels'},
    'learner': _KEY_PARAMS | {'max_pixels'},
}
#: Every node: rclpy's own, and ManagedNode's `autostart` (tsa_ros.ros.lifecycle).
_ALWAYS = {'use_sim_time', 'start_type_description_service', 'autostart'}


def declared_parameters(executable: str) -> set[str]:
    """Every parameter a node of ``executable`` declares (a test compares with real nodes)."""
    from tsa_ros.ros.reference import _rows, node_sections

    for node, _, parts in node_sections():
        if node == executable:
            names = {
                row[0]
                for config, prefix, exclude in parts
                for row in _rows(config, prefix, exclude)
            }
            names |= _EXTRA.get(executable, set()) | _ALWAYS
            if executable == 'lifecycle_manager':  # the one node that is not managed
                names.discard('autostart')
            return names
    raise ConfigError(f'unknown executable {executable!r}')


def _flatten(mapping: dict, prefix: str = '') -> dict[str, Any]:
    out = {}
    for key, value in mapping.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, name + '.'))
        else:
            out[name] = value
    return out


def _matches(section: str, spec: NodeSpec) -> bool:
    """Whether a params file section name applies to the node (rcl's wildcards, simplified)."""
    full = f'{spec.namespace}/{spec.name}'.lstrip('/')
    key = section.strip('/')
    if key in ('**', '*'):
        return True
    if key.startswith('**/'):
        return full.endswith(key[3:]) and (full == key[3:] or full.endswith('/' + key[3:]))
    return key == full or key == spec.name


def node_parameters(data: dict[str, Any], spec: NodeSpec, path: str) -> dict[str, Any]:
    """The params file's values for one node, flattened to dotted names."""
    values: dict[str, Any] = {}
    for section, body in data.items():
        if not _matches(str(section), spec):
            continue
        params = (body or {}).get('ros__parameters') if isinstance(body, dict) else None
        if not isinstance(params, dict):
            raise ConfigError(f'{path}: section {section!r} has no ros__parameters mapping')
        values.update(_flatten(params))
    return values


def check_graph(graph: str, args: GraphArgs, specs: list[NodeSpec]) -> None:
    """Raise ConfigError for the first problem of the graph's configuration."""
    path = args.params_file
    data = load_params_file(path)
    for spec in specs:
        declared = declared_parameters(spec.executable)
        given = {**node_parameters(data, spec, path), **spec.parameters}
        for name in sorted(given):
            if name in declared:
                continue
            close = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.8)
            group = name.split('.')[0]
            if close:
                hint = f"did you mean '{close[0]}'?"
            elif '.' in name and any(d.startswith(group + '.') for d in declared):
                hint = f'not a {group}.* parameter'
            else:
                continue  # a '/**' value meant for other nodes: the node logs and ignores it
            raise ConfigError(
                f"{path}: node {spec.name}: unknown parameter '{name}' ({hint}); "
                'see docs/ros_parameters.md'
            )
        if spec.executable == 'fusion':
            roles = given.get('roles', list(ROLES))
            silent = [r for r in roles if r not in ROLES]
            if silent:
                raise ConfigError(
                    f'{path}: fusion roles {silent} are published by no node of the graph '
                    f'(its segmenters: {list(ROLES)}); fusion would wait on them every frame'
                )
        checkpoint = given.get('checkpoint')
        if checkpoint and not Path(checkpoint).is_file():
            raise ConfigError(f'node {spec.name}: checkpoint not found: {checkpoint}')
    if graph in ('replay', 'attack_injection') and args.bag:
        bag = Path(args.bag)
        if not (bag / 'metadata.yaml').is_file():
            what = 'not found' if not bag.exists() else 'not a rosbag2 (no metadata.yaml)'
            raise ConfigError(f'bag {args.bag}: {what}')
