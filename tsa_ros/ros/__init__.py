"""ROS 2 adapters: the only part of tsa_ros that imports rclpy and message types."""
