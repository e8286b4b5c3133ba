"""Worker processes for the transport and perception-node benchmarks.

``pub``: publishes pre-built 480x640 rgb8 frames of a moving synthetic scene at a fixed rate,
stamping each header with the wall-clock send time (ns); optionally latches a Subtask with
distractor boxes first (so perception_node has masks to propagate).
``sub``: records, per topic, the receive time of every stamp and prints one JSON line.

Both run as separate processes (``python benchmarks/_image_traffic.py pub|sub ...``) so the
figures include real inter-process transport.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def scene_frames(n: int, h: int = 480, w: int = 640) -> tuple[list[np.ndarray], list[tuple[float, ...]]]:
    """``n`` frames of textured table + two coloured blocks sliding slowly, and their boxes."""
    import cv2

    rng = np.random.default_rng(0)
    table = cv2.resize(rng.integers(90, 170, (h // 8, w // 8, 3)).astype(np.uint8), (w, h),
                       interpolation=cv2.INTER_CUBIC)
    frames, boxes = [], []
    for i in range(n):
        img = table.copy()
        dx = int(20 * np.sin(i / 15.0))
        cv2.rectangle(img, (150 + dx, 200), (210 + dx, 260), (220, 30, 30), -1)
        cv2.rectangle(img, (400 - dx, 260), (450 - dx, 310), (30, 60, 220), -1)
        frames.append(img)
        if i == 0:
            boxes = [(140.0 + dx, 190.0, 220.0 + dx, 270.0), (390.0 - dx, 250.0, 460.0 - dx, 320.0)]
    return frames, boxes


def _qos(kind: str, depth: int):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, durability=DurabilityPolicy.VOLATILE,
                      reliability=ReliabilityPolicy.RELIABLE if kind == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT)


def run_pub(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from hvla_ros.rosutil.images import to_image_msg
    from hvla_ros.rosutil.qos import LATCHED_QOS

    rclpy.init()
    node = Node("bench_pub")
    pub = node.create_publisher(Image, args.topic, _qos(args.qos, args.depth))
    frames, boxes = scene_frames(60, args.height, args.width)
    msgs = [to_image_msg(f, "rgb8") for f in frames]
    if args.subtask_camera:
        from hvla_interfaces.msg import PixelBox, Subtask
        from hvla_ros import topics

        sub_pub = node.create_publisher(Subtask, topics.CURRENT_SUBTASK, LATCHED_QOS)
        st = Subtask(episode_id="bench", subtask_id=0, attempt=1, instruction="bench")
        st.distractor_boxes = [PixelBox(camera=args.subtask_camera, label=f"obj{i}", x_min=b[0], y_min=b[1],
                                        x_max=b[2], y_max=b[3]) for i, b in enumerate(boxes)]
        sub_pub.publish(st)
    end = time.monotonic() + 30.0
    while pub.get_subscription_count() < args.wait_subs and time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(args.settle)
    period = 1.0 / args.rate
    t_next = time.monotonic()
    for i in range(args.warmup + args.n):
        msg = msgs[i % len(msgs)]
        ns = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        msg.header.frame_id = "warmup" if i < args.warmup else str(i - args.warmup)
        pub.publish(msg)
        t_next += period
        delay = t_next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(1.0)  # let the last samples (and reliable repairs) arrive before tearing down
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_sub(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    rclpy.init()
    node = Node("bench_sub")
    recv: dict[str, dict[str, int]] = {t: {} for t in args.topics}
    last = [time.monotonic()]

    def make_cb(topic: str):
        def cb(msg: Image) -> None:
            now = time.time_ns()
            last[0] = time.monotonic()
            if msg.header.frame_id == "warmup":
                return
            sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            recv[topic][msg.header.frame_id] = now - sent
            if args.touch:
                np.frombuffer(msg.data, np.uint8).sum()  # consume the pixels like a real reader
        return cb

    for t in args.topics:
        node.create_subscription(Image, t, make_cb(t), _qos(args.qos, args.depth))
    print("READY", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < args.timeout:
        rclpy.spin_once(node, timeout_sec=0.05)
        done = all(len(v) >= args.n for v in recv.values())
        idle = any(len(v) for v in recv.values()) and time.monotonic() - last[0] > args.idle
        if done or idle:
            break
    print(json.dumps({t: v for t, v in recv.items()}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_relay(args: argparse.Namespace) -> int:
    """Republish every frame of ``--topic`` unchanged on ``--out``: the floor of any Python node hop."""
    import rclpy
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from hvla_ros.rosutil.node_main import make_executor
    from hvla_ros.rosutil.qos import IMAGE_QOS
    from hvla_ros.rosutil.transport import use_large_data_profile

    use_large_data_profile()
    rclpy.init()
    node = Node("bench_relay")
    pub = node.create_publisher(Image, args.out, IMAGE_QOS)
    node.create_subscription(Image, args.topic, pub.publish, IMAGE_QOS)
    executor = make_executor(args.executor)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["pub", "sub", "relay"])
    ap.add_argument("--out", default="bench/relayed")
    ap.add_argument("--executor", default="multi_threaded")
    ap.add_argument("--topic", default="bench/image")
    ap.add_argument("--topics", nargs="*", default=["bench/image"])
    ap.add_argument("--qos", choices=["reliable", "best_effort"], default="reliable")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--wait-subs", type=int, default=1)
    ap.add_argument("--settle", type=float, default=0.5)
    ap.add_argument("--subtask-camera", default="")
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--touch", action="store_true")
    args = ap.parse_args()
    return {"pub": run_pub, "sub": run_sub, "relay": run_relay}[args.role](args)


if __name__ == "__main__":
    sys.exit(main())
