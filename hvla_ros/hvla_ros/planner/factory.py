"""Build a reasoner backend from plain settings (node parameters, CLI flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from hvla_ros.planner.reasoner import Reasoner

BACKENDS = ("rule", "transformers", "openai")


@dataclass(frozen=True)
class ReasonerSettings:
    """Backend choice and its knobs; unused fields are ignored by the other backends."""

    backend: str = "rule"
    templates: str = ""  # rule: goal templates YAML (empty: the packaged one)
    model: str = ""  # transformers: directory or hub id; openai: the served model name
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = 60.0
    retries: int = 3
    max_reasks: int = 2
    max_new_tokens: int = 512
    device: str = "auto"
    dtype: str = "auto"
    send_images: bool = True

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"`backend` must be one of {BACKENDS}. Got {self.backend!r}.")
        if self.backend in ("transformers", "openai") and not self.model:
            raise ValueError(f"the {self.backend} backend needs `model`.")


def make_reasoner(s: ReasonerSettings) -> Reasoner:
    """Create (and for transformers: load) the reasoner; raises ReasonerError when loading fails."""
    if s.backend == "rule":
        from hvla_ros.planner.rule_based import RuleBasedReasoner

        return RuleBasedReasoner(s.templates or None)
    from hvla_ros.planner.vlm import ChatBackend, VLMReasoner

    chat: ChatBackend
    if s.backend == "transformers":
        from hvla_ros.planner.transformers_chat import TransformersChat

        # A path loads offline; a hub id may be fetched (or found in the local cache).
        local = s.model.startswith(("/", ".", "~")) or os.path.exists(s.model)
        chat = TransformersChat(os.path.expanduser(s.model), device=s.device, dtype=s.dtype,
                                max_new_tokens=s.max_new_tokens, local_files_only=local)
    else:
        from hvla_ros.planner.openai_chat import OpenAIChat

        chat = OpenAIChat(
            s.base_url,
            s.model,
            api_key_env=s.api_key_env,
            timeout_s=s.timeout_s,
            retries=s.retries,
            max_tokens=s.max_new_tokens,
        )
    return VLMReasoner(chat, max_reasks=s.max_reasks, send_images=s.send_images)
