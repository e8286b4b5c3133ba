"""Thin ROS 2 nodes over the plain-Python cores (one module per node, each with ``main()``)."""
