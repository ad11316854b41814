"""`dit-compress inspect`: its table by block counts every parameter, so its rows add up to what the
output's weight files hold."""

import json
import re

import pytest
from safetensors.torch import load_file

from compress.cli import main
from compress.io_export import save_compressed
from tests.conftest import factorize, tiny_flux, tiny_pixart


def _table_rows(printed: str, title: str) -> dict[str, list[str]]:
    """label -> cells of the rows of the table `title` in inspect's printed output."""
    lines = printed[printed.index(title):].splitlines()
    rows = {}
    for line in lines[1:]:
        if rows and not line.startswith(("│", "┏", "┃", "┡")):
            break
        if line.startswith("│"):
            cells = [c.strip() for c in line.strip("│").split("│")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("family, model, layer", [("pixart", tiny_pixart, "transformer_blocks.0.attn1.to_q"),
                                                  ("flux", tiny_flux, "transformer_blocks.0.attn.to_q")])
def test_the_table_by_block_adds_up_to_what_the_weight_files_hold(tmp_path, capsys, family, model, layer):
    """The rows counted the linears only: each PixArt block was short its scale_shift_table, each
    Flux block its norms, the top level its patch embedding and norms."""
    out = save_compressed(factorize(model(), [layer], rank=2), tmp_path / "out")
    held = sum(t.numel() for t in load_file(str(out / "diffusion_pytorch_model.safetensors")).values())
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _table_rows(printed, "by block")
    assert "top level" in rows and len(rows) > 3
    assert list(rows)[-1] == "top level"  # last for both families: Flux's came first, PixArt's last
    assert sum(int(cells[1].replace(",", "")) for cells in rows.values()) == held
    assert "by block (all parameters)" in printed
    first = next(label for label in rows if label != "top level")
    assert rows[first][0] == "1" and rows[first][2] != "100.0%"  # the factorized to_q, of the whole block


@pytest.mark.parametrize("family, model, layer", [("pixart", tiny_pixart, "transformer_blocks.0.attn1.to_q"),
                                                  ("flux", tiny_flux, "transformer_blocks.0.attn.to_q")])
def test_the_table_by_block_names_blocks_as_the_table_by_layer_does(tmp_path, capsys, family, model, layer):
    """The per-layer table heads a block `transformer_blocks.0`, the table by block called it `blocks.0`
    (Flux: `double.0`, `single.0`): by block now names each by its module, as the weights do; Flux's
    double and single blocks stay apart (transformer_blocks, single_transformer_blocks)."""
    out = save_compressed(factorize(model(), [layer], rank=2), tmp_path / "out")
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    headings = {line.strip("│ ").split()[0] for line in printed[:printed.index("by role")].splitlines()
                if re.match(r"│ \w+\.\d+ ", line)}
    labels = set(_table_rows(printed, "by block")) - {"top level"}
    blocks = {"pixart": ["transformer_blocks"], "flux": ["transformer_blocks", "single_transformer_blocks"]}[family]
    assert labels == {f"{b}.{i}" for b in blocks for i in range(len(getattr(model(), b)))}
    assert headings <= labels and "transformer_blocks.0" in headings


@pytest.fixture
def wide_terminal(monkeypatch):
    """inspect on a terminal wide enough for each of its notes whole (on a narrower one note_lines breaks
    them at their spaces: tests/test_report_fit.py, test_inspect_tables.py)."""
    from compress.report import results

    monkeypatch.setattr(results, "_width", 400)


def _removed(model, drop: dict[str, list[int]]):
    """`model` less the blocks `drop` names, with the block map a run records (config.json)."""
    from compress.arch import get_adapter

    model.compression_meta = {"block_map": get_adapter(model).remove_blocks(model, drop)}
    return model


def _removal_report(before: dict[str, int], removed: dict[str, list[int]]) -> str:
    return json.dumps({"remove_blocks": {"criterion": None, "iterative": False, "removed": removed,
                                         "blocks_before": before}})


def test_inspect_s_tables_say_of_dense_is_of_the_student_s_own_layers(tmp_path, capsys):
    """'of dense' is kept / the student's remaining layers held dense, not plan's base (the teacher's
    parameters, removed blocks included: a toy Flux's modulation read 7.7% in plan, 8.4% here), and
    neither table said which; both tables now say theirs under them, their numbers unchanged."""
    student = factorize(_removed(tiny_pixart(), {"blocks": [1]}), ["transformer_blocks.0.ff.net.0.proj"], rank=2)
    out = save_compressed(student, tmp_path / "out", files={"report.json": _removal_report({"blocks": 3},
                                                                                        {"blocks": [1]})})
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    proj, out_proj = 16 * 64 + 64, 64 * 16 + 16  # each of the 2 blocks left: ff.net.0.proj 16 -> 64, ff.net.2
    kept = 2 * (16 + 64) + 64 + proj + 2 * out_proj  # block 0's proj at rank 2: 3,392 params
    assert _table_rows(printed, "by role")["mlp"] == ["1", f"{kept:,}", f"{kept / (2 * (proj + out_proj)):.1%}"]
    words = " ".join(printed.split())
    assert ("by role (linear layers) " in words and "of dense: params / the same layers of this student held dense "
            "(removed blocks not counted; plan's ratio is of the teacher's)" in words), words
    assert "of dense: params / the same block of this student held dense" in words


@pytest.mark.parametrize("family, model, drop, before, said, mapped, moved", [
    ("pixart", tiny_pixart, {"blocks": [1]}, {"blocks": 3}, "transformer_blocks [1] (3 → 2)",
     "transformer_blocks.1 ← 2", "blocks.1"),
    ("flux", tiny_flux, {"double": [0], "single": [2]}, {"double": 2, "single": 3},
     "transformer_blocks (double) [0] (2 → 1); single_transformer_blocks (single) [2] (3 → 2)",
     "transformer_blocks.0 ← 1", "double.0")])
def test_inspect_of_a_block_pruned_output_names_the_removed_teacher_blocks(tmp_path, capsys, wide_terminal, family,
                                                                          model, drop, before, said, mapped, moved):
    """The tables named student blocks only, nothing said blocks were removed (nor which teacher
    block each student block is), an empty factorization table came though no svd pass ran, and
    --json had no block map. A last block removed (single 2) shows only by report.json's count.
    The lines name blocks by module as the tables do ('double 0 (2 → 1)', 'double.0 ← 1' were the
    group labels), the recipe's group beside them where the family has several; --json keeps its
    labels (`moved`)."""
    student = _removed(model(), drop)
    out = save_compressed(student, tmp_path / "out", files={"report.json": _removal_report(before, drop)})
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"blocks removed from the teacher: {said}" in printed
    assert f"(student ← teacher index): {mapped}" in printed
    assert f"{mapped.split(' ←')[0]} (teacher {mapped[-1]})" in _table_rows(printed, "by block")
    assert "factorization (the svd pass" not in printed and "no svd pass" in printed
    assert main(["inspect", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["block_map"] == student.compression_meta["block_map"] and data["removed_blocks"] == {
        g: drop.get(g, []) for g in data["block_map"]}
    assert {r["teacher_block"] for r in data["layers"] if r["block"] == moved} == {f"{moved[:-1]}{mapped[-1]}"}


def _layer_names(printed: str) -> dict[str, list[str]]:
    """Title -> the full layer names of each per-layer table in `printed`, rebuilt from its layer
    column: a name goes on to the next line only after a '.' or '_' (a heading's note "(teacher 2)"
    may take a line of its own); a heading (a row of no other cells) names the block of the
    indented rows under it."""
    tables, title, lines = {}, None, printed.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("┏") and "layer" in lines[i + 1]:
            title, entries = lines[i - 1], []
            tables[title] = entries
        elif title and line.startswith("└"):
            title = None
        elif title and line.startswith("│"):
            first, *rest = line.strip("│").split("│")
            text, empty = first[1:].rstrip(), not any(c.strip() for c in rest)
            if entries and (entries[-1][0].endswith((".", "_")) or text.strip().startswith("(")):
                sep = " " if text.strip().startswith("(") else ""
                entries[-1] = (entries[-1][0] + sep + text.strip(), entries[-1][1])
            else:
                entries.append((text, empty))
    names = {}
    for title, entries in tables.items():
        names[title], block = [], ""
        for text, heading in entries:
            if text.startswith("  "):
                names[title].append(f"{block}.{text.strip()}")
            elif heading:
                block = text.split(" (teacher")[0]
            else:
                names[title].append(text)
    return names


@pytest.mark.parametrize("model, layer", [(tiny_pixart, "transformer_blocks.1.attn1.to_out.0"),
                                          (tiny_flux, "single_transformer_blocks.1.attn.to_q")])
def test_inspect_at_80_columns_keeps_every_layer_name_whole_and_distinct(tmp_path, capsys, monkeypatch,
                                                                        model, layer):
    """At 80 columns (a terminal, or a pipe) names were cut mid-word to the column: two layers
    showed as "adaln_single.emb.timeste", a heading as "transformer_blo" / "cks.0". Now they fold
    after a '.' (a '_'), so each table's names read back whole, as the model's, one per layer."""
    from compress.arch import get_adapter
    from compress.report import results

    student = _removed(factorize(model(), [layer], rank=2), {"blocks": [0]} if model is tiny_pixart else
                       {"single": [0]})
    layer = get_adapter(student).renumbered(layer, student.compression_meta["block_map"])
    record = {"rank": 2, "method": "whitened", "loss": 1.0, "optimal_loss": 1.0, "loss_ratio": 1.0,
              "energy_kept": 0.9, "rel_output_error": 0.1, "time_s": 0.5}
    out = save_compressed(student, tmp_path / "out",
                          files={"report.json": json.dumps({"svd": {"method": "whitened", "layers": {layer: record}}})})
    monkeypatch.setattr(results, "_width", 80)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines() if line[:1] in "┏┃┡│└") <= 80
    names = _layer_names(printed)
    linears = [info.name for info in get_adapter(student).linears(student)]
    assert len(names) == 2  # the rank budget of all, the factorization of the measured
    budget, measured = names.values()
    assert budget == linears and measured == [layer]


def test_inspect_says_each_methods_loss_ratio_and_never_inf(tmp_path, capsys):
    """An asvd run's ratios (to the output-weighted optimum; Infinity where that is 0, in a report
    of before) came as "whitened loss / optimal loss over N factorized layers: max inf"."""
    names = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k",
             "transformer_blocks.1.attn1.to_q", "transformer_blocks.1.attn1.to_k"]
    student = factorize(tiny_pixart(), names, rank=2)
    layers = {n: {"rank": 2, "loss": 1.0, "optimal_loss": 0.0, "loss_ratio": ratio, "time_s": 0.1}
              for n, ratio in zip(names, [1.25, float("inf"), None, 1.5])}
    layers[names[3]]["method"] = "whitened"  # a layer's own method over the pass's
    report = json.dumps({"svd": {"method": "asvd", "layers": layers}})  # json writes inf as Infinity
    out = save_compressed(student, tmp_path / "out", files={"report.json": report})
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "whitened loss / optimal loss over 1 whitened layer: max 1.500000" in printed  # it said "1 whitened layers"
    assert "asvd loss / optimal loss over 1 asvd layer: max 1.250000 (2 more" in printed
    assert not re.search(r"\binf\b", printed, re.IGNORECASE)


def test_inspect_of_a_damaged_block_map_is_one_line_naming_the_file(tmp_path, capsys):
    """The block map inspect now reads is checked: a block_map.json of no group mapping is the
    output's damage, said in one line naming the file, not a traceback."""
    out = save_compressed(tiny_pixart(), tmp_path / "out", files={"block_map.json": "[0, 2]\n"})
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 2
    err = capsys.readouterr().err
    assert "block_map.json: block_map is [0, 2], not a mapping" in err and "Traceback" not in err


def _sharded(out):
    """`out`'s single weight file split into two shards and their index, as a streamed run writes them."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from compress.io import INDEX, WEIGHTS
    from compress.stream import shard_name

    with safe_open(str(out / WEIGHTS), "pt") as f:
        metadata, names = f.metadata(), sorted(f.keys())
    tensors = load_file(out / WEIGHTS)
    weight_map = {}
    for j, part in enumerate((names[: len(names) // 2], names[len(names) // 2:]), start=1):
        save_file({k: tensors[k] for k in part}, str(out / shard_name(j, 2)), metadata=metadata)
        weight_map.update(dict.fromkeys(part, shard_name(j, 2)))
    (out / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (out / WEIGHTS).unlink()
    return out


def test_inspect_of_a_missing_path_or_a_file_says_so_and_of_another_folder_names_both_layouts(tmp_path, capsys):
    """`inspect nonexist` said "is not a dit-compress output folder (needs config.json and
    diffusion_pytorch_model.safetensors)", untrue of a sharded (streamed) output; eval and bench say
    there is no such thing."""
    assert main(["inspect", str(tmp_path / "nonexist")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"no such folder {tmp_path / 'nonexist'} "
                                                    "(dit-compress inspect OUT, OUT written by run)")
    (tmp_path / "f").write_text("")
    assert main(["inspect", str(tmp_path / "f")]) == 2
    assert "f is a file: inspect takes an output folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert ("is not a dit-compress output folder (needs config.json and diffusion_pytorch_model.safetensors or "
            "diffusion_pytorch_model.safetensors.index.json)") in err and "Traceback" not in err


def test_inspect_reads_a_sharded_output(tmp_path, capsys):
    names = ["transformer_blocks.0.attn1.to_q", "transformer_blocks.1.ff.net.2"]
    one = save_compressed(factorize(tiny_pixart(), names, rank=2), tmp_path / "one")
    assert main(["inspect", str(one), "--json"]) == 0
    whole = json.loads(capsys.readouterr().out)["layers"]
    sharded = _sharded(save_compressed(factorize(tiny_pixart(), names, rank=2), tmp_path / "sharded"))
    assert main(["inspect", str(sharded), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["layers"] == whole


@pytest.mark.parametrize("key", ["weighting", "objective"])  # objective: a report.json written before weighting
def test_inspect_says_which_metric_each_column_is_in_and_whose_optimum_the_ratio_is_against(tmp_path, capsys, key):
    """energy, loss and optimal are in the Fisher-weighted metric of W + βΔ under the defaults while rel err
    is the plain error against W (energy 1.0000, loss 0 and rel err 0.0557 on one layer read as a
    contradiction), and 'max 1.000000' read as the exact Fisher's optimum: lines under the table now say
    which metric each column is in and that the optimum is of the Fisher estimated from 4 probes. The same
    of a report whose layers name their weighting `objective` (finished runs' report.json before weighting)."""
    name = "transformer_blocks.0.attn1.to_q"
    record = {"rank": 2, "method": "whitened", "loss": 0.0, "optimal_loss": 0.0, "loss_ratio": 1.0,
              "energy_kept": 1.0, "rel_output_error": 0.0557, "time_s": 0.5, key: "output-weighted",
              "compensation_step": 0.25}
    report = {"svd": {"method": "whitened", "fisher": "all", "fisher_probes": 4, "layers": {name: record}}}
    out = save_compressed(factorize(tiny_pixart(), [name], rank=2), tmp_path / "out",
                          files={"report.json": json.dumps(report)})
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert ("columns energy, loss, optimal, loss/opt are in each layer's factorization objective, its output error "
            "on its calibration inputs: weighted, for 1 layer, by the final prediction's output Fisher F, estimated "
            "from 4 random probes (svd.fisher_probes) and damped to F + λI (svd.fisher_damping); of W + βΔ, for 1 "
            "compensated layer (its weight plus its compensation step)") in printed, printed
    assert "column rel err is each layer's plain output error ‖(W − W')x‖ / ‖Wx‖" in printed
    assert ("whitened loss / optimal loss over 1 whitened layer: max 1.000000; optimal: the optimum of each "
            "layer's objective with its output Fisher estimated from 4 random probes") in printed


def test_inspect_of_an_output_that_took_loras_says_so_and_what_they_did_to_its_layers(tmp_path, capsys):
    """An output that took a LoRA (dit-compress lora) showed its grown layers' new ranks, '-' for their
    factorization numbers and the svd pass's time, and said nothing of the LoRA. A line now names the
    LoRAs, as config.json records them, and how many factorized layers grew or were stored dense."""
    pytest.importorskip("peft")
    from tests.test_lora_limits import _one_layer_lora_output

    out, lora = _one_layer_lora_output(tmp_path, dense=True)
    assert main(["lora", str(out), str(lora), str(tmp_path / "new"), "--scale", "0.5"]) == 0
    assert main(["lora", str(tmp_path / "new"), str(lora), str(tmp_path / "new2")]) == 0
    capsys.readouterr()
    said = {}
    for folder in (out, tmp_path / "new", tmp_path / "new2"):
        assert main(["inspect", str(folder)]) == 0
        said[folder.name] = " ".join(capsys.readouterr().out.split())
    assert "dit-compress lora" not in said["out"]
    grown = "1 factorized layer grew by {} and 1 was stored dense (past break-even): the factorization columns " \
            "show - for them, their time is the svd pass's"
    assert f"1 LoRA merged after the run (dit-compress lora or " \
           f"compress.merge_lora): {lora.resolve()} at scale 0.5 (2 layers); " \
           f"{grown.format('its rank')} by role" in said["new"], said["new"]
    assert f"2 LoRAs merged after the run (dit-compress lora or " \
           f"compress.merge_lora): {lora.resolve()} at scale 0.5 (2 layers), " \
           f"{lora.resolve()} at scale 1 (2 layers); {grown.format('their ranks')}" in said["new2"]
    (tmp_path / "new" / "report.json").unlink()  # no svd ranks to compare with: what merging does, said
    assert main(["inspect", str(tmp_path / "new")]) == 0
    assert "(2 layers); any factorized layer it adapts grew by its rank (stored dense where that passed " \
           "break-even) by role" in " ".join(capsys.readouterr().out.split())


def test_inspect_of_a_hub_id_reads_the_caches_output_or_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    """`inspect ORG/NAME` said "ORG/NAME: no such output folder" though the Hugging Face cache held
    that output (load_transformer, eval and the teachers read the cache's copy of an id): it is read;
    not cached, one line says what inspect reads and how to download it; cached but no output, says so."""
    from huggingface_hub import constants

    from tests.pipelines import hub_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.ff.net.2"], rank=2), tmp_path / "made")
    hub_cache(tmp_path / "hub", "acme/out", tmp_path / "made")
    assert main(["inspect", "acme/out", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert {r["name"]: r["rank"] for r in rows if r["rank"] is not None} == {"transformer_blocks.0.ff.net.2": 2}
    assert main(["inspect", "acme/other"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dit-compress inspect: error: acme/other: no such output folder, and the Hugging Face cache {tmp_path / 'hub'} "
        "holds no copy of it: inspect reads a local output folder or the cache's copy of a Hub id; download it "
        "(hf download acme/other) and give acme/other again, or give a local folder")
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    hub_cache(tmp_path / "hub", "acme/teacher", tmp_path / "teacher")
    assert main(["inspect", "acme/teacher"]) == 2
    assert re.search(r"acme/teacher: the Hugging Face cache holds it at \S+/models--acme--teacher/snapshots/0+, "
                     r"which is no dit-compress output", capsys.readouterr().err)


@pytest.mark.parametrize("model, stages, said", [
    (tiny_flux, ["double 0 attention", "single 1 mlp", "top level"],
     ["transformer_blocks.0 attention", "single_transformer_blocks.1 mlp", "top level"]),
    (tiny_pixart, ["blocks 1 attention (svd pass 2)"], ["transformer_blocks.1 attention (svd pass 2)"])])
def test_inspect_names_compensation_stages_by_module(tmp_path, capsys, wide_terminal, model, stages, said):
    """report.json keys compensation stages by group label ('double 0 attention'), which inspect
    printed as they were beside tables naming the block transformer_blocks.0: now by module name."""
    search = {"uncompensated_error": 0.5, "calibration_error": 0.25, "step": 0.5}
    report = {"svd": {"compensation": {stage: search for stage in stages}}}
    out = save_compressed(model(), tmp_path / "out", files={"report.json": json.dumps(report)})
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("compensation ")]
    assert printed == [f"compensation {s}: calibration error 0.5000 → 0.2500 (step 0.5 of the K-FAC Newton step)"
                       for s in said]


def test_inspect_of_an_outputs_weight_file_names_its_folder_as_eval_and_bench_do(tmp_path, capsys):
    """inspect OUT/diffusion_pytorch_model.safetensors said 'OUT/diffusion_pytorch_model.safetensors is a
    file: inspect takes an output folder', where eval and bench name the output it is the weight file of."""
    out = save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q"], rank=2), tmp_path / "out")
    weights = out / "diffusion_pytorch_model.safetensors"
    assert main(["inspect", str(weights)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dit-compress inspect: error: {weights} is a weight file of the dit-compress output {out}: give that folder, "
        "which loads it with its ranks and block map")


def test_inspect_at_40_columns_folds_no_lone_index_and_names_only_the_columns_it_shows(tmp_path, capsys, monkeypatch):
    """At 40 columns the factorization table folded 'attn1.to_out.' / '0' (a lone index) where the
    budget table gave 'attn1.' / 'to_out.0', and its caption said 'columns energy, loss, optimal,
    loss/opt are in each layer's factorization objective' of three columns it had left out."""
    from compress.report import results

    layer = "transformer_blocks.1.attn1.to_out.0"
    record = {"rank": 2, "method": "whitened", "loss": 1.0, "optimal_loss": 1.0, "loss_ratio": 1.0,
              "energy_kept": 0.9, "rel_output_error": 0.1, "time_s": 0.5, "objective": "output error"}
    out = save_compressed(factorize(tiny_pixart(), [layer], rank=2), tmp_path / "out",
                          files={"report.json": json.dumps({"svd": {"method": "whitened", "layers": {layer: record}}})})
    monkeypatch.setattr(results, "_width", 40)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    cells = [line.split("│")[1].strip() for line in printed.splitlines() if line.startswith("│")]
    assert "0" not in cells and "attn1.to_out." not in cells and cells.count("to_out.0") >= 2
    said = " ".join(printed.split())
    left_out = said[said.index("factorization"):].split(" left out to fit 40")[0].rsplit("columns ", 1)[1].split(", ")
    assert "energy" in left_out, said
    assert "column loss/opt is in each layer's factorization objective" in said, said
    assert not re.search(r"columns? [a-z/, ]*energy[a-z/, ]* (is|are) in each layer's factorization", said)


@pytest.mark.parametrize("report", [False, True])
def test_inspect_of_a_re_saved_output_reads_the_removed_blocks_config_json_records(tmp_path, capsys, report):
    """An output re-saved (load_transformer(out).save_pretrained(d), save_compressed) has no report.json:
    inspect said 'blocks removed from the teacher: none' though config.json records the block map and the
    teacher's block counts (compression.teacher_blocks). report.json's counts come first where both are."""
    student = _removed(tiny_flux(), {"single": [2]})
    student.compression_meta["teacher_blocks"] = {"double": 2, "single": 3 if not report else 9}
    files = {"report.json": _removal_report({"double": 2, "single": 3}, {"single": [2]})} if report else None
    out = save_compressed(student, tmp_path / "out", files=files)
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    said = "blocks removed from the teacher: single_transformer_blocks (single) [2] (3 → 2)"
    assert said in capsys.readouterr().out
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed_blocks"] == {"double": [], "single": [2]}
