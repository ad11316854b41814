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
                                       "(rerun the recipe)\n")
