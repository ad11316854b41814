"""A teacher source checked once (io_source.check_source) as a TeacherSource: its diffusers config and
model family read on first use, without its weights, by what plan and the checks pass it to instead of
checking the source and reading its config again. A Hub id's config: the one shipped (KNOWN_CONFIGS),
the Hub's, or the Hugging Face cache's.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from compress.errors import UserError, did_you_mean
from compress.io_source import KNOWN_CONFIGS, READS, check_source, prefixed
from compress.recipe_teacher_config import FLAG_NAMED

if TYPE_CHECKING:
    import torch

    from compress.inputs import Sampling


# ---- configs and families, without weights ------------------------------------------------------
@dataclass
class WeightsRead:
    """What the check of a teacher's weight files' headers read (TeacherSource.weights_read). model: the
    meta model (plan.meta_model) io_source_recipe.check_weights checked the headers against, which
    make_plan takes (once: it applies the passes to it) instead of building it and reading the headers
    again; dtypes: {weight file: its header's dtype names} of the files io_headers.check_teacher_weights
    read, which the export's dtype warning reads (TeacherSource.dtype_names) instead of the files."""

    model: torch.nn.Module | None = None
    dtypes: dict[Path, set[str]] = field(default_factory=dict)


@dataclass
class TeacherSource:
    """A teacher source checked once (`kind`: check_source's), its config read once, on first use,
    without its weights: what plan and the checks pass along instead of checking the source and
    reading its config again. config_arg: --teacher-config; where: the start of an error about it
    (teacher_where); hub: a Hub id's transformer/config.json may be fetched; sampling: the recipe's
    calibration source checked against it (inputs.Sampling), where io_source_recipe.checked_sources made it;
    weights_read: what the check of its weight files' headers read (WeightsRead); config_place, config_key:
    where its config was given and by what, as errors about it name them (recipe_teacher_config.config_named's:
    a recipe's 'PATH:LINE' and 'teacher_config', else '' and the flag); planned: whether it is the teacher a
    plan is made for, whose shipped config read offline notes that run would refuse it (_note_not_fetched;
    not lora's read of its block counts)."""

    source: str
    kind: str
    config_arg: str | None = None
    where: str = ""
    hub: bool = True
    sampling: Sampling | None = field(default=None, compare=False, repr=False)
    config_place: str = field(default="", compare=False, repr=False)  # checked's `named`
    config_key: str = field(default="--teacher-config", compare=False, repr=False)
    weights_read: WeightsRead = field(default_factory=WeightsRead, compare=False, repr=False)
    planned: bool = field(default=True, compare=False, repr=False)  # False: read for a count, not planned (lora)

    @property
    def config_label(self) -> str:
        """How its config is named: '--teacher-config', or a recipe's 'PATH:LINE: teacher_config'."""
        return f"{self.config_place}: {self.config_key}" if self.config_place else self.config_key

    def dtype_names(self, f: Path) -> set[str]:
        """Weight file `f`'s header dtype names: those the weights check read (weights_read), else read now."""
        from compress.io_variants import safetensors_dtypes

        return self.weights_read.dtypes[f] if f in self.weights_read.dtypes else safetensors_dtypes(f)

    @functools.cached_property
    def config(self) -> dict:
        """Its diffusers config: a folder's (or its transformer/'s) config.json, a single file's
        (beside it, or --teacher-config), a toy's, the shipped one of a known Hub id (KNOWN_CONFIGS),
        with `hub` the Hub's transformer/config.json, else the Hugging Face cache's (a Hub id neither
        holds needs --teacher-config)."""
        from compress.io import read_config, read_json
        from compress.io_single_config import given_config, own_config

        if self.kind == "toy":
            from compress.toy.weights import toy_files

            return read_json(toy_files(self.source[4:])[0])
        if (file := self.config_file()) is not None:
            given = self.config_arg if self.kind != "folder" else None  # a folder reads its own
            config = (prefixed(self.where, own_config, file, self.source, self.kind) if given is None else
                      given_config(file, given, self.config_label))
            return self._transformer_config(config, file)
        if self.source in KNOWN_CONFIGS:
            self._note_not_fetched()
            known = resources.files("compress.configs").joinpath(KNOWN_CONFIGS[self.source])
            return json.loads(known.read_text(encoding="utf-8"))
        if self.hub:
            return hub_config(self.source)
        from compress.io_hub import cache_only, cached_config, hub_cache
        from compress.io_hub_cache import held_otherwise

        if (cached := cached_config(self.source)) is not None:  # downloaded before: no request is made
            return read_config(cached[0])
        held = held_otherwise(self.source)
        held = "" if held is None else f"; the cache holds {held}"
        meant = did_you_mean(self.source, typos_of(self.source, KNOWN_CONFIGS))  # an id whose config ships
        raise UserError(f"{self.where}cannot find a config for teacher '{self.source}' {cache_only('plan')}: plan "
                        f"reads the configs of local teachers, of Hub ids in the Hugging Face cache {hub_cache()} and "
                        f"of {', '.join(KNOWN_CONFIGS)}{held}; pass --teacher-config with its transformer's "
                        f"config.json{meant}")

    def _note_not_fetched(self) -> None:
        """A note where a known Hub id's shipped config is read (`hub` False: plan) offline with no copy of the
        repo in the Hugging Face cache: the plan stands, but run cannot fetch the weights (io_hub's refusal)."""
        from compress.io_hub import cached_config, hub_cache, offline

        try:
            if self.hub or not self.planned or not offline() or cached_config(self.source, lacking=True) is not None:
                return
        except UserError:  # a cache that holds it oddly: run says what
            return
        from compress.report import note

        note(f"{self.where}teacher {self.source} is planned from the config shipped with dit-compress; offline "
             f"(HF_HUB_OFFLINE) with no copy of it in the Hugging Face cache {hub_cache()}, run would refuse it: "
             "fetch it once online, or give a local folder or file")

    def _transformer_config(self, config: dict, file: Path) -> dict:
        """A single file's config (beside it, or --teacher-config) names a transformer's class: one of
        no transformer's would be read as the class's defaults (a folder's says its class as it loads)."""
        if self.kind != "folder":  # a file's, or a Hub id's --teacher-config
            from compress.io_single import config_family

            where, key = self.config_where()
            prefixed(where, config_family, config, file, Path(self.source).expanduser(), key)
        return config

    def config_file(self) -> Path | None:
        """The local config.json of a folder, a single file or --teacher-config; None for the others."""
        from compress.io import transformer_folder
        from compress.io_single_config import config_file

        path = Path(self.source).expanduser()
        if self.kind == "folder":
            return transformer_folder(path) / "config.json"
        if self.kind == "file" or self.config_arg:
            return prefixed(self.where, config_file, path, self.config_arg)
        return None

    def family(self) -> tuple[str, str] | None:
        """(family, class name) from its config (or, for a .safetensors file, its tensor names,
        checked against its config where it has one); None for a pickle or a file whose names do
        not tell (its loader checks it)."""
        from compress.arch import family_of_class, get_adapter

        if self.kind == "toy":
            family = self.source[4:]
        elif self.kind == "file":
            family = self._file_family()
            if family is None:
                return None
        else:
            from compress.io import GIVE_HUB, supported_class

            config = self.config  # its errors are said after `where` already: not twice
            file = self.config_file() if self.kind == "folder" else None  # a Hub id's: the id as given
            shown = (f"'{self.source}'", GIVE_HUB) if file is None else None
            family = prefixed(self.where, lambda: family_of_class(supported_class(config, file, shown)))
            if self.kind == "folder":
                self._check_weights_family(config)
        return family, get_adapter(family).class_name

    def _check_weights_family(self, config: dict) -> None:
        """A transformer folder whose safetensors weights (their header names: io_single.detect_family) are
        another family's than its config.json describes is refused as such (io_single.check_config_family),
        not as a teacher of the config's family ('set model: flux') nor, after that, as missing keys: its
        config.json's _class_name to fix, or the right folder to give. Nothing read of an output's, or of
        .bin weights; weights that do not tell, or do not open, are left to check_weights and the load."""
        from compress.io import transformer_folder
        from compress.io_headers import safetensors_weights
        from compress.io_single import detect_family
        from compress.stream_files import weight_map

        folder = transformer_folder(Path(self.source).expanduser())
        if "compression" in config or not safetensors_weights(folder):
            return
        try:
            family = detect_family(list(weight_map(folder)))
        except UserError:
            return
        prefixed(self.where, check_folder_family, family, config, folder)

    def has_config(self) -> bool:
        """Whether a config is at hand to read: a single file's only with --teacher-config or beside it."""
        path = Path(self.source).expanduser()
        return self.kind != "file" or bool(self.config_arg) or (path.parent / "config.json").is_file()

    def _file_family(self) -> str | None:
        from compress.io_single import check_config_family, detect_family, file_family

        path = Path(self.source).expanduser()
        has_config = self.has_config()
        config = self.config if has_config else None  # one of no transformer's is refused, a pickle's too
        family = file_family(path)  # the header's tensor names
        if family is None and path.suffix == ".safetensors" and not has_config:  # names of no transformer,
            # and no config to tell the family (with one, its loader checks the names: a toy Flux of no
            # single blocks has none that say Flux)
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                prefixed(f"{self.where}{path}: ", lambda: detect_family(list(f.keys())))
        if family is not None and has_config:
            where, key = self.config_where()
            prefixed(where, check_config_family, family, config, self.config_file(), path, key)
        return family

    def config_where(self) -> tuple[str, str]:
        """(where an error about its config is said, what gave that config as the advice names it): a
        recipe's teacher_config: key ('PATH:LINE: ', 'teacher_config'), else the teacher's place and the flag."""
        if self.config_arg and self.config_place:
            return f"{self.config_place}: ", self.config_key
        return self.where, self.config_key


def typos_of(word: str, options, most: int = 2) -> list[str]:
    """The `options` `word` is a typo of: at most `most` letters added, dropped or changed, case aside
    (PixArt-Sigma-XL-2-1024-MSS of -MS), not another name near it (FLUX.1-schnell is no FLUX.1-dev)."""
    def edits(a: str, b: str) -> int:  # Levenshtein distance, one row at a time
        row = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            row, last = [i], row
            for j, y in enumerate(b, 1):
                row.append(min(last[j] + 1, row[j - 1] + 1, last[j - 1] + (x != y)))
        return row[-1]

    return [o for o in options if edits(word.lower(), o.lower()) <= most]


def checked(source: str, config: str | None = None, where: str = "", hub: bool = True,
            recipe_dir: Path | None = None, stream: bool = False,
            named: tuple[str, str] = FLAG_NAMED) -> TeacherSource:
    """`source` checked (check_source), as a TeacherSource; see there for the arguments. A
    --teacher-config a toy or folder teacher does not read is said, not silently dropped (`named`:
    where it was given and by what, as the warning names it: a recipe's ('PATH:LINE', 'teacher_config'))."""
    kind = check_source(source, where, recipe_dir, stream)
    src = TeacherSource(source, kind, config, where, hub, config_place=named[0], config_key=named[1])
    if kind == "hub":
        warn_if_beside_recipe(source, where, recipe_dir)
    if config and kind in ("toy", "folder"):
        from compress.report import warn

        what = "a toy teacher" if kind == "toy" else "a folder with its own config.json"
        found = ("" if Path(config).expanduser().exists()
                 else f" (nor found: {os.path.abspath(Path(config).expanduser())})")
        warn(f"{src.config_label} {config} is not read{found}: teacher {source} is {what} "
             f"({src.config_key} is the diffusers config of {READS})")
    return src


def warn_if_beside_recipe(source: str, where: str, recipe_dir: Path | None) -> None:
    """A warning where a teacher read as a Hub id (OWNER/NAME, no such path here) is a path from
    the recipe's folder: relative paths are taken from the current folder (not_found)."""
    if recipe_dir is None or Path(source).expanduser().is_absolute():
        return
    there = os.path.abspath(Path(recipe_dir) / Path(source).expanduser())
    if Path(there).exists():
        from compress.report import warn

        warn(f"{where}teacher {source} is read as a Hugging Face id: there is no {os.path.abspath(source)} (a "
             "recipe's relative teacher path is taken from the current folder, not the recipe's), but there is "
             f"{there}: give that path to use it")


def hub_config(repo_id: str) -> dict:
    """The transformer config of a Hub repo where a local copy of the repo has it (io.transformer_place's
    rule, by the Hub's file list): a pipeline's transformer/config.json, or a transformer-only repo's
    config.json (a few KB; io_hub.hub_config_file)."""
    from compress.io import read_config
    from compress.io_hub import hub_config_file

    return read_config(hub_config_file(repo_id)[0])


def source_family(source: str, config: str | None = None, where: str = "",
                  hub: bool = True) -> tuple[str, str] | None:
    """(family, class name) of a teacher source without reading weights (TeacherSource.family)."""
    return checked(source, config, where, hub).family()


def check_folder_family(family: str, config: dict, folder: Path) -> None:
    """A transformer `folder` whose weights are a `family` transformer has a config.json of that family
    (io_single.config_family); an io_single.OtherConfig naming both and what to do otherwise."""
    from compress.arch import get_adapter
    from compress.io_single import OtherConfig, config_family

    described = config_family(config, folder / "config.json", folder)
    if described != family:
        raise OtherConfig(f"{folder}: its weights are a {family} transformer while its config.json describes a "
                          f"{described} one ({config.get('_class_name')}): fix its _class_name (a {family} "
                          f"transformer's is {get_adapter(family).class_name}) or give the right folder")
