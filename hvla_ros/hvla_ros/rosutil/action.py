"""An rclpy action client without the lost-response race of rclpy 7.x (ros2/rclpy#1123).

rclpy's ``ActionClient.send_goal_async`` sends the request, then records its sequence number. A
response that the executor's thread takes in between is dropped ("Ignoring unexpected goal
response. There may be more than one action server ...") and the goal's future never completes,
though the server accepted the goal and runs it. Every client here sends from a thread other than
the executor's (the operator's main thread, the planner's episode thread), so it can happen: seen
once in 20 ``hvla demo`` runs, where the operator reported the goal rejected while the planner
executed it. The upstream fix (ros2/rclpy#1308) is not in the Jazzy wheels this project pins.

:class:`RaceFreeActionClient` sends and records under one lock, and the executor's handling of
what it took waits for that lock, so a response is only looked up once its request is recorded.
"""

from __future__ import annotations

import threading
from typing import Any

from rclpy.action import ActionClient


class RaceFreeActionClient(ActionClient):
    """``rclpy.action.ActionClient`` whose goal, cancel and result requests are recorded before
    their responses can be handled. Same constructor and methods."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._request_lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def send_goal_async(self, goal: Any, feedback_callback: Any = None, goal_uuid: Any = None) -> Any:
        with self._request_lock:
            return super().send_goal_async(goal, feedback_callback, goal_uuid)

    def _cancel_goal_async(self, goal_handle: Any) -> Any:
        with self._request_lock:
            return super()._cancel_goal_async(goal_handle)

    def _get_result_async(self, goal_handle: Any) -> Any:
        with self._request_lock:
            return super()._get_result_async(goal_handle)

    async def execute(self, taken_data: Any) -> None:
        # The data was taken before this runs: a request whose response it holds was sent, and
        # once the lock is free it is recorded too.
        with self._request_lock:
            pass
        await super().execute(taken_data)
