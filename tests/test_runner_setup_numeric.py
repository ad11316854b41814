"""compress/runner_setup.py's numeric checks of the teacher as `run` loads it (resident, or its top
level where streamed): a NaN in the checkpoint names the weight and its file; a finite weight the
compute dtype cannot hold (float16 stops at 65504) says so, not "has N NaN/Inf values"; the hint
where the teacher's prediction overflows is true of each compute dtype."""

import pytest
import torch

from compress.errors import NumericError
from compress.recipe import parse_recipe
from compress.runner import Runner
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE

WEIGHT = "transformer_blocks.2.attn1.to_v.weight"
SVD = "  - svd: {targets: [mlp], ratio: 0.5, multiple: 2}\n"


def damaged_teacher(tmp_path, value: float, name: str = WEIGHT, **save):
    """A tiny PixArt teacher saved in tmp_path/teacher with one value of `name` set to `value`."""
    model = tiny_pixart()
    with torch.no_grad():
        model.get_parameter(name).view(-1)[3] = value
    model.save_pretrained(tmp_path / "teacher", **save)
    return tmp_path / "teacher"


def _prepare(tmp_path, teacher, *sets):
    text = SIMPLE.format(teacher=teacher, passes=SVD) + "".join(f"{s}\n" for s in sets)
    recipe = parse_recipe(text, str(tmp_path / "r.yaml"))
    Runner(recipe, tmp_path / "out", tmp_path / "run").prepare()


def test_a_finite_weight_beyond_float16_is_said_to_overflow_it_not_to_hold_nan(tmp_path):
    """compute_dtype float16 on a teacher holding 1.6e5 said 'teacher weight ... has 1 NaN/Inf values':
    false, the file is finite; the cast overflowed. Now: the value, float16's range, what holds it."""
    teacher = damaged_teacher(tmp_path, 1.62e5)
    with pytest.raises(NumericError) as e:
        _prepare(tmp_path, teacher, "compute_dtype: float16")
    words = str(e.value)
    assert words == (f"the teacher's weight {WEIGHT} (in {teacher / 'diffusion_pytorch_model.safetensors'}) holds "
                     "values up to 1.62e+05, beyond float16's range (max 65504): use compute_dtype bfloat16 or "
                     "float32")
    assert "NaN" not in words


def test_a_nan_in_the_teachers_file_names_the_weight_and_the_file(tmp_path):
    """The resident message named the weight alone; the streamed one names its file too."""
    teacher = damaged_teacher(tmp_path, float("nan"), max_shard_size="40KB")  # shards: the file is one of them
    from compress.stream_files import weight_map

    shard = weight_map(teacher)[WEIGHT]
    with pytest.raises(NumericError) as e:
        _prepare(tmp_path, teacher)
    assert str(e.value) == f"teacher weight {WEIGHT} in {shard} has 1 NaN/Inf values"


def test_the_streamed_top_level_beyond_float16_is_said_to_overflow_it(tmp_path):
    """Streamed, the top level is read resident and cast: the same words as resident."""
    teacher = damaged_teacher(tmp_path, -1.62e5, name="proj_out.weight")
    with pytest.raises(NumericError, match=r"^the teacher's weight proj_out\.weight \(in .*\) holds values up to "
                                           r"1\.62e\+05, beyond float16's range \(max 65504\): use compute_dtype "
                                           r"bfloat16 or float32$"):
        _prepare(tmp_path, teacher, "compute_dtype: float16", "stream: true")


def test_a_weight_with_no_file_to_read_says_what_a_float16_overflow_looks_like():
    """Where the checkpoint cannot be read by name (a Hub id, an original-format single file), Inf alone
    in float16 may be the cast's: said, without claiming the file holds it."""
    from compress.runner_setup import check_finite

    model = tiny_pixart().half()
    with torch.no_grad():
        model.get_parameter(WEIGHT).view(-1)[0] = float("inf")
    with pytest.raises(NumericError, match=rf"^teacher weight {WEIGHT} has 1 NaN/Inf values in float16, which stops "
                                           r"at 65504 \(finite values beyond it become Inf: if the checkpoint's are "
                                           r"finite, use compute_dtype bfloat16 or float32\)$"):
        check_finite(model)
    with torch.no_grad():
        model.get_parameter(WEIGHT).view(-1)[0] = float("nan")
    with pytest.raises(NumericError, match=rf"^teacher weight {WEIGHT} has 1 NaN/Inf values$"):
        check_finite(model)


@pytest.mark.parametrize("dtype, hint", [
    ("float16", "try bfloat16 or float32"),
    ("bfloat16", "bfloat16 reaches as far as float32 (3.4e38), so float32 overflows there too unless bfloat16's "
                 "coarser rounding caused it"),
    ("float32", "the checkpoint's weights overflow even in float32: it may be damaged"),
])
def test_the_overflow_hint_is_true_of_each_compute_dtype(dtype, hint):
    """bfloat16 was told 'try float32', which has the same range: a teacher overflowing bfloat16 (1e36
    times a weight) overflowed float32 too."""
    from compress.runner_setup import check_reference

    with pytest.raises(NumericError) as e:
        check_reference([torch.tensor([1.0, float("inf")])], dtype)
    assert str(e.value).startswith(f"the teacher's prediction holds NaN/Inf on held-out batch 1 of 1 in compute_dtype "
                                   f"{dtype}; {hint}")
    assert ("try float32" in str(e.value)) is False


HUGE = "transformer_blocks.1.ff.net.0.proj.weight"
PAST = ("transformer_blocks.2.norm1's output is the first to hold it (its inputs were finite); "
        "transformer_blocks.1.ff.net.0.proj's output is the first past 1.84e+19, the square root of float32's "
        "largest value (it reaches ")


@pytest.mark.parametrize("stream", [False, True])
def test_huge_finite_weights_name_the_layer_whose_output_passes_the_root_of_the_dtypes_range(tmp_path, stream):
    """A weight x1e30 in block 1's ff.net.0.proj: the run blamed only transformer_blocks.2.norm1 (no weights, a
    block later, where the variance of the huge values overflows) and said 'overflow even in float32 there'.
    Now the layer whose output first passes sqrt(float32 max) is named too, with its largest weight; streamed
    alike (its hook measures the block's weights while they are read)."""
    model = tiny_pixart()
    with torch.no_grad():
        model.get_parameter(HUGE).mul_(1e30)
    model.save_pretrained(tmp_path / "teacher", max_shard_size="40KB" if stream else "10GB")
    svd = SVD.replace("multiple: 2", "multiple: 2, fisher: none")
    text = SIMPLE.format(teacher=tmp_path / "teacher", passes=svd) + ("stream: true\n" if stream else "")
    with pytest.raises(NumericError) as e:
        Runner(parse_recipe(text, str(tmp_path / "r.yaml")), tmp_path / "out", tmp_path / "run").run()
    words = str(e.value)
    assert words.startswith("the teacher's prediction holds NaN/Inf on held-out batch 1 of ")
    assert f"in compute_dtype float32: {PAST}" in words, words
    largest = float(model.get_parameter(HUGE).detach().abs().max())
    assert words.endswith(f"; its largest weight is {largest:.3g}); the checkpoint's weights overflow even in "
                          "float32: it may be damaged, or not this model's"), words


def test_a_layer_that_overflows_itself_is_named_once():
    """Where the first non-finite output is the layer past the root itself, it is said once, as before."""
    from compress.arch import get_adapter
    from compress.runner_setup import locate
    from tests.conftest import model_inputs

    teacher = tiny_pixart()
    with torch.no_grad():
        teacher.transformer_blocks[1].ff.net[2].weight.mul_(1e38)
    assert locate(teacher, get_adapter(teacher), model_inputs(teacher, batch=2, seed=0)) == (
        "transformer_blocks.1.ff.net.2's output is the first to hold it (its inputs were finite)")


def test_outputs_of_two_dtypes_past_their_roots_alike_are_measured_without_comparing_dtypes():
    """A layer whose outputs, of two dtypes, both reach Inf: the largest was picked by comparing
    (value, dtype) pairs, and equal values compared the dtypes: a TypeError in place of the words."""
    from compress.runner_setup import _largest_past_root

    inf = float("inf")
    big, dtype = _largest_past_root((torch.tensor([inf], dtype=torch.float16), torch.tensor([inf])))
    assert big == inf and dtype == torch.float16
