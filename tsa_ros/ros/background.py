"""A node of a context of its own, spun in a background thread: for the tools that drive or
watch the graph from outside (``tsa soak``, ``tsa demo``, ``tsa record``, ``tsa view``).

Their main thread keeps a camera's pace or waits for a signal while the node's callbacks run.
rclpy installs no signal handlers here: what Ctrl-C means is the tool's decision.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def background_node(name: str, *, domain_id: int | None = None, **node_kwargs: Any) -> Iterator:
    """Yield an ``rclpy.node.Node`` spun by a daemon thread until the block ends; then the
    executor, the node and the context are shut down in that order."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.signals import SignalHandlerOptions

    from tsa_ros.ros.env import use_dds_profile

    use_dds_profile()  # the graph's transports, before this process's first participant
    context = rclpy.Context()
    rclpy.init(
        context=context,
        args=[],
        domain_id=domain_id,
        signal_handler_options=SignalHandlerOptions.NO,
    )
    node = executor = thread = None
    try:
        node = Node(name, context=context, **node_kwargs)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)

        def spin() -> None:
            try:
                executor.spin()
            except ExternalShutdownException:
                pass

        thread = threading.Thread(target=spin, name=name, daemon=True)
        thread.start()
        yield node
    finally:
        if executor is not None:
            executor.shutdown()
        if thread is not None:
            thread.join(timeout=5)
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)
