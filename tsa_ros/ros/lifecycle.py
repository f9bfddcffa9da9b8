"""Managed (lifecycle) nodes: configure loads, activate processes, cleanup releases.

Every tsa_ros node is an ``rclpy.lifecycle`` node built on :class:`ManagedNode`:

* **configure** declares and checks the parameters, loads the network (architecture and
  classes against the role) and creates the topics; a failure leaves the node
  unconfigured with one error line naming the cause;
* **activate** starts processing: input callbacks decorated with :func:`when_active` run,
  the bag player starts playing;
* **deactivate** stops processing (inputs are counted as ``skipped.inactive``);
* **cleanup** releases what configure built: subscriptions, publishers, timers, the network
  and its device memory.

A node started alone configures and activates itself (parameter ``autostart``, default
true). In a graph, ``autostart`` is false and the lifecycle manager
(:mod:`tsa_ros.ros.lifecycle_manager_node`) drives the transitions, so that a replay plays
only when every other node is active, and a node restarted after a crash comes back
through configure and activate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from lifecycle_msgs.msg import State
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node

from tsa_ros.ros.params import declare_once

#: Lifecycle state ids by label (lifecycle_msgs/State).
STATE_IDS = {
    'unconfigured': State.PRIMARY_STATE_UNCONFIGURED,
    'inactive': State.PRIMARY_STATE_INACTIVE,
    'active': State.PRIMARY_STATE_ACTIVE,
    'finalized': State.PRIMARY_STATE_FINALIZED,
}


class ManagedNode(LifecycleNodeMixin, Node):
    """A lifecycle node whose subclass implements ``configure`` (and optionally
    ``activate``, ``deactivate``, ``release``); see the module docstring.

    Everything ``configure`` creates (publishers, subscriptions, timers, services) is
    destroyed again by cleanup. The lifecycle services have their own callback group, and
    subscriptions and timers created without one go to ``work_group``, so the parameter
    services (rclpy puts them in the node's default group) answer while a frame is being
    processed (an attack or a forward pass can take seconds).
    """

    def __init__(self, node_name: str, **kwargs) -> None:
        self.work_group = MutuallyExclusiveCallbackGroup()  # before Node creates anything
        Node.__init__(self, node_name, **kwargs)
        # (rclpy.lifecycle.LifecycleNode cannot pass a callback group for the services.)
        LifecycleNodeMixin.__init__(self, callback_group=MutuallyExclusiveCallbackGroup())
        self.active = False
        self._configure_error: BaseException | None = None
        self._entities: tuple[set, set, set, set] | None = None
        self._starting = False
        autostart = declare_once(
            self,
            'autostart',
            True,
            ParameterDescriptor(
                description='configure and activate at start; false: wait for the '
                'lifecycle manager (graphs set false)',
                read_only=True,
            ),
        ).value
        if autostart:
            self.start()

    def create_subscription(self, *args, callback_group=None, **kwargs):
        """As rclpy's, in ``work_group`` unless another group is given."""
        return super().create_subscription(
            *args, callback_group=callback_group or self.work_group, **kwargs
        )

    def create_timer(self, *args, callback_group=None, **kwargs):
        """As rclpy's, in ``work_group`` unless another group is given."""
        return super().create_timer(
            *args, callback_group=callback_group or self.work_group, **kwargs
        )

    # ------------------------------------------------------------------ subclass hooks
    def configure(self) -> None:
        """Declare parameters, load models, create topics. Raise to fail the transition."""

    def activate(self) -> None:
        """Start processing (inputs flow once ``self.active`` is set, after this)."""

    def deactivate(self) -> None:
        """Stop processing."""

    def release(self) -> None:
        """Free what configure built beyond ROS entities (threads, files, the network)."""

    # ------------------------------------------------------------------ transitions
    def start(self) -> None:
        """Configure and activate; re-raises the error that made configure fail."""
        self._starting = True
        try:
            configured = self.trigger_configure()
        finally:
            self._starting = False
        if configured != TransitionCallbackReturn.SUCCESS:
            error = self._configure_error or RuntimeError(f'{self.get_name()}: configure failed')
            self.destroy_node()  # no half-built node left in the context
            raise error
        self.trigger_activate()

    def _owned(self) -> tuple[set, set, set, set]:
        return (
            set(self.publishers),
            set(self.subscriptions),
            set(self.timers),
            set(self.services),
        )

    def _destroy_configured(self) -> None:
        if self._entities is None:
            return
        pubs, subs, timers, services = self._entities
        now = self._owned()
        for pub in now[0] - pubs:
            self.destroy_publisher(pub)
        for sub in now[1] - subs:
            self.destroy_subscription(sub)
        for timer in now[2] - timers:
            self.destroy_timer(timer)
        for service in now[3] - services:
            self.destroy_service(service)
        self._entities = None

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._entities = self._owned()
        self._configure_error = None
        try:
            self.configure()
        except Exception as exc:
            self._configure_error = exc
            if not self._starting:  # start() raises it: common.run prints one line
                self.get_logger().error(f'cannot configure: {exc}')
            try:
                self.release()
            finally:
                self._destroy_configured()
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.activate()
        self.active = True
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self.deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.active:
            self.active = False
            self.deactivate()
        self._release_all()
        return TransitionCallbackReturn.SUCCESS

    def _release_all(self) -> None:
        try:
            self.release()
        finally:
            self._destroy_configured()
        _free_device_memory()

    @property
    def state(self) -> str:
        """The lifecycle state's label: unconfigured, inactive, active or finalized."""
        return self._state_machine.current_state[1]

    def close(self) -> None:
        """End of the process (common.run): leave through the lifecycle's shutdown.

        After Ctrl-C or exit_when_done the context may be gone and the transition refused;
        what shutdown releases (final checkpoint, report) is then released directly.
        """
        if self.state not in ('unconfigured', 'inactive', 'active'):
            return
        try:
            if not self.context.ok():
                # The transition would fail to publish its event and log an error
                # (exit_when_done shuts the context down first): release directly.
                raise RuntimeError('context already shut down')
            self.trigger_shutdown()
        except Exception as exc:  # RCLError of a shut-down context
            self.get_logger().debug(f'shutdown transition refused: {exc}')
        if self.state != 'finalized':
            self.active = False
            self._release_all()


def when_active(callback: Callable) -> Callable:
    """Run an input callback only while the node is active; count the others
    (``skipped.inactive``) so the frame accounting still adds up."""

    @functools.wraps(callback)
    def wrapper(self, *args, **kwargs):
        if not self.active:
            health = getattr(self, 'health', None)
            if health is not None:
                health.count('skipped.inactive')
            return None
        return callback(self, *args, **kwargs)

    return wrapper


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
