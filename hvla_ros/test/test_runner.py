"""hvla up's runner: nodes in separate processes, lifecycle bring-up in order, dead-node reports."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from hvla_ros.graph import build_graph
from hvla_ros.runner import GraphRunner, LifecycleError, LifecycleManager, NodeDiedError

pytestmark = pytest.mark.ros


def _small_graph(**overrides: str):
    graph = build_graph({"task": "cube_in_box", **overrides})
    keep = [n for n in graph.nodes if n.name in ("sim", "perception")]
    keep = [replace(n, parameters={**n.parameters, "image_height": 48, "image_width": 64})
            if n.name == "sim" else n for n in keep]
    return replace(graph, nodes=keep)


def test_graph_comes_up_in_order_and_a_dead_node_is_reported(tmp_path: Path) -> None:
    import rclpy

    graph = _small_graph(namespace="runner_test")
    runner = GraphRunner(graph, tmp_path)
    rclpy.init()
    node = rclpy.create_node("runner_test_manager")
    try:
        runner.start()
        assert (tmp_path / "params.yaml").is_file()
        manager = LifecycleManager(node, graph.lifecycle_nodes, graph.namespace)
        assert graph.lifecycle_nodes == ["perception"]
        manager.wait_for_services(120.0, runner.check_alive)
        # The namespaced node got its parameters (autostart:=false): it waits for the manager.
        assert manager.state("perception", 60.0) == "unconfigured"
        manager.startup(timeout=120.0, alive_check=runner.check_alive)
        assert manager.state("perception") == "active"
        runner.check_alive()  # nothing died

        # A node dying is reported with its name and exit code, and the end of its log.
        os.kill(runner.pid("sim"), signal.SIGKILL)
        deadline = time.monotonic() + 10
        with pytest.raises(NodeDiedError, match="node 'sim' exited with code -9"):
            while time.monotonic() < deadline:
                runner.check_alive()
                time.sleep(0.1)

        manager.shutdown(timeout=5.0)
        assert manager.state("perception") == "unconfigured"
    finally:
        codes = runner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    assert codes["perception"] == 0, (tmp_path / "logs" / "perception.log").read_text()[-2000:]


def test_startup_fails_clearly_when_a_node_never_appears(tmp_path: Path) -> None:
    import rclpy

    rclpy.init()
    node = rclpy.create_node("runner_test_manager2")
    try:
        manager = LifecycleManager(node, ["no_such_node"], "runner_test2")
        with pytest.raises(LifecycleError, match="'no_such_node' offers no lifecycle services"):
            manager.startup(timeout=1.0)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


class _Future:
    def __init__(self, result=None) -> None:
        self._result = result

    def done(self) -> bool:
        return self._result is not None

    def result(self):
        return self._result


class _LossyClient:
    """A service client whose first ``lost`` requests are never answered (sent before the server
    was matched); later ones are answered at once."""

    def __init__(self, lost: int, reply) -> None:
        self.lost, self.reply, self.calls = lost, reply, 0

    def call_async(self, request):
        self.calls += 1
        return _Future(None if self.calls <= self.lost else self.reply)

    def service_is_ready(self) -> bool:
        return True


class _FakeNode:
    def create_client(self, srv_type, name):
        return _LossyClient(0, None)


def test_a_lost_get_state_request_is_asked_again(monkeypatch) -> None:
    """get_state is idempotent: one lost request costs a resend, not the whole startup timeout;
    a change_state (not idempotent) is never sent twice."""
    from types import SimpleNamespace

    import hvla_ros.runner as runner_mod

    monkeypatch.setattr(runner_mod, "STATE_RESEND_S", 0.2)
    manager = LifecycleManager(_FakeNode(), ["perception"])
    manager.spun_externally = True  # no rclpy spinning: the fake futures are polled
    reply = SimpleNamespace(current_state=SimpleNamespace(label="unconfigured"))
    manager._get["perception"] = lossy = _LossyClient(1, reply)
    t0 = time.monotonic()
    assert manager.state("perception", timeout=5.0) == "unconfigured"
    assert lossy.calls == 2 and time.monotonic() - t0 < 2.0
    manager._get["perception"] = _LossyClient(10**6, reply)
    with pytest.raises(LifecycleError, match="get_state of 'perception': no response within 1 s"):
        manager.state("perception", timeout=1.0)
    manager._change["perception"] = change = _LossyClient(1, SimpleNamespace(success=True))
    with pytest.raises(LifecycleError, match="configure of 'perception': no response"):
        manager.transition("perception", 1, "configure", timeout=0.5)
    assert change.calls == 1
