"""``tsa experiment detection``: is a network of the triplet attacked, judged frame by frame?

Not in the paper, which leaves decision fusion open (sec. 3.4, 4.3). For clean frames and the
least-likely AEs of T and of S (eqs. 7-10) at each ε, T, S and A run on every frame, their
labels are fused by majority vote (the fusion node's default), and every frame rule of
:mod:`tsa_ros.detection` scores the frame. A rule is judged as a detector of "some network is
attacked" (clean frames negative, one attack set's frames positive) and by whether its
suspect is the attacked network.

Two splits keep choice and report apart: on the *threshold split* (default ``minival``) the
clean frames calibrate the ``_z`` rules and fix each rule's threshold at the target FPR, and
the rule with the best mean AUROC over the attack sets is selected; the *report split*
(default ``minitest``) only measures: AUROC, the TPR at that transferred threshold (with the
FPR it really gives there) and the suspect accuracy.

The same pass measures fusion rules (:mod:`tsa_ros.fusion`) that aim to keep the teacher's
clean accuracy and still survive an attack on one network: on the report split, the absolute
mIoU (eq. 11) of T, S, A, the majority vote, posterior fusion and the ``weighted``,
``confidence``, ``gated`` and ``gated_confidence`` modes on every set, with the paper's mIoU
ratio to clean. Their parameters come from the threshold split only: the class weights are
each network's per-class IoU on its clean frames, the teacher's weight of the confidence
votes is the smallest of :data:`TEACHER_WEIGHTS` whose confidence vote stays within 1 mIoU
point of T there, and the gate is the ``fused`` rule at its target-FPR threshold (what
:func:`tsa_ros.fusion.suspect` computes in the fusion node).

AE sets are written once under ``out/ae/<split>/<set>`` (clean, T-AE-ε, S-AE-ε) and reused
when their manifest names the same source, ε, size and attacked checkpoint. The ``temporal``
rules need the frame before each annotated frame in ``leftImg8bit_sequence``; that frame is
clean (the attack set holds only the annotated frame), so they measure the onset of an
attack. Writes ``detection.json`` (every number and per-frame feature), ``detection.md`` and
``detection.png`` (ROC curves of the selected rule, mIoU of the fusion rules).
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tsa_ros.data.cityscapes import MANIFEST, CityscapesLayout, FrameId, LabeledDataset, read_rgb
from tsa_ros.data.labels import IGNORE_ID
from tsa_ros.detection import (
    FEATURES,
    RULES,
    Calibration,
    auroc,
    auroc_se,
    choose_threshold,
    flag_rate,
    roc_curve,
    rule_scores,
    suspect_accuracy,
    tpr_at_fpr,
    triplet_features,
)
from tsa_ros.errors import ConfigError
from tsa_ros.experiments.ae_sets import AE_MANIFEST_KEY, make_ae_set
from tsa_ros.fusion import FusionConfig, fuse, majority_vote, posterior_fusion_labels
from tsa_ros.inference import Predictor, frames_to_tensor, resize_frame, resolve_device
from tsa_ros.metrics import ConfusionMatrix, format_number, miou_ratio, percent
from tsa_ros.models import load_checkpoint

__all__ = [
    'FUSION_ROWS',
    'ROLES',
    'TARGET_FPR',
    'detection_markdown',
    'detection_study',
    'fit_fusion_rules',
    'fusion_description',
]

#: The triplet in fusion priority order (the teacher breaks majority-vote ties).
ROLES = ('T', 'S', 'A')
#: Attack target of each AE set family: index into ROLES.
_ATTACKED = {'T': 0, 'S': 1}
#: The issue's target: AUROC of the selected rule at ε = 10.
TARGET_AUROC = 0.99
#: Default false-positive rate of the thresholds and of the fusion gate (``--fpr``).
TARGET_FPR = 0.05
#: Rows of the fusion table: the networks alone, then each fusion mode of tsa_ros.fusion.
FUSION_ROWS = (
    *ROLES,
    'majority',
    'posterior',
    'weighted',
    'confidence',
    'gated',
    'gated_confidence',
)
_FUSION_WHAT = {
    'T': 'teacher alone',
    'S': 'static student alone',
    'A': 'adaptive student alone',
    'majority': 'majority vote, ties to T (the node default)',
    'posterior': 'mean posterior (equal weights), argmax',
    'weighted': "vote weighted by each network's per-class IoU on {thr} clean",
    'confidence': 'vote weighted by w × posterior of the voted class, w = ({w}, 1, 1)',
    'gated': "T's labels unless the suspect rule flags T, then the vote of S and A",
    'gated_confidence': 'confidence vote of the networks the suspect rule does not flag',
}
#: Teacher weights tried for the confidence votes (students 1 each) on the threshold split.
TEACHER_WEIGHTS = (1.0, 1.5, 2.0, 3.0, 4.0)
#: The issue's fusion targets: clean mIoU at most this far below T's (1 point), and under
#: every attack set at least this mIoU ratio to clean.
CLEAN_MARGIN = 0.01
ATTACK_RATIO = 0.9


def _set_names(epsilons: Sequence[float]) -> list[str]:
    return ['clean'] + [f'{who}-AE-{eps:g}' for who in ('T', 'S') for eps in epsilons]


def _matches(root: Path, expected: dict[str, Any]) -> bool:
    """Whether a complete AE set in ``root`` was made from this source, ε, size and network."""
    path = root / MANIFEST
    if not path.is_file():  # written last: a set without it is partial
        return False
    try:
        info = json.loads(path.read_text()).get(AE_MANIFEST_KEY) or {}
    except json.JSONDecodeError:
        return False
    sha = (info.get('checkpoint') or {}).get('sha256')
    return (
        info.get('source_root') == expected['source_root']
        and info.get('source_split') == expected['split']
        and float(info.get('epsilon', -1)) == expected['epsilon']
        and list(info.get('size') or []) == expected['size']
        and sha == expected['sha256']
    )


def _ae_sets(
    data: Path,
    split: str,
    out: Path,
    epsilons: Sequence[float],
    models: dict[str, Any],
    size: tuple[int, int],
    batch_size: int,
    device: str,
    progress: bool,
) -> dict[str, Path]:
    """Write (or reuse) clean, T-AE-ε and S-AE-ε of ``split``; name -> root."""
    roots = {}
    for name in _set_names(epsilons):
        root = out / 'ae' / split / name
        who = None if name == 'clean' else name.split('-')[0]
        eps = 0.0 if who is None else float(name.split('-', 2)[2])
        model, meta = (None, None) if who is None else models[who]
        expected = {
            'source_root': str(data.resolve()),
            'split': split,
            'epsilon': eps,
            'size': list(size),
            'sha256': None if meta is None else meta['sha256'],
        }
        if not _matches(root, expected):
            if progress:
                print(f'tsa detection: writing {split}/{name}', file=sys.stderr)
            make_ae_set(
                data,
                split,
                model,
                eps,
                root,
                size=size,
                batch_size=batch_size,
                device=device,
                progress=progress,
                overwrite=True,
                checkpoint_meta=None
                if meta is None
                else {'path': meta['path'], 'sha256': meta['sha256']},
            )
        roots[name] = root
    return roots


def _labels_and_posteriors(predictors, images: torch.Tensor):
    labels, probs = [], []
    for predictor in predictors:
        pred, post = predictor.infer(images, posteriors=True)
        labels.append(pred.to(torch.uint8).cpu().numpy())
        probs.append(post.cpu().numpy())
    return np.stack(labels), probs  # (K, N, H, W), K x (N, C, H, W)


def _previous_frames(
    data: Path, split: str, frames: list[FrameId], size, predictors, batch_size: int
) -> tuple[np.ndarray | None, np.ndarray]:
    """Each network's labels on the sequence frame before every annotated frame.

    Returns ``(labels (K, N, H, W) or None, has_previous (N,))``. The previous frame is read
    from the source root's ``leftImg8bit_sequence`` and resized like the AE sets' images.
    """
    layout = CityscapesLayout(data)
    folder, _ = layout.resolve_split(split)
    paths = [
        layout.image(folder, FrameId(f.city, f.seq, f.frame - 1), sequence=True) for f in frames
    ]
    has = np.array([f.frame > 0 and p.is_file() for f, p in zip(frames, paths, strict=True)])
    if not has.any():
        return None, has
    out = np.zeros((len(predictors), len(frames), *size), np.uint8)
    index = np.flatnonzero(has)
    for first in range(0, len(index), batch_size):
        chunk = index[first : first + batch_size]
        images = [resize_frame(read_rgb(paths[i]), size) for i in chunk]
        labels, _ = _labels_and_posteriors(predictors, frames_to_tensor(images))
        out[:, chunk] = labels
    return out, has


def _features(
    dataset: LabeledDataset,
    predictors,
    fusion: FusionConfig,
    previous: np.ndarray | None,
    has_previous: np.ndarray,
    batch_size: int,
    on_batch: Callable[[np.ndarray, list[np.ndarray], np.ndarray], None] | None = None,
) -> dict[str, np.ndarray]:
    """Every per-network feature of every frame of one set: name -> ``(N, K)``.

    ``on_batch(labels (K, n, H, W), posteriors K x (n, C, H, W), ground truth (n, H, W))``
    sees every batch, so the fusion table needs no second inference pass.
    """
    parts: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    for first in range(0, len(dataset), batch_size):
        stop = min(first + batch_size, len(dataset))
        items = [dataset[i] for i in range(first, stop)]
        images = torch.stack([image for image, _ in items])
        labels, probs = _labels_and_posteriors(predictors, images)
        if on_batch is not None:
            on_batch(labels, probs, torch.stack([gt for _, gt in items]).numpy())
        if fusion.mode == 'posterior':
            fused = posterior_fusion_labels(probs, weights=fusion.weights)
        else:
            fused = majority_vote(
                labels,
                tie=fusion.tie,
                posteriors=probs if fusion.tie == 'posterior' else None,
                num_classes=fusion.num_classes,
                ignore_index=fusion.ignore_index,
            )
        feats = triplet_features(
            labels,
            fused,
            probs,
            None if previous is None else previous[:, first:stop],
            has_previous[first:stop],
            ignore_index=fusion.ignore_index,
        )
        for name, values in feats.items():
            parts[name].append(values)
    return {name: np.concatenate(values) for name, values in parts.items()}


class _FusionCells:
    """Confusion matrices of the networks and fusion rules on one split, per set.

    Args:
        configs: row -> FusionConfig, or None for a network alone (row in ROLES).
        num_classes: number of classes.
    """

    def __init__(self, configs: dict[str, FusionConfig | None], num_classes: int) -> None:
        self.configs = configs
        self.num_classes = num_classes
        self.cms: dict[str, dict[str, ConfusionMatrix]] = {row: {} for row in configs}
        # Gated rows: per set, how many frames the gate dropped each network from.
        self.flagged: dict[str, dict[str, list[int]]] = {
            row: {} for row, cfg in configs.items() if cfg is not None and 'gated' in cfg.mode
        }

    def hook(self, set_name: str) -> Callable[[np.ndarray, list[np.ndarray], np.ndarray], None]:
        for row in self.configs:
            self.cms[row][set_name] = ConfusionMatrix(self.num_classes, IGNORE_ID)
        for counts in self.flagged.values():
            counts[set_name] = [0] * len(ROLES)

        def add(labels: np.ndarray, probs: list[np.ndarray], gt: np.ndarray) -> None:
            for n in range(labels.shape[1]):  # the gated rules decide frame by frame
                maps, posts = labels[:, n], [p[n] for p in probs]
                for row, cfg in self.configs.items():
                    if cfg is None:
                        pred = maps[ROLES.index(row)]
                    else:
                        result = fuse(maps, posts, cfg)
                        pred = result.labels
                        if row in self.flagged and result.suspect is not None:
                            self.flagged[row][set_name][result.suspect] += 1
                    self.cms[row][set_name].update(pred, gt[n])

        return add

    def miou(self, row: str, set_name: str) -> float:
        return self.cms[row][set_name].miou()


def _teacher_weight(cells: _FusionCells, clean: str) -> tuple[float, dict[str, float]]:
    """The smallest teacher weight whose confidence vote keeps ``clean`` mIoU within
    CLEAN_MARGIN of T (else the largest weight tried), and the clean mIoU of each.

    The smallest: the lighter the teacher, the more an attack on it is outvoted.
    """
    teacher = cells.miou('T', clean)
    tried = {f'{w:g}': cells.miou(f'confidence@{w:g}', clean) for w in TEACHER_WEIGHTS}
    for w in TEACHER_WEIGHTS:
        if tried[f'{w:g}'] >= teacher - CLEAN_MARGIN:
            return w, tried
    return TEACHER_WEIGHTS[-1], tried


def fusion_description(row: str, parameters: dict[str, Any]) -> str:
    """One line on what a fusion-table row does, with its fitted parameters filled in."""
    return _FUSION_WHAT[row].format(thr=parameters['from'], w=f'{parameters["teacher_weight"]:g}')


def _selection_cells(fusion: FusionConfig) -> _FusionCells:
    """The cells the fusion parameters are chosen from: each network alone (class weights,
    T's clean mIoU) and the confidence vote at every teacher weight of TEACHER_WEIGHTS."""
    space = {'num_classes': fusion.num_classes, 'ignore_index': fusion.ignore_index}
    trials: dict[str, FusionConfig | None] = {role: None for role in ROLES}
    for w in TEACHER_WEIGHTS:
        trials[f'confidence@{w:g}'] = FusionConfig('confidence', weights=(w, 1.0, 1.0), **space)
    return _FusionCells(trials, fusion.num_classes)


def _fusion_configs(
    base: FusionConfig, class_weights: np.ndarray, teacher_weight: float, gate: float
) -> dict[str, FusionConfig | None]:
    """Row -> configuration of the fusion table (None: a network alone)."""
    weights = (teacher_weight, 1.0, 1.0)
    plain = FusionConfig(num_classes=base.num_classes, ignore_index=base.ignore_index)
    configs: dict[str, FusionConfig | None] = {role: None for role in ROLES}
    configs.update(
        majority=plain,
        posterior=replace(plain, mode='posterior'),
        weighted=replace(plain, mode='weighted', class_weights=class_weights.ravel()),
        confidence=replace(plain, mode='confidence', weights=weights),
        gated=replace(plain, mode='gated', suspect_threshold=gate),
        gated_confidence=replace(
            plain, mode='gated_confidence', weights=weights, suspect_threshold=gate
        ),
    )
    return configs


def _fusion_table(
    cells: _FusionCells,
    sets: list[str],
    parameters: dict[str, Any],
) -> dict[str, Any]:
    """mIoU, ratio to clean and the targets (CLEAN_MARGIN, ATTACK_RATIO) of every row."""
    rows = list(cells.configs)
    miou = {row: {n: cells.miou(row, n) for n in sets} for row in rows}
    teacher_clean = miou['T']['clean']
    ratio = {row: {n: miou_ratio(miou[row][n], miou[row]['clean']) for n in sets} for row in rows}
    targets = {}
    for row in rows:
        attacks = {n: ratio[row][n] for n in sets[1:]}
        worst = min(attacks, key=lambda n: -math.inf if math.isnan(attacks[n]) else attacks[n])
        gap = miou[row]['clean'] - teacher_clean
        targets[row] = {
            'clean_minus_teacher': gap,
            'worst_set': worst,
            'worst_ratio': attacks[worst],
            'worst_to_teacher_clean': miou_ratio(miou[row][worst], teacher_clean),
            'clean_ok': bool(gap >= -CLEAN_MARGIN - 1e-12),
            'attacks_ok': bool(attacks[worst] >= ATTACK_RATIO),
            'attack_sets_ok': sum(bool(v >= ATTACK_RATIO) for v in attacks.values()),
        }
        targets[row]['met'] = targets[row]['clean_ok'] and targets[row]['attacks_ok']
    flagged = {
        row: {n: dict(zip(ROLES, counts[n], strict=True)) for n in sets}
        for row, counts in cells.flagged.items()
    }
    return {
        'rows': rows,
        'descriptions': {row: fusion_description(row, parameters) for row in rows},
        'miou': miou,
        'ratio': ratio,
        'flagged': flagged,
        'target': {'clean_margin': CLEAN_MARGIN, 'attack_ratio': ATTACK_RATIO, 'rows': targets},
        'parameters': parameters,
    }


def _fusion_setup(
    selection: _FusionCells,
    clean_features: dict[str, np.ndarray],
    fusion: FusionConfig,
    target_fpr: float,
    split: str,
) -> tuple[_FusionCells, dict[str, Any]]:
    """The fusion table's rows, with parameters from the threshold split's clean frames."""
    teacher_weight, tried = _teacher_weight(selection, 'clean')
    # Classes absent from both the ground truth and a network's output have no IoU: weight 0.
    class_weights = np.stack(
        [np.nan_to_num(selection.cms[role]['clean'].iou(), nan=0.0) for role in ROLES]
    )
    # The gate is the node's suspect rule: the `fused` rule at the target FPR.
    gate = choose_threshold(rule_scores('fused', clean_features)[0], target_fpr)
    gate = min(max(gate, 0.0), 1.0)
    parameters = {
        'from': split,
        'teacher_clean_miou': selection.miou('T', 'clean'),
        'teacher_weight': teacher_weight,
        'teacher_weight_clean_miou': tried,
        'gate_rule': 'fused',
        'gate_threshold': gate,
        'gate_target_fpr': target_fpr,
        'class_weights': {role: class_weights[i] for i, role in enumerate(ROLES)},
    }
    configs = _fusion_configs(fusion, class_weights, teacher_weight, gate)
    return _FusionCells(configs, fusion.num_classes), parameters


def fit_fusion_rules(
    predictors: Sequence[Predictor],
    clean: LabeledDataset,
    fusion: FusionConfig,
    *,
    target_fpr: float = TARGET_FPR,
    split: str = 'minival',
    batch_size: int = 4,
) -> tuple[dict[str, FusionConfig], dict[str, Any]]:
    """Fit the fusion rules' parameters on one split's clean frames, as
    :func:`detection_study` does on its threshold split.

    Not in the paper (decision fusion is left open in sec. 3.4, 4.3). The class weights of
    ``weighted`` are each network's per-class IoU (eq. 11) on ``clean``, the teacher weight of
    the confidence votes the smallest of :data:`TEACHER_WEIGHTS` within 1 mIoU point of T
    there, and the gate of the gated modes the ``fused`` rule's threshold at ``target_fpr``
    on ``clean``'s frames.

    Args:
        predictors: T, S, A in :data:`ROLES` order (the fused triplet; T breaks ties).
        clean: the clean frames of the fitting split (never the reported one).
        fusion: the base configuration (label space; its mode and tie make the reference vote
            the ``fused`` rule reads, as in the detection experiment).
        target_fpr: false-positive rate of the gate on ``clean``.
        split: name of the fitting split, stored in the parameters.
        batch_size: images per forward pass.

    Returns:
        ``(row -> FusionConfig, parameters)`` for the rows ``majority``, ``posterior``,
        ``weighted``, ``confidence``, ``gated``, ``gated_confidence`` (in that order), and the
        fitted parameters, JSON-safe (``from``, ``teacher_weight``, ``gate_threshold``,
        ``class_weights`` ... as in ``detection.json`` → ``fusion_rules.parameters``).
    """
    selection = _selection_cells(fusion)
    # The gate's rule reads only labels and the reference vote: no previous frames needed.
    features = _features(
        clean,
        predictors,
        fusion,
        None,
        np.zeros(len(clean), bool),
        batch_size,
        selection.hook('clean'),
    )
    table, parameters = _fusion_setup(selection, features, fusion, target_fpr, split)
    configs = {row: cfg for row, cfg in table.configs.items() if cfg is not None}
    return configs, _finite(parameters)


def _load(paths: dict[str, str | Path], device: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    models = {}
    for role, path in paths.items():
        model, meta = load_checkpoint(path, map_location=device)
        models[role] = (model, meta)
    sizes = {role: tuple(m.config.input_size) for role, (m, _) in models.items()}
    if len(set(sizes.values())) != 1:
        raise ConfigError(
            f'detection: T, S and A must share one network input size (the AE sets are '
            f'written at it), got {sizes}'
        )
    classes = {role: m.config.num_classes for role, (m, _) in models.items()}
    if len(set(classes.values())) != 1:
        raise ConfigError(f'detection: the networks disagree on the number of classes: {classes}')
    return models


def _finite(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN / inf to None, recursively."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def detection_study(
    data: str | Path,
    teacher: str | Path,
    student: str | Path,
    adaptive: str | Path,
    out: str | Path,
    *,
    split: str = 'minitest',
    threshold_split: str = 'minival',
    epsilons: Sequence[float] = (1.0, 10.0),
    target_fpr: float = TARGET_FPR,
    fusion: FusionConfig | None = None,
    batch_size: int = 4,
    device: str = 'cpu',
    progress: bool = True,
    command: str = '',
) -> dict[str, Any]:
    """Score every detection rule; writes detection.json/.md/.png to ``out``.

    Args:
        data: source data root (Cityscapes layout).
        teacher, student, adaptive: checkpoints of T, S and A (one input size).
        out: output folder (AE sets cached in ``out/ae``).
        split: split the numbers are reported on.
        threshold_split: split that calibrates, sets thresholds and selects the rule.
        epsilons: attack strengths in gray values (T-AE and S-AE at each).
        target_fpr: false-positive rate the thresholds are set for.
        fusion: how T, S, A are fused (default: the node's majority vote, teacher ties).
        batch_size: images per forward pass (attack and scoring).
        device: torch device.
        progress: progress lines on stderr.
        command: the command line, stored in the results.

    Returns:
        The contents of detection.json (fractions; None where undefined).
    """
    if not epsilons or any(not eps > 0 for eps in epsilons):
        raise ConfigError(f'detection: epsilons must be > 0, got {list(epsilons)}')
    if len({f'{eps:g}' for eps in epsilons}) != len(epsilons):
        raise ConfigError(f'detection: epsilons repeat, got {list(epsilons)}')
    if not 0.0 < target_fpr < 1.0:
        raise ConfigError(f'detection: the target FPR must be in (0, 1), got {target_fpr}')
    if split == threshold_split:
        raise ConfigError(
            f'detection: --threshold-split must differ from --split ({split}): a rule and its '
            'threshold chosen on the reported frames would overstate them'
        )
    if batch_size < 1:
        raise ConfigError(f'detection: batch size must be >= 1, got {batch_size}')
    try:
        device = str(resolve_device(device))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    data, out = Path(data), Path(out)
    layout = CityscapesLayout(data)
    for name in (threshold_split, split):
        layout.frames(name)  # one clear DataError before anything is loaded or written
    models = _load({'T': teacher, 'S': student, 'A': adaptive}, device)
    fusion = fusion or FusionConfig(num_classes=models['T'][0].config.num_classes)
    size = tuple(int(s) for s in models['T'][0].config.input_size)
    # The attacks first: a Predictor switches its network to channels_last, and the AEs
    # should be those `tsa attack` writes from the checkpoint as loaded.
    roots = {
        name: _ae_sets(data, name, out, epsilons, models, size, batch_size, device, progress)
        for name in (threshold_split, split)
    }
    predictors = [Predictor(models[r][0], device=device) for r in ROLES]

    features: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    frames: dict[str, list[str]] = {}
    with_previous: dict[str, int] = {}
    # Fusion parameters from the threshold split's clean frames: each network's confusion
    # (class weights, T's mIoU) and the confidence vote at every teacher weight.
    selection = _selection_cells(fusion)
    table: _FusionCells | None = None
    parameters: dict[str, Any] = {}
    for name in (threshold_split, split):  # the threshold split first: it sets parameters
        sets = {n: LabeledDataset(root, name) for n, root in roots[name].items()}
        ids = sets['clean'].frames
        if any(ds.frames != ids for ds in sets.values()):
            raise ConfigError(f'detection: the AE sets of {name} hold different frames')
        previous, has = _previous_frames(data, name, ids, size, predictors, batch_size)
        frames[name] = [f.stem for f in ids]
        with_previous[name] = int(has.sum())
        features[name] = {}
        for set_name, dataset in sets.items():
            if progress:
                print(f'tsa detection: scoring {name}/{set_name}', file=sys.stderr)
            hook = None
            if name == threshold_split and set_name == 'clean':
                hook = selection.hook(set_name)
            elif name == split and table is not None:
                hook = table.hook(set_name)
            features[name][set_name] = _features(
                dataset, predictors, fusion, previous, has, batch_size, hook
            )
        if name == threshold_split:
            table, parameters = _fusion_setup(
                selection, features[name]['clean'], fusion, target_fpr, threshold_split
            )

    attack_sets = _set_names(epsilons)[1:]
    calibration = Calibration.fit(features[threshold_split]['clean'])
    rules: dict[str, Any] = {}
    scores: dict[str, dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]] = {}
    for rule in RULES.values():
        per = {
            s: {n: rule_scores(rule, f, calibration) for n, f in features[s].items()}
            for s in (threshold_split, split)
        }
        scores[rule.name] = per
        available = all(np.isfinite(score).all() for s in per.values() for score, _ in s.values())
        entry: dict[str, Any] = {'description': rule.description, 'available': available}
        rules[rule.name] = entry
        if not available:
            entry['why'] = (
                f'{rule.feature} is undefined on some frames (frames with a previous sequence '
                f'frame: {with_previous})'
            )
            continue
        clean_thr = per[threshold_split]['clean'][0]
        threshold = choose_threshold(clean_thr, target_fpr)
        selection = {}
        for n in attack_sets:
            score = per[threshold_split][n][0]
            area = auroc(clean_thr, score)
            selection[n] = {
                'auroc': area,
                'auroc_se': auroc_se(area, clean_thr.size, score.size),
                'tpr': flag_rate(score, threshold),
            }
        clean_test = per[split]['clean'][0]
        report = {}
        for n in attack_sets:
            score, suspects = per[split][n]
            attacked = _ATTACKED[n.split('-')[0]]
            flagged = score > threshold
            area = auroc(clean_test, score)
            report[n] = {
                'attacked': ROLES[attacked],
                'auroc': area,
                'auroc_se': auroc_se(area, clean_test.size, score.size),
                'tpr': flag_rate(score, threshold),
                'tpr_own_threshold': tpr_at_fpr(clean_test, score, target_fpr),
                'suspect_accuracy': suspect_accuracy(suspects, attacked),
                'suspect_accuracy_flagged': suspect_accuracy(suspects, attacked, flagged),
                'flagged': int(flagged.sum()),
                'frames': int(score.size),
            }
        entry.update(
            threshold=threshold,
            selection={
                'sets': selection,
                'mean_auroc': float(np.mean([v['auroc'] for v in selection.values()])),
                'mean_tpr': float(np.mean([v['tpr'] for v in selection.values()])),
            },
            report={
                'fpr': flag_rate(clean_test, threshold),
                'sets': report,
            },
        )

    candidates = [name for name, entry in rules.items() if entry['available']]
    if not candidates:
        raise ConfigError('detection: no rule is defined on every frame')
    # Best mean AUROC on the threshold split, then best mean TPR there; on a tie the earlier
    # (simpler) rule of RULES wins, so the node's current rule is kept unless beaten.
    ranking = sorted(
        candidates,
        key=lambda n: (rules[n]['selection']['mean_auroc'], rules[n]['selection']['mean_tpr']),
        reverse=True,  # a stable sort: equal keys keep the order of RULES
    )
    selected = ranking[0]
    roc = {}
    clean_test = scores[selected][split]['clean'][0]
    for n in attack_sets:
        fpr, tpr, _ = roc_curve(clean_test, scores[selected][split][n][0])
        roc[n] = {'fpr': fpr, 'tpr': tpr}
    target = None
    if 10.0 in epsilons:  # the target is stated at ε = 10
        values = {n: rules[selected]['report']['sets'][n]['auroc'] for n in ('T-AE-10', 'S-AE-10')}
        met = min(values.values()) >= TARGET_AUROC
        target = {'auroc_min': TARGET_AUROC, 'sets': values, 'met': met}

    result = _finite(
        {
            'command': command,
            'data': str(data.resolve()),
            'split': split,
            'threshold_split': threshold_split,
            'epsilons': list(epsilons),
            'target_fpr': target_fpr,
            'fusion': {'mode': fusion.mode, 'tie': fusion.tie},
            'checkpoints': {
                r: {
                    'path': models[r][1]['path'],
                    'sha256': models[r][1]['sha256'],
                    'arch': models[r][0].config.arch,
                    'input_size': list(size),
                }
                for r in ROLES
            },
            'frames': {s: len(v) for s, v in frames.items()},
            'frames_with_previous': with_previous,
            'sets': _set_names(epsilons),
            'calibration': calibration.to_dict(),
            'rules': rules,
            'selected': {
                'rule': selected,
                'description': RULES[selected].description,
                'threshold': rules[selected]['threshold'],
                'mean_auroc_threshold_split': rules[selected]['selection']['mean_auroc'],
                'ranking': ranking,
                'roc': roc,
            },
            'target': target,
            'fusion_rules': _fusion_table(table, _set_names(epsilons), parameters),
            'per_frame': {
                s: {
                    'frames': frames[s],
                    'features': {
                        n: {f: v for f, v in feats.items()} for n, feats in features[s].items()
                    },
                }
                for s in (threshold_split, split)
            },
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / 'detection.json').write_text(json.dumps(result, indent=1) + '\n')
    (out / 'detection.md').write_text(detection_markdown(result))
    _figure(result, out / 'detection.png')
    return result


def _auroc(value: float | None) -> str:
    return format_number(value, 3)


def _pct(value: float | None) -> str:
    return format_number(percent(value))


def detection_markdown(result: dict[str, Any]) -> str:
    """The study as Markdown: the selected rule, then every rule, each with its command."""
    split, thr = result['split'], result['threshold_split']
    fpr = format_number(100 * result['target_fpr'], 0)
    sets = result['sets'][1:]
    rules = result['rules']
    sel = result['selected']
    rule = rules[sel['rule']]
    command = result.get('command') or '(not recorded)'
    frames = result['frames']
    ckpt = result['checkpoints']
    nets = ', '.join(
        f'{r} {ckpt[r]["arch"]} ({Path(ckpt[r]["path"]).name}, sha256 {ckpt[r]["sha256"][:12]})'
        for r in ROLES
    )
    size = ckpt['T']['input_size']
    lines = [
        f"# Attack detection from the triplet's outputs ({split})",
        '',
        f'Every number below was produced by `{command}`.',
        '',
        f'Networks: {nets}; network input {size[1]}x{size[0]}; fusion: {result["fusion"]["mode"]}'
        f' vote, ties to {result["fusion"]["tie"]}. Frames: {frames[split]} of {split} and '
        f'{frames[thr]} of {thr} in each set (clean, and the least-likely AEs of T and of S '
        f'at ε = {", ".join(f"{e:g}" for e in result["epsilons"])}). A detector flags a frame '
        'when its score is above the threshold; clean frames are the negatives, the frames of '
        'one attack set the positives.',
        '',
        f'Protocol: the `_z` rules are calibrated, every threshold is set for {fpr} % FPR on '
        f'the clean frames of **{thr}**, and the rule is selected there (best mean AUROC over '
        f'the attack sets); **{split}** is only measured. With {frames[thr]} clean frames, '
        f'{math.floor(result["target_fpr"] * frames[thr] + 1e-9)} of them may lie above a '
        f'{fpr} % threshold: the FPR it gives on {split} scatters around {fpr} %.',
        '',
        f'## Selected rule: `{sel["rule"]}` ({sel["description"]})',
        '',
        f'Mean AUROC over the attack sets on {thr}: {_auroc(sel["mean_auroc_threshold_split"])}'
        f'{_runner_up(result)}. Threshold at {fpr} % FPR on {thr}: '
        f'{format_number(sel["threshold"], 4)}; on the clean frames of {split} it flags '
        f'{_pct(rule["report"]["fpr"])} % (the FPR the TPR column below comes with).',
        '',
        f'| attack set ({split}) | attacked | AUROC ± SE | TPR at {fpr} % FPR (threshold from '
        f'{thr}) | suspect = attacked, all frames | suspect = attacked, flagged frames |',
        '|---|---|---:|---:|---:|---:|',
    ]
    for n in sets:
        cell = rule['report']['sets'][n]
        accuracy = cell['suspect_accuracy_flagged']
        flagged = '—' if accuracy is None else f'{_pct(accuracy)} %'
        lines.append(
            f'| {n} | {cell["attacked"]} | {_auroc(cell["auroc"])} ± {_auroc(cell["auroc_se"])} '
            f'| {_pct(cell["tpr"])} % | {_pct(cell["suspect_accuracy"])} % | {flagged} '
            f'({cell["flagged"]} flagged) |'
        )
    target = result.get('target')
    if target:
        verdict = 'met' if target['met'] else 'NOT met'
        values = ', '.join(f'{n} {_auroc(v)}' for n, v in target['sets'].items())
        lines += ['', f'Target AUROC ≥ {target["auroc_min"]} at ε = 10: **{verdict}** ({values}).']
    lines += [
        '',
        '"suspect = attacked, all frames": the network with the unique largest value is the '
        'attacked one, threshold or not; "flagged frames": the same among the frames the '
        'threshold flags (what the fusion node would publish as `suspected_role`). SE: '
        'Hanley & McNeil (1982); 0 at AUROC 1, where it understates the uncertainty.',
        '',
        '![ROC curves of the selected rule](detection.png)',
        '',
        f'## Every rule: AUROC on {split}',
        '',
        f'Selection column: mean AUROC over the attack sets on {thr} (the only number the '
        'choice looks at).',
        '',
        '| rule | what | ' + f'{thr} mean (selection) | ' + ' | '.join(sets) + ' |',
        '|---|---|---:|' + '---:|' * len(sets),
    ]
    for name, entry in rules.items():
        mark = f'**{name}**' if name == sel['rule'] else name
        if not entry['available']:
            lines.append(
                f'| {mark} | {entry["description"]} | — | ' + ' | '.join('—' for _ in sets) + ' |'
            )
            continue
        cells = [_auroc(entry['report']['sets'][n]['auroc']) for n in sets]
        lines.append(
            f'| {mark} | {entry["description"]} | {_auroc(entry["selection"]["mean_auroc"])} | '
            + ' | '.join(cells)
            + ' |'
        )
    lines += [
        '',
        f'## Every rule: TPR at {fpr} % FPR on {split} (threshold from {thr}) and suspect '
        'accuracy',
        '',
        'Cells: TPR % / suspect = attacked % (all attacked frames). FPR: share of clean '
        f'{split} frames flagged at that threshold.',
        '',
        '| rule | FPR on clean | ' + ' | '.join(sets) + ' |',
        '|---|---:|' + '---:|' * len(sets),
    ]
    for name, entry in rules.items():
        if not entry['available']:
            continue
        cells = [
            f'{_pct(c["tpr"])} / {_pct(c["suspect_accuracy"])}'
            for c in (entry['report']['sets'][n] for n in sets)
        ]
        lines.append(f'| {name} | {_pct(entry["report"]["fpr"])} % | ' + ' | '.join(cells) + ' |')
    missing = [n for n, e in rules.items() if not e['available']]
    if missing:
        lines += [
            '',
            f'Not measured: {", ".join(missing)} -- the feature needs the sequence frame before '
            f'every annotated frame (`leftImg8bit_sequence`); frames with one: '
            + ', '.join(f'{s} {n}' for s, n in result['frames_with_previous'].items())
            + '.',
        ]
    lines += [
        '',
        'For scale, not compared like for like (other networks, data and attacks): Klingner et '
        'al. (2022) detect up to 100 % of attacked images at 5 % FPR from multi-task '
        'inconsistency, and multi-task consistency detection reports 99.9 % AUROC.',
    ]
    if result.get('fusion_rules'):
        lines += _fusion_markdown(result)
    lines += ['', f'Command: `{command}`']
    return '\n'.join(lines) + '\n'


def _fusion_markdown(result: dict[str, Any]) -> list[str]:
    """The section on the fusion rules: mIoU and ratio per set, targets, gate decisions."""
    table = result['fusion_rules']
    par, target = table['parameters'], table['target']
    split, thr = result['split'], par['from']
    sets = result['sets']
    fpr = format_number(100 * par['gate_target_fpr'], 0)
    margin = format_number(100 * target['clean_margin'], 0)
    ratio = format_number(100 * target['attack_ratio'], 0)
    tried = ', '.join(f'{w} → {_pct(v)}' for w, v in par['teacher_weight_clean_miou'].items())
    lines = [
        '',
        f'## Fusion rules: mIoU on {split}',
        '',
        "Can a fusion keep the teacher's clean accuracy and survive an attack on one network? "
        f"Targets: clean mIoU at most {margin} point below T's, and under every attack set "
        f"an mIoU ratio to clean (the paper's robustness measure) of at least {ratio} %. "
        f'Every parameter comes from **{thr}**: the gate is the suspect rule `fused` (the '
        f"fusion node's) at its {fpr} % FPR threshold, "
        f'{format_number(par["gate_threshold"], 4)}; the teacher weight w of the confidence '
        f"votes is the smallest whose confidence vote stays within {margin} point of T's "
        f'clean mIoU there ({_pct(par["teacher_clean_miou"])} %; w → clean mIoU %: {tried}); '
        "the class weights are each network's per-class IoU on the clean frames there. "
        f"Cells: mIoU % on {split} (ratio to the rule's own clean mIoU %).",
        '',
        '| rule | what | '
        + ' | '.join(sets)
        + f' | clean − T (points) | attack sets ≥ {ratio} % | worst ratio | targets met |',
        '|---|---|' + '---:|' * len(sets) + '---:|---:|---:|---|',
    ]
    for row in table['rows']:
        cells = []
        for n in sets:
            value = _pct(table['miou'][row][n])
            cells.append(value if n == 'clean' else f'{value} ({_pct(table["ratio"][row][n])} %)')
        t = target['rows'][row]
        verdict = (
            'yes'
            if t['met']
            else ('clean only' if t['clean_ok'] else ('attacks only' if t['attacks_ok'] else 'no'))
        )
        gap = format_number(percent(t['clean_minus_teacher']))
        lines.append(
            f'| {row} | {table["descriptions"][row]} | '
            + ' | '.join(cells)
            + f' | {gap} | {t["attack_sets_ok"]} of {len(sets) - 1} '
            f'| {_pct(t["worst_ratio"])} % ({t["worst_set"]}) | {verdict} |'
        )
    met = [row for row in table['rows'] if target['rows'][row]['met']]
    kept = [row for row in table['rows'] if target['rows'][row]['clean_ok'] and row not in ROLES]
    lines += ['']
    if met:
        lines.append(
            f'Rules meeting both targets on {split}: ' + ', '.join(f'`{r}`' for r in met) + '.'
        )
    else:
        lines.append(f'No rule meets both targets on {split}.')
    if kept:
        # Closest to the targets: most attack sets kept, then the best worst case.
        rows = target['rows']
        best = max(kept, key=lambda r: (rows[r]['attack_sets_ok'], rows[r]['worst_ratio']))
        t = rows[best]
        lines[-1] += (
            f' Of the fusion rules within {margin} point of T on clean frames, `{best}` comes '
            f'closest: at least {ratio} % on {t["attack_sets_ok"]} of {len(sets) - 1} attack '
            f'sets, worst {_pct(t["worst_ratio"])} % of its clean mIoU under {t["worst_set"]} '
            f"({_pct(t['worst_to_teacher_clean'])} % of T's)."
        )
    miou = table['miou']
    teacher = miou['T']['clean']
    students = {r: miou_ratio(miou[r]['clean'], teacher) for r in ('S', 'A')}
    if max(students.values()) < target['attack_ratio']:  # NaN compares False: no claim
        lines.append(
            f"S and A alone reach {_pct(students['S'])} % and {_pct(students['A'])} % of T's "
            'clean mIoU even on clean frames: once an attack on T has made its output useless, '
            f'a fusion has only S and A left, so {ratio} % under a strong attack on T is out of '
            "reach until the students come closer to the teacher's accuracy."
        )
    if table['flagged']:
        lines += [
            '',
            'Frames on which the gate dropped a network (T / S / A, of '
            f'{result["frames"][split]}):',
            '',
            '| rule | ' + ' | '.join(sets) + ' |',
            '|---|' + '---:|' * len(sets),
        ]
        for row, counts in table['flagged'].items():
            cells = [' / '.join(str(counts[n][r]) for r in ROLES) for n in sets]
            lines.append(f'| {row} | ' + ' | '.join(cells) + ' |')
    lines += [
        '',
        'For scale, not like for like (other networks, full Cityscapes): Bär et al. (CVPRW '
        '2020) report about 50 % mIoU for the majority vote under the strongest attacks, with '
        'about 75.7 % clean.',
    ]
    return lines


def _runner_up(result: dict[str, Any]) -> str:
    """', runner-up <rule> <mean> (one AUROC there has an SE of about x)' for the text."""
    ranking = result['selected'].get('ranking') or []
    if len(ranking) < 2:
        return ''
    rules, thr = result['rules'], result['threshold_split']
    second = rules[ranking[1]]['selection']['mean_auroc']
    ses = [v['auroc_se'] for v in rules[ranking[0]]['selection']['sets'].values()]
    se = max(v for v in ses if v is not None)
    return (
        f' (runner-up `{ranking[1]}` {_auroc(second)}; the largest SE of one of its AUROCs on '
        f'{thr} is {_auroc(se)}: a smaller margin is noise)'
    )


def _figure(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    sel = result['selected']
    entry = result['rules'][sel['rule']]
    fusion = result.get('fusion_rules')
    if fusion:
        fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=(5.5, 6.5))
        _fusion_bars(bars, result)
    else:
        fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ':', color='grey', label='chance')
    for index, (n, curve) in enumerate(sel['roc'].items()):
        cell = entry['report']['sets'][n]
        (line,) = ax.plot(
            curve['fpr'],
            curve['tpr'],
            lw=max(3.5 - 0.7 * index, 1.0),  # wide first: coinciding curves stay visible
            ls='-' if n.startswith('T') else '--',
            label=f'{n}: AUROC {_auroc(cell["auroc"])}',
        )
        ax.plot([entry['report']['fpr']], [cell['tpr']], 'o', color=line.get_color())
    ax.axvline(result['target_fpr'], color='grey', lw=0.8, ls='--')
    ax.set_xlabel(f'false-positive rate (clean {result["split"]} frames)')
    ax.set_ylabel('true-positive rate (attacked frames)')
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_title(
        f'{sel["rule"]} on {result["split"]} (dots: threshold from {result["threshold_split"]})',
        fontsize=9,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fusion_bars(ax: Any, result: dict[str, Any]) -> None:
    """mIoU of every fusion-table row on every set, with T's clean mIoU and the target."""
    table = result['fusion_rules']
    rows, sets = table['rows'], result['sets']
    width = 0.8 / len(sets)
    for index, n in enumerate(sets):
        values = [100 * (table['miou'][row][n] or 0.0) for row in rows]
        ax.bar(
            np.arange(len(rows)) + (index - (len(sets) - 1) / 2) * width, values, width, label=n
        )
    teacher = 100 * (table['miou']['T']['clean'] or 0.0)
    ax.axhline(teacher, color='black', lw=0.8, label="T's clean mIoU")
    ratio = table['target']['attack_ratio']
    ax.axhline(ratio * teacher, color='black', lw=0.8, ls='--', label=f'{100 * ratio:g} % of it')
    ax.set_xticks(np.arange(len(rows)), rows, rotation=30, ha='right', fontsize=8)
    ax.set_ylabel(f'mIoU % on {result["split"]}')
    ax.set_title(
        f'fusion rules on {result["split"]} (parameters from {table["parameters"]["from"]})',
        fontsize=9,
    )
    top = max([teacher] + [100 * (v or 0.0) for row in rows for v in table['miou'][row].values()])
    ax.set_ylim(0, 1.3 * top)  # head room: the legend covers no bar
    ax.grid(True, axis='y', alpha=0.3)
    ax.legend(fontsize=7, ncol=4, loc='upper center')


def main_from_args(args: Any) -> int:
    """``tsa experiment detection``: run (or resume) and print the selected rule's table."""
    result = detection_study(
        args.data,
        args.teacher,
        args.student,
        args.adaptive,
        args.out,
        split=args.split,
        threshold_split=args.threshold_split,
        epsilons=args.epsilon,
        target_fpr=args.fpr,
        batch_size=args.batch_size,
        device=args.device,
        progress=not args.quiet,
        command=shlex.join(['tsa', *getattr(args, 'argv', [])]),
    )
    print(detection_markdown(result), end='')
    print(f'wrote {Path(args.out) / "detection.json"}, detection.md and detection.png')
    return 0
