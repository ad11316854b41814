"""compress.dtype_range: weights against a dtype (NaN/Inf in a file, finite values a cast would make
Inf), each in one line; load_transformer's use of them: test_io_output_cast.py."""

from pathlib import Path

import pytest
import torch

from compress.dtype_range import check_castable, check_finite_file
from compress.errors import UserError


def test_float32_values_beyond_bfloat16_say_only_float32_holds_them():
    big = torch.tensor([1.0, 3.4e38])  # float32's max is 3.40282e38, bfloat16's 3.38953e38
    with pytest.raises(UserError, match=r"^f: w holds values up to 3\.4e\+38, beyond bfloat16's range "
                                        r"\(max 3\.38953e\+38\): load it as float32 \(dtype=\)$"):
        check_castable("f", {"w": big}, torch.bfloat16)
    check_castable("f", {"w": big, "ids": torch.tensor([1, 2])}, torch.float32)  # no narrower: nothing to say


@pytest.mark.parametrize("folder", ["/tmp/a[red]b", "/tmp/a[/red]b"])
def test_a_damaged_output_under_a_path_with_brackets_is_named_as_it_is(folder, capsys):
    """load_transformer(nonfinite="warn")'s warning printed the path as rich markup: '/tmp/a[red]b'
    came out as '/tmp/ab' (in red), and '/tmp/a[/red]b' raised rich's MarkupError instead of warning."""
    path = Path(folder) / "diffusion_pytorch_model.safetensors"
    check_finite_file(path, {"w": torch.tensor([1.0, float("nan")])}, warn=True)
    assert capsys.readouterr().err == (f"warning: {path}: weight w has 1 NaN/Inf values; the output is damaged "
                                       "(rerun the recipe that wrote it)\n")


def test_a_damaged_file_says_what_to_do_where_it_came_from(tmp_path, monkeypatch):
    """A NaN in an output's weight file always said 'rerun the recipe': of an output the Hugging Face cache
    holds (a Hub id's, read for inspect / eval / bench and named 'acme/out's FILE'; a Hub teacher that is an
    output) it is the cache's copy to download again (forced: hf download keeps a file it has), or the
    Hub's; of a run folder's saved stage (--resume), a start over; of a local output (or a teacher that is
    one), the recipe that wrote it."""
    import compress.io_output as io_output
    from compress.errors import NumericError

    nan = {"w": torch.tensor([1.0, float("nan")])}
    commit = "0" * 40
    snapshot = tmp_path / "hub" / "models--acme--out" / "snapshots" / commit
    monkeypatch.setattr(io_output, "READ_FOR", {snapshot: "acme/out"})
    hub = ("the output is damaged as the Hugging Face cache holds it: download it again online (hf download acme/out "
           "{} --revision " + commit + " --force-download), and if it still holds them, so is the Hub's copy "
           "(rerun the recipe that wrote it)")
    for path, words in [
        ("acme/out's diffusion_pytorch_model.safetensors", hub.format("diffusion_pytorch_model.safetensors")),
        (snapshot / "transformer" / "d.safetensors", hub.format("transformer/d.safetensors")),  # a Hub teacher
        (tmp_path / "run" / "stages" / "1-svd" / "d.safetensors",
         "the run folder's saved stage is damaged: rerun with --restart to start over"),
        (tmp_path / "out" / "d.safetensors", "the output is damaged (rerun the recipe that wrote it)")]:
        with pytest.raises(NumericError) as e:
            check_finite_file(path, nan)
        assert str(e.value) == f"{path}: weight w has 1 NaN/Inf values; {words}"


@pytest.mark.parametrize("dtype, words", [
    (torch.float16, "a float16 compute_dtype overflowing? try bfloat16"),
    (torch.bfloat16, "bfloat16 reaches 3.4e38, so not a narrow compute dtype: weights damaged, or grown"),
    (torch.float32, "float32 reaches 3.4e38, so not a narrow compute dtype: weights damaged, or grown"),
    (torch.float64, "float64 reaches 1.8e308, so not a narrow compute dtype: weights damaged, or grown")])
def test_an_overflow_is_blamed_on_float16_only_in_float16(dtype, words):
    """Each dtype's own max: float64's is not float32's 3.4e38."""
    from compress.dtype_range import overflow_hint

    assert overflow_hint(dtype).startswith(words)
