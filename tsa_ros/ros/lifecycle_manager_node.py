"""Lifecycle manager: brings the graph's managed nodes up, in order, and keeps them up.

Every ``check_period_s`` it asks each node in ``nodes`` for its lifecycle state
(``<node>/get_state``) and moves it towards *active*: an unconfigured node is configured
(it loads its network), an inactive one activated. Configure requests go out to all nodes at
once, since each loads its model in its own process. The nodes in ``activate_last`` (the bag
player) are activated only when every other node is active, so a replay's first frame, and
its ground truth, reach networks that are ready. A node that crashed and was restarted (by
``tsa up`` or launch's ``respawn``) reappears unconfigured and is brought back the same way.

Topics (relative; the graph runs in ``/tsa``): pub ``~/active`` (std_msgs/Bool,
qos.LATCHED): true while every node is active. ``/diagnostics`` has each node's state.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from diagnostic_msgs.msg import DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.node import Node
from std_msgs.msg import Bool

from tsa_ros.ros import qos
from tsa_ros.ros.common import run
from tsa_ros.ros.health import Health, ReasonThrottle
from tsa_ros.ros.params import check_overrides, declare_dataclass

#: After a failed transition, a node is left alone this long (its log says why).
RETRY_AFTER_S = 10.0


@dataclass
class LifecycleManagerParams:
    """Which nodes the manager drives.

    Attributes:
        nodes: Names of the managed nodes (relative to the manager's namespace).
        activate_last: Nodes of `nodes` activated only when all others are active (the bag
            player: a replay starts when the graph is ready).
        check_period_s: Seconds between two checks of every node's state.
        transition_timeout_s: Longest wait for one transition (configure loads a network).
    """

    nodes: list[str] = field(default_factory=list)
    activate_last: list[str] = field(default_factory=list)
    check_period_s: float = 0.5
    transition_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if stray := sorted(set(self.activate_last) - set(self.nodes)):
            raise ValueError(f'activate_last names nodes not in nodes: {stray}')
        if not self.check_period_s > 0:
            raise ValueError(f'check_period_s must be > 0, got {self.check_period_s}')
        if not self.transition_timeout_s > 0:
            raise ValueError(f'transition_timeout_s must be > 0, got {self.transition_timeout_s}')


class LifecycleManagerNode(Node):
    """Drive the managed nodes to active; see the module docstring."""

    def __init__(self, node_name: str = 'lifecycle_manager', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.params = declare_dataclass(self, LifecycleManagerParams())
        check_overrides(self)
        self.health = Health(self)
        self._group = ReentrantCallbackGroup()
        self._get = {
            n: self.create_client(GetState, f'{n}/get_state', callback_group=self._group)
            for n in self.params.nodes
        }
        self._change = {
            n: self.create_client(ChangeState, f'{n}/change_state', callback_group=self._group)
            for n in self.params.nodes
        }
        self.states: dict[str, str | None] = dict.fromkeys(self.params.nodes)
        self._retry_at: dict[str, float] = {}
        self._log = ReasonThrottle(RETRY_AFTER_S)
        self._active_pub = self.create_publisher(Bool, '~/active', qos.LATCHED)
        self._graph_active: bool | None = None
        self._publish_active(False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name='lifecycle', daemon=True)
        self._thread.start()
        self.get_logger().info(
            f'managing {self.params.nodes}'
            + (f', {self.params.activate_last} last' if self.params.activate_last else '')
        )

    # ------------------------------------------------------------------ service calls
    def _wait(self, future, timeout: float):
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout) or self._stop.is_set():
            future.cancel()
            return None
        return future.result()

    def _query(self) -> None:
        futures = {}
        for name, client in self._get.items():
            if client.service_is_ready():
                futures[name] = client.call_async(GetState.Request())
            else:
                self.states[name] = None  # not started (yet), or dead
        for name, future in futures.items():
            reply = self._wait(future, 5.0)
            self.states[name] = reply.current_state.label if reply is not None else None

    def _transition(self, names: list[str], transition: int, label: str) -> None:
        """Request ``transition`` of all ``names`` at once, then wait for every answer."""
        now = time.monotonic()
        names = [n for n in names if self._retry_at.get(n, 0.0) <= now]
        futures = {
            n: self._change[n].call_async(
                ChangeState.Request(transition=Transition(id=transition))
            )
            for n in names
        }
        for name, future in futures.items():
            reply = self._wait(future, self.params.transition_timeout_s)
            if reply is not None and reply.success:
                self.health.count(f'{label}.{name}')
                continue
            self.health.count(f'failed.{label}.{name}')
            self._retry_at[name] = now + RETRY_AFTER_S
            if self._log.allow(f'{label}.{name}'):
                self.get_logger().error(
                    f'{name}: {label} failed (see its log); retrying in {RETRY_AFTER_S:.0f} s'
                )

    def _step(self) -> None:
        self._query()
        first = [n for n in self.params.nodes if n not in self.params.activate_last]
        last = list(self.params.activate_last)
        for group in (first, last):
            unconfigured = [n for n in group if self.states[n] == 'unconfigured']
            if unconfigured:
                self._transition(unconfigured, Transition.TRANSITION_CONFIGURE, 'configure')
                self._query()
            inactive = [n for n in group if self.states[n] == 'inactive']
            if group is last and not all(self.states[n] == 'active' for n in first):
                break  # the replay waits for the graph
            if inactive:
                self._transition(inactive, Transition.TRANSITION_ACTIVATE, 'activate')
                self._query()
        for name, state in self.states.items():
            self.health.set(f'state.{name}', state or 'absent')
        everyone = all(s == 'active' for s in self.states.values())
        if everyone:
            self.health.status(DiagnosticStatus.OK, 'every node is active')
        else:
            waiting = sorted(n for n, s in self.states.items() if s != 'active')
            self.health.status(DiagnosticStatus.WARN, f'not active: {waiting}')
        self._publish_active(everyone)

    def _publish_active(self, active: bool) -> None:
        if active != self._graph_active:
            self._graph_active = active
            self._active_pub.publish(Bool(data=active))
            if active:
                self.get_logger().info('every node is active')

    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception as exc:  # the context went away at shutdown
                if self.context.ok():
                    self.get_logger().error(f'lifecycle check failed: {exc!r}')
            self._stop.wait(self.params.check_period_s)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)


def main(args=None) -> None:
    run(lambda: LifecycleManagerNode(), args)


if __name__ == '__main__':
    main()
