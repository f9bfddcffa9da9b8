"""StampJoiner: joins by stamp, bounded, with timeouts on the caller's clock."""

import pytest

from tsa_ros.sync import StampJoiner


def test_complete_groups_come_out_once():
    joiner = StampJoiner(['t', 's', 'a'], timeout=1.0)
    assert joiner.add('t', 10, 'T10', now=0.0) == []
    assert joiner.add('s', 10, 'S10', now=0.1) == []
    assert joiner.add('t', 11, 'T11', now=0.1) == []
    (group,) = joiner.add('a', 10, 'A10', now=0.2)
    assert group.stamp == 10 and group.items == {'t': 'T10', 's': 'S10', 'a': 'A10'}
    assert group.missing == () and joiner.completed == 1 and len(joiner) == 1
    assert joiner.add('a', 10, 'again', now=0.3) == [] and joiner.late == 1


def test_timeout_gives_partial_groups_naming_the_missing():
    joiner = StampJoiner(['t', 's', 'a'], timeout=0.5)
    joiner.add('t', 1, 'x', now=0.0)
    joiner.add('a', 1, 'y', now=0.1)
    assert joiner.expire(now=0.4) == []
    (group,) = joiner.expire(now=0.5)
    assert group.missing == ('s',) and set(group.items) == {'t', 'a'}
    assert joiner.partial == 1 and len(joiner) == 0
    assert joiner.add('s', 1, 'late', now=0.6) == [], 'a given-up stamp does not come back'


def test_bounded_buffer_pushes_out_the_oldest():
    joiner = StampJoiner(['a', 'b'], max_pending=2, timeout=10)
    joiner.add('a', 1, 1, now=0)
    joiner.add('a', 2, 2, now=0)
    (pushed,) = joiner.add('a', 3, 3, now=0)
    assert pushed.stamp == 1 and pushed.missing == ('b',)
    assert len(joiner) == 2


def test_validation():
    with pytest.raises(ValueError, match='unknown stream'):
        StampJoiner(['a']).add('b', 1, 1, now=0)
    with pytest.raises(ValueError):
        StampJoiner([])
