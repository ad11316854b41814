"""The teacher a LoRA was trained on (compress.lora merges it): the base a student's chain of teachers
leads to, its blocks mapped to the student's through every link's block map (lora_base); and the
teacher weights a DoRA's norms need: the adapted layers' weights read alone from a toy, a diffusers
folder or a Hub id (its index first, then only the shards holding them), else from the teacher loaded
as eval loads it; a dit-compress output given as the teacher is refused (its layers are factorized,
not the weights the DoRA was trained on)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from compress.errors import UserError
from compress.words import counted

GIVE_TEACHER = "--teacher (dit-compress lora) or teacher= to merge_lora"  # a DoRA's teacher, however merged
NO_TEACHER = ("merging a DoRA into a compressed model needs its teacher's weights (DoRA's norms), and it records no "
              f"teacher: pass {GIVE_TEACHER}")


class CompressedTeacher(UserError):
    """A DoRA teacher that is a dit-compress output: said as it is, not as a teacher whose weights
    could not be read (dora_weights)."""


def compressed_teacher(who: str, record) -> CompressedTeacher:
    """The error for the DoRA teacher `who` (in words), a dit-compress output whose compression
    `record` (its config's section, or a loaded model's compression_meta) may name its own teacher."""
    teacher = record.get("teacher") if isinstance(record, dict) else None
    compressed_from = f" (it was compressed from {teacher})" if teacher else ""
    return CompressedTeacher(f"{who} is a dit-compress output, its layers factorized: a DoRA's norms need the "
                             f"uncompressed teacher the DoRA was trained on{compressed_from}; pass that with "
                             f"{GIVE_TEACHER}")


class LoraBase(NamedTuple):
    """The teacher a student's LoRA is read as: the first teacher of its chain (report_teacher.teacher_chain),
    the published model a LoRA is trained on."""
    block_map: dict[str, list[int]]  # {group: [base index of the student's block 0, 1, ...]}; a group absent: all kept
    source: str | None  # the base; None for a teacher (no compression record) or a student recording no teacher
    config: str | None  # its --teacher-config, as the output that read it records it
    chain: list[str]  # the student's teacher, its teacher's ... to the base; [] where source is None
    moved: str | None = None  # the student's own teacher, not there now, read as the base (moved_teacher)


def moved_teacher(teacher: str) -> str:
    """What reading the LoRA's blocks as the moved teacher `teacher`'s means, and the way out (the
    note noted_moved gives; a block-count error then points back to it: naming_moved)."""
    return (f"the teacher {teacher} the model records is not there now: the LoRA's blocks are read as its "
            "blocks; if it was itself a dit-compress output, put it back, so that they are read as those of "
            "the first teacher of its chain")


def noted_moved(moved: str | None, teacher=None) -> str | None:
    """The moved teacher `moved` (LoraBase.moved) as merge_lora says it: noted (moved_teacher) and
    returned, for a block-count error to point back to (naming_moved); None, and no note, where none
    moved or the user gave the teacher (`teacher`: merge_lora's own, None where not given) and it is
    no dit-compress output: a base where the user says it is now, whose blocks are the LoRA's, which
    putting the recorded one back would not change. A given output still has the note (its chain is
    not followed: the recorded teacher's is, where it is there)."""
    if not moved or (teacher is not None and not an_output(teacher)):
        return None
    from compress.report import note

    note(moved_teacher(moved))
    return moved


def an_output(teacher) -> bool:
    """Whether the given teacher (a model, or a source) is a dit-compress output: a model with a
    compression record, a folder (a pipeline's: its transformer/) or weight file of one."""
    if isinstance(teacher, nn.Module):
        return getattr(teacher, "compression_meta", None) is not None
    from compress.io_source import output_record
    from compress.output_names import is_output_teacher

    path = Path(str(teacher)).expanduser()
    return is_output_teacher(teacher) if path.is_dir() else output_record(path) is not None


def check_given(teacher) -> None:
    """A UserError where the teacher given to merge_lora (--teacher of dit-compress lora) is no teacher,
    whatever the LoRA: a plain LoRA reads no teacher weights, but a teacher given is a teacher meant (a
    typo), not one to drop silently. Checked as a run checks its teacher (io_source.check_source), reading
    no weights and going to no network: a known toy, a local teacher folder or checkpoint file that is
    there, or a valid Hugging Face id. A dit-compress output's weight file is left to what follows
    (a DoRA refuses it as compressed_teacher says; a plain LoRA notes it unread)."""
    from compress.io_source import check_source, output_weights

    if not isinstance(teacher, (str, Path)):
        return
    if output_weights(Path(str(teacher)).expanduser()):
        return
    check_source(str(teacher))


def note_unread(teacher) -> None:
    """The note that the teacher given to merge_lora (a source or a model) is not read for its weights:
    the LoRA holds no DoRA magnitudes, and only a DoRA's norms need them."""
    from compress.report import note

    who = f"the given teacher {teacher}" if isinstance(teacher, (str, Path)) else "the given teacher"
    note(f"{who}: its weights are not read, as the LoRA is no DoRA (only a DoRA's norms need the teacher's weights)")


@contextlib.contextmanager
def naming_moved(moved: str | None):
    """A block-count error (lora_keys.BlocksPast) raised inside, where the LoRA's blocks were read as
    those of the moved teacher `moved` (noted_moved's; None: none, or none said), ends pointing back to
    the note that named it and the way out: that, more likely than a LoRA of a deeper model, said once.
    merge_lora's check and the CLI's of the output's report.json both say it so."""
    from compress.lora_keys import BlocksPast

    try:
        yield
    except BlocksPast as e:
        if not moved:
            raise
        raise BlocksPast(f"{e} Or the teacher {moved}, not there now, was itself a dit-compress output: put "
                         "it back (the note above)") from None


def lora_base(student: nn.Module) -> LoraBase:
    """The base a LoRA of `student` is read as, and the student's blocks' indices there: its own block
    map composed with that of every output along its chain of teachers. A student whose teacher is not
    there now is read as that teacher's (it may be the base: nothing says it was an output; named in
    LoraBase.moved, which merge_lora notes: noted_moved); a chain
    that leaves an output whose teacher is gone, that records none, or that loops is a UserError."""
    from compress.report_teacher import broken_chain, recorded_teacher, teacher_chain

    meta = getattr(student, "compression_meta", None)
    own = (meta or {}).get("block_map") or {}
    if not (meta or {}).get("teacher"):
        return LoraBase(own, None, None, [])
    chain = teacher_chain(str(meta["teacher"]))
    if not followed(chain):
        raise UserError(f"{broken_chain('the model', chain)}: a LoRA's blocks are those of the first teacher of "
                        "that chain (the model it was trained on), and mapping them to the model's takes the block "
                        "map of every output along it")
    moved = chain[0] if len(chain) == 1 and missing(chain[0]) else None  # read as a base (noted_moved)
    maps, config = [own], meta.get("teacher_config")
    for link in chain[:-1]:  # each an output, recording the next
        maps.append(_link_block_map(Path(link).expanduser()))
        config = recorded_teacher(Path(link).expanduser())[1]
    return LoraBase(composed_block_map(maps, ["the model", *chain[:-1]]), chain[-1], config, chain, moved)


def missing(source: str) -> bool:
    """Whether `source` names a local path that is not there now (a teacher moved away: report_teacher.
    chain_break's NOT_THERE, for one source); a toy or a Hub id never is."""
    from compress.io_source import looks_local

    return looks_local(source) and not Path(source).expanduser().exists()


def followed(chain: list[str]) -> bool:
    """Whether `chain` (teacher_chain) ends at a base (report_teacher.chain_break): a student's own
    teacher not there now is read as one (nothing says it was an output)."""
    from compress.report_teacher import NOT_THERE, chain_break

    why = chain_break(chain)
    return why is None or (len(chain) == 1 and why == NOT_THERE)


def base_block_count(chain: list[str], group) -> int | None:
    """The base's number of `group` (an adapter's block group) blocks before any removal, as the
    chain of teachers (LoraBase.chain) records it, not read from the base: the report.json of the
    output compressed straight from it (chain[-2]: its first removal's blocks_before), or where that
    removed none of the group (no block map for it), its own config's count. None for a student
    compressed from the base itself (its own report: the CLI's check), or where neither says."""
    from compress.io import read_json
    from compress.report import read_report
    from compress.report_teacher import blocks_before

    if len(chain) < 2:
        return None
    folder = Path(chain[-2]).expanduser()
    count = blocks_before(read_report(folder)).get(group.name)
    if count is None and group.name not in (_link_block_map(folder) or {}):
        config = read_json(folder / "config.json")
        count = config.get(group.config_key) if isinstance(config, dict) else None
    return count if isinstance(count, int) and not isinstance(count, bool) else None


def _link_block_map(folder: Path) -> dict[str, list[int]] | None:
    """The block map the output `folder` records (inspect.recorded_block_map: its config.json's, else
    block_map.json; a malformed one a UserError naming the file), None where it removed no block."""
    from types import SimpleNamespace

    from compress.inspect import recorded_block_map
    from compress.io import read_json

    config = read_json(folder / "config.json")
    section = config.get("compression") if isinstance(config, dict) else None
    return recorded_block_map(SimpleNamespace(compression_meta=section if isinstance(section, dict) else {}), folder)


def composed_block_map(maps: list[dict | None], owners: list[str]) -> dict[str, list[int]]:
    """{group: [base index of the student's block 0, 1, ...]} from `maps`, the block maps from the
    student outward ({group: [its teacher's index of its block 0, 1, ...]}; None, or a group left out:
    no block removed there), `owners[i]` whose is maps[i]. A map naming a block its teacher's map does
    not have (the teacher replaced since) is a UserError."""
    out: dict[str, list[int]] = {}
    for i, block_map in enumerate(maps):
        for group, kept in (block_map or {}).items():
            if group not in out:  # every block kept so far: the student's i-th is this teacher's i-th
                out[group] = list(kept)
                continue
            past = [j for j in out[group] if j >= len(kept)]
            if past:
                raise UserError(f"{owners[i - 1]} has {group} block {max(past)} of its teacher {owners[i]}, whose "
                                f"block map has {counted(len(kept), 'block')}: it is not the output the model was "
                                "compressed from (replaced since?)")
            out[group] = [kept[j] for j in out[group]]
    return out


def dora_weights(student: nn.Module, names: dict[str, str], teacher,
                 config: str | None = None) -> dict[str, torch.Tensor]:
    """{teacher module name: its teacher weight (out, in)} for the DoRA layers `names` (teacher name ->
    student name): the student's own where it is a teacher, else `teacher`'s or its recorded source's
    (`config`: a single-file teacher's, default the recorded one)."""
    meta = getattr(student, "compression_meta", None)
    if meta is None and teacher is None:
        return {name: student.get_submodule(target).weight.detach() for name, target in names.items()}
    if isinstance(teacher, nn.Module):
        if getattr(teacher, "compression_meta", None) is not None:
            raise compressed_teacher("the given teacher", teacher.compression_meta)
        return _checked_shapes(student, names, _weights_of(teacher, list(names), "the given teacher"),
                               "the given teacher")
    source = str(teacher or (meta or {}).get("teacher") or "")
    if not source:
        raise UserError(NO_TEACHER)
    config = config or (None if teacher else meta.get("teacher_config"))
    try:
        weights = _teacher_weights(student, source, config, list(names))
    except CompressedTeacher:
        raise
    except UserError as e:
        raise UserError(f"a DoRA's norms need the teacher's weights, read from {source}: {e}") from None
    return _checked_shapes(student, names, weights, f"teacher {source}")


def _teacher_weights(student: nn.Module, source: str, config: str | None, names: list[str]) -> dict[str, torch.Tensor]:
    """The weights `names` of the teacher `source`, classified once here (io_source_config.checked): read alone
    from a toy, a folder or a Hub id of safetensors weights (_teacher_files), else (a single file, a folder
    of .bin weights, or a student that took LoRAs before: the teacher with them) from the teacher
    io_teacher_of.load_teacher_of loads. A dit-compress output (its config's compression section, or its weight
    file's header) is refused before any weights are read."""
    from compress.io_headers import pickled_folder
    from compress.io_source import output_record
    from compress.io_source_config import checked

    record = output_record(Path(source).expanduser())  # an output's weight file: said as such, once
    if record is not None:
        raise compressed_teacher(f"teacher {source}", record)
    src = checked(source, config)
    loaded = src.kind == "file" or bool((getattr(student, "compression_meta", None) or {}).get("loras")) \
        or pickled_folder(src) is not None  # .bin weights: read whole, as a single file is
    if src.kind == "hub":
        from compress.report import note

        what = "its transformer folder" if loaded else \
            "its transformer's config and index, then the weight files holding the " \
            f"{counted(len(names), 'adapted layer')}"
        note(f"a DoRA's norms need teacher {source}'s weights: downloading from the "
             f"Hugging Face Hub (unless cached) {what}")
    if src.kind in ("folder", "hub") and "compression" in src.config:  # a Hub id's config.json alone, a few KB
        raise compressed_teacher(f"teacher {source}", src.config["compression"])
    if loaded:
        from compress.io_teacher_of import load_teacher_of

        return _weights_of(load_teacher_of(student, source, config), names, "it")  # with the earlier LoRAs
    return _read_teacher_weights(_teacher_files(src, [f"{n}.weight" for n in names]), names)


def _weights_of(teacher: nn.Module, names: list[str], who: str) -> dict[str, torch.Tensor]:
    """{name: weight (out, in)} of the teacher's linears `names`, or a UserError naming one it lacks
    (`who`: the teacher, in words)."""
    out = {}
    for name in names:
        try:
            out[name] = teacher.get_submodule(name).weight.detach()
        except AttributeError:
            raise UserError(f"{who} has no linear '{name}', which the DoRA adapts") from None
    return out


def _checked_shapes(student: nn.Module, names: dict[str, str], weights: dict, who: str) -> dict:
    """`weights`, or a UserError where one is not the shape of the student's layer it is for (a
    student without that layer: lora_merge.merged_layer says so)."""
    for name, target in names.items():
        try:
            layer = student.get_submodule(target)
        except AttributeError:
            continue
        want = (getattr(layer, "out_features", None), getattr(layer, "in_features", None))
        if None not in want and tuple(weights[name].shape) != want:
            raise UserError(f"{who}'s '{name}' is {tuple(weights[name].shape)}, the student's layer {want}: "
                            "not the teacher of this model")
    return weights


def _read_teacher_weights(files: dict[str, Path], names: list[str]) -> dict[str, torch.Tensor]:
    """{name: weight} of the linears `names`, from `files` (tensor name -> safetensors file)."""
    from safetensors import safe_open

    from compress.stream_files import by_file

    missing = [n for n in names if f"{n}.weight" not in files]
    if missing:
        raise UserError(f"it has no weight for '{missing[0]}', which the DoRA adapts")
    out = {}
    for path, keys in by_file(files, [f"{n}.weight" for n in names]).items():
        with safe_open(str(path), framework="pt") as f:
            out.update({k[: -len(".weight")]: f.get_tensor(k) for k in keys})
    return out


def _teacher_files(src, keys: list[str]) -> dict[str, Path]:
    """Tensor name -> safetensors file of a toy, folder or Hub teacher (io_source_config.TeacherSource); of a
    Hub id, those of `keys` alone where its index tells (_hub_files)."""
    from compress.stream_files import file_map, weight_map

    if src.kind == "toy":
        from compress.toy.weights import toy_files

        return file_map(toy_files(src.source[4:])[1])
    if src.kind == "folder":
        from compress.io import transformer_folder

        return weight_map(transformer_folder(Path(src.source).expanduser()))
    return _hub_files(src.source, keys)


def _hub_files(repo_id: str, keys: list[str]) -> dict[str, Path]:
    """Tensor name -> downloaded file, for `keys` of the Hub teacher `repo_id`: its transformer
    folder's JSON files first (config, safetensors index), then only the shards the index names for
    `keys`. The folder is the repo's transformer/ or, of a transformer-only repo, its root, as
    io_hub.hub_config_file finds it. Without a (plain) index, one weight file holds them all: its
    diffusers weight files, read as a local folder."""
    from compress.io import INDEX, weight_index
    from compress.stream_files import weight_map

    index = _hub_files_of(repo_id, ["config.json", "diffusion_pytorch_model*.json"]) / INDEX
    if not index.is_file():  # one weight file, or only a variant's (fp16): as stream_files picks it
        return weight_map(_hub_files_of(repo_id, ["config.json", "diffusion_pytorch_model*"]))
    shards = weight_index(index)
    needed = {k: shards[k] for k in keys if k in shards}  # a key it lacks: _read_teacher_weights says so
    if not needed:
        return {}
    folder = _hub_files_of(repo_id, sorted(set(needed.values())))
    files = {k: folder / shard for k, shard in needed.items()}
    missing = sorted({f.name for f in files.values() if not f.is_file()})
    if missing:
        raise UserError(f"{index} lists {', '.join(missing[:3])}, which did not download (an incomplete download?)")
    return files


def _hub_files_of(repo_id: str, patterns: list[str]) -> Path:
    """The local copy of the Hub teacher `repo_id`'s transformer folder (where a copy of the repo has
    it: io_hub_requests.placed, by the Hub's list) holding its files that match `patterns`
    (names in that folder): the Hub's list of the commit its config came from, then one bounded
    hf_hub_download each (io_hub_requests: snapshot_download's own list waits forever on a network
    that never answers); the cached snapshot as it is where the Hub is not asked (offline,
    unreachable) or where it holds them all."""
    from fnmatch import fnmatch

    from compress.io_hub import hub_error, hub_placed, pinned
    from compress.io_hub_requests import fetch_files

    cfg, sub, why, names = hub_placed(repo_id, cached=False)
    if why is not None:
        return cfg.parent
    pin = pinned(cfg)
    wanted = [n for n in names if any(fnmatch(n, p) for p in patterns)]
    if not wanted or (pin and all((cfg.parent / n).is_file() for n in wanted)):
        return cfg.parent
    try:
        return fetch_files(repo_id, sub, wanted, **pin)
    except Exception as e:  # noqa: BLE001 - network/auth errors come in many types
        raise hub_error(repo_id, e, "a local folder or file") from None
