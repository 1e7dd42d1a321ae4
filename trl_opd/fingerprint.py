"""Fingerprints: short digests of what produced a folder, compared by whoever reads it.

* :func:`keys_fingerprint`: a run's or a stage's resolved keys (a checkpoint is resumed only by the same recipe);
* :func:`weights_fingerprint`: a model's weights (a teacher cache is served only beside the teacher that built it);
* :func:`changed_keys`: the keys on which two recorded key sets differ, for the refusal that names both sides.

A digest is the first 16 hex digits of a SHA-256. Torch is imported only by :func:`weights_fingerprint`.
"""

from __future__ import annotations

import hashlib
import json


#: Keys that change how a run is logged or saved, not what it trains: they may differ between a run and its resume.
OPERATIONAL_KEYS = frozenset(
    {
        "output_dir",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "logging_steps",
        "logging_first_step",
        "logging_strategy",
        "save_steps",
        "save_strategy",
        "save_total_limit",
        "report_to",
        "disable_tqdm",
        "run_name",
        "log_level",
    }
)

#: Parameter elements hashed per tensor by :func:`weights_fingerprint` (evenly spaced over the tensor).
SAMPLED_ELEMENTS = 4096


def digest(value) -> str:
    """SHA-256 (16 hex digits) of ``value`` as canonical JSON (sorted keys; other objects as text)."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def training_keys(keys: dict) -> dict:
    """``keys`` without :data:`OPERATIONAL_KEYS` (JSON-plain values)."""
    return {k: v for k, v in json.loads(json.dumps(keys, default=str)).items() if k not in OPERATIONAL_KEYS}


def keys_fingerprint(keys: dict) -> str:
    """The digest of the keys that decide what a run trains (:func:`training_keys`)."""
    return digest(training_keys(keys))


def changed_keys(before: dict, after: dict) -> list[str]:
    """``["lmbda: 0.0 (then) -> 0.5 (now)", ...]``, one entry per key that differs (also keys set on one side only)."""
    before, after = training_keys(before), training_keys(after)

    def shown(keys, key):
        return repr(keys[key]) if key in keys else "<unset>"

    return [
        f"{key}: {shown(before, key)} (then) -> {shown(after, key)} (now)"
        for key in sorted(set(before) | set(after))
        if shown(before, key) != shown(after, key)
    ]


def weights_fingerprint(model) -> str:
    """A digest of a model's weights: per parameter (sorted by name) its name, shape and up to
    :data:`SAMPLED_ELEMENTS` evenly spaced elements rounded to bfloat16.

    Two checkpoints of different training runs differ in nearly every element, so a sample tells them apart while
    reading a few MB even for a 70B model. The rounding makes a float32 and a bfloat16 load of one checkpoint agree;
    a 4-bit load stores other values (packed integers) and is another teacher.
    """
    import torch

    sha = hashlib.sha256()
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
            flat = param.detach().reshape(-1)
            sha.update(f"{name}|{tuple(param.shape)}|".encode())
            if flat.numel() == 0:
                continue
            step = max(1, flat.numel() // SAMPLED_ELEMENTS)
            sample = flat[::step][:SAMPLED_ELEMENTS]
            sample = sample.to(torch.bfloat16) if sample.is_floating_point() else sample.to(torch.int64)
            sha.update(sample.float().cpu().numpy().tobytes())
    return sha.hexdigest()[:16]
