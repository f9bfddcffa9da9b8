"""Frame admission: independent nodes admit the same frames of one stream."""

import numpy as np
import pytest

from tsa_ros.admission import FrameAdmission

CAMERA_NS = round(1e9 / 30)  # a 30 Hz camera


def stream(n, start_ns=1_700_000_000_123_456_789, jitter_ns=0, seed=0):
    jitter = np.random.default_rng(seed).integers(-jitter_ns, jitter_ns + 1, n)
    return [int(start_ns + i * CAMERA_NS + j) for i, j in enumerate(jitter)]


def admitted(admission, stamps):
    return [s for s in stamps if admission.admit(s)]


def test_zero_rate_admits_every_frame():
    admission = FrameAdmission(0)
    stamps = stream(10)
    assert admitted(admission, stamps) == stamps
    assert (admission.admitted, admission.skipped) == (10, 0)


def test_one_frame_per_slot_at_the_rate():
    stamps = stream(300, jitter_ns=2_000_000)  # 10 s of camera, +-2 ms stamp jitter
    admission = FrameAdmission(5.0)
    chosen = admitted(admission, stamps)
    assert len(chosen) in (50, 51)
    assert admission.admitted + admission.skipped == 300
    gaps = np.diff(chosen)[1:] / 1e9  # the first frame may fall anywhere in its slot
    assert gaps.min() > 0.2 - 1 / 30 - 0.005 and gaps.max() < 0.2 + 1 / 30 + 0.005


def test_nodes_that_skip_unadmitted_frames_differently_still_agree():
    """A busy node that loses frames which are not the first of a slot admits the same set."""
    stamps = stream(600, jitter_ns=3_000_000, seed=1)
    teacher = admitted(FrameAdmission(2.0), stamps)
    rng = np.random.default_rng(2)
    first_of_slot = set(teacher)
    # The student loses a third of the other frames (its queue overflowed meanwhile).
    seen = [s for s in stamps if s in first_of_slot or rng.random() > 0.33]
    student = admitted(FrameAdmission(2.0), seen)
    assert student == teacher


def test_a_replay_that_starts_again_is_admitted_again():
    admission = FrameAdmission(2.0)
    first = admitted(admission, stream(60))
    second = admitted(admission, stream(60))  # the same stamps once more (a bag loop)
    assert second == first and len(first) >= 4


def test_negative_rate_is_refused():
    with pytest.raises(ValueError, match='admission rate'):
        FrameAdmission(-1)


def test_frames_a_node_never_received_are_inferred_from_stamp_gaps():
    stamps = stream(300, jitter_ns=1_000_000, seed=3)
    rng = np.random.default_rng(4)
    keep = [s for i, s in enumerate(stamps) if i < 10 or rng.random() > 0.2]
    admission = FrameAdmission(2.0)
    admitted(admission, keep)
    assert admission.lost == len(stamps) - len(keep)
    assert admission.admitted + admission.skipped + admission.lost == len(stamps)
    # A paused camera is not a loss.
    admission.admit(stamps[-1] + 5 * 10**9)
    assert admission.lost == len(stamps) - len(keep)
