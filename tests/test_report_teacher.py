"""The teacher an output records (compress.report_teacher)."""

import pytest


def test_the_teacher_of_an_output_without_report_json_is_its_configs(tmp_path):
    """The run records the teacher in config.json's compression section too."""
    import json

    from compress.errors import UserError
    from compress.report_teacher import recorded_teacher

    config = {"_class_name": "PixArtTransformer2DModel", "compression": {"format": 1, "teacher": "toy:pixart"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert recorded_teacher(tmp_path) == ("toy:pixart", None)
    assert recorded_teacher(tmp_path, "toy:flux") == ("toy:flux", None)
    (tmp_path / "report.json").write_text(json.dumps({"teacher": "/t", "teacher_config": "/c"}))
    assert recorded_teacher(tmp_path) == ("/t", "/c")  # report.json's first
    (tmp_path / "report.json").unlink()
    config["compression"]["teacher"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"config.json: compression.teacher is 5, not text .*the output is damaged"):
        recorded_teacher(tmp_path)


def test_a_teacher_alone_keeps_the_recorded_config_where_it_is_a_single_file_that_needs_one(tmp_path):
    """--teacher replaces the recorded source; the recorded --teacher-config stays with the
    recorded file itself or a single file with no config.json beside it (which needs one), not
    with a folder, Hub id or toy (each brings its own) nor a file beside its own config.json;
    --teacher-config replaces the recorded config, with or without --teacher."""
    import json

    from compress.report_teacher import recorded_teacher

    out, cfg = tmp_path / "out", tmp_path / "cfg"
    for folder in (out, cfg, tmp_path / "moved", tmp_path / "own"):
        folder.mkdir()
    (cfg / "config.json").write_text("{}")
    recorded = tmp_path / "t.safetensors"
    (out / "report.json").write_text(json.dumps({"teacher": str(recorded), "teacher_config": str(cfg)}))
    for file in (recorded, tmp_path / "moved" / "t.safetensors", tmp_path / "own" / "t.safetensors"):
        file.write_bytes(b"")
    (tmp_path / "own" / "config.json").write_text("{}")
    (tmp_path / "config.json").write_text("{}")  # beside the recorded file: its config is still the recorded one
    moved, own = str(tmp_path / "moved" / "t.safetensors"), str(tmp_path / "own" / "t.safetensors")
    assert recorded_teacher(out, str(recorded)) == (str(recorded), str(cfg))
    assert recorded_teacher(out, moved) == (moved, str(cfg))
    assert recorded_teacher(out, own) == (own, None)
    for other in (str(cfg), "owner/name", "toy:pixart"):
        assert recorded_teacher(out, other) == (other, None)
    assert recorded_teacher(out, None, "c2") == (str(recorded), "c2")
    assert recorded_teacher(out, moved, "c2") == (moved, "c2")


def test_a_moved_teacher_or_config_says_which_option_gives_its_new_place(tmp_path):
    """What eval and bench load (teacher_to_load): a recorded teacher or config no longer there is
    one line naming --teacher or --teacher-config, which they take; an option given is not checked here."""
    import json

    from compress.errors import UserError
    from compress.report_teacher import teacher_to_load

    out, cfg, file = tmp_path / "out", tmp_path / "cfg", tmp_path / "t.safetensors"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"teacher": str(file), "teacher_config": str(cfg)}))
    with pytest.raises(UserError) as e:
        teacher_to_load(out)
    assert str(e.value) == f"{out} was compressed from the teacher {file}, which is not there now; pass --teacher " \
                           "with where it is"
    file.write_bytes(b"")
    with pytest.raises(UserError) as e:
        teacher_to_load(out)
    assert str(e.value) == (f"{out} was compressed from {file} with the teacher config {cfg}, which is not there "
                            "now (no config.json); pass --teacher-config with where it is (a folder or config.json)")
    assert teacher_to_load(out, None, "new") == (str(file), "new")
    cfg.mkdir()
    (cfg / "config.json").write_text("{}")
    assert teacher_to_load(out) == (str(file), str(cfg))


def test_the_chain_of_recorded_teachers_leads_from_an_output_to_the_first_teacher(tmp_path):
    """An output compressed from an output records that output: teacher_chain follows them to the
    teacher the first run read, and stops at a loop, a missing link or an output recording none."""
    from compress.report_teacher import broken_chain, chain_base, teacher_chain, toy_base
    from tests.teacher_chain_helpers import chained_outputs, output_config

    a, d = chained_outputs(tmp_path, "toy:flux")
    assert teacher_chain(str(d)) == [str(d), str(a.resolve()), "toy:flux"]
    assert toy_base(str(d)) == toy_base(str(a)) == toy_base("toy:flux") == "toy:flux"
    assert chain_base(teacher_chain(str(d))) == "toy:flux"
    assert toy_base("owner/name") is None and chain_base(["owner/name"]) == "owner/name"

    output_config(a, str(d.resolve()))  # a loop: a records d, d records a
    chain = teacher_chain(str(d))
    assert chain == [str(d), str(a.resolve()), str(d.resolve())] and toy_base(str(d)) is None
    assert chain_base(chain) is None
    assert broken_chain("out", chain) == f"out records the teacher {d}, which records {a.resolve()}, which " \
                                         f"records {d.resolve()}, which it named before (a loop)"
    gone = str(tmp_path / "gone")
    output_config(a, gone)
    assert teacher_chain(str(d)) == [str(d), str(a.resolve()), gone] and chain_base(teacher_chain(str(d))) is None
    assert broken_chain("out", teacher_chain(str(d))).endswith(f"{gone}, which is not there")
    output_config(a, None)
    assert teacher_chain(str(d)) == [str(d), str(a.resolve())]
    assert broken_chain("out", teacher_chain(str(d))).endswith(f"{a.resolve()}, which records no teacher")


def test_a_chain_breaks_off_only_at_a_loop_a_teacher_not_there_or_an_output_recording_none(tmp_path):
    """chain_break: why a chain of teachers stops short of the teacher the first run read (what
    calibration.source auto cannot see past); None where it ends at that teacher, whatever it is.
    broken_chain(None, chain) says it of the chain's own first output."""
    from compress.report_teacher import broken_chain, chain_break, teacher_chain
    from tests.teacher_chain_helpers import chained_outputs, output_config

    (tmp_path / "bare").mkdir()
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "model_index.json").write_text("{}")
    (tmp_path / "f.safetensors").write_bytes(b"")
    for base in ("toy:flux", "owner/name", tmp_path / "bare", tmp_path / "pipe", tmp_path / "f.safetensors"):
        _, d = chained_outputs(tmp_path / "ok", str(base))
        assert chain_break(teacher_chain(str(d))) is None, base
    a, d = chained_outputs(tmp_path, str(tmp_path / "gone"))
    assert chain_break(teacher_chain(str(d))) == "which is not there"
    assert broken_chain(None, teacher_chain(str(d))) == (f"the teacher {d} records the teacher {a.resolve()}, which "
                                                         f"records {tmp_path / 'gone'}, which is not there")
    output_config(a, None)
    assert chain_break(teacher_chain(str(d))) == "which records no teacher"
    output_config(a, str(d.resolve()))
    assert chain_break(teacher_chain(str(d))) == "which it named before (a loop)"


def test_the_teachers_block_counts_before_removal_are_its_reports_first_removal_or_none():
    """blocks_before: the first removal pass's blocks_before (a report of one removal, or of several
    under passes), {} for a report recording none or a damaged one (never a traceback)."""
    from compress.report_teacher import blocks_before

    assert blocks_before({"remove_blocks": {"blocks_before": {"blocks": 6}}}) == {"blocks": 6}
    assert blocks_before({"remove_blocks": {"passes": [{"blocks_before": {"double": 3}},
                                                       {"blocks_before": {"double": 2}}]}}) == {"double": 3}
    for damaged in ({}, [], None, {"remove_blocks": []}, {"remove_blocks": {"passes": {"x": 1}}},
                    {"remove_blocks": {"passes": [3]}}, {"remove_blocks": {"blocks_before": [6]}}):
        assert blocks_before(damaged) == {}, damaged


@pytest.mark.parametrize("damage", [{"teacher": 5}, {"svd": []}], ids=["teacher", "svd"])
def test_the_block_counts_of_a_report_read_report_refuses_are_none(tmp_path, damage):
    """Stop 53's diff read: reported_blocks read report.json by hand (json_read, its own except), so a report the
    commands refuse as damaged (report.read_report: inspect's 'teacher is 5, not text ...; the output is
    damaged') still gave its blocks_before to load_transformer's teacher_blocks; it reads report.json as the
    commands do, and a report they refuse gives none, as its docstring says."""
    import json

    from compress.report_teacher import reported_blocks

    report = {"remove_blocks": {"blocks_before": {"blocks": 6}}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert reported_blocks(tmp_path) == {"blocks": 6}
    (tmp_path / "report.json").write_text(json.dumps({**report, **damage}))
    assert reported_blocks(tmp_path) == {}

def test_the_base_of_a_chain_of_outputs_is_its_first_teacher_with_the_params_its_first_output_records(tmp_path):
    """B compressed from A, an output of toy:flux: the run said only its share of A's parameters.
    chain_base_record gives the chain's base and its parameter count as A's report.json records it;
    nothing for a teacher that is no output, a chain with a link moved away, or A without report.json."""
    import json

    from compress.report_teacher import chain_base_record
    from tests.teacher_chain_helpers import chained_outputs, output_config

    a, d = chained_outputs(tmp_path, "toy:flux")
    assert chain_base_record(str(d)) is None  # a records no teacher_params (config.json alone)
    (a / "report.json").write_text(json.dumps({"teacher": "toy:flux", "teacher_params": 2345744}))
    assert chain_base_record(str(a)) == chain_base_record(str(d)) == {"source": "toy:flux", "params": 2345744}
    assert chain_base_record("toy:flux") is None and chain_base_record("owner/name") is None
    (a / "report.json").unlink()
    output_config(a, str(tmp_path / "gone"))
    assert chain_base_record(str(d)) is None


def test_eval_and_bench_say_a_teacher_config_edited_in_place_since_the_run(tmp_path, capsys, monkeypatch):
    """After the run's --teacher-config was edited in place, eval said 'not the model this one was
    compressed from: its config has out_channels 8 (the model's: None)' for an 8 that is what null builds,
    and never that the file changed: now an edit that makes another model is refused naming the file,
    before the teacher loads (bench alike), and one that makes the same model is a warning."""
    import json

    from safetensors.torch import save_file

    import compress.io_teacher_of
    from compress.cli import main
    from compress.runner_config_sum import config_checksum
    from tests.conftest import tiny_flux
    from tests.test_commands import RECIPE

    model = tiny_flux()
    save_file(model.state_dict(), str(tmp_path / "f.safetensors"))
    model.save_config(tmp_path / "cfg")
    file = tmp_path / "cfg" / "config.json"
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher=tmp_path / "f.safetensors"))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "r.yaml"), "--teacher-config", str(tmp_path / "cfg"), "--out", str(out),
                 "--run-dir", str(tmp_path / "run")]) == 0
    assert json.loads((out / "report.json").read_text())["teacher_config_checksum"] == config_checksum(file)
    capsys.readouterr()
    config = json.loads(file.read_text())
    file.write_text(json.dumps({**config, "out_channels": 8}))  # what its null builds
    assert main(["eval", str(out), "--json"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["pred_rel_error"] > 0
    assert f"warning: {file} changed since {out} was compressed from it (its contents differ), but describes the " \
           "same model as diffusers builds it; the teacher is read with it as it is now" in " ".join(said.err.split())
    file.write_text(json.dumps({**config, "pooled_projection_dim": 11}))
    loads, real = [], compress.io_teacher_of.load_teacher
    monkeypatch.setattr(compress.io_teacher_of, "load_teacher", lambda *a, **k: loads.append(a) or real(*a, **k))
    for command in (["eval", str(out)], ["bench", str(out), "--repeats", "1", "--device", "cpu"]):
        assert main(command) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert err == (f"dit-compress {command[0]}: error: {file} changed since {out} was compressed from it (its contents "
                       "differ): it has pooled_projection_dim 11 (the model's: 10); undo the change to it, or pass "
                       "--teacher-config (the config the run read)")
    assert loads == []
