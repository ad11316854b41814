import os

import pytest
import torch

from compress import save_compressed
from compress.errors import NumericError, UserError
from compress.stream import CheckpointBlocks, empty_transformer, save_streamed
from tests.conftest import tiny_flux, tiny_pixart


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(UserError, match="exists"):
        save_compressed(tiny_pixart(), tmp_path / "out")


def test_an_output_is_readable_as_the_umask_allows(tmp_path):
    umask = os.umask(0o022)
    try:
        out = save_compressed(tiny_flux(), tmp_path / "out")
    finally:
        os.umask(umask)
    assert {oct(p.stat().st_mode & 0o777) for p in (out, *out.iterdir())} == {"0o755", "0o644"}


@pytest.mark.parametrize("streamed", [False, True])
def test_an_export_beyond_float16s_range_names_the_tensor(tmp_path, streamed):
    """float16 stops at 65504: a finite weight beyond it would be written as inf."""
    model = tiny_flux()
    model.transformer_blocks[0].ff.net[2].weight.data[0, 0] = 1e5
    if streamed:
        model.save_pretrained(tmp_path / "teacher")
        model = empty_transformer(tmp_path / "teacher")
        loader = CheckpointBlocks(model, tmp_path / "teacher")
        loader.load_top()
        save = lambda dtype, out: save_streamed(model, loader, out, dtype=dtype)  # noqa: E731
    else:
        save = lambda dtype, out: save_compressed(model, out, dtype=dtype)  # noqa: E731
    with pytest.raises(NumericError, match=r"transformer_blocks\.0\.ff\.net\.2\.weight holds values up to 1e\+05"):
        save(torch.float16, tmp_path / "fp16")
    assert not (tmp_path / "fp16").exists()
    save(torch.bfloat16, tmp_path / "bf16")  # within bfloat16's range


def test_a_teacher_weight_beyond_float16s_range_is_warned_about_before_compute(capsys):
    """export.dtype float16: the export would fail at the end of the run on a weight no pass changes."""
    from compress.io_export import warn_if_beyond_export_range

    model = tiny_flux()
    warn_if_beyond_export_range(model, "float16")
    assert capsys.readouterr().err == ""
    model.transformer_blocks[0].ff.net[2].weight.data[0, 0] = 1e5
    warn_if_beyond_export_range(model, "bfloat16")
    assert capsys.readouterr().err == ""
    warn_if_beyond_export_range(model, "float16")
    err = " ".join(capsys.readouterr().err.split())
    assert "the teacher's transformer_blocks.0.ff.net.2.weight holds values up to 1e+05" in err
    assert "export.dtype: bfloat16 or float32 keeps it" in err


def test_a_compiled_model_saves_as_the_model_it_wraps(tmp_path):
    """save_compressed of a torch.compile'd model wrote the wrapper's class (OptimizedModule) and keys
    (`_orig_mod.`…), which load_transformer refused; it saves the wrapped model, which loads back
    bit-identical."""
    from compress.io_output import load_transformer
    from tests.conftest import factorize

    model = factorize(tiny_pixart(), ["transformer_blocks.0.attn1.to_q", "transformer_blocks.0.ff.net.2"], 4)
    save_compressed(torch.compile(model, backend="eager"), tmp_path / "out")
    back = load_transformer(tmp_path / "out")
    assert type(back) is type(model) and back.config.compression["ranks"] == {
        "transformer_blocks.0.attn1.to_q": 4, "transformer_blocks.0.ff.net.2": 4}
    want, got = model.state_dict(), back.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_an_export_dtype_wider_than_the_teachers_stored_one_is_warned_about(tmp_path, capsys):
    """A bfloat16 teacher exported in the default float32 wrote a file larger than the teacher's
    (73% of its parameters, 1.46x its bytes) without a word: plan and run warn at export.dtype (the
    recipe where the default stands), naming the dtype to set; not for a teacher as wide or a dtype
    its files do not give (a toy)."""
    from safetensors.torch import save_file

    from compress.io_export import warn_if_export_wider, wider_export_words
    from compress.io_source_recipe import checked_sources
    from compress.recipe import load_recipe
    from tests.test_commands import RECIPE

    assert wider_export_words(torch.float32, torch.bfloat16).startswith("export.dtype is float32, but the teacher "
                                                                       "stores its weights in bfloat16: the output's")
    assert "2x the bytes" in wider_export_words(torch.float32, torch.float16)
    for export, stored in ((torch.bfloat16, torch.bfloat16), (torch.float16, torch.bfloat16),
                           (torch.float32, torch.float32), (torch.float32, torch.float64), (torch.float32, None)):
        assert wider_export_words(export, stored) is None, (export, stored)
    tiny_flux().to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    tiny_flux().save_pretrained(tmp_path / "f32")
    save_file(tiny_flux().to(torch.bfloat16).state_dict(), tmp_path / "t.safetensors")  # a transformer's names
    (tmp_path / "t.json").write_text((tmp_path / "bf16" / "config.json").read_text())
    cases = [("bf16", "", "r.yaml: export.dtype is float32, but the teacher stores its weights in bfloat16"),
             ("bf16", "export:\n  dtype: float32\n", "r.yaml:2: export.dtype is float32"),
             ("bf16", "export:\n  dtype: bfloat16\n", None), ("f32", "", None), ("t.safetensors", "", "bfloat16")]
    for teacher, export, warned in cases:
        (tmp_path / "r.yaml").write_text(export + RECIPE.format(teacher=tmp_path / teacher))
        recipe = load_recipe(tmp_path / "r.yaml")
        config = str(tmp_path / "t.json") if teacher.endswith(".safetensors") else None
        capsys.readouterr()
        warn_if_export_wider(recipe, checked_sources(recipe, None, config))
        err = " ".join(capsys.readouterr().err.split())
        assert (warned in err and err.count("warning:") == 1) if warned else not err, (teacher, export, err)
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher="toy:flux"))
    recipe = load_recipe(tmp_path / "r.yaml")
    warn_if_export_wider(recipe, checked_sources(recipe))
    assert not capsys.readouterr().err


def test_plan_and_run_warn_once_of_an_export_wider_than_the_teacher(tmp_path, capsys):
    """A bfloat16 teacher exported in the default float32: plan and run each warn once, before compute."""
    from compress.cli import main
    from tests.test_commands import RECIPE

    tiny_flux().to(torch.bfloat16).save_pretrained(tmp_path / "teacher")
    (tmp_path / "r.yaml").write_text(RECIPE.format(teacher=tmp_path / "teacher"))
    words = "r.yaml: export.dtype is float32, but the teacher stores its weights in bfloat16"
    for argv in (["plan", str(tmp_path / "r.yaml")],
                 ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]):
        capsys.readouterr()
        assert main(argv) == 0
        err = " ".join(capsys.readouterr().err.split())
        assert err.count(words) == 1, (argv, err)
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "r.yaml"), "--set", "export.dtype=bfloat16"]) == 0
    assert "export.dtype is" not in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_plan_and_a_runs_checks_read_the_teachers_headers_once_for_the_export_warning(tmp_path, monkeypatch,
                                                                                    capsys, kind):
    """The export's dtype warning (warn_if_export_wider) read the teacher's weight headers again for
    their dtypes, after the checks had read them (io_headers.check_teacher_weights): twice more in a run
    (its quiet make_plan, then runner_prepare). Now it takes the dtypes those reads kept
    (TeacherSource.weights_read): each file's header is read once, the warning's words the same."""
    import compress.io_headers as io_headers
    import compress.io_variants as io_variants
    import compress.runner_prepare as runner_prepare
    from compress.plan import make_plan
    from compress.recipe import parse_recipe
    from compress.runner import Runner

    tiny_pixart().to(torch.bfloat16).save_pretrained(tmp_path / "t")
    weights = tmp_path / "t" / "diffusion_pytorch_model.safetensors"
    teacher = weights if kind == "file" else tmp_path / "t"
    read = []
    header_shapes, safetensors_dtypes = io_headers.header_shapes, io_variants.safetensors_dtypes
    monkeypatch.setattr(io_headers, "header_shapes", lambda path: read.append(path) or header_shapes(path))
    monkeypatch.setattr(io_variants, "safetensors_dtypes", lambda path: read.append(path) or safetensors_dtypes(path))
    recipe = parse_recipe(f"model: pixart\nteacher: {teacher}\ndevice: cpu\ncalibration: {{source: synthetic}}\n"
                          "passes: [{remove_blocks: {blocks: {blocks: [0]}}}]\n", str(tmp_path / "r.yaml"))
    words = "r.yaml: export.dtype is float32, but the teacher stores its weights in bfloat16"
    capsys.readouterr()
    make_plan(recipe)
    assert (read, " ".join(capsys.readouterr().err.split()).count(words)) == ([weights], 1)

    class Loading(Exception):
        pass

    def load(*args, **kwargs):  # the run's checks are done: the teacher loads next
        raise Loading

    read.clear()
    monkeypatch.setattr(runner_prepare, "load_checked_teacher", load)
    with pytest.raises(Loading):
        Runner(recipe, tmp_path / "out", tmp_path / "run").run()
    assert (read, " ".join(capsys.readouterr().err.split()).count(words)) == ([weights], 1)


def test_weights_rounded_to_the_export_are_those_the_output_holds(tmp_path):
    """round_to_export (the run's measure of the exported weights' error): the weights rounded in place are
    exactly what save_compressed writes in that dtype and load_transformer reads back; one beyond float16's
    range is export_cast's error, not an inf."""
    import copy

    from compress.io_export import round_to_export
    from compress.io_output import load_transformer

    model = tiny_pixart()
    rounded = copy.deepcopy(model)
    round_to_export(rounded, torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in rounded.state_dict().values())
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), rounded.state_dict().values()))
    back = load_transformer(save_compressed(model, tmp_path / "o", dtype=torch.bfloat16), dtype=torch.float32)
    assert all(torch.equal(back.state_dict()[k], v) for k, v in rounded.state_dict().items())
    with torch.no_grad():
        model.proj_out.weight[0, 0] = 1e6
    with pytest.raises(NumericError, match="export: proj_out.weight holds values up to 1e\\+06, beyond the range of float16"):
        round_to_export(model, torch.float16)


def test_save_compresseds_refusal_of_a_weight_beyond_its_dtype_names_its_dtype_argument(tmp_path):
    """T1 stop 53: save_compressed(m, out, dtype="float16") of a weight beyond float16 ended '(export.dtype)', a
    recipe key, where the argument is dtype=; a run's export (round_to_export, the runner's save) keeps its key."""
    from compress.io_export import EXPORT_ADVICE

    model = tiny_pixart()
    with torch.no_grad():
        model.proj_out.weight[0, 0] = 1e6
    with pytest.raises(NumericError) as e:
        save_compressed(model, tmp_path / "o", dtype="float16")
    assert str(e.value) == ("save_compressed: proj_out.weight holds values up to 1e+06, beyond the range of float16 "
                            "(max 6.55e+04); save it as bfloat16 or float32 (dtype=)")
    assert not (tmp_path / "o").exists()
    with pytest.raises(NumericError, match=r"^export: proj_out.weight .*; export it as bfloat16 or float32 "
                                           r"\(export.dtype\)$"):
        save_compressed(model, tmp_path / "o", dtype="float16", caller="export", advice=EXPORT_ADVICE)
