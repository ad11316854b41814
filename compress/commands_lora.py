"""The `lora` command: a compressed output with a teacher's LoRA merged into it (compress.lora), written
as a new output folder beside the old one, its report and model card noting the LoRA; load, call, print."""

from __future__ import annotations

import json
from pathlib import Path

from compress import json_read
from compress.arch import get_adapter
from compress.errors import UserError
from compress.io import read_config
from compress.io_output import load_transformer, output_folder
from compress.report import results
from compress.words import counted


def with_lora_noted(files: dict[str, str], model, lora_source: str, scale: float, done: dict) -> dict[str, str]:
    """The copied report and model card of an output that took a LoRA: the report's student_params
    are the merged model's (its grown factors included) and it lists the LoRA (`lora_source`: as the
    config records it) with the layers it left out (removed blocks, text encoder) or stored dense; the
    card says so, its parameters line the merged model's and its errors said to be of the weights before
    (report_card.lora_card; inspect reads them so from report.json's `loras`)."""
    from compress.report import param_count
    from compress.report_card import lora_card

    files, params, report = dict(files), param_count(model), None
    if "report.json" in files:
        try:
            report = json_read.parse(files["report.json"])
        except ValueError:
            report = None  # a damaged copy stays as it was (inspect says what it cannot use)
        if isinstance(report, dict):
            report["student_params"] = params
            took = report.get("loras")  # a damaged copy's (null, text) left for the list of this one
            report["loras"] = (took if isinstance(took, list) else []) + [{
                "lora": str(lora_source), "scale": scale, "merged": done["merged"], "rank_added": done["rank_added"],
                "densified": done["densified"], "dropped": done["dropped"], "not_merged": done["not_merged"],
                "blocks_of": done.get("blocks_of")}]
            if isinstance(report.get("export"), dict):  # its error and `exact` are of the weights before the merge
                report["export"]["before_loras"] = True
            files["report.json"] = json.dumps(report, indent=2, default=str) + "\n"
    if "README.md" in files:
        if isinstance(report, dict):  # its headline's parameters the merged model's; its errors of the weights before
            files["README.md"] = lora_card(files["README.md"], report)
        files["README.md"] += (f"\nA LoRA was merged in afterwards (`dit-compress lora`): `{lora_source}` at scale "
                               f"{scale:g}, {counted(done['merged'], 'layer')}; parameters now {params:,}. The "
                               "per-layer numbers in report.json are those of the factorization, before it.\n")
    return files


# what keeps a merged weight beyond the dtype lora writes it in (io_export.export_cast's refusal): the output's own,
# as its config.json records it (_recorded_dtype), its run's export.dtype
LORA_ADVICE = ("merge at a smaller --scale, or into an output exported as bfloat16 or float32 (export.dtype): lora "
               "writes the dtype the output records (its config.json's compression.dtype)")


def lora(args) -> int:
    """A compressed output with a teacher's LoRA merged into it (compress.lora), written as a new
    output folder beside the old one (its recipe, report, block map and model card copied); its --scale is
    checked before (cli_checks._check_scale)."""
    from compress.io_export import save_compressed
    from compress.io_output import hub_output
    from compress.lora import merge_lora
    from compress.lora_teacher import check_given
    from compress.output_names import new_folder_taken
    from compress.runner_lock import hold_output

    source, new = Path(args.out).expanduser(), Path(args.new).expanduser()
    if (taken := new_folder_taken(new, args.new, "lora writes a new output folder")) is not None:
        raise UserError(taken)
    check_given(args.teacher)  # a mistyped --teacher before the output loads
    if (hub := hub_output(args.out, "lora")) is not None:  # an ORG/NAME: as eval and load_transformer say it
        raise hub
    model = load_transformer(source)
    dtype = _recorded_dtype(source)  # a damaged record said before the merge
    files = {name: (source / name).read_text(encoding="utf-8")
             for name in ("recipe.yaml", "report.json", "block_map.json", "README.md") if (source / name).is_file()}
    done = merge_lora(model, args.lora, scale=args.scale, teacher=args.teacher, teacher_config=args.teacher_config)
    base = done.get("blocks_of")
    recorded = model.compression_meta["loras"][-1]["source"]  # absolute where local, as config.json records it
    noted = with_lora_noted(files, model, recorded, args.scale, done)
    with hold_output(new):  # as a run's: a run's start clears temp folders beside a free output
        save_compressed(model, new, dtype=dtype, files=noted, caller="lora", advice=LORA_ADVICE)
    added = done["rank_added"]
    grown = f", {counted(len(added), 'factorized one')} by rank {sorted(set(added.values()))}" if added else ""
    dense = f", {len(done['densified'])} stored dense (grown past break-even)" if done["densified"] else ""
    listed = noted.get("report.json") != files.get("report.json")  # the report took the LoRA's entry
    chained = base and base != model.compression_meta.get("teacher")
    read_as = f"; its blocks read as {base}'s" if chained else ""
    dropped = dropped_words(model, done["dropped"], listed, args.out, base if chained else None,
                            had_report="report.json" in files)
    results.print(f"wrote {new}: {counted(done['merged'], 'layer')} took the LoRA at scale {args.scale:g}{grown}"
                  f"{dense}{read_as}{dropped}")
    return 0


def dropped_words(model, dropped: list[str], listed: bool, source: str, base: str | None = None,
                  had_report: bool = False) -> str:
    """The end of lora's line: the LoRA layers in removed blocks, and where they are listed (`listed`:
    the copied report.json took the LoRA's entry); where the output `source` has no report (an output
    saved again with save_pretrained) or a damaged one (`had_report`: there, copied as it was), the
    teacher's blocks they were in are named here instead (`base`: the first teacher of a chain, whose
    blocks the LoRA's are)."""
    from compress.lora_keys import blocks_named

    if not dropped:
        return ""
    where = " (listed in report.json)" if listed else ""
    if not listed:
        blocks = [f"{g.attr}.{i}" for g in get_adapter(model).groups for i in sorted(set(blocks_named(g.attr, dropped)))]
        whose = f"{base}'s" if base else "the teacher's"
        why = f"{source}'s report.json is damaged, so they are not listed in it" if had_report else \
            f"{source} has no report.json to list them in"
        where = f" ({whose} {', '.join(blocks)}; {why})"
    return f"; {len(dropped)} of its layers {'was' if len(dropped) == 1 else 'were'} in removed blocks{where}"


def _recorded_dtype(out: Path):
    """The dtype the output at `out` records it was exported in (its config.json's compression.dtype):
    `lora` writes its output in it again, as run did; None where it records none (no compression section,
    or one that is no mapping, which load_transformer refuses first). A record that names no floating
    dtype (a damaged config.json) a one-line UserError naming the file and the key."""
    from compress.dtype_range import DTYPES
    from compress.io_output import as_dtype

    file = output_folder(out) / "config.json"
    compression = read_config(file).get("compression")
    recorded = compression.get("dtype") if isinstance(compression, dict) else None
    if recorded is None:
        return None
    if not isinstance(recorded, str) or recorded.removeprefix("torch.") not in DTYPES:
        raise UserError(f"{file}: compression.dtype is {json.dumps(recorded)}, not the name of a floating dtype "
                        f"({', '.join(DTYPES)}): a damaged config.json; remove that key (lora then keeps the dtype "
                        "its weights load in)")
    return as_dtype(recorded)

