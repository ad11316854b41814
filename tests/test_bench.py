"""compress.bench: how the step times are measured and worded."""

import pytest
import torch

from compress.bench import _faster, time_steps
from compress.errors import UserError


class _Clocked(torch.nn.Module):
    """A model whose forward records its name in a shared log."""

    def __init__(self, name: str, log: list):
        super().__init__()
        self.name, self.log = name, log

    def forward(self, **kwargs):
        self.log.append(self.name)


def test_teacher_and_student_are_timed_in_turn():
    """Each repeat times both models, in alternating order: a slow spell on a shared machine
    cannot fall on one model's whole measurement."""
    log = []
    times = time_steps([_Clocked("t", log), _Clocked("s", log)], {}, repeats=4, device=torch.device("cpu"))
    assert len(times) == 2 and all(len(t) == 4 and min(t) >= 0 for t in times)
    assert "".join(log) == "ts" "st" "ts" "st" "ts" "st" "ts"  # 3 warm-ups + 4 repeats


def test_a_slower_student_is_not_called_faster():
    assert _faster(2.0) == "2.00× faster"
    assert _faster(0.8) == "1.25× slower"


def test_a_ratio_that_rounds_to_one_is_about_the_same_speed():
    """0.998 was printed '1.00× slower'."""
    assert _faster(0.998) == _faster(1.004) == _faster(1.0) == "about the same speed (1.00×)"
    assert _faster(0.99) == "1.01× slower" and _faster(1.006) == "1.01× faster"


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "mps", "meta", "CPU"])
def test_a_device_bench_does_not_run_on_is_one_short_line(name):
    """--device gpu listed every device type torch knows (mkldnn, opengl, privateuseone, ...)."""
    from compress.bench import _device

    with pytest.raises(UserError) as e:
        _device(name)
    assert str(e.value).startswith(f"--device must be one of cpu, cuda, cuda:N, not {name!r}")  # devices.device_refused


def test_cpu_is_a_device_bench_runs_on():
    from compress.bench import _device

    assert _device("cpu") == torch.device("cpu")


def test_a_step_holds_the_rows_its_pipeline_runs():
    """--batch counts images: PixArt-Σ and the toys run CFG as [uncond; cond] (2 rows per image),
    Flux.1-dev is guidance-distilled (1 row per image)."""
    from compress.bench import step_inputs
    from tests.conftest import tiny_flux, tiny_pixart

    rows = {name: step_inputs(model, family, source, batch=3)["hidden_states"].shape[0]
            for name, model, family, source in (("pixart", tiny_pixart(), "pixart", "some/pixart"),
                                                ("flux", tiny_flux(), "flux", "some/flux"),
                                                ("toy", None, "flux", "toy:flux"))}
    assert rows == {"pixart": 6, "flux": 3, "toy": 6}


def test_an_output_of_a_toys_output_steps_on_the_toys_inputs(tmp_path):
    """bench of an output whose teacher is an output of toy:flux: the toy's step (CFG rows, its
    token count), as for the toy itself, not a synthetic Flux.1-dev step."""
    from compress.bench import step_inputs
    from tests.teacher_chain_helpers import chained_outputs

    _, d = chained_outputs(tmp_path, "toy:flux")
    toy, chained = (step_inputs(None, "flux", source, batch=2) for source in ("toy:flux", str(d)))
    assert chained.keys() == toy.keys()
    assert all(torch.equal(chained[k], toy[k]) for k in toy if torch.is_tensor(toy[k]))


class _Linear(torch.nn.Module):
    """A linear called with keyword inputs, as bench calls the transformers."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(5, 5000, bias=False)

    def forward(self, x):  # (B, 5) -> (B, 5000)
        return self.linear(x)


def test_peak_memory_counts_one_model_not_both(monkeypatch):
    """With teacher (4 MB) and student (0.1 MB) resident, the student's peak is its own weights plus
    what its forward allocates, not the allocator's peak over both models."""
    from compress.bench import peak_memory

    student = _Linear()  # 25,000 float32 weights: 100,000 bytes
    resident = 4_000_000 + 100_000
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: resident)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: resident + 20_000)
    assert peak_memory(student, {"x": torch.zeros(1, 5)}, torch.device("cuda")) == 100_000 + 20_000


@pytest.mark.parametrize("given, said", [({"repeats": 0}, "--repeats must be an integer ≥ 1, got 0"),
                                         ({"batch": -1}, "--batch must be an integer ≥ 1, got -1")])
def test_a_count_below_one_is_refused_as_the_cli_refuses_it(tmp_path, given, said):
    """bench() from Python said 'bench needs --repeats and --batch of at least 1 (got 0, 2)', the CLI
    'bench needs --repeats of at least 1 (got 0)'; now both name the option alike."""
    from compress.bench import bench

    with pytest.raises(UserError) as e:
        bench(tmp_path, **given)
    assert str(e.value) == said


@pytest.mark.parametrize("name, cuda", [("foo", True), ("cuda", False)])
def test_a_device_bench_cannot_use_is_refused_before_anything_loads(tmp_path, monkeypatch, name, cuda):
    """--device foo (or cuda without a GPU) was refused only after the student loaded and the teacher
    resolved: over a minute on a loaded machine for a typo."""
    import compress.bench as bench

    def load(*args, **kwargs):
        raise AssertionError("loaded before the device was checked")

    monkeypatch.setattr(bench, "load_transformer", load)
    monkeypatch.setattr(bench, "teacher_to_load", load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    with pytest.raises(UserError, match=f"^--device (must be one of cpu, cuda, cuda:N, not '{name}'|{name}, "
                                        "but torch)"):
        bench.bench(tmp_path, device=name)


@pytest.mark.parametrize("tool", ["bench_caption_mask.py", "bench_flow_toy.py"])
def test_a_benchmark_tool_answers_help_and_refuses_unknown_arguments(tool):
    """`python tools/bench_caption_mask.py --help` (and bench_flow_toy.py) ignored every argument and
    started the full benchmark."""
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "tools" / tool
    shown = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and shown.stdout.startswith(f"usage: {tool} [-h]")
    refused = subprocess.run([sys.executable, str(path), "--repeats", "3"], capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "unrecognized arguments: --repeats 3" in refused.stderr


def _output(tmp_path, dtype=None):
    """A tiny PixArt output (one factorized layer) of the tiny teacher saved in tmp_path/teacher."""
    from compress import save_compressed
    from tests.conftest import factorize, tiny_pixart

    teacher = tiny_pixart()
    teacher.save_pretrained(tmp_path / "teacher")
    return save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], rank=2), tmp_path / "out", dtype,
                           extra={"teacher": str(tmp_path / "teacher")})


def test_running_out_of_cpu_memory_does_not_advise_the_cpu():
    """Out of CPU memory, bench advised '--device cpu', where it already ran; a GPU's still does."""
    from compress.cli import _out_of_memory

    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 204800000000 bytes.")
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.")
    assert str(_out_of_memory("bench", cpu)).endswith("ran out of CPU memory (tried to allocate 190.7 GiB); "
                                                      "try a smaller --batch")
    assert str(_out_of_memory("bench", gpu)).endswith("try a smaller --batch, or --device cpu")


def test_a_batch_whose_inputs_cannot_fit_is_refused_before_the_teacher_loads(tmp_path, monkeypatch):
    """--batch 100000000 ran silently for minutes, then out of memory allocating its inputs; what they
    take is exact (1 and 2 images' inputs), so one more than the memory is refused at once."""
    import compress.bench as bench
    import compress.plan_machine as plan_machine
    from tests.conftest import tiny_pixart

    out = _output(tmp_path)
    need = bench.input_bytes(tiny_pixart(), "pixart", str(tmp_path / "teacher"), 1000, torch.float32)
    assert need == 1000 * 2 * ((4 * 4 * 4 + 8 * 12 + 8) * 4 + 8)  # per row: latents, caption, mask (float32), timestep
    monkeypatch.setattr(bench, "load_teacher_of", lambda *a, **k: pytest.fail("the teacher loaded"))
    # sizes that read the same said so they differ (calib_footprint.human_sizes); was '1 MiB, more than the 1 MiB'
    for have, said in ((2**20, "1.3 MiB, more than the 1.0 MiB"), (need - 1, "1,360,000 bytes, more than the "
                                                                             "1,359,999 bytes")):
        monkeypatch.setattr(plan_machine, "device_memory", lambda device, have=have: (have, "this machine"))
        with pytest.raises(UserError, match=rf"^--batch 1000: one step's inputs alone take {said} "
                                            r"of memory of this machine; give a smaller --batch$"):  # was 0.0 GiB
            bench.bench(out, repeats=1, batch=1000, device="cpu")
    monkeypatch.setattr(plan_machine, "device_memory", lambda device: (need, "this machine"))
    bench.check_batch_fits(tiny_pixart(), "pixart", str(tmp_path / "teacher"), 1000, torch.device("cpu"),
                           torch.float32)  # fits exactly: no error


def test_weight_memory_is_the_ratio_of_the_stored_bytes(tmp_path, capsys):
    """Both models were cast to the compute dtype before their bytes were counted: a float16 export
    showed the parameter ratio, as a float32 one did. Now the bytes as stored, and their dtypes said."""
    import json

    from compress.cli import main

    out = _output(tmp_path, torch.float16)
    assert main(["bench", str(out), "--json", "--repeats", "1", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dtype"] == "float32"  # computed in, on a CPU
    assert result["student_stored_dtype"] == "float16" and result["teacher_stored_dtype"] == "float32"
    assert result["weight_bytes_ratio"] < 0.55 * result["params_ratio"]  # half the bytes (a few buffers apart)
    assert main(["bench", str(out), "--repeats", "1", "--device", "cpu"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert f"weight memory, as stored │ {result['weight_bytes_ratio']:.3f} (float16 / float32)" in shown


def test_bench_says_what_it_is_doing(tmp_path, capsys, monkeypatch):
    """Loading, warm-up and the timed steps ran many silent minutes for a real model on a CPU: a
    status says which step runs (compress.progress.status: stderr; a spinner on a terminal)."""
    import contextlib

    import compress.bench as bench
    from compress.cli import main

    said = []

    class Status:
        def update(self, text):
            said.append(text)

    @contextlib.contextmanager
    def status(text, log=True):
        said.append(text if log else f"(on a terminal) {text}")
        yield Status()

    out = _output(tmp_path)
    monkeypatch.setattr(bench, "status", status)
    assert main(["bench", str(out), "--json", "--repeats", "2", "--device", "cpu"]) == 0
    assert said == [f"(on a terminal) bench: loading {out}", f"bench: loading the teacher {tmp_path / 'teacher'}",
                    f"bench: timing {out} against the teacher {tmp_path / 'teacher'}", "bench: warm-up step 1 of 3",
                    "bench: warm-up step 2 of 3", "bench: warm-up step 3 of 3",
                    "bench: timed step 1 of 2 of each model", "bench: timed step 2 of 2 of each model"]


def test_bench_in_a_log_says_its_steps_as_lines_a_tenth_at_a_time(tmp_path, capsys):
    """`bench OUT > log 2>&1` wrote nothing until its result (bench alone called rich's console.status,
    which prints nothing off a terminal): now the timing's status is a line each on stderr, the timed
    steps' at a tenth of them at most, and --json's stdout is the JSON alone. (The loading's stays on
    a terminal only: its UserErrors are stderr's one line.)"""
    import json

    from compress.cli import main

    out = _output(tmp_path)
    assert main(["bench", str(out), "--json", "--repeats", "20", "--device", "cpu"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["params_ratio"] < 1
    timed = [f"bench: timed step {j} of 20 of each model" for j in (1, *range(2, 21, 2))]
    assert [line for line in printed.err.splitlines() if not line.startswith("note:")] == [
        f"bench: timing {out} against the teacher {tmp_path / 'teacher'}",
        *(f"bench: warm-up step {i} of 3" for i in (1, 2, 3)), *timed]


def test_an_outputs_weight_file_is_refused_in_evals_words(tmp_path, capsys):
    """bench OUT/diffusion_pytorch_model.safetensors said 'no such output folder' of a file that is there."""
    from compress.cli import main

    out = _output(tmp_path)
    weights = out / "diffusion_pytorch_model.safetensors"
    for command in ("eval", "bench"):
        assert main([command, str(weights)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"dit-compress {command}: error: {weights} is a weight file of the dit-compress output {out}: give that folder, "
            "which loads it with its ranks and block map")


def test_each_models_step_times_come_back_side_by_side(monkeypatch):
    """time_steps gave each model's median alone: a ratio with no spread. Now every timed step's
    seconds, the i-th of each model timed in the same repeat (order alternating)."""
    import compress.bench as bench

    seconds = iter(range(1, 100))
    calls = []

    def clock(model, kwargs, device):
        calls.append(model.name)
        return float(next(seconds))

    monkeypatch.setattr(bench, "_one_forward", clock)
    times = bench.time_steps([_Clocked("t", []), _Clocked("s", [])], {}, repeats=3, device=torch.device("cpu"))
    assert "".join(calls) == "ts" "st" "ts" "st" "ts" "st"  # 3 warm-ups (seconds 1-6), then 3 repeats
    assert times == [[8.0, 9.0, 12.0], [7.0, 10.0, 11.0]]


def test_the_speedup_is_the_median_per_step_ratio_with_its_spread():
    from compress.bench import step_ratios

    steady = step_ratios([2.0, 4.0, 2.2, 3.0, 2.0], [1.0, 2.0, 1.0, 1.5, 1.0])  # ratios 2, 2, 2.2, 2, 2
    assert steady["median"] == 2.0 and steady["quartiles"] == [2.0, 2.0] and steady["range"] == [2.0, 2.2]
    assert steady["spread"] == 0.0 and steady["note"] is None
    busy = step_ratios([3.79, 1.19, 1.13, 1.2, 3.0], [1.0] * 5)  # a busy CPU: 3.79×, 1.19×, 1.13× seen
    assert busy["median"] == 1.2 and busy["quartiles"] == [1.19, 3.0] and busy["range"] == [1.13, 3.79]
    assert busy["spread"] == pytest.approx((3.0 - 1.19) / 1.2)
    assert busy["note"] == ("the per-step speedups spread widely (middle half 1.19× to 3.00×, 151% of the median "
                            "1.20×; all 1.13× to 3.79×): other work slowed some steps, so the ratio is uncertain; "
                            "rerun on an idle machine")
    just = step_ratios([1.0, 1.2, 1.1, 1.0, 1.0], [1.0] * 5)  # quartiles 1.0 and 1.1: 10% of the median
    assert just["note"] is None
    one = step_ratios([2.0], [1.0])
    assert one["median"] == 2.0 and one["spread"] is None and one["note"] is None


def test_bench_reports_the_spread_of_its_step_ratios_and_says_when_it_is_wide(tmp_path, capsys, monkeypatch):
    """bench printed one ratio (3.79×, 1.19×, 1.13× on reruns of one output on a busy CPU) with no
    spread. Now the quartiles and range of the per-step ratios in --json (its earlier keys kept) and
    the table, and a note where the middle half spans more than 20% of the median."""
    import json

    import compress.bench as bench
    from compress.cli import main
    from compress.lowrank import LowRankLinear

    student_seconds = iter([1.0] * 3 + [1.0, 0.5, 0.5, 1.0, 0.25])  # 3 warm-ups, then ratios 1, 2, 2, 1, 4

    def clock(model, kwargs, device):
        factorized = any(isinstance(m, LowRankLinear) for m in model.modules())
        return next(student_seconds) if factorized else 1.0

    monkeypatch.setattr(bench, "_one_forward", clock)
    out = _output(tmp_path)
    assert main(["bench", str(out), "--json", "--repeats", "5", "--device", "cpu"]) == 0
    shown = capsys.readouterr()
    result = json.loads(shown.out)
    assert {"teacher_step_s", "student_step_s", "speedup", "params_ratio", "weight_bytes_ratio",
            "peak_memory_ratio"} <= set(result)
    assert result["teacher_step_s"] == 1.0 and result["student_step_s"] == 0.5 and result["speedup"] == 2.0
    assert result["speedup_quartiles"] == [1.0, 2.0] and result["speedup_range"] == [1.0, 4.0]
    assert result["speedup_spread"] == 0.5
    assert result["timing_note"].startswith("the per-step speedups spread widely (middle half 1.00× to 2.00×, "
                                            "50% of the median 2.00×; all 1.00× to 4.00×)")
    notes = [line for line in shown.err.splitlines() if not line.startswith("bench: ")]  # not its status lines
    assert " ".join(" ".join(notes).split()) == f"note: {result['timing_note']}"
    student_seconds = iter([1.0] * 3 + [1.0, 0.5, 0.5, 1.0, 0.25])
    assert main(["bench", str(out), "--repeats", "5", "--device", "cpu"]) == 0
    table = " ".join(capsys.readouterr().out.split())
    step = "time per denoising step │ 0.500 (2.00× faster) │ │ middle half of the steps │"
    assert f"{step} 0.500–1.000 │" in table
    student_seconds = iter([1.0] * 3 + [0.5] * 5)
    assert main(["bench", str(out), "--repeats", "5", "--device", "cpu"]) == 0
    shown = capsys.readouterr()
    assert f"{step} 0.500 │" in " ".join(shown.out.split())
    assert all(line.startswith("bench: ") for line in shown.err.splitlines())  # a steady machine: no note


def test_bench_of_a_hub_id_times_the_caches_output_or_says_how_to_get_one(tmp_path, capsys, monkeypatch):
    """`bench ORG/NAME` said "ORG/NAME: no such output folder" though the Hugging Face cache held
    that output: it is benched; not cached, one line says what bench reads and how to download it."""
    import json

    from huggingface_hub import constants

    from compress.cli import main
    from tests.pipelines import hub_cache

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    hub_cache(tmp_path / "hub", "acme/out", _output(tmp_path))
    assert main(["bench", "acme/out", "--json", "--repeats", "1", "--device", "cpu"]) == 0
    assert 0 < json.loads(capsys.readouterr().out)["params_ratio"] < 1
    assert main(["bench", "acme/other", "--repeats", "1", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dit-compress bench: error: acme/other: no such output folder, and the Hugging Face cache {tmp_path / 'hub'} "
        "holds no copy of it: bench reads a local output folder or the cache's copy of a Hub id; download it "
        "(hf download acme/other) and give acme/other again, or give a local folder")


def test_a_sharded_teacher_loads_without_diffusers_bar(tmp_path, capfd):
    """bench printed diffusers' tqdm 'Loading checkpoint shards' bar while loading a sharded teacher,
    beside its own rich status; diffusers' bars are back on after it."""
    from diffusers.utils import logging as diffusers_logging

    from compress import save_compressed
    from compress.cli import main
    from tests.conftest import factorize, tiny_pixart

    teacher = tiny_pixart()
    teacher.save_pretrained(tmp_path / "teacher", max_shard_size="40KB")  # sharded, as big models are
    assert len(list((tmp_path / "teacher").glob("*.safetensors"))) > 1
    out = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], rank=2), tmp_path / "out",
                          extra={"teacher": str(tmp_path / "teacher")})
    assert diffusers_logging.is_progress_bar_enabled()
    assert main(["bench", str(out), "--repeats", "1", "--device", "cpu"]) == 0
    said = capfd.readouterr()
    assert "speed" in said.out.lower() or "step" in said.out.lower()  # bench's table was printed
    assert "Loading checkpoint shards" not in said.out + said.err
    assert diffusers_logging.is_progress_bar_enabled()


def test_bench_says_one_row_per_step_in_the_singular(tmp_path, capsys):
    """A Flux.1-dev output's step at --batch 1 is one row (guidance is an input, no doubled CFG batch):
    the table's title said 'batch 1: 1 rows per step'."""
    from compress import save_compressed
    from compress.cli import main
    from tests.conftest import factorize, tiny_flux

    teacher = tiny_flux()
    teacher.save_pretrained(tmp_path / "teacher")
    out = save_compressed(factorize(teacher, ["transformer_blocks.0.ff.net.2"], rank=2), tmp_path / "out",
                          extra={"teacher": str(tmp_path / "teacher")})
    assert main(["bench", str(out), "--repeats", "1", "--batch", "1", "--device", "cpu"]) == 0
    assert "(float32, batch 1: 1 row per step)" in " ".join(capsys.readouterr().out.split())
