"""The supervised training run of the teacher T and the student S (paper sec. 4.2).

One readable loop: seed, build the model, Adam, a sharded data loader, poly learning rate per
step, periodic evaluation (mIoU on the eval split), checkpoints and a resumable training state.
Launched under ``torchrun`` (``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` set) it trains with
DistributedDataParallel; only rank 0 writes files and prints.

Files written to ``out``:

* ``<role>.pt``: the model checkpoint (:func:`tsa_ros.models.save_checkpoint`), ``extra``
  holding ``step`` and ``miou`` (of the latest evaluation).
* ``<role>.state.pt``: weights, optimizer state, step and every rank's RNG state, so that a
  ``resume`` continues exactly where the run stopped (bit-equal weights on the same machine).
* ``<role>.log.jsonl``: one JSON line per evaluation (step, loss, miou, lr, seconds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, Subset

from tsa_ros.data.cityscapes import MANIFEST, AugmentConfig, DataError, LabeledDataset
from tsa_ros.inference import resolve_device
from tsa_ros.learning.supervised import evaluate, poly_lr, set_lr, supervised_step
from tsa_ros.metrics import ConfusionMatrix
from tsa_ros.models import ModelConfig, build_model, save_checkpoint

ROLES = ('teacher', 'student')
DEFAULT_INPUT_SIZE = (512, 1024)  # Cityscapes at half resolution, as the paper's networks see


@dataclass
class TrainConfig:
    """Hyper-parameters of one supervised training run (teacher or student).

    Both roles use the paper's student recipe: Adam in standard configuration with
    ``lr = 1e-4`` and poly decay (power 0.9), no weight decay. For the teacher the paper gives
    no recipe (it uses an ImageNet-pretrained DeepLabV3+); here the backbone starts from
    scratch (no pretrained weights are available offline), and Adam's per-parameter step
    sizes make that start robust without the warm-up and learning-rate tuning the usual
    SGD (momentum 0.9, lr 0.01) recipe needs for an un-pretrained ResNet.

    Attributes:
        role: ``'teacher'`` or ``'student'``; names the output files and picks the default model.
        model: network; ``None`` = per role: student ERFNet, teacher DeepLabV3+ ResNet-50
            output stride 16. Its ``input_size`` is set to ``input_size``.
        input_size: ``(H, W)`` the images are resized to; ``None`` = the data set preset's
            ``model_input`` when the data root has ``tsa_synth.json``, else ``(512, 1024)``.
        steps: optimisation steps in total (the paper: 75,000 for the student).
        batch_size: images per step and process (the paper: 6).
        lr: initial learning rate of the poly schedule.
        lr_power: exponent of the poly decay.
        weight_decay: Adam's L2 weight decay (0 = standard configuration).
        augment: training augmentation; ``crop_size`` ``None`` = ``input_size``.
        eval_every: evaluate on ``eval_split`` every this many steps (and always at the end);
            0 = only at the end.
        eval_split: split the mIoU is measured on.
        num_workers: data-loader worker processes per training process.
        seed: seeds the weights, the data order, the augmentation and dropout.
        checkpoint_every: write the checkpoint and training state every this many steps (and
            always at the end); 0 = only at the end.
        keep_steps: steps at which a copy of the checkpoint is kept as
            ``<role>.step<N>.pt`` (for studies of the network against training length).
    """

    role: str = 'student'
    model: ModelConfig | None = None
    input_size: tuple[int, int] | None = None
    steps: int = 75_000
    batch_size: int = 6
    lr: float = 1e-4
    lr_power: float = 0.9
    weight_decay: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    eval_every: int = 5000
    eval_split: str = 'minival'
    num_workers: int = 2
    seed: int = 0
    checkpoint_every: int = 5000
    keep_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f'TrainConfig.role must be one of {ROLES}, got {self.role!r}')
        for name in ('steps', 'batch_size'):
            if getattr(self, name) < 1:
                raise ValueError(f'TrainConfig.{name} must be >= 1, got {getattr(self, name)}')
        for name in ('eval_every', 'checkpoint_every', 'num_workers'):
            if getattr(self, name) < 0:
                raise ValueError(f'TrainConfig.{name} must be >= 0, got {getattr(self, name)}')
        if not self.lr > 0:
            raise ValueError(f'TrainConfig.lr must be positive, got {self.lr}')
        self.keep_steps = tuple(sorted(int(s) for s in self.keep_steps))
        if any(s < 1 for s in self.keep_steps):
            raise ValueError(f'TrainConfig.keep_steps must be >= 1, got {self.keep_steps}')


def default_model(role: str) -> ModelConfig:
    """The paper's networks: ERFNet for the student, DeepLabV3+ ResNet-50 OS16 for the teacher."""
    if role == 'teacher':
        return ModelConfig(arch='deeplabv3plus', backbone='resnet50', output_stride=16)
    return ModelConfig(arch='erfnet')


def resolve(config: TrainConfig, root: str | Path) -> TrainConfig:
    """Fill the data-dependent defaults (input size, model, crop size) for data root ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f'data root not found: {root}')
    size = config.input_size
    if size is None:
        size = DEFAULT_INPUT_SIZE
        manifest = root / MANIFEST
        if manifest.is_file():
            model_input = json.loads(manifest.read_text()).get('preset', {}).get('model_input')
            if model_input and all(model_input):
                size = tuple(model_input)
    size = (int(size[0]), int(size[1]))
    model = config.model if config.model is not None else default_model(config.role)
    model = dataclasses.replace(model, input_size=size)
    augment = config.augment
    if augment.crop_size is None:
        augment = dataclasses.replace(augment, crop_size=size)
    return dataclasses.replace(config, model=model, input_size=size, augment=augment)


class PaceProbe:
    """Measures a run's seconds per step on its first steps and reports them once.

    The first step pays for warm-up (allocation, cuDNN autotuning, loader workers), so the
    clock starts after it and stops ``timed`` steps later; ``report(steps, seconds_per_step)``
    then gets the run's step count. Runs shorter than ``1 + timed`` steps report nothing.
    """

    def __init__(
        self, steps: int, report: Callable[[int, float], None] | None, timed: int = 3
    ) -> None:
        self.steps, self.report, self.timed = steps, report, timed
        self.done, self.started = 0, 0.0

    def step(self) -> None:
        if self.report is None:
            return
        self.done += 1
        if self.done == 1:
            self.started = time.perf_counter()
        elif self.done == 1 + self.timed:
            self.report(self.steps, (time.perf_counter() - self.started) / self.timed)
            self.report = None


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device: str) -> tuple[_Dist, torch.device]:
    """Process group from torchrun's environment (if any) and this process's device."""
    if device not in ('cpu', 'cuda', 'auto'):  # each rank picks its GPU from LOCAL_RANK
        raise ValueError(f'device must be cpu, cuda or auto, got {device!r}')
    device = resolve_device(device).type
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world <= 1:
        return _Dist(), torch.device(device)
    info = _Dist(
        rank=int(os.environ['RANK']),
        world=world,
        local_rank=int(os.environ.get('LOCAL_RANK', '0')),
    )
    if device == 'cuda':
        torch.cuda.set_device(info.local_rank)
        dev = torch.device('cuda', info.local_rank)
    else:
        dev = torch.device('cpu')
    if not dist.is_initialized():
        dist.init_process_group(backend='nccl' if device == 'cuda' else 'gloo')
    return info, dev


# --------------------------------------------------------------------------- data
class _ShardSampler(DistributedSampler):
    """Shuffled shard of the training set that can start in the middle of an epoch.

    The order is a function of (seed, epoch) only, so a resumed run draws the same batches;
    a single process is simply the one-replica case.
    """

    def __init__(self, dataset: LabeledDataset, info: _Dist, seed: int) -> None:
        super().__init__(
            dataset,
            num_replicas=info.world,
            rank=info.rank,
            shuffle=True,
            seed=seed,
            drop_last=True,
        )
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])


def _atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace: complete or absent."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as fh:
            torch.save(obj, fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _rng_state() -> dict[str, Any]:
    # Only torch's generators are consumed by the loop (dropout); the augmentation draws
    # from per-(seed, epoch, index) generators and the loaders own their generators.
    state = {'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def _gather(obj: Any, info: _Dist) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def _all_reduce(values: list[float] | np.ndarray, info: _Dist, device: torch.device) -> Any:
    """Sum over processes (float64 for losses, int64 for confusion counts)."""
    tensor = torch.as_tensor(np.asarray(values)).to(device)
    if info.enabled:
        dist.all_reduce(tensor)
    return tensor.cpu().numpy()


# --------------------------------------------------------------------------- the run
def train(
    config: TrainConfig,
    root: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = 'auto',
    progress: bool = True,
    stop_after: int | None = None,
    on_pace: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``config.role`` on the labeled ``train`` split of ``root``; files go to ``out``.

    Args:
        config: the run's hyper-parameters (data-dependent defaults are filled here).
        root: data root in the Cityscapes layout.
        out: output folder.
        resume: continue from ``out/<role>.state.pt`` (the schedule keeps ``config.steps``).
        device: ``'cpu'``, ``'cuda'`` or ``'auto'``.
        progress: show a tqdm bar (rank 0 only).
        stop_after: stop (saving the state) once this step is reached, as an interruption
            would; the learning-rate schedule still spans ``config.steps``.
        on_pace: called once (rank 0) with the steps this call runs and the seconds per step
            measured on its first steps (see :class:`PaceProbe`), e.g. to warn of a long run.

    Returns:
        ``{'step', 'miou', 'loss', 'checkpoint'}`` of the last evaluation.
    """
    info, dev = _setup_distributed(device)
    try:
        return _train(config, root, Path(out), resume, info, dev, progress, stop_after, on_pace)
    finally:
        if info.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _train(
    config: TrainConfig,
    root: str | Path,
    out: Path,
    resume: bool,
    info: _Dist,
    device: torch.device,
    progress: bool,
    stop_after: int | None,
    on_pace: Callable[[int, float], None] | None,
) -> dict[str, Any]:
    cfg = resolve(config, root)
    ckpt_path = out / f'{cfg.role}.pt'
    state_path = out / f'{cfg.role}.state.pt'
    log_path = out / f'{cfg.role}.log.jsonl'
    if resume and not state_path.is_file():
        raise FileNotFoundError(f'cannot resume: no training state {state_path}')
    if info.main:
        out.mkdir(parents=True, exist_ok=True)

    # Same initial weights on every rank (DDP also broadcasts rank 0's), then per-rank RNG
    # so dropout masks differ between processes.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    torch.manual_seed(cfg.seed + info.rank)

    train_set = LabeledDataset(
        root, 'train', size=cfg.input_size, augment=cfg.augment, seed=cfg.seed
    )
    sampler = _ShardSampler(train_set, info, cfg.seed)
    steps_per_epoch = len(sampler) // cfg.batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f'train split of {root} has {len(train_set)} images: too few for batch size '
            f'{cfg.batch_size} on {info.world} process(es)'
        )
    # The loader gets its own generator: creating an iterator must not consume the global
    # RNG (dropout), or a resumed run would drift from an uninterrupted one.
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        train_set,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.num_workers,
        drop_last=True,
        pin_memory=device.type == 'cuda',
        generator=loader_gen,
    )
    eval_set = LabeledDataset(root, cfg.eval_split, size=cfg.input_size)
    # Each rank evaluates a disjoint shard; the confusion matrices are summed.
    eval_loader = DataLoader(
        Subset(eval_set, range(info.rank, len(eval_set), info.world)),
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )

    step, miou, seconds = 0, math.nan, 0.0
    if resume:
        state = torch.load(state_path, map_location='cpu', weights_only=True)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        step, miou, seconds = state['step'], state['miou'], state['seconds']
        rngs = state['rng']
        _set_rng_state(rngs[info.rank] if info.rank < len(rngs) else rngs[0])
    net = model
    if info.enabled:
        ids = [device.index] if device.type == 'cuda' else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    end = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
    bar = None
    if progress and info.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f'train {cfg.role}', unit='step')
    pace = PaceProbe(end - step, on_pace if info.main else None)

    def run_eval() -> float:
        matrix = evaluate(net, eval_loader, num_classes=cfg.model.num_classes, device=device)
        counts = np.concatenate([matrix.matrix.ravel(), matrix.missed])
        counts = _all_reduce(counts, info, device)
        total = ConfusionMatrix(cfg.model.num_classes)
        c = total.num_classes
        total.matrix[...] = counts[: c * c].reshape(c, c)
        total.missed[...] = counts[c * c :]
        return total.miou()

    def save(step: int) -> None:
        rngs = _gather(_rng_state(), info)  # collective: every rank takes part
        if not info.main:
            return
        extra = {'step': step, 'miou': miou, 'role': cfg.role, 'steps': cfg.steps}
        save_checkpoint(ckpt_path, model, extra=extra)
        state = {
            'model': model.state_dict(),
            'optimizer': optimizer.state_dict(),
            'step': step,
            'miou': miou,
            'seconds': seconds,
            'rng': rngs,
        }
        _atomic_save(state, state_path)

    loss_sum, loss_count, loss = 0.0, 0, math.nan
    started = time.perf_counter() - seconds
    batches: Iterator | None = None
    while step < end:
        epoch, offset = divmod(step, steps_per_epoch)
        if batches is None or offset == 0:
            # A new (or resumed) epoch: reshuffle, redraw the augmentation, skip what is done.
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            sampler.skip = offset * cfg.batch_size
            batches = iter(loader)
        images, labels = next(batches)
        lr = poly_lr(cfg.lr, step, cfg.steps, cfg.lr_power)
        set_lr(optimizer, lr)
        loss_sum += supervised_step(net, optimizer, images.to(device), labels.to(device))
        loss_count += 1
        step += 1
        pace.step()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f'{loss_sum / loss_count:.3f}', lr=f'{lr:.2e}')
        last = step == end
        if last or (cfg.eval_every and step % cfg.eval_every == 0):
            loss_sum_all, count_all = _all_reduce([loss_sum, float(loss_count)], info, device)
            loss = float(loss_sum_all / max(count_all, 1.0))
            loss_sum, loss_count = 0.0, 0
            miou = float(run_eval())
            seconds = time.perf_counter() - started
            if info.main:
                record = {
                    'step': step,
                    'loss': loss,
                    'miou': None if math.isnan(miou) else miou,
                    'lr': lr,
                    'seconds': round(seconds, 3),
                }
                with log_path.open('a') as fh:
                    fh.write(json.dumps(record) + '\n')
                if bar is not None:
                    bar.write(f'step {step}: loss {loss:.4f}, mIoU {miou:.4f}')
        if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
            seconds = time.perf_counter() - started
            save(step)
        if step in cfg.keep_steps and info.main:
            extra = {'step': step, 'miou': miou, 'role': cfg.role, 'steps': cfg.steps}
            save_checkpoint(out / f'{cfg.role}.step{step}.pt', model, extra=extra)
    if bar is not None:
        bar.close()
    if info.enabled:
        # Every rank done with its last collective and file before any tears the group
        # down: a rank leaving early made its peer abort in gloo's threads (seen once in CI).
        dist.barrier()
    return {'step': step, 'miou': miou, 'loss': loss, 'checkpoint': str(ckpt_path)}
