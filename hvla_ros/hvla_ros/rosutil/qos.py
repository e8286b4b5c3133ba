"""QoS profiles used across the graph (one definition each).

Why these choices:
- Camera images: RELIABLE with a shallow queue. BEST_EFFORT over Fast DDS loses most large
  (fragmented) image samples when the reader is slower than the writer; RELIABLE with depth 2
  delivers every frame at 30 Hz on loopback and never lets a slow reader build up latency.
- Latched state (plan, memory, robot description): TRANSIENT_LOCAL so late joiners get the
  last value (what `ros2 topic echo` and tools such as `hvla status` rely on).
- Commands and chunks: RELIABLE, a few deep, VOLATILE.
"""

from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
)

IMAGE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=2,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)

COMMAND_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

STATE_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)
