"""Small shared helpers for the ROS side: QoS profiles, image conversion, node entry points.

Nothing here imports torch or mujoco; everything imports rclpy lazily or not at all where the
helpers are also useful to plain-Python code (image conversion only needs message classes).
"""
