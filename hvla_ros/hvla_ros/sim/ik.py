"""Inverse kinematics for one SO-101 arm on the compiled MuJoCo model (damped least squares).

The controlled point is the *grasp point*: the midpoint between the two fingertip pads when the
jaws are 40 mm apart, fixed in the ``gripper`` body frame. The target orientation is
"top-down": the gripper's approach axis (x of the ``gripperframe`` site) points along world -z and
the jaw axis (site z, fixed jaw -> moving jaw) lies horizontal at a chosen yaw. With 5 joints this
is exactly solvable: pan/lift/elbow/wrist-flex place the point and pitch the approach axis down,
wrist-roll turns the jaws.

The solver works on a private ``MjData`` so the simulation state is never touched.
"""

from __future__ import annotations

import mujoco
import numpy as np

from hvla_ros.robot import ARM_JOINTS, ArmSpec

#: Gripper joint angle (rad) at which the fingertip pads are parallel and 40 mm apart.
GRASP_JAW_ANGLE = 0.46
DOWN = np.array([0.0, 0.0, -1.0])


class ArmIK:
    """Top-down IK for one arm of a compiled scene.

    Args:
        model: the compiled scene.
        arm: which arm (its prefix selects the joints and bodies).
    """

    def __init__(self, model: mujoco.MjModel, arm: ArmSpec) -> None:
        self.model = model
        self.arm = arm
        self._data = mujoco.MjData(model)
        p = arm.prefix
        self.joint_ids = np.array([model.joint(p + j).id for j in ARM_JOINTS])
        self.qpos_adr = np.array([model.jnt_qposadr[j] for j in self.joint_ids])
        self.dof_adr = np.array([model.jnt_dofadr[j] for j in self.joint_ids])
        self.lower = model.jnt_range[self.joint_ids, 0].copy()
        self.upper = model.jnt_range[self.joint_ids, 1].copy()
        self.site_id = model.site(p + "gripperframe").id
        self.body_id = model.site_bodyid[self.site_id]
        self.roll_index = list(ARM_JOINTS).index("wrist_roll")
        self.point_in_body = self._grasp_point_in_body()

    def _grasp_point_in_body(self) -> np.ndarray:
        d = self._data
        p = self.arm.prefix
        d.qpos[:] = self.model.qpos0
        d.qpos[self.model.joint(p + "gripper").qposadr[0]] = GRASP_JAW_ANGLE
        mujoco.mj_kinematics(self.model, d)
        mid = 0.5 * (d.geom(p + "fixed_jaw_pad").xpos + d.geom(p + "moving_jaw_pad").xpos)
        xmat = d.xmat[self.body_id].reshape(3, 3)
        return np.asarray(xmat.T @ (mid - d.xpos[self.body_id]))

    def grasp_point(self, data: mujoco.MjData) -> np.ndarray:
        """World position of the grasp point in ``data`` (after kinematics)."""
        xmat = data.xmat[self.body_id].reshape(3, 3)
        return np.asarray(data.xpos[self.body_id] + xmat @ self.point_in_body)

    def jaw_axis(self, data: mujoco.MjData) -> np.ndarray:
        """World direction from the fixed jaw towards the moving jaw."""
        return np.asarray(data.site_xmat[self.site_id].reshape(3, 3)[:, 2].copy())

    def forward(self, q_arm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grasp point and site rotation matrix for arm joint angles ``q_arm`` (5,)."""
        d = self._data
        d.qpos[self.qpos_adr] = q_arm
        mujoco.mj_kinematics(self.model, d)
        return self.grasp_point(d), d.site_xmat[self.site_id].reshape(3, 3).copy()

    @staticmethod
    def top_down_rotation(jaw_yaw: float, tilt: float = 0.0) -> np.ndarray:
        """Site rotation: approach axis down (tilted by ``tilt`` towards -jaw-normal), jaw axis at yaw."""
        z = np.array([np.cos(jaw_yaw), np.sin(jaw_yaw), 0.0])
        x = DOWN.copy()
        if tilt:
            # tilt the approach axis in the plane normal to the jaw axis
            n = np.cross(z, DOWN)
            x = np.cos(tilt) * DOWN + np.sin(tilt) * n
        y = np.cross(z, x)
        return np.column_stack([x, y, z])

    def solve(
        self,
        target: np.ndarray,
        jaw_yaw: float,
        seed: np.ndarray,
        *,
        tilt: float = 0.0,
        iterations: int = 60,
        damping: float = 1e-3,
        orientation_weight: float = 0.05,
        tolerance: float = 2e-4,
    ) -> tuple[np.ndarray, float]:
        """Arm joint angles (5,) putting the grasp point at ``target`` with the jaws at ``jaw_yaw``.

        The jaw yaw is ambiguous by pi (the jaws are symmetric for grasping); the branch nearer
        the seed's wrist roll is used. Returns (q, residual position error in m).
        """
        model, d = self.model, self._data
        q = np.clip(np.asarray(seed, dtype=float).copy(), self.lower, self.upper)
        # pick the jaw direction (yaw or yaw+pi) closest to the seed, keeping wrist roll in range
        _, rot = self.forward(q)
        cur = rot[:, 2]
        want = np.array([np.cos(jaw_yaw), np.sin(jaw_yaw), 0.0])
        if cur @ want < 0:
            jaw_yaw += np.pi
            tilt = -tilt  # same approach direction with the jaws swapped
        r_des = self.top_down_rotation(jaw_yaw, tilt)
        jp = np.zeros((3, model.nv))
        jr = np.zeros((3, model.nv))
        err_pos = np.inf
        for _ in range(iterations):
            d.qpos[self.qpos_adr] = q
            mujoco.mj_kinematics(model, d)
            mujoco.mj_comPos(model, d)
            point = self.grasp_point(d)
            e_p = target - point
            r = d.site_xmat[self.site_id].reshape(3, 3)
            e_r = 0.5 * sum(np.cross(r[:, i], r_des[:, i]) for i in range(3))
            err_pos = float(np.linalg.norm(e_p))
            if err_pos < tolerance and np.linalg.norm(e_r) < 1e-3:
                break
            mujoco.mj_jac(model, d, jp, jr, point, self.body_id)
            j = np.vstack([jp[:, self.dof_adr], orientation_weight * jr[:, self.dof_adr]])
            e = np.concatenate([e_p, orientation_weight * e_r])
            dq = j.T @ np.linalg.solve(j @ j.T + damping * np.eye(6), e)
            step = np.linalg.norm(dq)
            if step > 0.3:
                dq *= 0.3 / step
            q = np.clip(q + dq, self.lower, self.upper)
        return q, err_pos
