"""Whether the ROS 2 side of the package can run in this Python environment, and the DDS
settings its processes start with."""

from __future__ import annotations

import os
from collections.abc import MutableMapping

#: Environment variables through which Fast DDS reads an XML profile (the second is the name
#: before Fast DDS 3).
FASTDDS_PROFILE_VARS = ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE')


def ros_problem() -> str | None:
    """None when rclpy and the package's messages import, else why not."""
    import importlib

    try:
        importlib.import_module('rclpy')
        importlib.import_module('tsa_msgs.msg')
    except ImportError as exc:
        return f'{exc} (run `make setup`, or source a ROS 2 workspace that has tsa_msgs)'
    return None


def use_dds_profile(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Point Fast DDS at the package's profile (config/fastdds.xml: shared-memory segments
    large enough for camera frames, see its comment), unless a profile is already chosen or
    another RMW runs. Call before ``rclpy.init``: the profile is read when the first
    participant is created. Returns the profile now in effect (None: not Fast DDS's
    concern)."""
    from tsa_ros.ros.graph import package_config

    env = os.environ if environ is None else environ
    if env.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp') != 'rmw_fastrtps_cpp':
        return None
    for var in FASTDDS_PROFILE_VARS:
        if env.get(var):
            return env[var]
    profile = package_config('fastdds.xml')
    if os.path.isfile(profile):
        env[FASTDDS_PROFILE_VARS[0]] = profile
        return profile
    return None
