"""`lora` (compress/commands_lora.py) through the CLI: its options checked in one line before anything
loads. What it merges is tested in test_lora*.py."""

import pytest

from compress.cli import main


def test_lora_scale_given_no_number_is_a_one_line_error(tmp_path, capsys):
    """`dit-compress lora OUT LORA NEW --scale=--` was a traceback (argparse hands over [])."""
    capsys.readouterr()
    (tmp_path / "out").mkdir()  # an output not there is refused first (cli_checks._check_paths_there)
    assert main(["lora", str(tmp_path / "out"), str(tmp_path / "lora"), str(tmp_path / "new"), "--scale=--"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--scale needs a number" in err and not (tmp_path / "new").exists()


def test_a_lora_d_outputs_card_report_and_inspect_tell_of_the_merged_weights(tmp_path, capsys):
    """T5: the output of `lora` kept its source's headline ('Parameters: 881,168 ...', it held 890,384) and
    said 'The output holds the weights measured above, exactly, in float32' of the weights before the merge
    (card, inspect, report.json's export). Now the headline is the output's own, and the card, inspect and
    report.json say the errors are of the weights before the LoRA."""
    import copy
    import json
    from types import SimpleNamespace

    from compress.io_export import save_compressed
    from compress.report import param_count
    from compress.report_card import model_card
    from tests.conftest import factorize, tiny_pixart
    from tests.test_lora_limits import _save, _state

    base = tiny_pixart()
    base.save_pretrained(tmp_path / "base")
    student = factorize(copy.deepcopy(base), ["transformer_blocks.0.attn1.to_q"], 2)
    params = param_count(student)
    report = {"teacher": str(tmp_path / "base"), "teacher_params": param_count(base), "student_params": params,
              "stages": [{"pass": "svd", "params": params, "relative_error": 0.25, "seconds": 1.0}],
              "export": {"dtype": "float32", "computed_in": "float32", "exact": True, "relative_error": 0.25}}
    card = model_card(SimpleNamespace(model="pixart"), report)
    out = save_compressed(student, tmp_path / "out", extra={"teacher": str((tmp_path / "base").resolve())},
                          files={"report.json": json.dumps(report), "README.md": card})
    state = _state(copy.deepcopy(base), ["attn1.to_q"], rank=2)
    lora = _save({k: v for k, v in state.items() if ".transformer_blocks.0." in k}, tmp_path / "l.safetensors")
    assert main(["lora", str(out), str(lora), str(tmp_path / "new"), "--scale", "0.8"]) == 0
    wrote = capsys.readouterr().out  # no layer in a removed block: nothing listed in report.json, nor said so
    assert "took the LoRA at scale 0.8" in wrote and "listed in report.json" not in wrote, wrote
    written = json.loads((tmp_path / "new" / "report.json").read_text())
    grown = written["student_params"]
    assert grown > params and written["export"]["before_loras"] is True
    readme = (tmp_path / "new" / "README.md").read_text()
    said = "The teacher-relative errors above are of the weights before `dit-compress lora` merged the LoRA in"
    assert f"Parameters: {grown:,} of {param_count(base):,}" in readme and f"Parameters: {params:,}" not in readme
    assert said in readme and "exactly" not in readme, readme
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "new")]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert said in shown and "exactly" not in shown


def test_a_further_lora_on_a_card_written_before_27cc9d8_or_without_an_export_line_tells_of_the_merged_weights():
    """R3: lora_card replaced the card's headline and export line only where the lines it rebuilt from the
    old report stood verbatim in the card. Of T5's out/L (LoRA'd before 27cc9d8: its card 'Parameters:
    881,168 ...' and '... exactly, in float32.', its report already 890,384 with its `loras`) a further lora
    kept both; a report without `export` got no before-the-LoRA line. Both lines are now found by their
    first words, and a card without an export line gets one after its stage table."""
    import json

    import torch

    from compress.commands_lora import with_lora_noted
    from tests.test_report_card import _card_of

    model = torch.nn.Linear(9, 41)  # 410 parameters: the merged model
    done = {"merged": 1, "rank_added": 2, "densified": 0, "dropped": [], "not_merged": []}
    stages = [{"pass": "svd", "params": 400, "relative_error": 0.1724, "seconds": 1.0}]
    plain = {"teacher": "toy:pixart", "teacher_params": 1000, "student_params": 400, "stages": stages}
    old = dict(plain, export={"dtype": "float32", "computed_in": "float32", "exact": True, "relative_error": 0.1724})
    card = _card_of(old)  # the old code's card: its headline 400, 'exactly'
    took = dict(old, student_params=405, loras=[{"lora": "/a.safetensors", "scale": 0.8}])  # out/L's report
    files = with_lora_noted({"report.json": json.dumps(took), "README.md": card}, model, "/b.safetensors", 0.5, done)
    readme = files["README.md"]
    assert "Parameters: 410 of 1,000 (41.0%)." in readme and "Parameters: 400" not in readme, readme
    assert "exactly" not in readme and "merged 2 LoRAs in; the output holds them with both merged, in float32" in readme
    files = with_lora_noted({"report.json": json.dumps(plain), "README.md": _card_of(plain)}, model, "/b", 0.5, done)
    lines = files["README.md"].split("\n")
    words = "The teacher-relative errors above are of the weights before `dit-compress lora` merged the LoRA"
    said = next(n for n, line in enumerate(lines) if line.startswith(words))
    assert lines[said - 2].startswith("| svd | 400 |") and lines[said - 1] == "", lines  # right after the table
    assert "Parameters: 410 of 1,000 (41.0%)." in lines


def test_a_lora_on_an_output_whose_report_lists_its_loras_damaged_gives_no_traceback():
    """R1: a copied report.json whose `loras` was null or text made `dit-compress lora` a TypeError; the new
    LoRA is listed alone."""
    import json

    import torch

    from compress.commands_lora import with_lora_noted

    done = {"merged": 1, "rank_added": 2, "densified": 0, "dropped": [], "not_merged": []}
    for damaged in (None, "x", {"a": 1}):
        files = with_lora_noted({"report.json": json.dumps({"loras": damaged})}, torch.nn.Linear(2, 2), "/b", 0.5, done)
        assert [r["lora"] for r in json.loads(files["report.json"])["loras"]] == ["/b"]
    card = "# card\nParameters: 1 of 2 (50.0%).\n"  # a teacher_params of text: ValueError of its '{:,}'
    files = with_lora_noted({"report.json": json.dumps({"teacher_params": "x"}), "README.md": card},
                            torch.nn.Linear(2, 2), "/b", 0.5, done)
    assert files["README.md"].startswith(card)  # its headline as it was


def test_a_lora_on_an_output_whose_config_records_its_dtype_damaged_is_one_line(tmp_path, capsys):
    """_recorded_dtype's `.get` chain raised AttributeError on a compression section that is no mapping, and
    a compression.dtype of no floating dtype ('int8', 5) was said, once merged, as 'load_transformer: dtype
    must be ...', a call never made. Now no mapping reads as no dtype recorded, and a damaged dtype is one
    line naming the file and key, before the merge, nothing written."""
    import copy
    import json

    import pytest

    from compress.commands_lora import _recorded_dtype
    from compress.errors import UserError
    from compress.io_export import save_compressed
    from tests.conftest import tiny_pixart
    from tests.test_lora_limits import _save, _state

    base = tiny_pixart()
    out = save_compressed(copy.deepcopy(base), tmp_path / "out", dtype="bfloat16")
    config = out / "config.json"
    good = json.loads(config.read_text())
    assert str(_recorded_dtype(out)) == "torch.bfloat16"
    for section in ([], "x"):
        config.write_text(json.dumps({**good, "compression": section}))
        assert _recorded_dtype(out) is None
    state = _state(copy.deepcopy(base), ["attn1.to_q"], rank=2)
    lora = _save({k: v for k, v in state.items() if ".transformer_blocks.0." in k}, tmp_path / "l.safetensors")
    for dtype in ("int8", 5):
        config.write_text(json.dumps({**good, "compression": {**good["compression"], "dtype": dtype}}))
        with pytest.raises(UserError):
            _recorded_dtype(out)
        capsys.readouterr()
        assert main(["lora", str(out), str(lora), str(tmp_path / "new")]) == 2
        err = capsys.readouterr().err
        assert err == (f"dit-compress lora: error: {config}: compression.dtype is {json.dumps(dtype)}, not the name of a "
                       "floating dtype (float32, float16, bfloat16): a damaged config.json; remove that key (lora "
                       "then keeps the dtype its weights load in)\n"), err
        assert not (tmp_path / "new").exists()


def test_a_merged_weight_beyond_the_outputs_float16_is_refused_in_loras_words(tmp_path, capsys):
    """Stop 53's diff read: io_export.export_cast made its words from how the dtype was given (a key string), so
    lora's refusal of a merged weight beyond the float16 its output records said 'export: ...; export it as
    bfloat16 or float32 (export.dtype)', a run's words, naming neither lora nor what lora can change. Now the
    caller is named and says what keeps it (a float32-stored output whose config.json records float16: the
    merge, in float32, is finite; the write in float16 is not); nothing is written."""
    import copy
    import json

    from compress.io_export import save_compressed
    from tests.conftest import tiny_pixart
    from tests.test_lora_limits import _save, _state

    base = tiny_pixart()
    out = save_compressed(copy.deepcopy(base), tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    config["compression"]["dtype"] = "float16"
    (out / "config.json").write_text(json.dumps(config))
    state = _state(copy.deepcopy(base), ["attn1.to_q"], rank=2)
    lora = _save({k: v for k, v in state.items() if ".transformer_blocks.0." in k}, tmp_path / "l.safetensors")
    capsys.readouterr()
    assert main(["lora", str(out), str(lora), str(tmp_path / "new"), "--scale", "1e7"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("dit-compress lora: numeric error: lora: transformer_blocks.0.attn1.to_q.weight holds values "
                          "up to "), err
    assert err.endswith("beyond the range of float16 (max 6.55e+04); merge at a smaller --scale, or into an output "
                        "exported as bfloat16 or float32 (export.dtype): lora writes the dtype the output records (its "
                        "config.json's compression.dtype)\n"), err
    assert not (tmp_path / "new").exists()

def test_lora_into_a_mount_point_says_so_in_runs_words(tmp_path, monkeypatch, capsys):
    """`lora OUT LORA NEW` with NEW a mount point (a Docker volume, a bind mount) said 'NEW exists; lora writes a
    new output folder', where run's --out says what a mount point takes (e9afcd6, c2ee7e1): now run's words,
    before anything loads; a bind mount known from /proc/self/mountinfo alone too."""
    from tests.runner_helpers import MOUNT_REFUSAL, mount_points

    (tmp_path / "out").mkdir()  # (an output not there is refused first)
    for new in mount_points(tmp_path, monkeypatch):
        capsys.readouterr()
        assert main(["lora", str(tmp_path / "out"), str(tmp_path / "lora"), str(new)]) == 2
        assert capsys.readouterr().err == f"dit-compress lora: error: {MOUNT_REFUSAL.format(out=new)}\n"
    (tmp_path / "plain").mkdir()
    assert main(["lora", str(tmp_path / "out"), str(tmp_path / "lora"), str(tmp_path / "plain")]) == 2
    said = capsys.readouterr().err
    assert said == f"dit-compress lora: error: {tmp_path / 'plain'} exists; lora writes a new output folder\n"


@pytest.mark.parametrize("scale, said", [("nan", "--scale must be a finite number, got nan"),
                                         ("inf", "--scale must be a finite number, got inf"),
                                         ("0", "--scale 0: a scale of 0 merges nothing")])
def test_lora_scale_is_checked_before_its_paths(tmp_path, capsys, scale, said):
    """T2 stop 52 #11: `lora OUT LORA NEW --scale nan` was refused only once OUT and LORA were there: a
    path not there was said first, and the bad --scale after it was fixed. Now option values come first,
    as the CLI's other numbers do."""
    capsys.readouterr()
    assert main(["lora", str(tmp_path / "no-out"), str(tmp_path / "no-lora"), str(tmp_path / "new"),
                 "--scale", scale]) == 2
    assert capsys.readouterr().err == f"dit-compress lora: error: {said}\n"  # (named as argparse does)
