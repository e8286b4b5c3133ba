"""Camera-image transport between processes, and perception_node's added latency.

Same run, same machine, separate processes (publisher, subscriber, node):
1. direct publisher -> subscriber hop of 480x640 rgb8 at 30 Hz, RELIABLE and BEST_EFFORT,
   with Fast DDS defaults vs the project's profile (hvla_ros/config/fastdds_large_data.xml);
2. publisher -> perception_node (masking 2 tracked objects) -> subscriber, where the subscriber
   also receives the direct hop of the very same frames: added latency = filtered arrival -
   direct arrival, per frame (goal: p99 <= 5 ms, 100% delivery), defaults vs profile;
3. the same through a minimal rclpy relay that republishes each frame unchanged (the floor of
   any Python node in the path: one more hop), so the node's own cost is node - relay.

    .venv/bin/python benchmarks/bench_transport.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import percentiles, print_table, write_result  # noqa: E402

from hvla_ros import topics  # noqa: E402
from hvla_ros.rosutil.transport import MALLOC_ENV, PROFILE_ENV_VARS, fastdds_profile_path  # noqa: E402

WORKER = str(HERE / "_image_traffic.py")


def _env(profile: bool, domain: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in PROFILE_ENV_VARS:
        env.pop(var, None)
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    for var in MALLOC_ENV:
        env.pop(var, None)
    env["HVLA_FASTDDS_PROFILE"] = "1" if profile else "0"  # perception_node honours this
    if profile:  # what every process of the graph gets (hvla_ros.rosutil.transport.use_large_data_profile)
        for var in PROFILE_ENV_VARS:
            env[var] = str(fastdds_profile_path())
        env.update(MALLOC_ENV)
    env["ROS_DOMAIN_ID"] = str(domain)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _perception_cmd(node_params: list[str]) -> list[str]:
    return [sys.executable, "-m", "hvla_ros.nodes.perception_node", "--ros-args", "-p", "cameras:=[front]",
            "-p", "publish_mask:=true", *[a for p in node_params for a in ("-p", p)], "--log-level", "warn"]


def _relay_cmd(executor: str, src: str, out: str) -> list[str]:
    return [sys.executable, WORKER, "relay", "--topic", src, "--out", out, "--executor", executor]


def _run(env: dict[str, str], qos: str, n: int, sub_topics: list[str], pub_topic: str,
         node_cmd: list[str] | None = None) -> dict[str, dict[str, int]]:
    node = node_cmd is not None
    procs: list[subprocess.Popen] = []
    try:
        if node_cmd is not None:
            procs.append(subprocess.Popen(node_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        sub = subprocess.Popen([sys.executable, WORKER, "sub", "--qos", qos, "--n", str(n), "--topics", *sub_topics,
                                "--touch"], env=env, stdout=subprocess.PIPE, text=True)
        procs.append(sub)
        assert sub.stdout is not None
        sub.stdout.readline()  # READY
        pub_cmd = [sys.executable, WORKER, "pub", "--qos", qos, "--n", str(n), "--topic", pub_topic,
                   "--wait-subs", "2" if node else "1", "--settle", "1.5" if node else "0.5"]
        if node:
            pub_cmd += ["--subtask-camera", "front", "--warmup", "30"]
        subprocess.run(pub_cmd, env=env, check=True, timeout=120)
        out, _ = sub.communicate(timeout=60)
        return json.loads(out.strip().splitlines()[-1])
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="90 frames per run instead of 300")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--node-param", action="append", default=[], metavar="NAME:=VALUE",
                    help="extra perception_node parameter, e.g. pipelined:=false (repeatable)")
    ap.add_argument("--profile-only", action="store_true", help="skip the runs without the Fast DDS profile")
    args = ap.parse_args()
    n = 90 if args.quick else args.frames
    domain = 40 + os.getpid() % 50
    figures: dict[str, dict] = {}
    rows = []
    for profile in ((True,) if args.profile_only else (False, True)):
        setting = "profile" if profile else "default"
        env = _env(profile, domain)
        for qos in ("reliable", "best_effort"):
            res = _run(env, qos, n, ["bench/image"], "bench/image")["bench/image"]
            lat = percentiles(np.array(list(res.values())) / 1e6)
            figures[f"direct_{qos}_{setting}"] = {"delivered": len(res), "sent": n, **lat}
            rows.append([f"direct {qos}", setting, f"{len(res)}/{n}", lat["p50"], lat["p99"], ""])
        raw, filt = topics.camera_image("front"), topics.filtered_image("front")
        hops = [("via relay node (added)", "relay", _relay_cmd("single_threaded", raw, "bench/relayed"),
                 "bench/relayed"),
                ("via perception_node (added)", "node", _perception_cmd(args.node_param), filt)]
        for label, key, cmd, out_topic in hops:
            res = _run(env, "reliable", n, [raw, out_topic], raw, node_cmd=cmd)
            common = sorted(set(res[raw]) & set(res[out_topic]), key=int)
            a = percentiles(np.array([res[out_topic][k] - res[raw][k] for k in common]) / 1e6)
            d = percentiles(np.array(list(res[raw].values())) / 1e6)
            figures[f"{key}_{setting}"] = {"delivered_direct": len(res[raw]), "delivered_filtered": len(res[out_topic]),
                                           "sent": n, "direct_latency_ms": d, "added_latency_ms": a}
            rows.append([label, setting, f"{len(res[out_topic])}/{n}", a["p50"], a["p99"],
                         f"direct p50 {d['p50']:.1f}"])
        node_a = figures[f"node_{setting}"]["added_latency_ms"]
        relay_a = figures[f"relay_{setting}"]["added_latency_ms"]
        figures[f"node_over_relay_{setting}"] = {"p50_ms": node_a["p50"] - relay_a["p50"],
                                                 "p99_ms": node_a["p99"] - relay_a["p99"]}
    if not args.profile_only:
        for key in ("direct_reliable", "direct_best_effort"):
            f0, f1 = figures[f"{key}_default"], figures[f"{key}_profile"]
            figures[f"{key}_p99_ratio_default_over_profile"] = {"ratio": f0["p99"] / f1["p99"]}
        figures["node_added_p99_ratio_default_over_profile"] = {
            "ratio": figures["node_default"]["added_latency_ms"]["p99"]
            / figures["node_profile"]["added_latency_ms"]["p99"]}
    figures["node_params"] = {"params": ["cameras:=[front]", "publish_mask:=true", *args.node_param]}
    print_table(f"480x640 rgb8 at 30 Hz, {n} frames, separate processes (latency ms)",
                ["hop", "Fast DDS", "delivered", "p50 ms", "p99 ms", "note"], rows)
    write_result("transport", figures, notes="'profile' = FASTRTPS_DEFAULT_PROFILES_FILE/FASTDDS_DEFAULT_"
                 "PROFILES_FILE set to hvla_ros/config/fastdds_large_data.xml; 'default' = no profile. "
                 "QoS depth 2 everywhere; node and relay runs use IMAGE_QOS (RELIABLE); the relay is a "
                 "single-threaded rclpy node republishing each frame unchanged.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
