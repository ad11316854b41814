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
    medians = time_steps([_Clocked("t", log), _Clocked("s", log)], {}, repeats=4, device=torch.device("cpu"))
    assert len(medians) == 2 and all(m >= 0 for m in medians)
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
    assert str(e.value) == f"--device {name!r}: bench runs on cpu, cuda or cuda:N (a GPU's index)"


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
    with pytest.raises(UserError, match=f"^--device '?{name}'?: "):
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
