"""Live evaluation: every stream's labels against the ground truth, mIoU per stream (eq. 11).

Subscribes ``ground_truth`` (mono8 trainIds, e.g. the bag player's /camera/ground_truth) and
``<stream>/labels`` for every stream of the ``streams`` parameter; joins them by header stamp
(:class:`~tsa_ros.sync.StampJoiner`) and accumulates one
:class:`~tsa_ros.metrics.ConfusionMatrix` per stream. After each evaluated ground-truth frame
it publishes ``~/status`` (tsa_msgs/EvaluationStatus). The report (JSON + Markdown, built by
:mod:`tsa_ros.evaluation`) is written to ``report_path`` on close and whenever a message
arrives on ``~/write_report`` (std_msgs/Empty).

Join rules:

* A stream whose labels have not arrived ``timeout_s`` after the first item of a stamp counts
  as *missing* for that frame; the other streams of the frame are still evaluated.
* Labels of a different size than the ground truth are rejected (no resizing: it would hide
  a mis-wired graph) and that stream counts as missing for the frame.
* Labels for stamps that never get ground truth (a bag has labels only on some frames) are
  dropped at the timeout and counted in the diagnostics as ``frames_without_ground_truth``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass

import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Empty
from tsa_msgs.msg import EvaluationStatus

from tsa_ros.evaluation import StreamEvaluation, load_report, write_report
from tsa_ros.ros import qos
from tsa_ros.ros.common import run
from tsa_ros.ros.convert import MessageError, labels_from_image
from tsa_ros.ros.health import Health
from tsa_ros.ros.lifecycle import ManagedNode, when_active
from tsa_ros.ros.params import check_overrides, declare_dataclass
from tsa_ros.sync import JoinedGroup, StampJoiner, split_ns, stamp_ns

#: Joiner key of the ground truth; '<' cannot occur in a stream (topic) name, so no collision.
_GT = '<ground_truth>'
_STREAM_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$')


@dataclass
class EvaluatorParams:
    """Parameters of the evaluator node.

    Attributes:
        streams: Streams to evaluate; the labels of stream s arrive on `s/labels` (mono8
            trainIds).
        timeout_s: Seconds after the first message of a stamp before the streams still
            missing are counted missing for that frame.
        max_pending: Stamps waiting for their streams at once; the oldest is given up first.
        report_path: Report file (JSON; the Markdown goes beside it with .md); written on
            shutdown and on every message on ~/write_report. Empty = no report file.
        clean_report: Report (JSON) of a clean, unattacked run; when given, the report adds
            the mIoU ratio adversarial/clean per stream. Empty = none.
    """

    streams: tuple[str, ...] = ('teacher', 'student', 'adaptive', 'fused')
    timeout_s: float = 2.0
    max_pending: int = 32
    report_path: str = ''
    clean_report: str = ''

    def __post_init__(self) -> None:
        if not self.streams:
            raise ValueError('streams must name at least one stream')
        if len(set(self.streams)) != len(self.streams):
            raise ValueError(f'streams must be unique, got {list(self.streams)}')
        for stream in self.streams:
            if not _STREAM_NAME.match(stream):
                raise ValueError(f'stream {stream!r} is not a valid relative topic name')
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f'timeout_s must be > 0, got {self.timeout_s}')
        if self.max_pending < 1:
            raise ValueError(f'max_pending must be >= 1, got {self.max_pending}')


class EvaluatorNode(ManagedNode):
    """Joins ground truth with every stream's labels and keeps a confusion matrix per stream."""

    def __init__(self, node_name: str = 'evaluator', **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def configure(self) -> None:
        """Parameters, network and topics (lifecycle configure; tsa_ros.ros.lifecycle)."""
        self.params = declare_dataclass(self, EvaluatorParams())
        check_overrides(self)
        self.streams = tuple(self.params.streams)
        # Read the clean report now, so a wrong path fails at start, not after the run.
        self.clean = load_report(self.params.clean_report) if self.params.clean_report else None
        self.health = Health(self)
        self._lock = threading.Lock()  # callbacks, the expiry timer and close() share state
        self._joiner = StampJoiner(
            (_GT, *self.streams),
            max_pending=self.params.max_pending,
            timeout=self.params.timeout_s,
        )
        self.evaluation = StreamEvaluation(self.streams)
        self._closed = False

        self.status_pub = self.create_publisher(EvaluationStatus, '~/status', qos.RESULTS)
        self.gt_sub = self.create_subscription(
            Image, 'ground_truth', self.on_ground_truth, qos.RESULTS
        )
        self.label_subs = {
            stream: self.create_subscription(
                Image,
                f'{stream}/labels',
                lambda msg, s=stream: self.on_labels(s, msg),
                qos.RESULTS,
            )
            for stream in self.streams
        }
        self.create_subscription(Empty, '~/write_report', self.on_write_report, qos.RESULTS)
        self.create_timer(min(0.25, self.params.timeout_s / 4), self.on_expire)
        self.get_logger().info(
            f'evaluating {list(self.streams)} against ground truth '
            f'(timeout {self.params.timeout_s} s)'
            + (f', clean report {self.params.clean_report}' if self.clean else '')
        )

    # ------------------------------------------------------------------ callbacks
    @when_active
    def on_ground_truth(self, msg: Image) -> None:
        try:
            gt = labels_from_image(msg)
        except MessageError as exc:
            self.health.reject('bad_ground_truth', str(exc))
            return
        try:
            self.evaluation.check_ground_truth(gt)
        except ValueError as exc:
            self.health.reject('bad_ground_truth', str(exc))
            return
        item = (gt, msg.header.frame_id)
        with self._lock:
            self._handle(self._joiner.add(_GT, stamp_ns(msg.header), item, time.monotonic()))

    @when_active
    def on_labels(self, stream: str, msg: Image) -> None:
        try:
            labels = labels_from_image(msg)
        except MessageError as exc:
            self.health.reject('bad_labels', f'{stream}: {exc}')
            return
        with self._lock:
            self._handle(self._joiner.add(stream, stamp_ns(msg.header), labels, time.monotonic()))

    def on_expire(self) -> None:
        with self._lock:
            self._handle(self._joiner.expire(time.monotonic()))

    def on_write_report(self, _msg: Empty) -> None:
        self.write_report()

    # ------------------------------------------------------------------ evaluation
    def _handle(self, groups: list[JoinedGroup], publish: bool = True) -> None:
        """Evaluate joined groups (caller holds the lock)."""
        for group in groups:
            if _GT not in group.items:
                self.health.count('frames_without_ground_truth')
                continue
            gt, frame_id = group.items[_GT]
            self._evaluate(group, gt)
            if publish:
                self._publish_status(group.stamp, frame_id)

    def _evaluate(self, group: JoinedGroup, gt: np.ndarray) -> None:
        self.health.count('frames')
        labels = {k: v for k, v in group.items.items() if k != _GT}
        for stream, problem in self.evaluation.add(group.stamp, gt, labels):
            if problem != 'missing':
                self.health.reject('size_mismatch', problem)
            self.health.count(f'missing.{stream}')

    def _publish_status(self, stamp: int, frame_id: str) -> None:
        evaluation = self.evaluation
        msg = EvaluationStatus(frames=evaluation.frames, streams=list(self.streams))
        msg.header.stamp.sec, msg.header.stamp.nanosec = split_ns(stamp)
        msg.header.frame_id = frame_id
        miou = evaluation.miou()
        msg.miou = [miou[s] for s in self.streams]
        msg.missing = [evaluation.missing[s] for s in self.streams]
        self.status_pub.publish(msg)
        for stream, miou in zip(self.streams, msg.miou, strict=True):
            self.health.set(f'miou.{stream}', f'{miou:.4f}')

    # ------------------------------------------------------------------ report
    def report(self) -> dict:
        """The report of everything evaluated so far (see tsa_ros.evaluation.build_report)."""
        with self._lock:
            return self.evaluation.report(self.clean)

    def write_report(self) -> None:
        """Write the report to `report_path` (JSON + Markdown); nothing when it is unset."""
        if not self.params.report_path:
            self.get_logger().warning('report requested but report_path is not set')
            return
        try:
            json_path, md_path = write_report(self.report(), self.params.report_path)
        except OSError as exc:
            self.get_logger().error(f'cannot write report {self.params.report_path}: {exc}')
            return
        frames = self.evaluation.frames
        self.get_logger().info(f'wrote {json_path} and {md_path} ({frames} frames)')

    def release(self) -> None:
        """Evaluate the frames still waiting for streams, then write the final report (once)."""
        if getattr(self, '_closed', True):  # closed, or configure failed before
            return
        self._closed = True
        with self._lock:
            # At shutdown nothing more will arrive: what is still missing is missing.
            # After Ctrl-C the context is gone: count, but publish no status.
            self._handle(self._joiner.expire(math.inf), publish=self.context.ok())
        if self.params.report_path:
            self.write_report()
            streams = self.report()['streams'].values()
            if not any(entry['pixels'] for entry in streams):
                # An empty report is not a result: say so, and make the run fail (tsa up and
                # ros2 launch see the exit status), instead of exit 0 with nothing scored.
                self.get_logger().error(
                    f'scored no frame: none of the {self.evaluation.frames} ground-truth '
                    f'frames met a label map of the streams {list(self.streams)} (is '
                    '/camera/ground_truth recorded in the bag, and do the networks keep up '
                    'with the replay? lower --rate or set --admission-hz)'
                )
                self.exit_status = 1


def main(args=None) -> None:
    run(lambda: EvaluatorNode(), args)


if __name__ == '__main__':
    main()
