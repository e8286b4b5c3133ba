"""MuJoCo simulation of the SO-101 work cell: scene, world, tasks and scripted experts (no ROS)."""
