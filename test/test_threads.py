"""Thread budgets of the graph's processes (tsa_ros.threads)."""

import pytest

from tsa_ros.threads import LEARNER_THREADS, SEGMENTERS, available_cores, segmenter_threads


def test_the_three_segmenters_share_the_cores_at_least_one_thread_each():
    assert SEGMENTERS == 3 and LEARNER_THREADS == 1
    assert [segmenter_threads(0, cores) for cores in (1, 2, 3, 8, 16)] == [1, 1, 1, 2, 5]
    assert segmenter_threads(4, cores=2) == 4  # an explicit budget is kept
    assert segmenter_threads() == max(1, available_cores() // 3)
    with pytest.raises(ValueError, match='num_threads must be >= 0'):
        segmenter_threads(-1)
