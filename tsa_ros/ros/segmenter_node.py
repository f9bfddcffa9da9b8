"""Segmenter node: one network of the T-S-A triplet (teacher, student or adaptive student).

The same node class serves all three networks, chosen by the ``role`` parameter. Each camera
frame is segmented and published as a trainId label image, an optional colourised mask and
overlay, and a ``tsa_msgs/Segmentation`` (with softmax posteriors when enabled: the teacher's
feed the learner). The adaptive role also subscribes to the learner's signed weight snapshots
and hot-swaps them between two frames, never during one.

Topics (relative; the graph runs in ``/tsa`` and remaps ``image`` to the camera):

* sub ``image`` (sensor_msgs/Image, best effort by default: parameters ``input_qos.*``);
  adaptive only: ``weights`` (tsa_msgs/ModelWeights, qos.LATCHED).
* pub ``~/labels`` (mono8), ``~/color`` (rgb8), ``~/overlay`` (rgb8), ``~/segmentation``
  (tsa_msgs/Segmentation), all qos.RESULTS; ``label_info`` (tsa_msgs/LabelInfo, qos.LATCHED).
* srv ``~/enable`` (std_srvs/SetBool): false drops camera frames (counted as
  ``skipped.disabled``) until true again.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import SetBool
from tsa_msgs.msg import LabelInfo, ModelWeights, Segmentation

from tsa_ros.admission import FrameAdmission
from tsa_ros.data.labels import colorize, overlay
from tsa_ros.errors import ConfigError
from tsa_ros.inference import Predictor
from tsa_ros.learning.snapshot_gate import MAX_VERSION_STEP, SnapshotGate
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
from tsa_ros.threads import segmenter_threads

ROLES = ('teacher', 'student', 'adaptive')


@dataclass
class SegmenterParams:
    """What a segmenter does with its network's output.

    Attributes:
        role: 'teacher', 'student' or 'adaptive'; 'adaptive' also hot-swaps signed weight
            snapshots from the learner (topic `weights`).
        resize: False: run the network at the camera frame size (ERFNet needs H and W
            divisible by 8); True: resize frames to model.input_size and the labels back.
        publish_color: Publish the colourised mask on ~/color (rgb8).
        publish_overlay: Publish the mask blended over the camera frame on ~/overlay (rgb8).
        overlay_alpha: Weight of the mask in the overlay, in [0, 1].
        publish_posteriors: Put the softmax posteriors into ~/segmentation (the learner
            needs the teacher's).
        posteriors_scale: Resolution of the posteriors relative to the frame, in (0, 1].
        posteriors_encoding: 'float16', 'float32' or 'uint8' (probability * 255).
        warmup: Run one dummy forward pass at model.input_size at start-up, so the first
            frame is not slow.
        admission_hz: Frames per second segmented, chosen by header stamp (tsa_ros.admission)
            so the whole triplet takes the same frames; 0 = every frame.
        backend: How the network runs (tsa_ros.inference.BACKENDS): 'auto' (the fastest
            of channels_last, eager and, where the CPU/GPU has bfloat16, bf16, timed at
            warm-up; without warm-up channels_last), 'eager', 'channels_last', 'bf16';
            'onnxruntime' (CPU, opt-in): exported per input size at warm-up, cached on disk,
            so keep frames at the warm-up size (resize: true) or a new size exports again.
        num_threads: Intra-op threads of this segmenter's process; 0 = auto: the cores
            this process may use divided among the three segmenters, at least one each
            (tsa_ros.threads: with torch's default of one thread per core in each of the
            three processes, the triplet ran many times slower on 2 cores).
        max_version_step: Adaptive only: a snapshot of the current lineage more than this
            many versions beyond the loaded one is rejected (a far-off version would make A
            refuse every genuine snapshot after it).
        input_qos: QoS of the camera subscription (tsa_ros.ros.qos.InputQoS).
    """

    role: str = 'student'
    resize: bool = False
    publish_color: bool = True
    publish_overlay: bool = False
    overlay_alpha: float = 0.5
    publish_posteriors: bool = False
    posteriors_scale: float = 0.25
    posteriors_encoding: str = Segmentation.POSTERIORS_FLOAT16
    warmup: bool = True
    admission_hz: float = 0.0
    backend: str = 'auto'
    num_threads: int = 0
    max_version_step: int = MAX_VERSION_STEP
    input_qos: qos.InputQoS = field(default_factory=qos.InputQoS)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f'role must be one of {ROLES}, got {self.role!r}')
        if not self.admission_hz >= 0:
            raise ValueError(f'admission_hz must be >= 0, got {self.admission_hz}')
        if self.max_version_step < 1:
            raise ValueError(f'max_version_step must be >= 1, got {self.max_version_step}')
        if self.num_threads < 0:
            raise ValueError(f'num_threads must be >= 0 (0 = auto), got {self.num_threads}')
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f'overlay_alpha must be in [0, 1], got {self.overlay_alpha}')
        if not 0.0 < self.posteriors_scale <= 1.0:
            raise ValueError(f'posteriors_scale must be in (0, 1], got {self.posteriors_scale}')
        if self.posteriors_encoding not in convert.POSTERIOR_DTYPES:
            raise ValueError(
                f'posteriors_encoding must be one of {list(convert.POSTERIOR_DTYPES)}, '
                f'got {self.posteriors_encoding!r}'
            )


class SegmenterNode(ManagedNode):
    """Segment camera frames with one network of the triplet; see the module docstring."""

    def __init__(self, node_name: str = 'segmenter', **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def configure(self) -> None:
        """Parameters, network and topics (lifecycle configure; tsa_ros.ros.lifecycle)."""
        self.params = declare_dataclass(self, SegmenterParams())
        model, self._config, self._device = declare_network(
            self, strict_arch=self.params.role == 'adaptive'
        )
        self._arch = arch_id(self._config)
        self._max_pixels = declare_pixel_budget(self, self._config)
        # The inference path reads (predictor, version) under this lock; a weight swap
        # replaces both at once, so a frame is always segmented by one consistent snapshot.
        self._lock = threading.Lock()
        self._input_size = self._config.input_size if self.params.resize else None
        threads = segmenter_threads(self.params.num_threads)
        try:
            self._predictor = Predictor(
                model,
                device=self._device,
                input_size=self._input_size,
                num_threads=threads,
                backend=self.params.backend,
            )
        except ValueError as exc:  # an unknown backend, or bf16 without the hardware
            raise ConfigError(f'backend: {exc}') from None
        self._version = 0
        self._gate = SnapshotGate(self.params.max_version_step)
        self._admission = FrameAdmission(self.params.admission_hz)
        self.health = Health(self)
        self.health.set('role', self.params.role)
        self.health.set('arch', self._arch)
        self.health.set('model_version', 0)
        self.health.set('backend', self._predictor.backend)
        self.health.set('num_threads', threads)
        self._enabled = True
        self.health.set('enabled', True)

        if self.params.warmup:
            self._warmup()

        results = qos.RESULTS
        self._labels_pub = self.create_publisher(Image, '~/labels', results)
        self._color_pub = (
            self.create_publisher(Image, '~/color', results) if self.params.publish_color else None
        )
        self._overlay_pub = (
            self.create_publisher(Image, '~/overlay', results)
            if self.params.publish_overlay
            else None
        )
        self._seg_pub = self.create_publisher(Segmentation, '~/segmentation', results)
        self._label_info_pub = self.create_publisher(LabelInfo, 'label_info', qos.LATCHED)
        self._label_info_pub.publish(
            convert.label_info_msg(Header(stamp=self.get_clock().now().to_msg()))
        )

        # Separate groups: under a MultiThreadedExecutor a weight snapshot is verified and
        # loaded while frames keep flowing, and the diagnostics timer is never starved.
        self._image_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(
            Image,
            'image',
            self.on_image,
            self.params.input_qos.profile(self.params.admission_hz),
            callback_group=self._image_group,
        )
        # Own group: the switch answers while a frame is being segmented.
        self.create_service(
            SetBool, '~/enable', self.on_enable, callback_group=MutuallyExclusiveCallbackGroup()
        )
        if self.params.role == 'adaptive':
            self._key = weights_key(self)
            self.health.set('weights_signing', 'unsigned' if self._key is None else 'hmac-sha256')
            self._weights_group = MutuallyExclusiveCallbackGroup()
            self.create_subscription(
                ModelWeights,
                'weights',
                self.on_weights,
                qos.LATCHED,
                callback_group=self._weights_group,
            )
        check_overrides(self)
        size = f'resized to {self._config.input_size}' if self.params.resize else 'frame size'
        self.get_logger().info(
            f'{self.params.role} segmenter ready: {self._arch} at {size} on {self._device}'
        )

    def release(self) -> None:
        """Drop the network (lifecycle cleanup): its memory, on the GPU too, is freed."""
        self._predictor = None

    @property
    def model_version(self) -> int:
        """Version of the weights in use (0 until the adaptive role loads a snapshot)."""
        with self._lock:
            return self._version

    def _warmup(self) -> None:
        start = time.perf_counter()
        self._predictor.warmup(self._config.input_size)
        self.health.set('backend', self._predictor.backend)
        self.get_logger().info(
            f'backend {self._predictor.backend} (requested {self.params.backend}); warm-up '
            f'took {1e3 * (time.perf_counter() - start):.0f} ms'
        )

    # ------------------------------------------------------------------------ callbacks
    @when_active
    def on_image(self, msg: Image) -> None:
        if not admit_frame(self._admission, self.health, msg.header):
            return  # before any decoding: costs nothing
        if not self._enabled:
            # After admission, which must see every stamp or it would count these as lost.
            self.health.count('skipped.disabled')
            return
        try:
            rgb = convert.image_to_rgb(msg, self._max_pixels)
        except convert.FrameTooLarge as exc:
            self.health.reject('oversized', str(exc))
            return
        except convert.MessageError as exc:
            self.health.reject('image', str(exc))
            return
        with self._lock:
            predictor, version = self._predictor, self._version
        try:
            predictor.check_frame(*rgb.shape[:2])
        except ValueError as exc:
            hint = '' if self.params.resize else '; set resize:=true to resize frames'
            self.health.reject('size', f'{exc}{hint}')
            return

        start = time.perf_counter()
        scale = self.params.posteriors_scale if self.params.publish_posteriors else None
        result = predictor.predict(rgb, posteriors_scale=scale)
        labels, probs = result.labels, result.posteriors
        inference_ms = 1e3 * (time.perf_counter() - start)
        self.health.timing('inference', inference_ms)
        self.health.count('frames')

        header = msg.header
        seg = convert.segmentation_msg(
            header,
            self.params.role,
            self._arch,
            version,
            labels,
            posteriors=probs,
            encoding=self.params.posteriors_encoding,
            inference_ms=inference_ms,
        )
        self._labels_pub.publish(seg.labels)
        self._seg_pub.publish(seg)
        # Colour and overlay are for people (rviz): skip the work when nobody listens.
        wants_color = self._color_pub is not None and self._color_pub.get_subscription_count()
        wants_overlay = (
            self._overlay_pub is not None and self._overlay_pub.get_subscription_count()
        )
        if wants_color or wants_overlay:
            color = colorize(labels)
            if wants_color:
                self._color_pub.publish(convert.image_msg(color, 'rgb8', header))
            if wants_overlay:
                blend = overlay(rgb, color, self.params.overlay_alpha)
                self._overlay_pub.publish(convert.image_msg(blend, 'rgb8', header))

    def on_enable(self, request: SetBool.Request, response: SetBool.Response):
        """~/enable: segment camera frames (true) or drop and count them (false)."""
        self._enabled = bool(request.data)
        self.health.set('enabled', self._enabled)
        response.success = True
        response.message = (
            'enabled: segmenting camera frames'
            if self._enabled
            else 'disabled: camera frames are dropped (skipped.disabled)'
        )
        self.get_logger().info(response.message)
        return response

    def on_weights(self, msg: ModelWeights) -> None:
        """Gate, verify and load a snapshot into a copy of the model, then swap it in atomically.

        Every way a snapshot can be wrong ends here as one counted rejection; the running
        model keeps serving frames meanwhile and whenever a snapshot is refused.
        """
        verdict = self._gate.check(msg.lineage, msg.version)
        if not verdict.accepted:
            self.health.reject(verdict.reason, verdict.message)
            return
        with self._lock:
            current = self._predictor
        start = time.perf_counter()  # loading runs off the inference path
        try:
            predictor = convert.load_weights(
                msg, self._key, self._arch, self._config.to_dict(), current
            )
        except convert.MessageError as exc:
            self.health.reject('weights', str(exc))
            return
        with self._lock:
            if not self._gate.commit(msg.lineage, msg.version):
                return  # a newer snapshot won meanwhile
            self._predictor, self._version = predictor, int(msg.version)
        self.health.timing('weights_load', 1e3 * (time.perf_counter() - start))
        self.health.count('weights_loaded')
        self.health.set('model_version', msg.version)
        self.health.set('weights_lineage', msg.lineage)
        if verdict.new_lineage:
            self.health.count('weights_lineage_changes')
            self.get_logger().warning(
                f'adopted new weights lineage {msg.lineage} at version {msg.version}: '
                'the learner restarted without its checkpoint'
            )
        self.get_logger().info(
            f'loaded weights version {msg.version} (lineage {msg.lineage}, step {msg.step})'
        )


def main(args=None) -> None:
    run(lambda: SegmenterNode(), args)


if __name__ == '__main__':
    main()
