"""tsa_ros: redundant teacher / student / adaptive-student segmentation for ROS 2.

Implements Bär et al., "On the Robustness of Redundant Teacher-Student Frameworks
for Semantic Segmentation" (CVPR-W 2019). The core (models, losses, attacks, metrics,
fusion, online learning) is pure PyTorch/NumPy; only ``tsa_ros.ros`` imports rclpy.
"""

__version__ = '0.1.0'
