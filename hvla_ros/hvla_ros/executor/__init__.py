"""Skill executor core (no rclpy): skill library, instruction encoding, receding-horizon runner,
training from LeRobot datasets. The ROS node is hvla_ros.nodes.executor_node."""
