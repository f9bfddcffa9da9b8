"""Segmenter node: one network of the T-S-A triplet (teacher, student or adaptive student).

The same node class serves all three networks, chosen by the ``role`` parameter. Each camera
frame is segmented and published as a trainId label image, an optional colourised mask and
overlay, and a ``tsa_msgs/Segmentation`` (with softmax posteriors when enabled: the teacher's
feed the learner). The adaptive role also subscribes to the learner's signed weight snapshots
and hot-swaps them between two frames, never during one.

Topics (relative; the graph runs in ``/tsa`` and remaps ``image`` to the camera):

* sub ``image`` (sensor_msgs/Image, qos.SENSOR); adaptive only: ``weights``
  (tsa_msgs/ModelWeights, qos.LATCHED).
* pub ``~/labels`` (mono8), ``~/color`` (rgb8), ``~/overlay`` (rgb8), ``~/segmentation``
  (tsa_msgs/Segmentation), all qos.RESULTS; ``label_info`` (tsa_msgs/LabelInfo, qos.LATCHED).
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from tsa_msgs.msg import LabelInfo, ModelWeights, Segmentation

from tsa_ros.data.labels import colorize
from tsa_ros.ros import convert, qos
from tsa_ros.ros.common import arch_id, declare_network, run, weights_key
from tsa_ros.ros.health import Health
from tsa_ros.ros.params import declare_dataclass

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

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f'role must be one of {ROLES}, got {self.role!r}')
        if not 0.0 <= self.overlay_alpha <= 1.0:
            raise ValueError(f'overlay_alpha must be in [0, 1], got {self.overlay_alpha}')
        if not 0.0 < self.posteriors_scale <= 1.0:
            raise ValueError(f'posteriors_scale must be in (0, 1], got {self.posteriors_scale}')
        if self.posteriors_encoding not in convert.POSTERIOR_DTYPES:
            raise ValueError(
                f'posteriors_encoding must be one of {list(convert.POSTERIOR_DTYPES)}, '
                f'got {self.posteriors_encoding!r}'
            )


def rgb_to_tensor(rgb: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (1, 3, H, W) gray values [0, 255] on ``device``."""
    # Message buffers may be read-only or padded views; torch wants its own contiguous memory.
    array = np.ascontiguousarray(rgb)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array).to(device).permute(2, 0, 1).unsqueeze(0).float()


def resample_posteriors(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Posteriors (N, C, h, w) at ``size`` (H, W): area when shrinking, else bilinear.

    Both keep each pixel a convex combination of probabilities; the renormalisation only
    removes float rounding.
    """
    if tuple(probs.shape[-2:]) != size:
        shrink = size[0] <= probs.shape[-2] and size[1] <= probs.shape[-1]
        if shrink:
            probs = F.interpolate(probs, size=size, mode='area')
        else:
            probs = F.interpolate(probs, size=size, mode='bilinear', align_corners=False)
    return probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)


class SegmenterNode(Node):
    """Segment camera frames with one network of the triplet; see the module docstring."""

    def __init__(self, node_name: str = 'segmenter', **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self.params = declare_dataclass(self, SegmenterParams())
        model, self._config, self._device = declare_network(self)
        self._arch = arch_id(self._config)
        # The inference path reads (model, version) under this lock; a weight swap replaces
        # both at once, so a frame is always segmented by one consistent snapshot.
        self._lock = threading.Lock()
        self._model = model
        self._version = 0
        # The network's own input-size rule (ERFNet: multiples of 8), checked before forward.
        self._check_size = model.net.check_input_size
        self.health = Health(self)
        self.health.set('role', self.params.role)
        self.health.set('arch', self._arch)
        self.health.set('model_version', 0)

        if self.params.warmup:
            self._warmup(model)

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
            Image, 'image', self.on_image, qos.SENSOR, callback_group=self._image_group
        )
        if self.params.role == 'adaptive':
            self._key = weights_key(self)
            self._weights_group = MutuallyExclusiveCallbackGroup()
            self.create_subscription(
                ModelWeights,
                'weights',
                self.on_weights,
                qos.LATCHED,
                callback_group=self._weights_group,
            )
        size = f'resized to {self._config.input_size}' if self.params.resize else 'frame size'
        self.get_logger().info(
            f'{self.params.role} segmenter ready: {self._arch} at {size} on {self._device}'
        )

    @property
    def model_version(self) -> int:
        """Version of the weights in use (0 until the adaptive role loads a snapshot)."""
        with self._lock:
            return self._version

    def _warmup(self, model: torch.nn.Module) -> None:
        height, width = self._config.input_size
        start = time.perf_counter()
        with torch.inference_mode():
            model(torch.zeros(1, 3, height, width, device=self._device))
        self.get_logger().info(
            f'warm-up forward took {1e3 * (time.perf_counter() - start):.0f} ms'
        )

    # ------------------------------------------------------------------------ callbacks
    def on_image(self, msg: Image) -> None:
        try:
            rgb = convert.image_to_rgb(msg)
        except convert.MessageError as exc:
            self.health.reject('image', str(exc))
            return
        height, width = rgb.shape[:2]
        if not self.params.resize:
            try:
                self._check_size(height, width)
            except ValueError as exc:
                self.health.reject('size', f'{exc}; set resize:=true to resize frames')
                return
        with self._lock:
            model, version = self._model, self._version

        start = time.perf_counter()
        labels, probs = self._infer(model, rgb)
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
                alpha = self.params.overlay_alpha
                overlay = cv2.addWeighted(np.ascontiguousarray(rgb), 1.0 - alpha, color, alpha, 0)
                self._overlay_pub.publish(convert.image_msg(overlay, 'rgb8', header))

    def _infer(
        self, model: torch.nn.Module, rgb: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (H, W) uint8 at frame size and, when enabled, posteriors (C, h, w)."""
        height, width = rgb.shape[:2]
        net_rgb = rgb
        if self.params.resize:
            net_h, net_w = self._config.input_size
            if (net_h, net_w) != (height, width):
                shrink = net_h <= height and net_w <= width
                interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
                net_rgb = cv2.resize(
                    np.ascontiguousarray(rgb), (net_w, net_h), interpolation=interp
                )
        with torch.inference_mode():
            logits = model(rgb_to_tensor(net_rgb, self._device))  # (1, C, h, w)
            labels = logits.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()  # (h, w)
            probs = None
            if self.params.publish_posteriors:
                scale = self.params.posteriors_scale
                size = (max(1, round(height * scale)), max(1, round(width * scale)))
                probs = resample_posteriors(torch.softmax(logits.float(), dim=1), size)
                probs = probs[0].cpu().numpy()  # (C, h, w)
        if labels.shape != (height, width):
            # Nearest keeps labels valid class ids (no blending between classes).
            labels = cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST)
        return labels, probs

    def on_weights(self, msg: ModelWeights) -> None:
        """Verify a snapshot, load it into a copy of the model and swap it in atomically."""
        with self._lock:
            model, version = self._model, self._version
        if msg.version <= version:
            self.health.reject(
                'weights_version', f'snapshot version {msg.version} <= loaded version {version}'
            )
            return
        try:
            state = convert.verify_weights(msg, self._key, self._arch, self._config.to_dict())
        except convert.MessageError as exc:
            self.health.reject('weights', str(exc))
            return
        # Load off the inference path: frames keep using the current model meanwhile.
        start = time.perf_counter()
        fresh = copy.deepcopy(model)
        try:
            fresh.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            self.health.reject('weights', f'snapshot version {msg.version}: {exc}')
            return
        fresh.eval()
        with self._lock:
            if msg.version <= self._version:  # a newer snapshot won meanwhile
                return
            self._model, self._version = fresh, int(msg.version)
        self.health.timing('weights_load', 1e3 * (time.perf_counter() - start))
        self.health.count('weights_loaded')
        self.health.set('model_version', msg.version)
        self.get_logger().info(f'loaded weights version {msg.version} (step {msg.step})')


def main(args=None) -> None:
    run(lambda: SegmenterNode(), args)


if __name__ == '__main__':
    main()
