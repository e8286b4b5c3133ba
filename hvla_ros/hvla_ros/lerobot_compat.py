"""The one module that talks to LeRobot (policies, processors, datasets).

Everything lerobot-facing in hvla_ros goes through here, so a LeRobot API change (robots on
Python 3.12 may run a newer lerobot than the 0.4.x we test with) is a one-file fix.

Importing this module installs the torchvision shim needed with a CPU build of torch (the PyPI
torchvision wheel registers CUDA-only meta kernels on import; an empty
``torchvision._meta_registrations`` module avoids that; models and transforms still work).

Policy directory layout (written by :func:`save_policy_dir`, read by :func:`load_policy_dir`)::

    config.json                         DiffusionConfig (LeRobot's own format)
    model.safetensors                   weights
    policy_preprocessor.json (+ .safetensors)   normalizer state (dataset statistics)
    policy_postprocessor.json (+ .safetensors)
    hvla_policy.json                    our metadata: backbone stages, instruction encoding,
                                        camera/joint names, training record

Tensor shapes at the policy interface (one observation, no batch dimension)::

    observation.images.<camera>   3 x H x W float32 in [0, 1]
    observation.state             D float32 (joint positions, radians)
    observation.environment_state E float32 (instruction encoding, see executor.instruction;
                                  with the colour-keypoint image encoder, the keypoints
                                  of the cameras first, then the instruction encoding)
    action (policy output)        T x D   (chunk of joint targets)
"""

from __future__ import annotations

import json
import logging
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Must precede any torchvision import (lerobot imports it).
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

log = logging.getLogger(__name__)

STATE_KEY = "observation.state"
INSTRUCTION_KEY = "observation.environment_state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
META_FILE = "hvla_policy.json"
META_FORMAT = 1
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"


def image_key(camera: str) -> str:
    """Dataset/policy feature key of a camera: ``observation.images.<camera>``."""
    return IMAGE_PREFIX + camera


def lerobot_version() -> str:
    from importlib.metadata import version

    return version("lerobot")


class PolicyLoadError(RuntimeError):
    """A policy directory that cannot be loaded; the message names the path and the reason."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"cannot load policy from {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class PolicyBundle:
    """A diffusion policy with its processors and our metadata, ready for inference/training."""

    policy: Any  # lerobot DiffusionPolicy
    preprocessor: Any  # PolicyProcessorPipeline (normalize inputs, add batch dim)
    postprocessor: Any  # PolicyProcessorPipeline (unnormalize actions)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> Any:
        return self.policy.config

    @property
    def image_encoder(self) -> str:
        """``pixels`` (images are policy inputs) or ``colour_keypoints`` (features in the env state)."""
        return str(self.meta.get("image_encoder", "pixels"))

    @property
    def cameras(self) -> list[str]:
        """Cameras the policy reads, in the order the keypoint encoder concatenates them."""
        if self.image_encoder != "pixels":
            return [str(c) for c in self.meta.get("keypoint_cameras", [])]
        return [k[len(IMAGE_PREFIX) :] for k in self.policy.config.image_features]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) every camera image must have at the policy input."""
        feats = self.policy.config.image_features
        return tuple(next(iter(feats.values())).shape)  # type: ignore[return-value]

    def state_range(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(min, max) of ``observation.state`` in the training data (the normalizer's statistics)."""
        for step in self.preprocessor.steps:
            st = (getattr(step, "stats", None) or {}).get(STATE_KEY)
            if st and "min" in st and "max" in st:
                return (np.asarray(st["min"], dtype=np.float32).reshape(-1),
                        np.asarray(st["max"], dtype=np.float32).reshape(-1))
        return None

    @property
    def state_dim(self) -> int:
        return int(self.policy.config.robot_state_feature.shape[0])

    @property
    def action_dim(self) -> int:
        return int(self.policy.config.action_feature.shape[0])

    @property
    def env_dim(self) -> int:
        """Size of ``observation.environment_state`` (keypoints + instruction)."""
        env = self.policy.config.env_state_feature
        return int(env.shape[0]) if env is not None else 0

    @property
    def instruction_dim(self) -> int:
        """Size of the instruction encoding (the tail of the environment state)."""
        if self.image_encoder != "pixels":
            return int(self.meta.get("instruction_dim", 0))
        return self.env_dim

    @property
    def keypoint_dim(self) -> int:
        """Number of colour-keypoint values at the head of the environment state (0: pixels)."""
        return self.env_dim - self.instruction_dim if self.image_encoder != "pixels" else 0

    def set_inference_steps(self, steps: int) -> None:
        """Number of denoising steps per chunk (DDIM can use few; DDPM needs the full count)."""
        if steps < 1:
            raise ValueError(f"denoising steps must be >= 1, got {steps}")
        self.policy.config.num_inference_steps = steps
        self.policy.diffusion.num_inference_steps = steps


def make_diffusion_config(
    *,
    cameras: Sequence[str],
    image_hw: tuple[int, int],
    state_dim: int,
    action_dim: int,
    instruction_dim: int,
    n_obs_steps: int = 2,
    horizon: int = 16,
    n_action_steps: int = 8,
    num_inference_steps: int = 10,
    down_dims: Sequence[int] = (64, 128, 256),
    vision_backbone: str = "resnet18",
    spatial_softmax_num_keypoints: int = 32,
    crop_ratio: float = 1.0,
    device: str = "cpu",
) -> Any:
    """A DiffusionConfig for our observation layout (DDIM, no pretrained weights, no downloads).

    ``cameras`` empty: a low-dimensional policy (no image features); then ``instruction_dim`` is
    the whole environment state (e.g. colour keypoints + instruction) and must be > 0.
    """
    from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig

    if not cameras and instruction_dim <= 0:
        raise ValueError(
            "a skill policy needs at least one camera or an environment state (image features from "
            "the filtered images)"
        )
    h, w = image_hw
    inputs: dict[str, Any] = {
        image_key(c): PolicyFeature(type=FeatureType.VISUAL, shape=(3, h, w)) for c in cameras
    }
    inputs[STATE_KEY] = PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))
    if instruction_dim > 0:
        inputs[INSTRUCTION_KEY] = PolicyFeature(type=FeatureType.ENV, shape=(instruction_dim,))
    outputs = {ACTION_KEY: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    cfg = DiffusionConfig(
        n_obs_steps=n_obs_steps,
        horizon=horizon,
        n_action_steps=n_action_steps,
        input_features=inputs,
        output_features=outputs,
        normalization_mapping={
            "VISUAL": NormalizationMode.MEAN_STD,
            "STATE": NormalizationMode.MIN_MAX,
            "ACTION": NormalizationMode.MIN_MAX,
            # The instruction code is already in [-1, 1] and constant over an episode.
            "ENV": NormalizationMode.IDENTITY,
        },
        drop_n_last_frames=max(0, horizon - n_action_steps - n_obs_steps + 1),
        vision_backbone=vision_backbone,
        pretrained_backbone_weights=None,
        use_group_norm=True,
        crop_ratio=crop_ratio,
        resize_shape=(h, w) if crop_ratio < 1.0 else None,
        spatial_softmax_num_keypoints=spatial_softmax_num_keypoints,
        down_dims=tuple(down_dims),
        noise_scheduler_type="DDIM",
        num_inference_steps=num_inference_steps,
        device=device,
        push_to_hub=False,
    )
    return cfg


def _compact_backbone(policy: Any, stages: int) -> None:
    """Keep only the first ``stages`` residual stages of the ResNet image encoder (1..4).

    LeRobot's DiffusionRgbEncoder keeps resnet18 up to layer4 (11M parameters, 45 MB). Dropping
    layer4 leaves 2.8M parameters and a 16x (not 32x) downsampled feature map for the spatial
    softmax; the encoder's output dimension (2 x keypoints) does not change, so the UNet is
    untouched. Applied identically at creation and at load (recorded in hvla_policy.json).
    """
    if stages == 4 or not policy.config.image_features:
        return
    if not 1 <= stages <= 4:
        raise ValueError(f"backbone stages must be in 1..4, got {stages}")
    from lerobot.policies.diffusion.modeling_diffusion import SpatialSoftmax

    encoders: Any = policy.diffusion.rgb_encoder
    enc: Any
    for enc in encoders if isinstance(encoders, nn.ModuleList) else [encoders]:
        # children: conv1, norm1, relu, maxpool, layer1..layer4
        enc.backbone = nn.Sequential(*list(enc.backbone.children())[: 4 + stages])
        cfg = policy.config
        hw = cfg.crop_shape or cfg.resize_shape or next(iter(cfg.image_features.values())).shape[1:]
        with torch.no_grad():
            fmap = enc.backbone(torch.zeros(1, 3, *hw)).shape[1:]
        enc.pool = SpatialSoftmax(fmap, num_kp=cfg.spatial_softmax_num_keypoints)


def make_policy(config: Any, *, backbone_stages: int = 3) -> Any:
    """A freshly initialised DiffusionPolicy (randomly initialised backbone, compacted)."""
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    policy = DiffusionPolicy(config)
    _compact_backbone(policy, backbone_stages)
    return policy


def make_processors(config: Any, stats: Mapping[str, Mapping[str, Any]] | None) -> tuple[Any, Any]:
    """LeRobot's diffusion pre/post processors with normalization ``stats`` (feature -> stat -> tensor)."""
    from lerobot.policies.diffusion.processor_diffusion import make_diffusion_pre_post_processors

    tstats = None
    if stats is not None:
        tstats = {
            k: {s: torch.as_tensor(v, dtype=torch.float32) for s, v in d.items()} for k, d in stats.items()
        }
    return make_diffusion_pre_post_processors(config, dataset_stats=tstats)


def new_policy_bundle(
    config: Any,
    stats: Mapping[str, Mapping[str, Any]] | None,
    *,
    backbone_stages: int = 3,
    meta: Mapping[str, Any] | None = None,
) -> PolicyBundle:
    """Create policy + processors + metadata in one go (what training starts from)."""
    policy = make_policy(config, backbone_stages=backbone_stages)
    pre, post = make_processors(config, stats)
    m = {"format": META_FORMAT, "backbone_stages": backbone_stages, "lerobot_version": lerobot_version()}
    m.update(meta or {})
    return PolicyBundle(policy=policy, preprocessor=pre, postprocessor=post, meta=m)


def save_policy_dir(bundle: PolicyBundle, path: Path | str) -> Path:
    """Write the policy directory (see module docstring); returns its path."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    bundle.policy.save_pretrained(out)
    bundle.preprocessor.save_pretrained(out, config_filename=PREPROCESSOR_FILE)
    bundle.postprocessor.save_pretrained(out, config_filename=POSTPROCESSOR_FILE)
    (out / META_FILE).write_text(json.dumps(bundle.meta, indent=2, sort_keys=True) + "\n")
    return out


def load_policy_dir(path: Path | str, *, device: str = "cpu") -> PolicyBundle:
    """Load a policy directory for inference (eval mode).

    Raises :class:`PolicyLoadError` naming the path and the reason for a missing directory or
    file, an unparsable config, or weights that do not match the config.
    """
    from lerobot.configs.policies import PreTrainedConfig
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        raise PolicyLoadError(p, "directory does not exist")
    for name in ("config.json", "model.safetensors", PREPROCESSOR_FILE, POSTPROCESSOR_FILE, META_FILE):
        if not (p / name).is_file():
            raise PolicyLoadError(p, f"missing file {name}")
    try:
        meta = json.loads((p / META_FILE).read_text())
    except (OSError, ValueError) as e:
        raise PolicyLoadError(p, f"{META_FILE} is not valid JSON ({e})") from e
    if meta.get("format") != META_FORMAT:
        raise PolicyLoadError(p, f"{META_FILE} has format {meta.get('format')!r}, expected {META_FORMAT}")
    try:
        config = PreTrainedConfig.from_pretrained(p)
    except Exception as e:  # draccus raises several unrelated types for a bad config
        raise PolicyLoadError(p, f"config.json is not a valid policy config ({type(e).__name__}: {e})") from e
    # (importing DiffusionConfig above registers its "diffusion" type with the config parser)
    if not isinstance(config, DiffusionConfig):
        raise PolicyLoadError(
            p, f"config.json describes a {getattr(config, 'type', '?')!r} policy, not diffusion"
        )
    config.device = device
    try:
        policy = make_policy(config, backbone_stages=int(meta.get("backbone_stages", 4)))
    except (ValueError, RuntimeError, KeyError) as e:
        raise PolicyLoadError(p, f"cannot build the policy from config.json ({e})") from e
    try:
        state = load_file(str(p / "model.safetensors"), device="cpu")
    except Exception as e:  # safetensors raises its own error type for a corrupt file
        raise PolicyLoadError(p, f"model.safetensors is corrupt ({type(e).__name__}: {e})") from e
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:3]
        raise PolicyLoadError(p, f"weights do not match config.json: {' '.join(first)}") from e
    policy.to(device)
    policy.eval()
    overrides = {"device_processor": {"device": device}}
    try:
        pre = PolicyProcessorPipeline.from_pretrained(
            p, config_filename=PREPROCESSOR_FILE, overrides=overrides
        )
        post = PolicyProcessorPipeline.from_pretrained(
            p,
            config_filename=POSTPROCESSOR_FILE,
            to_transition=policy_action_to_transition,
            to_output=transition_to_policy_action,
        )
    except Exception as e:  # processor loading raises ValueError/KeyError/OSError/safetensors errors
        raise PolicyLoadError(p, f"processor state is unreadable ({type(e).__name__}: {e})") from e
    return PolicyBundle(policy=policy, preprocessor=pre, postprocessor=post, meta=meta)


def state_dict_bytes(policy: Any) -> int:
    """Size of the policy's weights in bytes (what model.safetensors holds, roughly)."""
    return sum(t.numel() * t.element_size() for t in policy.state_dict().values())


# --------------------------------------------------------------------------------------------
# Datasets (LeRobotDataset v3, images stored as PNG frames: video decoding needs torchcodec,
# which cannot load with a CPU torch build).


def standard_features(
    cameras: Mapping[str, tuple[int, int]],
    joint_names: Sequence[str],
    action_names: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Dataset features for our layout: one RGB image per camera (H, W), joint state, joint action."""
    feats: dict[str, dict[str, Any]] = {}
    for cam, (h, w) in cameras.items():
        feats[image_key(cam)] = {
            "dtype": "image",
            "shape": (h, w, 3),
            "names": ["height", "width", "channels"],
        }
    feats[STATE_KEY] = {"dtype": "float32", "shape": (len(joint_names),), "names": list(joint_names)}
    acts = list(action_names if action_names is not None else joint_names)
    feats[ACTION_KEY] = {"dtype": "float32", "shape": (len(acts),), "names": acts}
    return feats


def create_dataset(
    root: Path | str,
    repo_id: str,
    fps: int,
    features: Mapping[str, Mapping[str, Any]],
    *,
    robot_type: str | None = None,
) -> Any:
    """Create an empty LeRobotDataset at ``root`` (must not exist), images as PNG frames.

    Record with ``ds.add_frame({...features..., "task": instruction})``, ``ds.save_episode()``
    and finally ``ds.finalize()``.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset.create(
        repo_id=repo_id,
        fps=fps,
        features=dict(features),
        root=Path(root),
        robot_type=robot_type,
        use_videos=False,
    )


def open_dataset(
    root: Path | str,
    *,
    repo_id: str | None = None,
    delta_timestamps: Mapping[str, Sequence[float]] | None = None,
    episodes: Sequence[int] | None = None,
) -> Any:
    """Open an existing local LeRobotDataset (offline; the repo id is read from its metadata)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    r = Path(root)
    info = r / "meta" / "info.json"
    if not info.is_file():
        raise FileNotFoundError(f"{r} is not a LeRobotDataset: {info} is missing")
    return LeRobotDataset(
        repo_id or f"local/{r.name}",
        root=r,
        delta_timestamps={k: list(v) for k, v in delta_timestamps.items()} if delta_timestamps else None,
        episodes=list(episodes) if episodes is not None else None,
    )


def dataset_stats(ds: Any) -> dict[str, dict[str, Any]]:
    """The dataset's per-feature statistics (feature -> {mean, std, min, max, ...} -> array)."""
    return {k: dict(v) for k, v in ds.meta.stats.items()}


# --------------------------------------------------------------------------------------------
# Inference and training entry points.


@torch.no_grad()
def predict_chunk(
    bundle: PolicyBundle, history: Sequence[Mapping[str, Any]], noise: torch.Tensor | None = None
) -> torch.Tensor:
    """One action chunk from ``n_obs_steps`` observations (oldest first).

    Each observation maps feature keys to unbatched float tensors (see the module docstring).
    Returns the unnormalized chunk, ``n_action_steps x action_dim`` (float32, CPU): the actions
    for the time of the newest observation onwards, as DiffusionPolicy.select_action would
    execute them. Bypasses select_action's internal queues so the caller owns the history.
    """
    return predict_chunk_with_context(bundle, history, noise)[0]


def predicted_steps(config: Any) -> int:
    """Actions a diffusion policy predicts from its newest observation on (that one included):
    ``horizon - n_obs_steps + 1``. A chunk can execute at most these."""
    return int(config.horizon) - int(config.n_obs_steps) + 1


@torch.no_grad()
def predict_chunk_with_context(
    bundle: PolicyBundle, history: Sequence[Mapping[str, Any]], noise: torch.Tensor | None = None,
    n_steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict_chunk` plus the observation context it was sampled with.

    ``n_steps`` (default ``n_action_steps``) actions from the newest observation on, at most
    :func:`predicted_steps` (all the policy predicts from there).

    The context is the UNet's global conditioning (what :func:`observation_context` computes),
    ``n_obs_steps x C`` float32 on the CPU: one token per observation step. The steps are those
    of ``DiffusionModel.generate_actions`` (lerobot 0.4), split so the conditioning is kept.
    """
    from lerobot.utils.constants import OBS_IMAGES

    cfg = bundle.policy.config
    if len(history) != cfg.n_obs_steps:
        raise ValueError(f"policy needs {cfg.n_obs_steps} observations, got {len(history)}")
    processed = [bundle.preprocessor(dict(obs)) for obs in history]
    keys = [STATE_KEY, *cfg.image_features, *([INSTRUCTION_KEY] if cfg.env_state_feature else [])]
    batch = {k: torch.stack([p[k] for p in processed], dim=1) for k in keys}
    if cfg.image_features:
        batch[OBS_IMAGES] = torch.stack([batch[k] for k in cfg.image_features], dim=-4)
    diffusion = bundle.policy.diffusion
    global_cond = diffusion._prepare_global_conditioning(batch)  # 1 x (n_obs_steps * C)
    sampled = diffusion.conditional_sample(1, global_cond=global_cond, noise=noise)
    start = cfg.n_obs_steps - 1  # the actions from the newest observation on
    actions = sampled[:, start:start + (n_steps or cfg.n_action_steps)]
    out = bundle.postprocessor(actions)
    context = global_cond[0].reshape(cfg.n_obs_steps, -1).to("cpu", torch.float32)
    return out[0].to("cpu", torch.float32), context


def training_loss(bundle: PolicyBundle, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Diffusion loss of a batched training sample (B x n_obs_steps x ... obs, B x horizon x D action).

    ``batch`` holds raw (unnormalized) features plus ``action_is_pad`` (B x horizon bool).
    """
    normalized = bundle.preprocessor(dict(batch))
    loss, _ = bundle.policy.forward(normalized)
    return loss  # type: ignore[no-any-return]


def action_delta_indices(config: Any) -> list[int]:
    """Frame offsets of the action targets relative to the current frame (diffusion convention)."""
    return list(range(1 - config.n_obs_steps, 1 - config.n_obs_steps + config.horizon))


@torch.no_grad()
def observation_context(bundle: PolicyBundle, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The policy's shared observation context: the UNet's global conditioning vector.

    ``batch``: raw (unnormalized) features with batch and history dims, as :meth:`DemoData.sample`
    returns them (B x n_obs_steps x ...). Returns B x (n_obs_steps * (image features + state +
    instruction)) — what a residual refiner conditions on alongside the anchor chunk.
    """
    from lerobot.utils.constants import OBS_IMAGES

    cfg = bundle.policy.config
    normalized = bundle.preprocessor({k: v for k, v in batch.items() if k not in (ACTION_KEY, "action_is_pad")})
    if cfg.image_features:
        normalized[OBS_IMAGES] = torch.stack([normalized[k] for k in cfg.image_features], dim=-4)
    return bundle.policy.diffusion._prepare_global_conditioning(normalized)  # type: ignore[no-any-return]
