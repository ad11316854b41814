"""The config file a teacher reads (`config_read`: its --teacher-config's, a folder's own, the one beside a
single file) and a checksum of what it holds (`config_checksum`), which the teacher identity a run
records holds (runner_teacher_id.named_teacher: CONFIG_SUM), so that --resume and a plain rerun compare a
config by what it holds. Imports no torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from compress import json_read
from compress.output_names import without_refusal


# in a teacher identity: the checksum of what the config file the teacher reads holds (`config_checksum`);
# compared in the place of its path where both records hold one (older runs record none)
CONFIG_SUM = "config_checksum"


def config_read(source: str, config: str | None) -> Path | None:
    """The local config file a teacher reads: the --teacher-config's (`config_target`), else a folder
    teacher's own (config.json, or a pipeline folder's transformer/config.json) or the config.json beside a
    single file; None for a toy or a Hub id without --teacher-config, or where there is none."""
    if config:
        return config_target(config)
    path = Path(source).expanduser() if source and not source.startswith("toy:") else None
    if path is not None and path.is_dir():
        return config_target(str(path))
    beside = path.parent / "config.json" if path is not None and path.is_file() else None
    return beside.resolve() if beside is not None and beside.is_file() else None


def config_checksum(file: Path) -> str | None:
    """A checksum of what the config file `file` holds: its JSON object's keys but those starting with
    '_' (as teacher_identity's checksum reads the loaded config: a re-save by another diffusers, other
    spacing or order, is the same config) and those its `_use_default_values` lists (diffusers loads
    their defaults, whatever the file says: an edit of one is no other model, an edit of the list is),
    or every byte of one that is not a JSON object; None where it cannot be read."""
    try:
        raw = Path(file).read_bytes()
    except OSError:
        return None
    try:
        data = json_read.parse(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        data = without_refusal(data)  # an older output re-saved gains it: the same model (R2 stop 51)
        defaults = data.get("_use_default_values")
        ignored = set(defaults) if isinstance(defaults, list) and all(isinstance(k, str) for k in defaults) else set()
        raw = json.dumps({k: v for k, v in data.items() if not k.startswith("_") and k not in ignored},
                         sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def config_target(config: str) -> Path | None:
    """The file a --teacher-config names, as io_single_config.config_file reads it (a JSON file, a folder's
    config.json or a pipeline folder's transformer/config.json), its links resolved; None where none is."""
    path = Path(config).expanduser()
    found = [path, path / "config.json", path / "transformer" / "config.json"]
    return next((c.resolve() for c in found if c.is_file()), None)
