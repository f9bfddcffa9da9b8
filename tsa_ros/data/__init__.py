"""Data: Cityscapes layout and labels, the synthetic world, rosbag2 in and out."""
