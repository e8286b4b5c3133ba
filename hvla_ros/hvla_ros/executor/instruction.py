"""Fixed text encoding of a skill instruction for the diffusion policy.

LeRobot's DiffusionPolicy has no language input. We condition in two ways:
- per skill: one policy per skill (pick, place, ...), chosen by the subtask's skill name;
- within a skill: the instruction text becomes a small fixed vector, fed to the policy as
  ``observation.environment_state`` (concatenated into the UNet's global conditioning).

The vector is a signed hashed bag of words (feature hashing): lower-cased alphanumeric tokens
minus a few function words, each adding ±1 at ``crc32(token) mod dim`` (sign from another crc32
bit), then L2-normalised. It is deterministic across processes and machines (crc32, not Python's
salted ``hash``), needs no vocabulary or weights, and separates the instructions of our task
suite that differ in one word ("pick up the red cube" vs "... blue cube"). It does not
generalise to synonyms; a learned text encoder would, at the cost of weights we cannot ship.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

DEFAULT_DIM = 16
ENCODING_NAME = "hashed_bow"
_STOPWORDS = frozenset({"the", "a", "an", "to", "of", "and", "with", "then"})
_TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric tokens of ``text`` without function words."""
    return [t for t in _TOKEN.findall(text.lower()) if t not in _STOPWORDS]


def encode_instruction(text: str, dim: int = DEFAULT_DIM) -> np.ndarray:
    """``dim``-vector (float32, unit L2 norm or all zeros for an empty text) for ``text``."""
    if dim <= 0:
        raise ValueError(f"instruction encoding dimension must be > 0, got {dim}")
    vec = np.zeros(dim, dtype=np.float32)
    for tok in tokens(text):
        h = zlib.crc32(tok.encode("utf-8"))
        vec[h % dim] += 1.0 if (h >> 16) & 1 else -1.0
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec
