"""The teacher an output records (report.json, else its config.json's compression section): what
eval, bench and load_pipeline measure against or build on, with --teacher / --teacher-config in its
place, a warning where its files changed since the run read them, and the chain of teachers an
output compressed from an output leads to (teacher_chain: its toy or base pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

from compress.errors import UserError
from compress.report import DAMAGED, REPORT_TEXT, is_number, read_report, warn


def recorded_teacher(out: Path, teacher_arg: str | None = None,
                     config_arg: str | None = None) -> tuple[str | None, str | None]:
    """(source, --teacher-config) of the teacher an output was compressed from, as its report.json
    records them, or its config.json's compression section (which the run writes them into too)
    where report.json is gone. `teacher_arg` (the command's --teacher) replaces the source and
    `config_arg` (its --teacher-config) the config; a --teacher alone keeps the recorded config
    unless it brings its own (_own_config): a single file needs one, which the run was given."""
    recorded = {} if teacher_arg and config_arg else _recorded(out)
    source = teacher_arg or recorded.get("teacher")
    if config_arg or (teacher_arg and _own_config(teacher_arg, recorded)):
        return source, config_arg
    return source, recorded.get("teacher_config")


def _own_config(teacher_arg: str, recorded: dict) -> bool:
    """Whether a --teacher brings its own config in place of the recorded --teacher-config: a
    folder, a Hub id or a toy does; a single file only with a config.json beside it, and not when
    it is the recorded file (which the run read with the recorded config, beside one or not)."""
    path = Path(teacher_arg).expanduser()
    if not path.is_file():
        return True
    same = bool(recorded.get("teacher")) and absolute_source(teacher_arg) == absolute_source(recorded["teacher"])
    return (path.parent / "config.json").is_file() and not same


def teacher_to_load(out: Path, teacher_arg: str | None = None,
                    config_arg: str | None = None) -> tuple[str | None, str | None]:
    """recorded_teacher for a command that loads the teacher (eval, bench): a recorded teacher or
    config no longer where the run found it (moved since) is a UserError saying what to pass, not
    the loader's, which names options the user did not give."""
    from compress.io_source import looks_local
    from compress.io_single_config import config_file

    source, config = recorded_teacher(out, teacher_arg, config_arg)
    if source and not teacher_arg and looks_local(source) and not Path(source).expanduser().exists():
        raise UserError(f"{out} was compressed from the teacher {source}, which is not there now; pass --teacher "
                        "with where it is")
    read = source and not source.startswith("toy:") and not Path(source).expanduser().is_dir()
    if config and read and not config_arg:  # read for a single file or a Hub id (a toy or folder has its own)
        try:
            config_file(Path(source).expanduser(), config)
        except UserError:
            raise UserError(f"{out} was compressed from {source} with the teacher config {config}, which is not "
                            "there now (no config.json); pass --teacher-config with where it is (a folder or "
                            "config.json)") from None
    check_config_unedited(out, source, config, config_arg)
    return source, config


CONFIG_CHECKSUM = "teacher_config_checksum"  # what the run's teacher's config file held (runner_export records it)


def check_config_unedited(out: Path, source: str | None, config: str | None, config_arg: str | None) -> None:
    """Before eval or bench loads the teacher `source` the output `out` records: where the config file it
    reads (runner_config_sum.config_read: the --teacher-config, a folder's own, the one beside a single file)
    is the one the run read and what it holds changed since (CONFIG_CHECKSUM, as a run's --resume compares
    it), a UserError saying so where the model it describes is another (config_compare, as diffusers builds
    both), else a warning. Nothing for another teacher or --teacher-config, a toy or a Hub id without one, or
    an output that recorded no checksum (written before runs did)."""
    from compress.runner_config_sum import config_checksum, config_read

    recorded = _recorded(out)
    before = recorded.get(CONFIG_CHECKSUM)
    if not isinstance(before, str) or not source or not isinstance(recorded.get("teacher"), str) \
            or absolute_source(source) != absolute_source(recorded["teacher"]):
        return
    file = config_read(source, config)
    if file is None or (config_arg and file != config_read(source, recorded.get("teacher_config"))):
        return
    if config_checksum(file) in (None, before):
        return
    changed = f"{file} changed since {out} was compressed from it (its contents differ)"
    differ = _config_differences(out, file)
    if differ:
        from compress.config_compare import shown_differences

        other = "--teacher (the folder the run read)" if Path(source).expanduser().is_dir() else \
            "--teacher-config (the config the run read)"
        raise UserError(f"{changed}: it has {shown_differences(differ)}; undo the change to it, or pass {other}")
    warn(f"{changed}, but describes the same model as diffusers builds it; the teacher is read with it as it is now")


def _config_differences(out: Path, file: Path) -> list:
    """config_compare.config_differences of the output's config against the config `file` now; [] where
    either cannot be read or names no supported class (the loader says why)."""
    from compress.config_compare import config_differences
    from compress.io import read_config, read_json

    try:
        mine, theirs = read_json(out / "config.json"), read_config(file)
        return config_differences(mine, theirs, str(mine.get("_class_name")))
    except UserError:
        return []


def _recorded(out: Path) -> dict:
    """report.json, or where it names no teacher its config.json's compression section."""
    report = read_report(out)
    return report if report.get("teacher") else _compression_section(Path(out))


ORIGINAL = "pass the original with --teacher to compare with that"  # the way out of warn_if_teacher_changed


def warn_if_teacher_changed(out: Path, source: str | None, command: str, advice: str = ORIGINAL) -> None:
    """A warning (one line, naming the file) where the teacher `source` that `command` (eval, bench)
    measures the output `out` against is the one the run recorded and its weight files differ from
    what the run read (io_signature.teacher_signature: replaced since, e.g. a fine-tune saved over it).
    Not an error: the user may mean it. Nothing for another teacher (--teacher naming another path:
    the user's choice), a toy or Hub teacher, or an output written before runs recorded the files."""
    warn_if_recorded_changed(_recorded(out), out, source, command, advice)


def warn_if_recorded_changed(recorded: dict, out, source: str | None, command: str, advice: str = ORIGINAL) -> None:
    """warn_if_teacher_changed of what the output `out` (a folder, or words naming it) records of its teacher:
    `recorded` (report.json's, or its config.json's compression section, a loaded output's compression_meta);
    `advice`: the way to the original the warning ends with."""
    from compress.io_signature import signature_change

    if not source or not recorded.get("teacher") or absolute_source(source) != absolute_source(recorded["teacher"]):
        return
    change = signature_change(recorded.get("teacher_files"), absolute_source(source))
    if change:
        warn(f"teacher {source} changed since {out} was compressed from it: {change}; {command} measures "
             f"against it as it is now ({advice})")


def absolute_source(source: str) -> str:
    """A local source as an absolute path (as the run records it); others as they are."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def recorded_loras(out: Path) -> list:
    """The LoRAs an output took (dit-compress lora), as its config.json's compression section records
    them (`loras`); [] where it took none or is no output."""
    from compress.io import read_json

    config = Path(out).expanduser() / "config.json"
    section = read_json(config).get("compression") if config.is_file() else None
    return (section.get("loras") or []) if isinstance(section, dict) else []


def _compression_section(out: Path) -> dict:
    """The teacher fields of an output's config.json `compression` section, checked as report.json's."""
    from compress.io import read_json

    p = out / "config.json"
    config = read_json(p) if p.is_file() else {}
    section = config.get("compression") if isinstance(config, dict) else None
    if not isinstance(section, dict):
        return {}
    recorded = {k: section.get(k) for k in ("teacher", "teacher_config")}
    for key, value in recorded.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"{p}: compression.{key} is {json.dumps(value, default=str)[:40]}, not text "
                            f"({REPORT_TEXT[key]}); {DAMAGED}")
    return dict(recorded, teacher_files=section.get("teacher_files"))  # read as io_signature.signature_change does


def blocks_before(report) -> dict:
    """{group: block count} of the teacher before any removal, as an output's report.json (a dict)
    records it (its first removal pass's blocks_before); {} where it records none (no removal, an
    older or damaged report): a check that needs it then has nothing to check against."""
    removal = report.get("remove_blocks") if isinstance(report, dict) else None
    runs = (removal.get("passes") or [removal]) if isinstance(removal, dict) else []
    first = runs[0] if isinstance(runs, list) and runs else None
    before = first.get("blocks_before") if isinstance(first, dict) else None
    return before if isinstance(before, dict) else {}


def reported_blocks(out: Path) -> dict[str, int]:
    """{group: block count} of an output's teacher before any removal as its report.json records it
    (blocks_before): what an output written before config.json's compression section recorded it
    (teacher_blocks) says of it; {} where none is, or the report is damaged (read_report refuses it: inspect
    says so)."""
    try:
        report = read_report(Path(out))
    except UserError:
        return {}
    return {g: n for g, n in blocks_before(report).items() if isinstance(n, int) and not isinstance(n, bool)}


def teacher_chain(source: str) -> list[str]:
    """`source`, then while the last is a dit-compress output folder (not a pipeline folder: that is
    its own base) the teacher it records: an output compressed from an output leads to the teacher
    the first run read (a toy, a Hub id, a pipeline or transformer folder, a file). It stops early
    at an output recording no teacher, and at one recorded twice (a loop: `chain_loops`)."""
    from compress.output_names import is_output

    chain = [str(source)]
    while not chain[-1].startswith("toy:"):
        path = Path(chain[-1]).expanduser()
        if not path.is_dir() or (path / "model_index.json").is_file() or not is_output(path):
            break
        teacher = _recorded(path).get("teacher")
        if not teacher or chain_loops(chain):
            break
        chain.append(teacher)
    return chain


def chain_loops(chain: list[str]) -> bool:
    """Whether the last teacher of `chain` is one it named before."""
    return absolute_source(chain[-1]) in {absolute_source(s) for s in chain[:-1]}


def toy_base(source: str) -> str | None:
    """The toy teacher (toy:NAME) `source` is, or that the outputs it leads to record first
    (teacher_chain): such an output is calibrated like that toy; None for any other."""
    base = teacher_chain(source)[-1]
    return base if base.startswith("toy:") else None


def chain_base(chain: list[str]) -> str | None:
    """The last teacher of `chain` where it is a pipeline to sample in or build on: a toy, a pipeline
    folder (model_index.json) or a Hub id; None for a loop, a path not there, a transformer folder,
    a file, or an output recording no teacher."""
    from compress.io_source import looks_local

    base, path = chain[-1], Path(chain[-1]).expanduser()
    if chain_loops(chain):
        return None
    if base.startswith("toy:") or (path / "model_index.json").is_file():
        return base
    return None if looks_local(base) or path.exists() else base


def recorded_pipeline(chain: list[str]) -> tuple[str, str] | None:
    """(pipeline, output): the calibration.pipeline the recipe.yaml of an output of `chain` ran with,
    the first that sets one that is a pipeline still (chain_base: a toy, a Hub id, a pipeline folder
    there now), and that output; None where none does."""
    import yaml

    from compress.output_names import is_output

    for link in chain:
        path = Path(link).expanduser()
        if link.startswith("toy:") or not (path / "recipe.yaml").is_file() or not is_output(path):
            continue
        try:
            recipe = yaml.safe_load((path / "recipe.yaml").read_text(encoding="utf-8")) or {}
            calibration = recipe.get("calibration") or {}
            pipeline = calibration.get("pipeline")
        except (OSError, ValueError, yaml.YAMLError, AttributeError):
            continue  # a damaged recipe.yaml says nothing
        if isinstance(pipeline, str) and pipeline and chain_base([pipeline]) is not None:
            return pipeline, link
    return None


def output_base(source: str) -> tuple[str, str] | None:
    """(base, what it is): the base pipeline the output `source` records, its teacher_chain's chain_base
    ('the base pipeline S records'), else the pipeline the recipe.yaml of an output of that chain
    calibrated in (recorded_pipeline: 'the pipeline the recipe.yaml of O calibrated in'); None where
    `source` is no output or neither is found. What to pass for an output given as a pipeline
    (pipeline_folder's calibration.pipeline, io_pipeline's load_pipeline base)."""
    chain = teacher_chain(source)
    base = chain_base(chain) if len(chain) > 1 else None
    if base is not None:
        return base, f"the base pipeline {source} records"
    found = recorded_pipeline(chain)
    return None if found is None else (found[0], f"the pipeline the recipe.yaml of {found[1]} calibrated in")


def chain_base_record(source: str) -> dict | None:
    """{source, params}: the teacher the first run of the chain of outputs `source` leads to read
    (teacher_chain's last) and its parameter count as the output that read it records (report.json's
    teacher_params). None where `source` is no output (it is its own base), where the chain breaks
    off (chain_break: a link moved away, a loop, an output recording no teacher: no guess) or where
    that output has no such record (no report.json, a damaged one)."""
    try:
        chain = teacher_chain(source)
        if len(chain) < 2 or chain_break(chain) is not None:
            return None
        params = read_report(Path(chain[-2]).expanduser()).get("teacher_params")
    except (UserError, OSError):
        return None
    return {"source": chain[-1], "params": params} if is_number(params) and params > 0 else None


NOT_THERE = "which is not there"  # chain_break of a teacher moved away


def chain_break(chain: list[str]) -> str | None:
    """Why `chain` (teacher_chain) stops short of the teacher the first run read: 'which it named
    before (a loop)', NOT_THERE (a local path), 'which records no teacher' (an output); None where
    its last is that teacher (a toy, a Hub id, a pipeline or transformer folder, a file)."""
    from compress.io_source import looks_local
    from compress.output_names import is_output

    path = Path(chain[-1]).expanduser()
    if chain_loops(chain):
        return "which it named before (a loop)"
    if chain[-1].startswith("toy:") or (path / "model_index.json").is_file():
        return None
    if not path.exists():
        return NOT_THERE if looks_local(chain[-1]) else None
    return "which records no teacher" if path.is_dir() and is_output(path) else None


def broken_chain(out, chain: list[str]) -> str:
    """'OUT records the teacher A, which records B, which is not there': why the chain of teachers
    the output `out` records (its teacher's teacher_chain) ends in no pipeline (chain_base). With
    `out` None, `chain` is the output's own ('the teacher A records the teacher B, ...')."""
    head, links = (f"{out} records", chain) if out is not None else (f"the teacher {chain[0]} records", chain[1:])
    why = chain_break(chain) or "which is not a pipeline folder (no model_index.json there)"
    return f"{head} the teacher {', which records '.join(links)}, {why}"
