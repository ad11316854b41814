"""compress.devices: a recipe's device and bench's --device, one rule and one wording (bench has no
auto); a GPU torch does not see, said alike by a run and by bench."""

import json

import pytest
import torch

from compress.errors import UserError
from compress.recipe import parse_recipe

RECIPE = "device: {}\nmodel: pixart\nteacher: toy:pixart\npasses: [importance]\n"


def _bench_refusal(name: str) -> str:
    from compress.bench import _device

    with pytest.raises(UserError) as e:
        _device(name)
    return str(e.value)


def _recipe_refusal(name: str) -> str:
    with pytest.raises(UserError) as e:
        parse_recipe(RECIPE.format(name), "r.yaml")
    return str(e.value)


@pytest.mark.parametrize("name, tail", [
    ("gpu", "not 'gpu'; did you mean 'cuda'?"), ("cuda:x", "not 'cuda:x'; cuda:N takes a GPU's index: cuda:0, cuda:1, ..."),
    ("mps", "not 'mps'"), ("cuda0", "not 'cuda0'; did you mean 'cuda:0'?")])
def test_a_bad_device_is_refused_alike_by_a_recipe_and_by_bench(name, tail):
    """bench said "--device 'gpu': bench runs on cpu, cuda or cuda:N (a GPU's index)" where a recipe
    said "device must be one of auto, cpu, cuda, cuda:N, not 'gpu'; did you mean 'cuda'?"."""
    assert _recipe_refusal(name) == f"r.yaml:1: device must be one of auto, cpu, cuda, cuda:N, {tail}"
    assert _bench_refusal(name) == f"--device must be one of cpu, cuda, cuda:N, {tail}"


@pytest.mark.parametrize("name, meant", [
    ("CPU", "cpu"), ("Cuda", "cuda"), ("CUDA", "cuda"), ("cuda:O", "cuda:0"), ("cuda:o", "cuda:0"),
    ("CUDA:0", "cuda:0"), ("Cuda:1", "cuda:1"), ("cuda1", "cuda:1"), ("gpu:0", "cuda:0"), ("cpu ", "cpu"),
    ("cuda: 1", "cuda:1")])
def test_a_slip_of_case_or_a_letter_o_is_told_the_device_it_stands_for(name, meant):
    """CPU, CUDA and CUDA:0 were refused without a hint, Cuda:1 was told 'cuda' (its index lost), and
    cuda:O only that 'cuda:N takes a GPU's index': now each is told the device it stands for, by a
    recipe's device and by bench's --device alike (devices.meant)."""
    tail = f"not {name!r}; did you mean '{meant}'?"
    assert _recipe_refusal(json.dumps(name)) == f"r.yaml:1: device must be one of auto, cpu, cuda, cuda:N, {tail}"
    assert _bench_refusal(name) == f"--device must be one of cpu, cuda, cuda:N, {tail}"


@pytest.mark.parametrize("argv, said", [
    (["bench", "OUT", "--device", "CPU"], "error: --device must be one of cpu, cuda, cuda:N, not 'CPU'; "
                                          "did you mean 'cpu'?"),
    (["plan", "RECIPE"], "r.yaml:1: device must be one of auto, cpu, cuda, cuda:N, not 'cuda:O'; "
                         "did you mean 'cuda:0'?")])
def test_the_command_line_says_the_device_meant_in_one_line(tmp_path, capsys, argv, said):
    from compress.cli import main

    (tmp_path / "r.yaml").write_text(RECIPE.format("cuda:O"))
    argv = [{"OUT": str(tmp_path), "RECIPE": str(tmp_path / "r.yaml")}.get(a, a) for a in argv]
    assert main(argv) != 0
    err = " ".join(capsys.readouterr().err.split("\n")[:-1])
    assert err.endswith(said) and "Traceback" not in err and err.count("error:") == 1


def test_bench_has_no_auto_and_says_what_leaving_it_out_does():
    """A recipe's auto is bench's default; as --device it was refused without a word of that."""
    parse_recipe(RECIPE.format("auto"), "r.yaml")
    assert _bench_refusal("auto") == ("--device must be one of cpu, cuda, cuda:N, not 'auto'; leave --device out "
                                      "for cuda where torch sees a GPU, else cpu")
    assert _bench_refusal("Auto").endswith("not 'Auto'; leave --device out for cuda where torch sees a GPU, else cpu")
    assert _recipe_refusal("Auto").endswith("not 'Auto'; did you mean 'auto'?")


@pytest.mark.parametrize("count, name, why", [
    (0, "cuda", f"torch sees no CUDA GPU here (torch {torch.__version__})"),
    (1, "cuda:1", "torch sees 1 GPU: cuda:0"), (2, "cuda:3", "torch sees 2 GPUs: cuda:0 and cuda:1"),
    (4, "cuda:4", "torch sees 4 GPUs: cuda:0 to cuda:3")])
def test_a_gpu_torch_does_not_see_is_said_alike_by_a_run_and_by_bench(monkeypatch, count, name, why):
    """bench said '--device cuda:1: there are 1 CUDA devices' where a run said 'device cuda:1, but torch
    sees 1 GPU(s)'; without a GPU, 'no CUDA GPU here' and 'torch sees no CUDA GPU here'."""
    from compress.runner_setup import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    advice = {"bench": "; use --device cpu", "run": "; set device: cpu or auto"} if not count else {}
    assert _bench_refusal(name) == f"--device {name}, but {why}{advice.get('bench', '')}"
    with pytest.raises(UserError) as e:
        resolve_device(parse_recipe(RECIPE.format(name), "r.yaml"))
    assert str(e.value) == f"r.yaml:1: device {name}, but {why}{advice.get('run', '')}"


@pytest.mark.parametrize("count", [0, 1])
def test_plan_notes_a_gpu_torch_does_not_see_in_the_runs_words(monkeypatch, capsys, count):
    """plan noted only a machine without CUDA: with one GPU, device: cuda:3 planned without a word while
    the run refused it ('device cuda:3, but torch sees 1 GPU: cuda:0')."""
    from compress.plan import make_plan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    recipe = parse_recipe(RECIPE.format("cuda:3"), "r.yaml")
    make_plan(recipe)
    why = "torch sees 1 GPU: cuda:0" if count else "torch sees no CUDA GPU here"
    assert f"note: r.yaml:1: device cuda:3, but {why}" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("text, where", [
    ("model: pixart\nteacher: toy:pixart\ndevice: cuda\npasses: [importance]\n", "e/dev.yaml:3"),
    ("model: pixart\nteacher: toy:pixart\npasses: [importance]\n", "e/dev.yaml (--set device)")])
def test_a_gpu_torch_does_not_see_names_the_recipes_device_line(monkeypatch, text, where):
    """A recipe's `device: cuda` on a machine without a GPU was refused as 'e/dev.yaml: device cuda, but
    torch sees no CUDA GPU here (...); set device: cpu or auto', without the key's line (a value no device
    at all, `cuda:x`, names it: e/dev2.yaml:4:). Now the line, or the --set that gave it."""
    from compress.runner_setup import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    overrides = [] if "device:" in text else ["device=cuda"]
    with pytest.raises(UserError) as e:
        resolve_device(parse_recipe(text, "e/dev.yaml", overrides))
    assert str(e.value).startswith(f"{where}: device cuda, but torch sees no CUDA GPU here (torch ")
