"""``tsa adapt``: quasi-online adaptation of A on the unlabeled split (paper sec. 3.3, 4.3).

A starts as S and is trained on unlabeled frames with J_TS = (1-α) J_CE + α J_IFM against
the frozen teacher's posteriors, through exactly the :class:`OnlineLearner` step that the ROS
learner node runs in its thread (``train_step``), here driven synchronously over the data set.
α = 0 is the paper's no-IFM baseline.

The optional fine-tuning of sec. 4.3 follows: further steps "as in sec. 4.2" with the initial
learning rate 1e-6 and without the IFM loss. We read that as the same teacher-student CE on the
same unlabeled stream (α = 0) with the poly decay of sec. 4.2; the paper does not say which
data that step uses.

Runs are resumable: the data order is a fixed function of (seed, epoch), so a step number says
which frames come next, and the state file holds A, Adam's moments and the step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from tsa_ros.data.cityscapes import UnlabeledDataset
from tsa_ros.inference import Predictor, resolve_device
from tsa_ros.learning.online import LearnerConfig, OnlineLearner
from tsa_ros.learning.supervised import poly_lr
from tsa_ros.learning.train import PaceProbe
from tsa_ros.models import load_checkpoint, save_checkpoint


@dataclass
class AdaptConfig:
    """Adaptation of A (paper sec. 4.3 defaults).

    Attributes:
        steps: Optimisation steps on J_TS (paper: 66,667 at batch 3, about 10 epochs).
        learner: lr (paper: constant 1e-5), batch size (3), α, β, γ, p (0.6, 0.5, 1, 1).
        finetune_steps: Steps of the optional fine-tuning (0 = off).
        finetune_lr: Initial learning rate of the fine-tuning (paper: 1e-6, poly decay).
        split: The unlabeled split A adapts on.
        checkpoint_every: Write A and the resumable state every this many steps.
        seed: Seed of the data order.
        num_workers: Data-loader worker processes.
    """

    steps: int = 66_667
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    finetune_steps: int = 0
    finetune_lr: float = 1e-6
    split: str = 'train_extra'
    checkpoint_every: int = 500
    seed: int = 0
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.steps < 0 or self.finetune_steps < 0 or self.checkpoint_every < 1:
            raise ValueError('steps and finetune_steps must be >= 0, checkpoint_every >= 1')


class _EpochOrder(torch.utils.data.Sampler):
    """Batches of indices from step ``start`` on; epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, stop: int) -> None:
        self.n, self.batch, self.seed, self.start, self.stop = n, batch, seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        per_epoch = self.n // self.batch  # drop the last incomplete batch of every epoch
        for step in range(self.start, self.stop):
            epoch, offset = divmod(step, per_epoch)
            order = np.random.default_rng((self.seed, epoch)).permutation(self.n)
            yield order[offset * self.batch : (offset + 1) * self.batch].tolist()


def _save_state(path: Path, learner: OnlineLearner, step: int) -> None:
    tmp = path.with_name(path.name + '.tmp')
    torch.save(
        {
            'adaptive': learner.adaptive.state_dict(),
            'optimizer': learner.optimizer.state_dict(),
            'step': step,
        },
        tmp,
    )
    os.replace(tmp, path)


def adapt(
    teacher: str | Path,
    student: str | Path,
    root: str | Path,
    out: str | Path,
    cfg: AdaptConfig | None = None,
    *,
    name: str = 'adaptive',
    resume: bool = False,
    device: str = 'auto',
    progress: bool = True,
    on_pace: Callable[[int, float], None] | None = None,
) -> Path:
    """Adapt A from S with T's posteriors on ``root``'s unlabeled split; returns A's checkpoint.

    Writes ``OUT/<name>.pt`` (a tsa checkpoint of A), ``OUT/<name>.state.pt`` (resumable) and
    ``OUT/<name>.log.jsonl`` (loss terms every checkpoint). ``on_pace`` is called once with
    the steps this call runs and the seconds per step of its first steps (see
    :class:`~tsa_ros.learning.train.PaceProbe`).
    """
    cfg = cfg or AdaptConfig()
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt, state_path, log_path = (out / f'{name}{s}' for s in ('.pt', '.state.pt', '.log.jsonl'))

    t_model, _ = load_checkpoint(teacher, map_location=dev)
    t_predictor = Predictor(t_model, device=dev)
    s_model, _ = load_checkpoint(student, map_location='cpu')
    height, width = s_model.config.input_size
    learner_cfg = dataclasses.replace(cfg.learner, device=str(dev))
    start, adaptive_state, optimizer_state = 0, None, None
    if resume and state_path.is_file():
        saved = torch.load(state_path, map_location='cpu', weights_only=True)
        start, adaptive_state, optimizer_state = (
            saved['step'],
            saved['adaptive'],
            saved['optimizer'],
        )
    learner = OnlineLearner(s_model, learner_cfg, adaptive_state=adaptive_state, start_step=start)
    if optimizer_state is not None:
        learner.optimizer.load_state_dict(optimizer_state)

    data = UnlabeledDataset(root, cfg.split, size=(height, width))
    batch = learner_cfg.batch_size
    if len(data) < batch:
        raise ValueError(f'{cfg.split} has {len(data)} images, fewer than a batch of {batch}')
    total = cfg.steps + cfg.finetune_steps
    loader = DataLoader(
        data,
        batch_sampler=_EpochOrder(len(data), batch, cfg.seed, start, total),
        num_workers=cfg.num_workers,
    )
    bar = tqdm(total=total, initial=start, desc=f'adapt {name}', unit='step', disable=not progress)
    t0 = time.perf_counter()
    step = start
    pace = PaceProbe(total - start, on_pace)
    with log_path.open('a') as log:
        for images in loader:
            if step >= cfg.steps:  # fine-tuning: CE only (α = 0), lr 1e-6 with poly decay
                learner.config.loss = dataclasses.replace(learner.config.loss, alpha=0.0)
                lr = poly_lr(cfg.finetune_lr, step - cfg.steps, cfg.finetune_steps)
                for group in learner.optimizer.param_groups:
                    group['lr'] = lr
            images = images.to(dev)
            _, probs = t_predictor.infer(images, posteriors=True)  # (N, C, H, W): eq. 3 targets
            terms = learner.train_step(images, probs.clone())
            step += 1
            pace.step()
            bar.update()
            if terms is not None:
                bar.set_postfix(ce=f'{float(terms.ce):.3f}', fm=f'{float(terms.fm):.4f}')
            if step % cfg.checkpoint_every == 0 or step == total:
                save_checkpoint(ckpt, learner.adaptive, extra={'step': step, 'role': name})
                _save_state(state_path, learner, step)
                stats = learner.stats
                log.write(
                    json.dumps(
                        {
                            'step': step,
                            'ce': stats.ce,
                            'fm': stats.fm,
                            'ifm': stats.ifm,
                            'ts': stats.ts,
                            'skipped': stats.steps_skipped,
                            'seconds': round(time.perf_counter() - t0, 1),
                        }
                    )
                    + '\n'
                )
                log.flush()
    bar.close()
    if not ckpt.is_file():  # nothing left to do (resumed a finished run)
        save_checkpoint(ckpt, learner.adaptive, extra={'step': step, 'role': name})
    return ckpt
