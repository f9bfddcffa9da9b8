"""Attacker node: injects least-likely adversarial examples into the camera stream.

For tests and demos of the paper's threat model (section 3.5): the attacker knows one static
network (T or S), sits between the camera and perception, and replaces every frame by the
iterative least-likely class attack on that network (eqs. 7-10, :mod:`tsa_ros.attacks`).
Outputs keep the camera header (stamp and frame_id), so downstream joins by stamp still work.

Topics (relative; the graph remaps them): sub ``image_in`` (sensor_msgs/Image,
qos.ATTACKER_INPUT: a short queue), pub ``image_out`` (rgb8, qos.RESULTS).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from tsa_ros.attacks import AttackConfig, least_likely_attack
from tsa_ros.inference import frames_to_tensor, tensor_to_frames
from tsa_ros.ros import convert, qos
from tsa_ros.ros.common import arch_id, declare_network, run
from tsa_ros.ros.health import Health
from tsa_ros.ros.lifecycle import ManagedNode, when_active
from tsa_ros.ros.params import check_overrides, declare_dataclass

TARGETS = ('teacher', 'student')


@dataclass
class AttackerParams:
    """Which network is attacked and whether the attack is on.

    Attributes:
        target: 'teacher' or 'student': which static network the attacker knows
            (a label for diagnostics: the network itself comes from checkpoint / model.*,
            so it is read-only like them).
        enabled: False passes frames through unchanged; may be switched at run time.
    """

    target: str = 'student'
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f'target must be one of {TARGETS}, got {self.target!r}')


class AttackerNode(ManagedNode):
    """Replace camera frames by adversarial examples; see the module docstring."""

    def __init__(self, node_name: str = 'attacker', **kwargs) -> None:
        super().__init__(node_name, **kwargs)

    def configure(self) -> None:
        """Parameters, network and topics (lifecycle configure; tsa_ros.ros.lifecycle)."""
        # `enabled` is writable: switching the attack on and off is the point of a demo.
        self.params = declare_dataclass(self, AttackerParams(), writable=('enabled',))
        self.attack = declare_dataclass(self, AttackConfig(), 'attack')
        self._model, self._config, self._device = declare_network(self)
        check_overrides(self)
        self.add_post_set_parameters_callback(self._apply_params)

        self.health = Health(self)
        self.health.set('target', self.params.target)
        self.health.set('arch', arch_id(self._config))
        self.health.set('enabled', self.params.enabled)
        self.health.set('epsilon', self.attack.epsilon)
        self.health.set('iterations', self.attack.num_iterations)

        self._pub = self.create_publisher(Image, 'image_out', qos.RESULTS)
        self.create_subscription(Image, 'image_in', self.on_image, qos.ATTACKER_INPUT)
        self.get_logger().info(
            f'attacking the {self.params.target} ({arch_id(self._config)}): '
            f'epsilon {self.attack.epsilon}, step {self.attack.step_size}, '
            f'{self.attack.num_iterations} iterations'
            + ('' if self.params.enabled else ' (disabled: passing frames through)')
        )

    def release(self) -> None:
        """Drop the network (lifecycle cleanup)."""
        self._model = None

    def _apply_params(self, params: list[Parameter]) -> None:
        for param in params:
            if param.name == 'enabled':
                setattr(self.params, param.name, param.value)
                self.health.set(param.name, param.value)
                self.get_logger().info(f'{param.name} set to {param.value}')

    @when_active
    def on_image(self, msg: Image) -> None:
        if not self.params.enabled:
            self._pub.publish(msg)
            self.health.count('passed_through')
            return
        try:
            rgb = convert.image_to_rgb(msg)
        except convert.MessageError as exc:
            self.health.reject('image', str(exc))
            return
        try:
            self._model.check_input_size(*rgb.shape[:2])
        except ValueError as exc:
            self.health.reject('size', str(exc))
            return
        start = time.perf_counter()
        x = frames_to_tensor(rgb, self._device)  # (1, 3, H, W)
        adv = least_likely_attack(self._model, x, self.attack)  # (1, 3, H, W)
        out = tensor_to_frames(adv)[0]  # (H, W, 3) uint8
        self.health.timing('attack', 1e3 * (time.perf_counter() - start))
        self.health.count('frames')
        self._pub.publish(convert.image_msg(out, 'rgb8', msg.header))


def main(args=None) -> None:
    run(lambda: AttackerNode(), args)


if __name__ == '__main__':
    main()
