"""Start the graph of :mod:`hvla_ros.graph` as separate processes, without ``ros2 launch``.

Each node runs in its own OS process (its console script, with ``--ros-args``: node name,
namespace, a generated parameters file, log level), exactly the nodes and parameters the launch
file would start. Lifecycle nodes are brought up in graph order by a lifecycle manager
(configure, then activate), as nav2's lifecycle_manager does on a ROS 2 install. A node that
dies is reported with its exit code and the end of its log.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from hvla_ros.graph import Graph, NodeSpec

log = logging.getLogger(__name__)


class NodeDiedError(RuntimeError):
    """A node process exited while the graph was supposed to be running."""

    def __init__(self, name: str, returncode: int, log_tail: str) -> None:
        super().__init__(f"node '{name}' exited with code {returncode}; last log lines:\n{log_tail}")
        self.name = name
        self.returncode = returncode


class LifecycleError(RuntimeError):
    """A lifecycle transition failed or timed out; ``node`` names the node when one is to blame."""

    def __init__(self, message: str, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


def executable_path(spec: NodeSpec) -> str:
    """The node's console script: next to this Python first (a venv), else on PATH."""
    candidate = Path(sys.executable).parent / spec.executable
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(spec.executable)
    if found is None:
        raise FileNotFoundError(
            f"executable {spec.executable!r} of node '{spec.name}' not found next to {sys.executable} "
            "or on PATH (run `make setup`, or source your ROS workspace)")
    return found


def params_document(graph: Graph) -> dict[str, Any]:
    """The nav2-style parameters file for every node of the graph.

    Keys are fully qualified node names when the graph has a namespace: rcl matches a plain
    ``executor`` key only to ``/executor``, so a namespaced node would silently get defaults.
    """
    prefix = f"/{graph.namespace}/" if graph.namespace else ""
    return {f"{prefix}{spec.name}": {"ros__parameters": dict(spec.parameters)} for spec in graph.nodes}


def node_command(graph: Graph, spec: NodeSpec, params_file: Path) -> list[str]:
    cmd = [executable_path(spec), "--ros-args", "-r", f"__node:={spec.name}",
           "--params-file", str(params_file), "--log-level", graph.log_level]
    if graph.namespace:
        cmd[2:2] = ["-r", f"__ns:=/{graph.namespace}"]
    return cmd


@dataclass
class _Proc:
    spec: NodeSpec
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file (a note when it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class GraphRunner:
    """Runs a :class:`Graph` as processes; use as a context manager."""

    def __init__(self, graph: Graph, run_dir: Path, *, env: dict[str, str] | None = None) -> None:
        self.graph = graph
        self.run_dir = Path(run_dir)
        self.env = dict(os.environ if env is None else env)
        self._procs: list[_Proc] = []

    # -- processes ------------------------------------------------------------------------
    def start(self) -> None:
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        params_file = self.run_dir / "params.yaml"
        params_file.write_text(yaml.safe_dump(params_document(self.graph), sort_keys=False))
        for spec in self.graph.nodes:
            log_path = self.run_dir / "logs" / f"{spec.name}.log"
            log_file = log_path.open("wb")
            cmd = node_command(self.graph, spec, params_file)
            log.debug("starting %s: %s", spec.name, " ".join(cmd))
            popen = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.env, start_new_session=True)
            self._procs.append(_Proc(spec, popen, log_path, log_file))
        log.info("started %d nodes (logs in %s)", len(self._procs), self.run_dir / "logs")

    def check_alive(self) -> None:
        """Raise :class:`NodeDiedError` for the first node process that has exited."""
        for p in self._procs:
            code = p.popen.poll()
            if code is not None:
                p.log_file.flush()
                raise NodeDiedError(p.spec.name, code, tail(p.log_path))

    def log_path(self, name: str) -> Path:
        for p in self._procs:
            if p.spec.name == name:
                return p.log_path
        raise KeyError(name)

    def pid(self, name: str) -> int:
        for p in self._procs:
            if p.spec.name == name:
                return p.popen.pid
        raise KeyError(name)

    def stop(self, timeout: float = 10.0) -> dict[str, int | None]:
        """SIGINT every node (reverse order), then SIGTERM/SIGKILL stragglers. Returns exit codes."""
        for p in reversed(self._procs):
            if p.popen.poll() is None:
                _signal_group(p.popen, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in self._procs:
                remaining = max(0.1, deadline - time.monotonic())
                try:
                    p.popen.wait(timeout=remaining)
                except subprocess.TimeoutExpired:
                    log.warning("node %s did not exit; sending %s", p.spec.name, sig.name)
                    _signal_group(p.popen, sig)
            deadline = time.monotonic() + 3.0
        codes: dict[str, int | None] = {}
        for p in self._procs:
            try:
                codes[p.spec.name] = p.popen.wait(timeout=3.0)
            except subprocess.TimeoutExpired:
                codes[p.spec.name] = None
            p.log_file.close()
        self._procs.clear()
        return codes

    def __enter__(self) -> GraphRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(popen: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- lifecycle management ---------------------------------------------------------------------
#: A get_state request unanswered this long is sent again (it is idempotent).
STATE_RESEND_S = 10.0


class LifecycleManager:
    """Configure and activate lifecycle nodes in order; deactivate and clean up in reverse.

    Uses the standard lifecycle services (``<node>/get_state``, ``<node>/change_state``) so it
    works with any rclpy or rclcpp lifecycle node.
    """

    def __init__(self, node: Any, node_names: Sequence[str], namespace: str = "") -> None:
        from lifecycle_msgs.srv import ChangeState, GetState

        self._node = node
        self._names = list(node_names)
        prefix = f"/{namespace}/" if namespace else "/"
        self._change = {n: node.create_client(ChangeState, f"{prefix}{n}/change_state") for n in self._names}
        self._get = {n: node.create_client(GetState, f"{prefix}{n}/get_state") for n in self._names}
        #: set while an executor of the caller spins the node: then replies are awaited, not spun for
        self.spun_externally = False

    def _call(self, client: Any, request: Any, timeout: float, what: str, resend_every: float | None = None) -> Any:
        """Call a service and wait for the reply. ``resend_every`` (idempotent requests only):
        send the request again when no reply came within that many seconds, for a request that
        went out before the server was matched and was lost."""
        import rclpy

        deadline = time.monotonic() + timeout
        while True:
            future = client.call_async(request)
            wait = deadline - time.monotonic()
            if resend_every is not None:
                wait = min(wait, resend_every)
            if self.spun_externally:
                end = time.monotonic() + max(wait, 0.0)
                while not future.done() and time.monotonic() < end:
                    time.sleep(0.01)
            else:
                rclpy.spin_until_future_complete(self._node, future, timeout_sec=max(wait, 0.0))
            if future.done():
                return future.result()
            if resend_every is None or time.monotonic() >= deadline:
                raise LifecycleError(f"{what}: no response within {timeout:.0f} s")
            log.warning("%s: no response within %.0f s; asking again", what, resend_every)

    def wait_for_services(self, timeout: float, alive_check: Any = None) -> None:
        import rclpy

        deadline = time.monotonic() + timeout
        for name in self._names:
            # Both services: a request sent before its server is matched is lost, not queued.
            while not (self._change[name].service_is_ready() and self._get[name].service_is_ready()):
                if alive_check is not None:
                    alive_check()
                if time.monotonic() > deadline:
                    raise LifecycleError(f"node '{name}' offers no lifecycle services after {timeout:.0f} s")
                rclpy.spin_once(self._node, timeout_sec=0.1)

    def state(self, name: str, timeout: float = 5.0) -> str:
        from lifecycle_msgs.srv import GetState

        return str(self._call(self._get[name], GetState.Request(), timeout, f"get_state of '{name}'",
                              resend_every=STATE_RESEND_S).current_state.label)

    def transition(self, name: str, transition_id: int, label: str, timeout: float) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition_id))
        response = self._call(self._change[name], request, timeout, f"{label} of '{name}'")
        if not response.success:
            raise LifecycleError(f"{label} of node '{name}' failed (see its log)", node=name)

    def startup(self, timeout: float = 120.0, alive_check: Any = None) -> None:
        from lifecycle_msgs.msg import Transition

        self.wait_for_services(timeout, alive_check)
        # A node answers only once it spins, which can take a while after its services appear
        # (imports, model loading): state queries get the whole startup budget too.
        for name in self._names:
            if self.state(name, timeout) == "unconfigured":
                log.info("configuring %s", name)
                self.transition(name, Transition.TRANSITION_CONFIGURE, "configure", timeout)
            if self.state(name, timeout) == "inactive":
                log.info("activating %s", name)
                self.transition(name, Transition.TRANSITION_ACTIVATE, "activate", timeout)
            state = self.state(name, timeout)
            if state != "active":
                # rclpy answers a transition whose callback raised (or returned ERROR) with
                # success after its error handling put the node back to 'unconfigured'.
                raise LifecycleError(f"node '{name}' is {state!r} after startup, expected 'active' "
                                     f"(its configure/activate callback raised an error)", node=name)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Best effort: deactivate and clean up in reverse order (errors are logged, not raised)."""
        from lifecycle_msgs.msg import Transition

        for name in reversed(self._names):
            try:
                if self.state(name, timeout) == "active":
                    self.transition(name, Transition.TRANSITION_DEACTIVATE, "deactivate", timeout)
                if self.state(name, timeout) == "inactive":
                    self.transition(name, Transition.TRANSITION_CLEANUP, "cleanup", timeout)
            except LifecycleError as exc:
                log.warning("lifecycle shutdown: %s", exc)
