"""Topic, service and action names of the graph (relative, so namespaces apply).

One place for every name; nodes, the runner, the launch file and tools import these.
"""

from __future__ import annotations

# Robot side (same names as ros2_control's joint_state_broadcaster / joint_trajectory_controller).
JOINT_STATES = "joint_states"
CLOCK = "/clock"


def trajectory_topic(controller: str) -> str:
    return f"{controller}/joint_trajectory"


def camera_image(camera: str) -> str:
    return f"cameras/{camera}/image_raw"


def camera_info(camera: str) -> str:
    return f"cameras/{camera}/camera_info"


# Perception.
def filtered_image(camera: str) -> str:
    return f"perception/{camera}/image_filtered"


def filtered_info(camera: str) -> str:
    return f"perception/{camera}/camera_info"


def mask_image(camera: str) -> str:
    return f"perception/{camera}/mask"


PERCEPTION_STATUS = "perception/status"
SEGMENT_SERVICE = "perception/segment"

# Planner.
EXECUTE_GOAL_ACTION = "planner/execute_goal"
CURRENT_SUBTASK = "planner/subtask"
PLAN_STATE = "planner/plan"
MEMORY_STATE = "planner/memory"
SET_PAUSED_SERVICE = "planner/set_paused"

# Executor.
EXECUTE_SUBTASK_ACTION = "executor/execute_subtask"
LIST_SKILLS_SERVICE = "executor/list_skills"
ANCHOR_CHUNKS = "executor/anchor_chunks"

# Refiner and safety.
REFINED_CHUNKS = "refiner/refined_chunks"
SAFETY_STATUS = "safety/status"
ESTOP_TOPIC = "safety/estop"  # std_msgs/Bool, True engages
SET_ESTOP_SERVICE = "safety/set_estop"

# Simulation (evaluation only, never read by the planner or the executor).
SIM_GROUND_TRUTH_SEGMENTATION = "sim/ground_truth/{camera}/segmentation"
SIM_RESET_SERVICE = "sim/reset"  # std_srvs/Trigger: reset to the `task` and `seed` parameters
SIM_SUCCESS = "sim/success"  # std_msgs/Bool, latched: ground-truth task success
