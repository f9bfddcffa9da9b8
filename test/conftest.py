"""Shared pytest fixtures."""

import itertools
import os

import pytest

# Each test that talks DDS gets its own domain so parallel runs and other tests cannot cross-talk.
# 0-101 are the ids ROS 2 recommends; start high to stay away from a user's default domain 0.
_domain_ids = itertools.count(60 + os.getpid() % 20)


@pytest.fixture
def ros_domain_id(monkeypatch):
    """A fresh ROS_DOMAIN_ID, exported to this process and its children, localhost only."""
    domain_id = next(_domain_ids) % 101 or 1
    monkeypatch.setenv('ROS_DOMAIN_ID', str(domain_id))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    return domain_id
