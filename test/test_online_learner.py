"""OnlineLearner: background adaptation of A on J_TS, bounded queue, snapshots, recovery."""

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tsa_ros.learning.adaptive_checkpoint import AdaptiveCheckpoint, SavedState, checkpoint_file
from tsa_ros.learning.losses import TSLossConfig
from tsa_ros.learning.online import LearnerConfig, OnlineLearner
from tsa_ros.models import CheckpointError, ModelConfig, build_model

H, W, C = 32, 64, 19


@pytest.fixture(scope='module')
def student():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch='erfnet', num_classes=C, input_size=(H, W))).eval()


def frame(rng, value=None):
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    if value is not None:
        image[:] = value
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(C, H // 2, W // 2))).float(), 0)
    return image, probs


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_background_thread_moves_a_away_from_s(student):
    before = params(student)
    config = LearnerConfig(
        lr=1e-3,
        batch_size=2,
        queue_size=8,
        snapshot_every=2,
        device='cpu',
        loss=TSLossConfig(alpha=0.6, beta=0.5, gamma=1.0, p=1.0),
    )
    learner = OnlineLearner(student, config)
    versions = []
    learner.snapshot_callbacks.append(lambda snap: versions.append(snap.version))
    rng = np.random.default_rng(0)
    learner.start()
    assert learner.running
    deadline = time.monotonic() + 120
    while learner.stats.step < 6 and time.monotonic() < deadline:
        learner.submit(*frame(rng))
        time.sleep(0.02)
    learner.stop()

    assert not learner.running, 'stop() must join the training thread'
    assert learner.stats.step >= 6
    assert not same(params(learner.adaptive), params(learner.static)), 'A must differ from S'
    assert same(params(learner.static), before), 'the frozen S must not change'
    assert same(params(student), before), "the caller's student must not change"
    assert learner.stats.fm > 0
    assert np.isfinite([learner.stats.ce, learner.stats.ifm, learner.stats.ts]).all()
    assert versions == sorted(versions) and len(versions) >= 3
    snap = learner.latest_snapshot()
    assert snap.version == versions[-1] and snap.step % 2 == 0


def test_queue_is_bounded_and_drops_the_oldest(student):
    learner = OnlineLearner(student, LearnerConfig(batch_size=2, queue_size=4, device='cpu'))
    rng = np.random.default_rng(1)
    accepted = [learner.submit(*frame(rng, value=i)) for i in range(7)]
    assert accepted == [True] * 4 + [False] * 3
    assert learner.queue_length == 4
    assert learner.stats.frames_dropped == 3 and learner.stats.frames_received == 7
    kept = [int(x[0, 0, 0]) for x, _ in learner._queue]
    assert kept == [3, 4, 5, 6]


def test_bad_frames_are_rejected_with_a_clear_error(student):
    learner = OnlineLearner(student, LearnerConfig(device='cpu'))
    rng = np.random.default_rng(2)
    image, probs = frame(rng)
    with pytest.raises(ValueError, match='NaN'):
        learner.submit(image, probs * float('nan'))
    with pytest.raises(ValueError, match='RGB'):
        learner.submit(image[..., :2], probs)
    learner.submit(image, probs)
    with pytest.raises(ValueError, match='frame size'):
        learner.submit(np.zeros((H, W * 2, 3), np.uint8), probs)
    assert learner.stats.frames_received == 1


def test_non_finite_step_is_skipped_and_weights_restored(student):
    learner = OnlineLearner(student, LearnerConfig(lr=1e-3, device='cpu'))
    rng = np.random.default_rng(3)
    images = torch.stack([torch.from_numpy(frame(rng)[0]).permute(2, 0, 1).float()] * 2)
    probs = torch.softmax(torch.randn(2, C, H, W), 1)

    good = params(learner.adaptive)
    assert learner.train_step(images, probs * float('inf')) is None  # non-finite loss
    learner.optimizer.param_groups[0]['lr'] = float('inf')  # finite loss, inf weights
    assert learner.train_step(images, probs) is None
    assert learner.stats.steps_skipped == 2 and learner.stats.step == 0
    assert same(params(learner.adaptive), good)

    learner.optimizer.param_groups[0]['lr'] = 1e-3
    terms = learner.train_step(images, probs)
    assert terms is not None and torch.isfinite(terms.ts)
    assert learner.stats.step == 1 and not same(params(learner.adaptive), good)


def test_snapshots_are_copies_and_resume_from_state(student):
    learner = OnlineLearner(student, LearnerConfig(lr=1e-3, snapshot_every=1, device='cpu'))
    first = learner.latest_snapshot()
    assert first.version == 0
    images = torch.rand(3, 3, H, W) * 255
    learner.train_step(images, torch.softmax(torch.randn(3, C, H, W), 1))
    second = learner.latest_snapshot()
    assert second.version == 1 and second.step == 1
    changed = [
        k for k in first.state_dict if not torch.equal(first.state_dict[k], second.state_dict[k])
    ]
    assert changed

    resumed = OnlineLearner(
        student,
        LearnerConfig(device='cpu'),
        adaptive_state=second.state_dict,
        start_step=second.step,
    )
    assert resumed.stats.step == 1
    for key, value in second.state_dict.items():
        assert torch.equal(resumed.adaptive.state_dict()[key], value)


def test_config_validation():
    with pytest.raises(ValueError, match='queue_size'):
        LearnerConfig(batch_size=4, queue_size=2)
    with pytest.raises(ValueError, match='lr'):
        LearnerConfig(lr=0)
    assert LearnerConfig(loss={'alpha': 0.0}).loss.alpha == 0.0


def test_versions_keep_growing_across_restarts(student, tmp_path):
    """The checkpoint carries the published version; a restarted learner continues it."""
    clock = [0.0]
    path = tmp_path / 'adaptive.pt'
    ckpt = AdaptiveCheckpoint(path, student.config, every_s=10.0, clock=lambda: clock[0])
    assert ckpt.resume() is None and ckpt.version_offset == 0
    learner = OnlineLearner(student, LearnerConfig(lr=1e-3, snapshot_every=1, device='cpu'))
    images = torch.rand(1, 3, H, W) * 255
    learner.train_step(images, torch.softmax(torch.randn(1, C, H, W), 1))
    snap = learner.latest_snapshot()
    assert ckpt.version(snap) == 1
    assert not ckpt.due()  # 10 s since the start have not passed
    clock[0] = 10.0
    assert ckpt.due()
    ckpt.write(SavedState(snap.state_dict, snap.step, ckpt.version(snap)))
    assert not ckpt.due()

    # A step after the last snapshot is saved under the next version on shutdown ...
    learner.config.snapshot_every = 100
    learner.train_step(images, torch.softmax(torch.randn(1, C, H, W), 1))
    final = ckpt.final_state(learner, stopped=True)
    assert (final.step, final.version) == (2, 2)
    changed = [
        k for k in snap.state_dict if not torch.equal(final.state_dict[k], snap.state_dict[k])
    ]
    assert changed
    # ... unless the training thread did not stop: then the last snapshot is what is known.
    assert ckpt.final_state(learner, stopped=False).version == 1
    ckpt.write(final)

    again = AdaptiveCheckpoint(path, student.config)
    saved = again.resume()
    assert (saved.step, saved.version, again.version_offset) == (2, 2, 2)
    restarted = OnlineLearner(
        student,
        LearnerConfig(device='cpu'),
        adaptive_state=saved.state_dict,
        start_step=saved.step,
    )
    assert again.version(restarted.latest_snapshot()) == 2  # snapshot 0 of the new start
    assert AdaptiveCheckpoint(None, student.config).due() is False


def test_a_checkpoint_of_another_architecture_is_refused(student, tmp_path):
    path = tmp_path / 'adaptive.pt'
    AdaptiveCheckpoint(path, student.config, every_s=0).write(
        SavedState(student.state_dict(), 0, 1)
    )
    other = ModelConfig(arch='erfnet', num_classes=7, input_size=student.config.input_size)
    with pytest.raises(CheckpointError):
        AdaptiveCheckpoint(path, other).resume()


def test_an_a_is_resumed_only_on_top_of_the_s_it_was_adapted_from(student, tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_STATE_HOME', str(tmp_path / 'state'))
    auto = checkpoint_file('auto', 'ab' * 32)
    assert auto == tmp_path / 'state' / 'tsa_ros' / f'adaptive-{"ab" * 8}.pt'
    assert checkpoint_file('auto', 'cd' * 32) != auto  # another S, another file
    assert checkpoint_file('', 'ab' * 32) is None
    assert checkpoint_file('~/a.pt', 'ab' * 32) == Path.home() / 'a.pt'
    # The same (seeded) S at another input size is another file: the first would not load.
    small = ModelConfig(arch='erfnet', input_size=(32, 64))
    large = ModelConfig(arch='erfnet', input_size=(128, 256))
    assert checkpoint_file('auto', 'ab' * 32, small).name == f'adaptive-{"ab" * 8}-erfnet-32x64.pt'
    assert checkpoint_file('auto', 'ab' * 32, small) != checkpoint_file('auto', 'ab' * 32, large)

    AdaptiveCheckpoint(auto, student.config, every_s=0, student_sha256='ab' * 32).write(
        SavedState(student.state_dict(), 5, 3)
    )
    same = AdaptiveCheckpoint(auto, student.config, student_sha256='ab' * 32)
    assert same.resume().version == 3
    with pytest.raises(CheckpointError, match='adapted from another S'):
        AdaptiveCheckpoint(auto, student.config, student_sha256='cd' * 32).resume()
    assert auto.is_file()  # refused, not overwritten


def test_pairing_joins_by_stamp_resizes_and_counts(student):
    from collections import Counter

    from tsa_ros.learning.pairing import TeacherPairing

    learner = OnlineLearner(student, LearnerConfig(queue_size=8, device='cpu'))
    counts, rejected = Counter(), []
    pairing = TeacherPairing(
        learner,
        input_size=(H, W),
        resize=True,
        max_pending=4,
        timeout=1.0,
        count=lambda name: counts.update([name]),
        reject=lambda reason, detail: rejected.append(reason),
    )
    rng = np.random.default_rng(0)
    probs = np.full((C, H // 2, W // 2), 1.0 / C, np.float32)
    big = rng.integers(0, 256, (2 * H, 2 * W, 3), dtype=np.uint8)
    pairing.add_teacher(10, probs, now=0.0)  # posteriors first, the frame later: any order
    pairing.add_frame(10, big, now=0.1)  # resized to A's input size
    assert counts['pairs.submitted'] == 1 and learner.queue_length == 1
    pairing.add_frame(10, big, now=0.2)  # the stamp is complete already: late
    assert counts['image.late'] == 1

    pairing.add_frame(20, big, now=0.3)  # the teacher never answers ...
    pairing.expire(now=5.0)  # ... and the frame is given up, not trained on
    assert counts['image.unmatched'] == 1 and learner.queue_length == 1

    strict = TeacherPairing(learner, input_size=(H, W), resize=False, max_pending=4, timeout=1)
    with pytest.raises(ValueError, match='set resize:=true'):
        strict.add_frame(30, big, now=0.0)
    with pytest.raises(ValueError, match=f'need \\({C}, H, W\\)'):
        strict.add_teacher(30, probs[:3], now=0.0)
    assert not rejected
