"""hvla_ros: hierarchical vision-language-action manipulation on SO-101 arms over ROS 2."""

__version__ = "0.1.0"
