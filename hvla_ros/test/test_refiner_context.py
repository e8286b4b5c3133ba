"""The anchor's observation context travels with each chunk from the executor to the refiner.

The executor keeps the context its policy sampled the chunk with (``ActionChunk.context``); the
refiner refines with exactly that instead of rebuilding it from images it received itself.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

from hvla_ros.robot import GRIPPER_JOINT, HOME_POSITION, JOINTS

PLACE = "place the red cube in the box"


@pytest.fixture(scope="module")
def place_skill():
    import torch

    from hvla_ros.executor.library import SkillLibrary

    torch.set_num_threads(1)
    return SkillLibrary.load(None).get("place")


def _observations(n: int, period: float, t0: float = 50.0):
    from hvla_ros.executor.runner import Observation

    rng = np.random.default_rng(3)
    out = []
    for k in range(n):
        images = {cam: rng.integers(0, 255, (96, 128, 3), dtype=np.uint8) for cam in ("front", "wrist")}
        joints = {j: HOME_POSITION[j] + 0.01 * k for j in JOINTS}
        out.append(Observation(stamp=t0 + k * period, images=images, joints=joints))
    return out


def test_chunk_context_equals_what_the_refiner_would_recompute(place_skill):
    """Executor side (sampled with) and refiner side (rebuilt from observations) agree."""
    from hvla_ros.executor.runner import ObservationBuffer, SkillRunner
    from hvla_ros.refiner.runtime import observation_context_provider

    period = place_skill.spec.step_period_s
    obs = _observations(6, period)
    runner = SkillRunner(place_skill, PLACE, horizon_s=2.0, max_obs_age_s=1e9)
    chunk = runner.next_chunk(obs, now=obs[-1].stamp)
    n_obs = place_skill.bundle.policy.config.n_obs_steps
    assert chunk.context is not None and chunk.context.shape[0] == n_obs
    assert chunk.context.dtype == np.float32 and np.all(np.isfinite(chunk.context))

    # The chunk reaches the refiner later, when newer frames are in its buffer (inference and
    # transport latency): the context is still the one of the chunk's own observation.
    later = _observations(12, period)[6:]
    buf = ObservationBuffer(maxlen=16)
    for o in [*obs, *later]:
        buf.add(o)
    provide = observation_context_provider(place_skill, buf, lambda: PLACE)
    rebuilt = provide(chunk.start_time)
    assert rebuilt is not None
    np.testing.assert_allclose(chunk.context, rebuilt.numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(provide(later[-1].stamp).numpy(), chunk.context, atol=1e-3)
    assert provide(obs[0].stamp - 1.0) is None  # nothing observed before that chunk: no context


def test_split_sampling_matches_lerobot_generate_actions(place_skill):
    """predict_chunk_with_context re-implements generate_actions to keep the conditioning."""
    import torch

    from hvla_ros import lerobot_compat as lc
    from hvla_ros.executor.instruction import encode_instruction
    from hvla_ros.executor.runner import policy_inputs

    bundle = place_skill.bundle
    cfg = bundle.policy.config
    instr = encode_instruction(PLACE, bundle.instruction_dim) if bundle.instruction_dim else None
    inputs = [policy_inputs(place_skill, o, instr) for o in _observations(cfg.n_obs_steps, 1 / 30)]
    noise = torch.randn(1, cfg.horizon, bundle.action_dim, generator=torch.Generator().manual_seed(0))
    actions, context = lc.predict_chunk_with_context(bundle, inputs, noise=noise.clone())

    processed = [bundle.preprocessor(dict(o)) for o in inputs]
    batch = {k: torch.stack([p[k] for p in processed], dim=1) for k in processed[0] if k.startswith("observation.")}
    with torch.no_grad():
        expected = bundle.postprocessor(bundle.policy.diffusion.generate_actions(batch, noise=noise.clone()))[0]
    torch.testing.assert_close(actions, expected.float(), rtol=1e-5, atol=1e-5)
    raw = {k: torch.stack([torch.as_tensor(o[k]) for o in inputs])[None] for k in inputs[0]}
    cond = lc.observation_context(bundle, raw)  # 1 x (n_obs_steps * C)
    assert context.shape[0] == cfg.n_obs_steps
    torch.testing.assert_close(context.flatten(), cond[0].float(), rtol=1e-5, atol=1e-5)


def test_refiner_uses_a_given_context_and_refuses_a_wrong_shape():
    import torch

    from hvla_ros.refiner.runtime import ChunkRefiner, shipped_refiner_dir
    from hvla_ros.refiner.train import load_refiner

    model, _ = load_refiner(shipped_refiner_dir() / "place")
    cfg = model.cfg
    cr = ChunkRefiner()
    cr.add("place", model, lambda start: None)  # nothing to rebuild it from
    home = np.array([HOME_POSITION[j] for j in cfg.joint_names])
    positions = np.repeat(home[None], cfg.chunk_size, axis=0)
    assert not cr.refine("place", cfg.joint_names, positions, [GRIPPER_JOINT], 0.0).refined
    ctx = torch.zeros(cfg.context_tokens, cfg.context_dim)
    res = cr.refine("place", cfg.joint_names, positions, [GRIPPER_JOINT], 0.0, context=ctx)
    assert res.refined and np.all(np.isfinite(res.positions))
    bad = cr.refine("place", cfg.joint_names, positions, [GRIPPER_JOINT], 0.0,
                    context=torch.zeros(cfg.context_tokens, cfg.context_dim + 1))
    assert not bad.refined and f"({cfg.context_tokens}, {cfg.context_dim + 1})" in bad.reason


@pytest.mark.ros
def test_refiner_node_refines_chunks_with_their_context(rclpy_context):
    """refine:=true over DDS: a chunk with its context comes out REFINED and is streamed; one
    without context passes through unrefined and is still streamed."""
    import rclpy
    import torch
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from hvla_interfaces.msg import ActionChunk, SafetyStatus
    from hvla_ros import topics
    from hvla_ros.refiner.runtime import shipped_refiner_dir
    from hvla_ros.refiner.train import load_refiner
    from hvla_ros.robot import SO101
    from hvla_ros.rosutil.qos import COMMAND_QOS, STATE_QOS
    from hvla_ros.rosutil.time import to_duration, to_time
    from hvla_ros.testing import procs

    cfg = load_refiner(shipped_refiner_dir() / "place")[0].cfg
    torch.manual_seed(0)
    proc = procs.spawn([sys.executable, "-m", "hvla_ros.nodes.refiner_node", "--ros-args",
                        "-p", "refine:=true", "-p", f"refiner_dir:={shipped_refiner_dir()}",
                        "-p", "latency_budget_s:=0.0"])
    node = rclpy.create_node("refine_peer", context=rclpy_context)
    lock = threading.Lock()
    refined: list = []
    trajs: list = []
    known = threading.Event()
    node.create_subscription(ActionChunk, topics.REFINED_CHUNKS, refined.append, COMMAND_QOS)
    node.create_subscription(JointTrajectory, SO101.arms[0].trajectory_topic, trajs.append, COMMAND_QOS)
    node.create_subscription(SafetyStatus, topics.SAFETY_STATUS,
                             lambda m: known.set() if m.joint_state_known else None, STATE_QOS)
    chunk_pub = node.create_publisher(ActionChunk, topics.ANCHOR_CHUNKS, COMMAND_QOS)
    js_pub = node.create_publisher(JointState, topics.JOINT_STATES, STATE_QOS)
    q = [HOME_POSITION[j] for j in SO101.joint_names]
    node.create_timer(0.02, lambda: js_pub.publish(JointState(name=list(SO101.joint_names), position=q)))
    ex = SingleThreadedExecutor(context=rclpy_context)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()

    def wait(pred, timeout=60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with lock:
                if pred():
                    return
            time.sleep(0.02)
        raise AssertionError(f"timed out; refiner_node output:\n{procs.output(proc)[-3000:]}")

    def send(index: int, with_context: bool) -> None:
        msg = ActionChunk()
        now = node.get_clock().now().nanoseconds * 1e-9
        msg.header.stamp = to_time(now + 0.3)
        msg.step_period = to_duration(1 / 30)
        msg.joint_names = list(cfg.joint_names)
        msg.num_steps = cfg.chunk_size
        home = np.array([HOME_POSITION[j] for j in cfg.joint_names])
        msg.positions = np.repeat(home[None], cfg.chunk_size, axis=0).ravel().tolist()
        msg.gripper_names = [GRIPPER_JOINT]
        msg.skill, msg.chunk_index = "place", index
        if with_context:
            msg.context_tokens = cfg.context_tokens
            msg.context = [0.0] * (cfg.context_tokens * cfg.context_dim)
        chunk_pub.publish(msg)

    try:
        wait(known.is_set)
        wait(lambda: chunk_pub.get_subscription_count() > 0 and len(node.get_publishers_info_by_topic(
            node.resolve_topic_name(topics.REFINED_CHUNKS))) > 0)
        send(0, with_context=True)
        wait(lambda: len(refined) >= 1 and len(trajs) >= 1)
        assert refined[0].origin == ActionChunk.ORIGIN_REFINED and refined[0].chunk_index == 0
        assert len(refined[0].gripper_probabilities) == cfg.chunk_size
        assert np.all(np.isfinite(refined[0].positions))
        send(1, with_context=False)
        wait(lambda: len(refined) >= 2)
        assert refined[1].origin == ActionChunk.ORIGIN_ANCHOR and refined[1].chunk_index == 1
        assert proc.poll() is None
    finally:
        ex.shutdown(timeout_sec=2.0)
        spin.join(timeout=5)
        node.destroy_node()
        out = procs.stop(proc)
        print(f"--- refiner_node ---\n{out[-3000:]}")
    assert "Traceback" not in out, out
    assert "not refined: no observation context" in out
