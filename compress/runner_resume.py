"""What a run is keyed and resumed by: the teacher's weights checksum, the fingerprint that keys the
calibration caches, the recipe keys `--resume` compares (but those no result depends on) and the
teacher's identity it compares, with the differences in words."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

import compress
from compress.calib_stats import STATS_VERSION
from compress.recipe import Recipe


def weights_checksum(teacher: torch.nn.Module, models) -> str:
    """A checksum of the teacher's weights (`models.fingerprint`: cheap), taken once per run."""
    h = hashlib.sha256()
    models.fingerprint(teacher, h)
    return h.hexdigest()


# calibration keys that change where activations are kept, not any statistic or result
CALIBRATION_RESULT_FREE = ("spill_activations",)


def result_bearing(calibration: dict) -> dict:
    """The calibration keys that can change a statistic or a result."""
    return {k: v for k, v in calibration.items() if k not in CALIBRATION_RESULT_FREE}


def fingerprint(source: str, weights: str, recipe: Recipe) -> str:
    """Teacher identity (source + `weights_checksum`) + calibration config (but for
    CALIBRATION_RESULT_FREE) + code version."""
    h = hashlib.sha256(f"{source}|{compress.__version__}|{STATS_VERSION}|{weights}|".encode())
    h.update(json.dumps(result_bearing(asdict(recipe.calibration)), sort_keys=True).encode())
    return h.hexdigest()[:16]


def recipe_changes(before: dict, now: dict, passes) -> list[str]:
    """The keys (dotted paths) where two resolved recipes differ, but those a pass declares cannot
    change its result (`Pass.result_free`: progress bars, how often distill checkpoints, how far
    this run goes) and CALIBRATION_RESULT_FREE."""
    def view(raw: dict) -> dict:
        calibration = raw.get("calibration")
        if isinstance(calibration, dict):
            raw = dict(raw, calibration=result_bearing(calibration))
        specs = raw.get("passes", [])
        if len(specs) != len(passes):
            return _flat(raw)
        kept = [{k: {o: v for o, v in opts.items() if o not in p.result_free} for k, opts in spec.items()}
                for spec, p in zip(specs, passes)]
        return _flat(dict(raw, passes=kept))

    a, b = view(before), view(now)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<none>") != b.get(k, "<none>"))


def _flat(data, prefix: str = "") -> dict:
    """{'a.b.0.c': value} of nested mappings and lists."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        return {prefix: data}
    return {k: v for key, value in items for k, v in _flat(value, f"{prefix}.{key}" if prefix else str(key)).items()}


def teacher_identity(source: str, config: str | None, teacher: torch.nn.Module, weights: str) -> dict:
    """What --resume compares besides the recipe: the teacher source (a local path made absolute),
    --teacher-config, the model config and `weights_checksum`."""
    def where(s):
        return str(Path(s).resolve()) if s and Path(s).exists() else s

    h = hashlib.sha256(json.dumps({k: v for k, v in dict(teacher.config).items() if not k.startswith("_")},
                                  sort_keys=True, default=str).encode())
    h.update(weights.encode())
    return {"source": where(source), "config": where(config), "checksum": h.hexdigest()[:16]}


def teacher_change(before: dict, now: dict) -> str:
    """What differs between two `teacher_identity`s, in words."""
    if before["source"] != now["source"]:
        return f"was {before['source']}, now {now['source']}"
    if before["config"] != now["config"]:
        return f"--teacher-config was {before['config']}, now {now['config']}"
    return f"{now['source']} holds other weights or config"
