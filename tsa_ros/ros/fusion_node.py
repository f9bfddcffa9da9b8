"""Fusion node: joins the triplet's results of one camera frame and fuses them.

The teacher's, student's and adaptive student's ``tsa_msgs/Segmentation`` of a frame share
its header stamp; they are joined with :class:`tsa_ros.sync.StampJoiner` and fused by
:func:`tsa_ros.fusion.fuse` according to ``fusion.mode`` (majority vote by default; posterior
fusion, a per-class weighted vote, a confidence vote, or detection-gated fusion, which keeps
the teacher's labels unless the teacher is the suspect), which also names the network that
disagrees most with the others (a hint of an attack; beyond the paper, whose sec. 3.4 leaves
the fusion open). When a network stops publishing, a frame is fused from the results
that arrived within ``timeout_s``, the missing roles are listed in the output and
``/diagnostics`` turns WARN naming them.

The modes ``posterior``, ``confidence`` and ``gated_confidence`` need posteriors in every
message of a frame. A frame where one lacks them is fused by majority vote instead
(``gated`` for ``gated_confidence``; ``fusion_mode`` of the output says so, and the counter
``fallback.no_posteriors`` counts it): a fused mask for every frame is worth more downstream
(the evaluator, a planner) than strictness about the mode.

Topics (relative; the graph runs in ``/tsa``):

* sub ``<role>/segmentation`` for each role in ``roles`` (tsa_msgs/Segmentation,
  qos.RESULTS); ``image`` (the camera, sensor_msgs/Image, best effort) only while
  ``fused/overlay`` has a subscriber: unwatched, no camera frame reaches this process.
* pub ``fused/labels`` (mono8 trainIds), ``fused/color`` (rgb8), ``fused/segmentation``
  (tsa_msgs/FusedSegmentation), all qos.RESULTS; header = the camera frame's.
* pub, for people (rviz, Foxglove; computed only while somebody subscribes):
  ``fused/overlay`` (rgb8, the fused colour mask blended over the camera frame of the same
  stamp) and ``fused/disagreement`` (rgb8, per pixel how many of the fused networks voted
  another label: 0 black, 1 yellow, 2 red, 3+ magenta, no fused decision grey; see
  :data:`tsa_ros.fusion.DISAGREEMENT_COLORS`), both qos.RESULTS with the camera frame's
  header; ``legend`` (rgb8 class legend: colour swatches and names, qos.LATCHED, published
  once).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tsa_msgs.msg import FusedSegmentation, Segmentation

from tsa_ros.data.labels import colorize, legend, overlay
from tsa_ros.fusion import (
    POSTERIOR_FALLBACK,
    FusionConfig,
    SizeMismatchError,
    colorize_disagreement,
    disagreement_map,
    fuse_roles,
)
from tsa_ros.ros import convert, qos
from tsa_ros.ros.common import run
from tsa_ros.ros.health import Health
from tsa_ros.ros.lifecycle import ManagedNode, when_active
from tsa_ros.ros.params import check_overrides, declare_dataclass
from tsa_ros.sync import JoinedGroup, StampJoiner, stamp_ns

#: Longest period of the timer that gives up incomplete frames (~10 Hz).
EXPIRE_PERIOD_S = 0.1
BELOW_QUORUM = ('flag', 'drop')


@dataclass
class FusionNodeParams:
    """How the fusion node joins the networks' results.

    Attributes:
        roles: Networks to join, in priority order (the first breaks majority-vote ties
            under tie 'teacher'); each is read from `<role>/segmentation`.
        max_pending: Frames waiting for their results at once; the oldest is fused from what
            it has when a new frame would exceed it.
        timeout_s: Seconds a frame waits for all roles before it is fused from the results
            that did arrive (the missing roles are reported).
        quorum: Votes a fused mask needs (default 2 of 3). A frame with fewer networks is
            degraded: never published on fused/labels, and on fused/segmentation only with
            `degraded` set (below_quorum 'flag') or not at all ('drop').
        below_quorum: 'flag' or 'drop', see quorum.
        overlay_alpha: Weight of the fused mask in fused/overlay, in [0, 1].
        overlay_frames: Camera frames kept (only while fused/overlay has a subscriber) until
            the fused mask of their stamp is ready; the oldest is dropped first.
    """

    roles: list[str] = field(default_factory=lambda: ['teacher', 'student', 'adaptive'])
    max_pending: int = 16
    timeout_s: float = 1.0
    quorum: int = 2
    below_quorum: str = 'flag'
    overlay_alpha: float = 0.5
    overlay_frames: int = 16

    def __post_init__(self) -> None:
        if not self.roles or len(set(self.roles)) != len(self.roles) or not all(self.roles):
            raise ValueError(f'roles must be distinct non-empty names, got {self.roles}')
        if self.max_pending < 1:
            raise ValueError(f'max_pending must be >= 1, got {self.max_pending}')
        if not self.timeout_s > 0:
            raise ValueError(f'timeout_s must be > 0, got {self.timeout_s}')
        if not 1 <= self.quorum <= len(self.roles):
            raise ValueError(
                f'quorum must be in [1, {len(self.roles)}] (the number of roles), '
                f'got {self.quorum}'
            )
        if self.below_quorum not in BELOW_QUORUM:
            raise ValueError(
                f'below_quorum must be one of {BELOW_QUORUM}, got {self.below_quorum!r}'
            )
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f'overlay_alpha must be in [0, 1], got {self.overlay_alpha}')
        if self.overlay_frames < 1:
            raise ValueError(f'overlay_frames must be >= 1, got {self.overlay_frames}')


class FusionNode(ManagedNode):
    """Fuse the triplet's segmentations of each frame; see the module docstring."""

    def __init__(self, node_name: str = 'fusion', **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def configure(self) -> None:
        """Parameters, network and topics (lifecycle configure; tsa_ros.ros.lifecycle)."""
        self.config: FusionConfig = declare_dataclass(self, FusionConfig(), 'fusion')
        self.params = declare_dataclass(self, FusionNodeParams())
        self.roles = tuple(self.params.roles)
        if self.config.weights is not None and len(self.config.weights) != len(self.roles):
            raise ValueError(
                f'fusion.weights has {len(self.config.weights)} entries, roles has '
                f'{len(self.roles)}: {list(self.roles)}'
            )
        classes = self.config.num_classes
        if self.config.class_weights is not None and (
            len(self.config.class_weights) != len(self.roles) * classes
        ):
            raise ValueError(
                f'fusion.class_weights has {len(self.config.class_weights)} entries, need '
                f'{classes} per role for roles {list(self.roles)}: {len(self.roles) * classes}'
            )
        # Posteriors are decoded only when the fusion uses them.
        self._needs_posteriors = (
            self.config.mode in POSTERIOR_FALLBACK or self.config.tie == 'posterior'
        )
        self.health = Health(self)
        self.health.set('mode', self.config.mode)
        self.health.set('tie', self.config.tie)

        self._labels_pub = self.create_publisher(Image, 'fused/labels', qos.RESULTS)
        self._color_pub = self.create_publisher(Image, 'fused/color', qos.RESULTS)
        self._fused_pub = self.create_publisher(
            FusedSegmentation, 'fused/segmentation', qos.RESULTS
        )
        self._overlay_pub = self.create_publisher(Image, 'fused/overlay', qos.RESULTS)
        self._disagreement_pub = self.create_publisher(Image, 'fused/disagreement', qos.RESULTS)
        self._legend_pub = self.create_publisher(Image, 'legend', qos.LATCHED)
        self._legend_pub.publish(
            convert.image_msg(legend(), 'rgb8', Header(stamp=self.get_clock().now().to_msg()))
        )
        # Camera frames by stamp, for fused/overlay only; bounded, empty while nobody looks.
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self._frames_lock = threading.Lock()
        self._camera_sub = None  # see _follow_overlay_viewers
        # Own group: frames are stored while results are being fused.
        self._camera_group = MutuallyExclusiveCallbackGroup()

        self._lock = threading.Lock()  # the joiner is shared by subscriptions and timer
        self._joiner = StampJoiner(
            self.roles, max_pending=self.params.max_pending, timeout=self.params.timeout_s
        )
        for role in self.roles:
            self.create_subscription(
                Segmentation,
                f'{role}/segmentation',
                lambda msg, role=role: self.on_segmentation(msg, role),
                qos.RESULTS,
            )
        self.create_timer(min(EXPIRE_PERIOD_S, self.params.timeout_s / 2), self.on_expire_timer)
        check_overrides(self)
        self.get_logger().info(
            f'fusion ready: {self.config.mode} (tie {self.config.tie}) over {list(self.roles)}, '
            f'timeout {self.params.timeout_s} s'
        )

    # ------------------------------------------------------------------------ inputs
    def _follow_overlay_viewers(self) -> None:
        """Read the camera only while fused/overlay has a subscriber.

        A subscription that stayed would bring every frame into this process (transport and
        deserialisation, megabytes per frame) for nobody; a new viewer's first overlay comes
        a timer period (and a discovery) later.
        """
        watched = self._overlay_pub.get_subscription_count() > 0
        if watched and self._camera_sub is None:
            self._camera_sub = self.create_subscription(
                Image,
                'image',
                self.on_image,
                qos.OVERLAY_CAMERA,
                callback_group=self._camera_group,
            )
        elif not watched and self._camera_sub is not None:
            self.destroy_subscription(self._camera_sub)
            self._camera_sub = None
            with self._frames_lock:
                self._frames.clear()  # the viewer left: free the frames

    @when_active
    def on_image(self, msg: Image) -> None:
        """Keep the camera frame for fused/overlay until the fused mask of its stamp."""
        try:
            rgb = convert.image_to_rgb(msg)
        except convert.MessageError as exc:
            self.health.reject('image', str(exc))
            return
        with self._frames_lock:
            if self._camera_sub is None:
                return  # a frame in flight when the viewer left: not kept
            self._frames[stamp_ns(msg.header)] = rgb
            while len(self._frames) > self.params.overlay_frames:
                self._frames.popitem(last=False)

    @when_active
    def on_segmentation(self, msg: Segmentation, role: str) -> None:
        if msg.role and msg.role != role:
            # Fusing a miswired stream would count one network twice.
            self.health.reject(
                'role', f'message of role {msg.role!r} on the {role!r} topic (check remaps)'
            )
            return
        try:
            labels = convert.labels_from_image(msg.labels)
        except convert.MessageError as exc:
            self.health.reject('labels', f'{role}: {exc}')
            return
        probs = None
        if self._needs_posteriors:
            try:
                probs = convert.posteriors_from_msg(msg)
            except convert.MessageError as exc:
                self.health.reject('posteriors', f'{role}: {exc}')
                return
            if probs is not None and probs.shape[0] != self.config.num_classes:
                self.health.reject(
                    'posteriors',
                    f'{role}: {probs.shape[0]} classes, fusion.num_classes is '
                    f'{self.config.num_classes}',
                )
                return
        with self._lock:
            late = self._joiner.late
            groups = self._joiner.add(
                role, stamp_ns(msg.header), (msg, labels, probs), time.monotonic()
            )
            if self._joiner.late > late:
                self.health.count(f'late.{role}')
        self._publish(groups)

    def on_expire_timer(self) -> None:
        self._follow_overlay_viewers()
        with self._lock:
            groups = self._joiner.expire(time.monotonic())
        self._publish(groups)

    # ------------------------------------------------------------------------ fusion
    def _publish(self, groups: list[JoinedGroup]) -> None:
        for group in groups:
            start = time.perf_counter()
            fused = self._fuse(group)
            if fused is None:
                continue
            msg, labels, maps = fused
            self._report_missing(group.missing)
            if msg.degraded:
                # Fewer votes than the quorum: never an unmarked "majority" of one network.
                if self.params.below_quorum == 'drop':
                    self.health.count('frames.dropped_below_quorum')
                    continue
                self._fused_pub.publish(msg)
                self.health.count('frames.degraded')
                continue
            self._labels_pub.publish(msg.labels)
            self._fused_pub.publish(msg)
            self._publish_for_people(msg.header, labels, maps)
            self.health.timing('fusion', 1e3 * (time.perf_counter() - start))
            self.health.count('fused')
            self.health.count('frames.complete' if not group.missing else 'frames.partial')

    def _publish_for_people(self, header: Header, labels: np.ndarray, maps: list) -> None:
        """fused/color, fused/overlay and fused/disagreement, each only when subscribed."""
        wants_color = self._color_pub.get_subscription_count() > 0
        wants_overlay = self._overlay_pub.get_subscription_count() > 0
        frame = None
        if wants_overlay:
            with self._frames_lock:
                frame = self._frames.pop(stamp_ns(header), None)
            if frame is None:
                self.health.count('overlay.no_frame')  # lost, late or evicted camera frame
            elif frame.shape[:2] != labels.shape:
                self.health.reject(
                    'overlay_size',
                    f'camera frame {frame.shape[1]}x{frame.shape[0]}, fused mask '
                    f'{labels.shape[1]}x{labels.shape[0]}',
                )
                frame = None
        if wants_color or frame is not None:
            color = colorize(labels)
            if wants_color:
                self._color_pub.publish(convert.image_msg(color, 'rgb8', header))
            if frame is not None:
                blend = overlay(frame, color, self.params.overlay_alpha)
                self._overlay_pub.publish(convert.image_msg(blend, 'rgb8', header))
        if self._disagreement_pub.get_subscription_count():
            ignore = self.config.ignore_index
            counts = disagreement_map(maps, labels, ignore_index=ignore)
            image = colorize_disagreement(counts, ignore_index=ignore)
            self._disagreement_pub.publish(convert.image_msg(image, 'rgb8', header))

    def _fuse(self, group: JoinedGroup) -> tuple[FusedSegmentation, np.ndarray, list] | None:
        """The FusedSegmentation of one joined frame, its fused labels and the networks'
        label maps, or None."""
        labels = {role: item[1] for role, item in group.items.items()}
        probs = {role: item[2] for role, item in group.items.items()}
        try:
            fused = fuse_roles(self.roles, labels, probs, self.config)
        except SizeMismatchError as exc:
            self.health.reject('size', str(exc))
            return None
        except ValueError as exc:  # e.g. labels outside [0, num_classes) and ignore
            self.health.reject('fusion', str(exc))
            return None
        if fused.lacking_posteriors:
            self.health.count('fallback.no_posteriors')
            self.get_logger().warning(
                f'{list(fused.lacking_posteriors)} sent no posteriors: majority vote for this '
                'frame',
                throttle_duration_sec=5.0,
            )
        msgs = [group.items[r][0] for r in fused.roles]
        header = msgs[0].header  # every result carries the camera frame's header
        suspected = fused.suspected_role
        if suspected:
            self.health.count(f'suspected.{suspected}')
        result = fused.result
        msg = FusedSegmentation(
            header=header,
            fusion_mode=fused.config.mode,
            tie_rule=fused.config.tie,
            labels=convert.image_msg(result.labels, 'mono8', header),
            roles=list(fused.roles),
            model_versions=[int(m.model_version) for m in msgs],
            disagreement=[float(d) for d in result.disagreement],
            missing_roles=[str(r) for r in group.missing],
            suspected_role=suspected,
            quorum=self.params.quorum,
            degraded=len(fused.roles) < self.params.quorum,
        )
        return msg, result.labels, [labels[r] for r in fused.roles]

    def _report_missing(self, missing: tuple) -> None:
        if missing:
            for role in missing:
                self.health.count(f'missing.{role}')
            self.health.status(
                DiagnosticStatus.WARN,
                f'no result from {", ".join(missing)} within {self.params.timeout_s} s',
            )
        else:
            self.health.status(DiagnosticStatus.OK, 'ok')


def main(args=None) -> None:
    run(lambda: FusionNode(), args)


if __name__ == '__main__':
    main()
