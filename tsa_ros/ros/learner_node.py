"""Learner node: adapts the adaptive student A online and publishes signed weight snapshots.

A thin adapter over the core's :class:`tsa_ros.learning.online.OnlineLearner` (Bär et al.
2019, sec. 3.3, eqs. 3-6): camera frames are joined with the teacher's posteriors by header
stamp (:class:`tsa_ros.sync.StampJoiner`) and submitted to the learner's bounded queue; its
background thread does all the training, so no ROS callback ever waits for a step. Every
snapshot the learner takes (version >= 1; version 0 is S, which the adaptive segmenter starts
from) is published as a signed ``tsa_msgs/ModelWeights`` on a latched topic, so a segmenter
that starts later still gets the newest weights. A is checkpointed atomically and resumed
from after a restart, snapshot versions continuing where they stopped.

Topics (relative; the graph runs in ``/tsa``):

* sub ``image`` (sensor_msgs/Image, qos.SENSOR), ``teacher/segmentation``
  (tsa_msgs/Segmentation with posteriors, qos.RESULTS).
* pub ``~/weights`` (tsa_msgs/ModelWeights, qos.LATCHED), ``~/status``
  (tsa_msgs/LearnerStatus, qos.RESULTS).
* srv ``~/enable`` (std_srvs/SetBool): false pauses training (the thread stops after its
  current step) and drops camera frames (``skipped.disabled``) and teacher results
  (``skipped.disabled_teacher``) until true again.

The camera subscription is best effort by default (parameters ``input_qos.*``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import SetBool
from tsa_msgs.msg import LearnerStatus, ModelWeights, Segmentation

from tsa_ros.admission import FrameAdmission
from tsa_ros.errors import ConfigError
from tsa_ros.learning.adaptive_checkpoint import AdaptiveCheckpoint, SavedState, checkpoint_file
from tsa_ros.learning.online import LearnerConfig, OnlineLearner, WeightSnapshot
from tsa_ros.learning.pairing import TeacherPairing
from tsa_ros.models.checkpoint import load_checkpoint, weights_sha256
from tsa_ros.ros import convert, qos
from tsa_ros.ros.common import (
    admit_frame,
    arch_id,
    declare_network,
    declare_pixel_budget,
    run,
    weights_key,
)
from tsa_ros.ros.health import Health
from tsa_ros.ros.lifecycle import ManagedNode, when_active
from tsa_ros.ros.params import check_overrides, declare_dataclass
from tsa_ros.sync import stamp_ns
from tsa_ros.threads import LEARNER_THREADS

#: Seconds close() waits for the training thread to finish its current step (a CPU step at
#: full resolution can take seconds).
STOP_TIMEOUT_S = 30.0
#: Period of the timer that gives up frames whose teacher result never came.
EXPIRE_PERIOD_S = 0.1
#: Roles whose lost camera frames make the learner yield (they publish them on /diagnostics).
SEGMENTER_ROLES = ('teacher', 'student', 'adaptive')
#: LearnerConfig fields not declared: `device` (NetworkParams) places both S and A.
EXCLUDED = ('learner.device',)


@dataclass
class LearnerNodeParams:
    """How the learner node feeds, checkpoints and reports the online learner.

    Attributes:
        checkpoint_path: File A is checkpointed to (atomically) and resumed from after a
            restart; 'auto' = one file per S in the user's state directory
            (~/.local/state/tsa_ros/adaptive-<S's weights sha256>-<arch>-<HxW>.pt); empty = no
            checkpoint, every start begins again from S in a new lineage.
        initial_checkpoint: tsa checkpoint A starts from when there is no checkpoint to
            resume (e.g. what `tsa adapt` wrote; the graph passes adaptive_checkpoint, the
            file the adaptive segmenter starts from); it must hold S's architecture. Empty =
            A starts as S.
        checkpoint_every_s: Write the checkpoint at the first snapshot this many seconds
            after the last write (0 = at every snapshot), and always on shutdown.
        join_timeout_s: Seconds a camera frame waits for the teacher's result of the same
            stamp (and vice versa) before it is given up and not trained on.
        max_pending: Stamps waiting for their partner at once; the oldest is given up when
            a new stamp would exceed it.
        status_period_s: Period of the LearnerStatus messages on ~/status.
        resize: False: camera frames must already have model.input_size; True: resize them
            to model.input_size before training.
        admission_hz: Take only the frames the segmenters admit (tsa_ros.admission, same
            rate as theirs); the others could never meet a teacher result. 0 = every frame.
        input_qos: QoS of the camera subscription (tsa_ros.ros.qos.InputQoS).
        num_threads: Intra-op threads of the training; 0 = auto: 1, so that the learner
            leaves the cores to the segmenters (tsa_ros.threads).
        yield_s: Seconds no training step starts after a segmenter of this namespace
            reported camera frames lost in its queue on /diagnostics (it fell behind: the
            learner gives its CPU share back); 0 = never pause.
    """

    checkpoint_path: str = ''
    initial_checkpoint: str = ''
    checkpoint_every_s: float = 60.0
    join_timeout_s: float = 2.0
    max_pending: int = 16
    status_period_s: float = 1.0
    resize: bool = False
    admission_hz: float = 0.0
    input_qos: qos.InputQoS = field(default_factory=qos.InputQoS)
    num_threads: int = 0
    yield_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.yield_s >= 0:
            raise ValueError(f'yield_s must be >= 0 (0 = never pause), got {self.yield_s}')
        if not self.admission_hz >= 0:
            raise ValueError(f'admission_hz must be >= 0, got {self.admission_hz}')
        if self.num_threads < 0:
            raise ValueError(f'num_threads must be >= 0 (0 = auto), got {self.num_threads}')
        if not self.checkpoint_every_s >= 0:
            raise ValueError(f'checkpoint_every_s must be >= 0, got {self.checkpoint_every_s}')
        if not self.join_timeout_s > 0:
            raise ValueError(f'join_timeout_s must be > 0, got {self.join_timeout_s}')
        if self.max_pending < 1:
            raise ValueError(f'max_pending must be >= 1, got {self.max_pending}')
        if not self.status_period_s > 0:
            raise ValueError(f'status_period_s must be > 0, got {self.status_period_s}')


class LearnerNode(ManagedNode):
    """Train A from camera frames and teacher posteriors; see the module docstring."""

    def __init__(self, node_name: str = 'learner', **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def configure(self) -> None:
        """Parameters, network and topics (lifecycle configure; tsa_ros.ros.lifecycle)."""
        student, self._model_config, device = declare_network(self)
        # One device parameter for S and A: `device` (NetworkParams), not `learner.device`.
        self.config = declare_dataclass(
            self, LearnerConfig(device=str(device)), 'learner', exclude=EXCLUDED
        )
        self.params = declare_dataclass(self, LearnerNodeParams())
        self._key = weights_key(self)
        self._max_pixels = declare_pixel_budget(self, self._model_config)
        check_overrides(self)
        self._arch = arch_id(self._model_config)
        self._config_dict = self._model_config.to_dict()
        self.health = Health(self)
        self.health.set('arch', self._arch)
        threads = self.params.num_threads or LEARNER_THREADS
        torch.set_num_threads(threads)  # before the training thread's first torch call
        self.health.set('num_threads', threads)

        # Resume: A's weights, step and snapshot version from the last checkpoint (a
        # checkpoint of another architecture fails loudly instead of being overwritten).
        student_sha = weights_sha256(student.state_dict())
        self._ckpt = AdaptiveCheckpoint(
            checkpoint_file(self.params.checkpoint_path, student_sha, self._model_config),
            self._model_config,
            self.params.checkpoint_every_s,
            student_sha256=student_sha,
        )
        saved = self._ckpt.resume()
        if saved is not None:
            self.get_logger().info(
                f'resumed A from {self._ckpt.path}: step {saved.step}, version {saved.version}'
            )
        if not self._ckpt.resumed_lineage:
            # A running A adopts it with a warning of its own; say why it happens.
            where = self._ckpt.path or 'none (checkpoint_path is empty)'
            self.get_logger().warning(
                f'new weights lineage {self._ckpt.lineage}: no checkpoint to continue from '
                f'({where})'
            )
        self.health.set('weights_lineage', self._ckpt.lineage)
        self.health.set('weights_signing', 'unsigned' if self._key is None else 'hmac-sha256')
        initial = saved.state_dict if saved is not None else self._initial_adaptive()
        self.learner = OnlineLearner(
            student,
            self.config,
            adaptive_state=initial,
            start_step=0 if saved is None else saved.step,
        )
        del student  # the learner holds its own copies (frozen S and trainable A)
        self._closed = False
        self._enabled = True
        self._enable_lock = threading.Lock()  # ~/enable against release(): one owner of the thread
        self.health.set('enabled', True)

        self._weights_pub = self.create_publisher(ModelWeights, '~/weights', qos.LATCHED)
        self._status_pub = self.create_publisher(LearnerStatus, '~/status', qos.RESULTS)

        self._pairing = TeacherPairing(
            self.learner,
            input_size=self._model_config.input_size,
            resize=self.params.resize,
            max_pending=self.params.max_pending,
            timeout=self.params.join_timeout_s,
            count=self.health.count,
            reject=self.health.reject,
        )
        self._admission = FrameAdmission(self.params.admission_hz)
        self.create_subscription(
            Image, 'image', self.on_image, self.params.input_qos.profile(self.params.admission_hz)
        )
        self.create_subscription(
            Segmentation, 'teacher/segmentation', self.on_teacher, qos.RESULTS
        )
        self._lost_seen: dict[str, int] = {}  # segmenter -> its last lost.camera count
        if self.params.yield_s > 0:
            self.create_subscription(
                DiagnosticArray, '/diagnostics', self.on_diagnostics, qos.RESULTS
            )
        self.create_timer(EXPIRE_PERIOD_S, self.on_expire_timer)
        self.create_timer(self.params.status_period_s, self.on_status_timer)
        # Own group: pausing waits for the current training step, frames keep being counted.
        self.create_service(
            SetBool, '~/enable', self.on_enable, callback_group=MutuallyExclusiveCallbackGroup()
        )

        # A resumed A differs from S: latch it at once so the adaptive segmenter catches up.
        if self._ckpt.version_offset >= 1:
            self._publish_weights(self.learner.latest_snapshot())
        # Registered after construction, so the learner's own version-0 snapshot (= S, or
        # the resumed A just published) never goes out twice.
        self.learner.snapshot_callbacks.append(self.on_snapshot)
        self.learner.start()
        self.get_logger().info(
            f'learner ready: {self._arch} {self._model_config.input_size}, '
            f'batch {self.config.batch_size}, lr {self.config.lr}, '
            f'snapshot every {self.config.snapshot_every} steps on {self.learner.device}'
        )

    # ------------------------------------------------------------------------ inputs
    @when_active
    def on_image(self, msg: Image) -> None:
        if not admit_frame(self._admission, self.health, msg.header):
            return  # before any decoding: costs nothing
        if not self._enabled:
            # After admission, which must see every stamp or it would count these as lost.
            self.health.count('skipped.disabled')
            return
        try:
            self._pairing.add_frame(
                stamp_ns(msg.header), convert.image_to_rgb(msg, self._max_pixels), time.monotonic()
            )
            self.health.count('frames')  # as the segmenters: admitted camera frames taken
        except convert.FrameTooLarge as exc:
            self.health.reject('oversized', str(exc))
        except convert.MessageError as exc:
            self.health.reject('image', str(exc))
        except ValueError as exc:
            self.health.reject('size', str(exc))

    @when_active
    def on_teacher(self, msg: Segmentation) -> None:
        if not self._enabled:
            self.health.count('skipped.disabled_teacher')  # not a camera frame: own counter
            return
        try:
            probs = convert.posteriors_from_msg(msg)
        except convert.MessageError as exc:
            self.health.reject('posteriors', str(exc))
            return
        if probs is None:
            self.health.reject(
                'no_posteriors',
                f'teacher segmentation ({msg.role or "?"}, {msg.arch or "?"}) carries no '
                'posteriors; enable publish_posteriors on the teacher segmenter',
            )
            return
        try:
            self._pairing.add_teacher(stamp_ns(msg.header), probs, time.monotonic())
        except ValueError as exc:
            self.health.reject('posteriors', str(exc))

    def on_diagnostics(self, array: DiagnosticArray) -> None:
        """Hold training for ``yield_s`` when a segmenter of this graph lost camera frames
        since its last report: its queue overflowed while the CPU was short."""
        self.health.count('diagnostics.seen', len(array.status))
        for status in array.status:
            namespace = status.name.rsplit('/', 1)[0] or '/'
            values = {kv.key: kv.value for kv in status.values}
            if namespace != self.get_namespace() or values.get('role') not in SEGMENTER_ROLES:
                continue
            try:
                lost = int(values.get('lost.camera', 0))
            except ValueError:
                continue
            before = self._lost_seen.get(status.name, lost)  # first report: its baseline
            self._lost_seen[status.name] = lost
            if lost > before:
                self.learner.hold(self.params.yield_s)
                self.health.count('yields')
                self.health.set('yielded_to', values['role'])

    def on_expire_timer(self) -> None:
        self._pairing.expire(time.monotonic())

    def on_enable(self, request: SetBool.Request, response: SetBool.Response):
        """~/enable: train (true), or pause training and drop the inputs (false)."""
        enable = bool(request.data)
        with self._enable_lock:
            if self._closed:
                response.success, response.message = False, 'learner is shutting down'
                return response
            try:
                if enable:
                    self.learner.start()  # idempotent
                else:
                    self._enabled = False  # drop inputs at once, before the step ends
                    self.learner.stop(timeout=STOP_TIMEOUT_S)
            except (TimeoutError, RuntimeError) as exc:
                response.success, response.message = False, f'training thread: {exc}'
                self.get_logger().error(response.message)
                return response
            self._enabled = enable
        self.health.set('enabled', enable)
        response.success = True
        response.message = (
            'enabled: training'
            if enable
            else 'disabled: training paused, inputs dropped (skipped.disabled)'
        )
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------------ snapshots
    def on_snapshot(self, snap: WeightSnapshot) -> None:
        """Publish (and checkpoint when due) a snapshot; runs in the training thread.

        Serialising, hashing and signing a multi-megabyte snapshot there keeps the executor's
        callbacks fast, and rclpy publishers may be used from any thread. The cost is a short
        pause of training per snapshot, which is what a snapshot is worth.
        """
        try:
            self._publish_weights(snap)
            if self._ckpt.due():
                self._write_checkpoint(
                    SavedState(snap.state_dict, snap.step, self._ckpt.version(snap))
                )
        except Exception as exc:  # an exception here would end the training thread
            self.health.count('snapshot_errors')
            self.get_logger().error(f'snapshot {snap.version} not published: {exc}')

    def _publish_weights(self, snap: WeightSnapshot) -> None:
        version = self._ckpt.version(snap)
        header = Header(stamp=self.get_clock().now().to_msg())
        msg = convert.weights_msg(
            header,
            self._ckpt.lineage,
            version,
            snap.step,
            self._arch,
            self._config_dict,
            snap.state_dict,
            self._key,
        )
        self._weights_pub.publish(msg)
        self.health.count('snapshots.published')
        self.health.set('published_version', version)

    def _write_checkpoint(self, state: SavedState) -> None:
        start = time.perf_counter()
        self._ckpt.write(state)
        self.health.timing('checkpoint', 1e3 * (time.perf_counter() - start))
        self.health.count('checkpoints.written')

    # ------------------------------------------------------------------------ status
    def on_status_timer(self) -> None:
        stats = self.learner.stats
        msg = LearnerStatus(
            header=Header(stamp=self.get_clock().now().to_msg()),
            step=stats.step,
            snapshot_version=self._ckpt.version_offset + stats.snapshot_version,
            ce_loss=stats.ce,
            fm_loss=stats.fm,
            ifm_loss=stats.ifm,
            ts_loss=stats.ts,
            learning_rate=stats.lr,
            frames_received=stats.frames_received,
            frames_dropped=stats.frames_dropped,
            steps_skipped=stats.steps_skipped,
        )
        self._status_pub.publish(msg)
        self.health.set('step', stats.step)
        self.health.set('queue', self.learner.queue_length)
        self.health.set('holding', self.learner.held)
        error = self.learner.error
        if error is not None:
            self.health.status(DiagnosticStatus.ERROR, f'training thread failed: {error!r}')
        elif stats.steps_skipped:
            self.health.status(
                DiagnosticStatus.WARN, f'{stats.steps_skipped} steps skipped (non-finite loss)'
            )

    # ------------------------------------------------------------------------ lifecycle
    def _initial_adaptive(self) -> dict | None:
        """A's weights from ``initial_checkpoint`` (None: A starts as S).

        Without it, a graph whose adaptive segmenter starts from an adapted A would have its
        A replaced by the learner's first snapshot of S plus a few steps.
        """
        path = self.params.initial_checkpoint
        if not path:
            return None
        model, _ = load_checkpoint(path, map_location='cpu')
        if arch_id(model.config) != self._arch:
            raise ConfigError(
                f'initial_checkpoint {path} holds {arch_id(model.config)}, but A is '
                f"{self._arch} (the student's architecture)"
            )
        self.get_logger().info(f'A starts from {path}')
        return model.state_dict()

    def release(self) -> None:
        """Stop and join the training thread, then write the final checkpoint (idempotent)."""
        if getattr(self, '_closed', True):  # closed, or configure failed before
            return
        with self._enable_lock:  # an ~/enable call in flight finishes first
            self._closed = True
        stopped = False
        try:
            self.learner.stop(timeout=STOP_TIMEOUT_S)
            stopped = True
        except (TimeoutError, RuntimeError) as exc:
            self.get_logger().error(f'online learner did not stop cleanly: {exc!r}')
        if self._ckpt.path is None:
            return
        state = self._ckpt.final_state(self.learner, stopped)
        try:
            self._write_checkpoint(state)
            self.get_logger().info(
                f'checkpoint of A at step {state.step}, version {state.version}: {self._ckpt.path}'
            )
        except Exception as exc:
            self.get_logger().error(f'final checkpoint not written: {exc!r}')


def main(args=None) -> None:
    run(lambda: LearnerNode(), args)


if __name__ == '__main__':
    main()
