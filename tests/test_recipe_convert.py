"""YAML nodes to typed values: an error names the value that is wrong, at its line."""

import pytest
import yaml

from compress.errors import UserError
from compress.recipe import parse_recipe
from compress.recipe_convert import convert
from compress.recipe_yaml import RecipeLoader
from tests.recipe_helpers import refusal


def _one_pass(top: str, option: str) -> str:
    """A toy PixArt recipe with the top-level lines `top` (each ending in a newline) and the one pass `option`."""
    return f"model: pixart\nteacher: toy:pixart\n{top}passes:\n  - {option}\n"


@pytest.mark.parametrize("text, tp, message", [
    ("x: {a: '1'}", dict[str, list[int]] | None, "r.yaml:1: x.a must be a list of an integer, not '1'"),
    ("x:\n  a: [1]\n  b: [2, y]", dict[str, list[int]] | None, "r.yaml:3: x.b[1] must be an integer, not 'y'"),
    ("x: [1, two]", list[int] | int | None, "r.yaml:1: x[1] must be an integer, not 'two'"),
    ("x: {a: 1}", dict[str, str] | int, "r.yaml:1: x.a must be a string, not 1"),
    # a scalar, or a container two types could take: what the union takes
    ("x: '1'", dict[str, list[int]] | None, "r.yaml:1: x must be a mapping of a string to a list of an integer "
                                            "or null, not '1'"),
    ("x: [[1]]", list[int] | list[str], "r.yaml:1: x must be a list of an integer or a list of a string, not a list"),
])
def test_a_wrong_value_inside_the_one_container_a_union_takes_is_named(text, tp, message):
    """{blocks: {blocks: '1'}} said blocks 'must be a mapping of a string to a list of an integer or null,
    not a mapping': the mapping was right; the value inside it is the one to name, at its line."""
    node = yaml.compose(text, Loader=RecipeLoader).value[0][1]
    with pytest.raises(UserError) as e:
        convert(node, tp, "r.yaml", "x")
    assert str(e.value) == message


@pytest.mark.parametrize("value, hint", [
    ("float64", "; float32 is the most precise offered (the factorizations compute in float64 whatever it is)"),
    ("fp16", "; did you mean 'float16'?"),
    ("bf16", "; did you mean 'bfloat16'?"),
    ("floatt32", "; did you mean 'float32'?"),
])
def test_a_dtype_spelled_another_way_gets_the_name_it_meant(value, hint):
    """compute_dtype: float64 was asked 'did you mean float16?' (the closest string: the least precise)
    and export.dtype: fp16 got no hint."""
    for key in ("compute_dtype", "export.dtype"):
        said = refusal("model: pixart\nteacher: toy:pixart\npasses: [svd]\n", [f"{key}={value}"])
        assert said.endswith(f"not {value!r}{hint}")


def test_a_null_or_boolean_value_is_quoted_as_yaml_spells_it():
    """`model: null` was refused with "not None" (Python's spelling, not the recipe's); a required key
    given null now says null cannot remove it."""
    rest = "passes:\n  - svd: {targets: [mlp]}\n"
    for text, words in (("model: null\n" + rest, "null cannot remove it"), ("model: true\n" + rest, "not true"),
                        ("model: pixart\nteacher: null\n" + rest, "null cannot remove it")):
        said = refusal(text)
        assert words in said and "None" not in said and "True" not in said, said


@pytest.mark.parametrize("value, message", [
    ("1.5", "svd.ratio must be in (0, 1], got 1.5"),  # the pass's value check
    ("'0.5'", "svd.ratio must be a number, not '0.5'"),  # the type check: was passes[0].svd.ratio
    (".nan", "svd.ratio must be a finite number, got nan"),  # was passes[0].svd.ratio too
])
def test_a_pass_option_is_named_alike_by_its_type_and_value_checks(value, message):
    """`b7.yaml:6: svd.ratio must be in (0, 1], got 1.5` but `b8.yaml:6: passes[0].svd.ratio must be a
    number, not '0.5'`: two names for one key. The line (or the --set) says which pass; both say svd.ratio."""
    text = f"model: pixart\nteacher: toy:pixart\npasses:\n  - importance\n  - svd:\n      ratio: {value}\n"
    assert refusal(text) == f"r.yaml:6: {message}"
    assert refusal(text.replace(value, "0.5"), [f"passes.1.svd.ratio={value}"]) == \
        f"r.yaml (--set passes.1.svd.ratio={value}): {message}"


@pytest.mark.parametrize("top, option, message", [
    ("", "distill: {mixed_precision: false}",
     "distill.mixed_precision must be one of no, bf16, fp16, not false; did you mean 'no'?"),
    ("", "distill: {mixed_precision: bf16x}",
     "distill.mixed_precision must be one of no, bf16, fp16, not 'bf16x'; did you mean 'bf16'?"),
    ("", "distill: {mixed_precision: fp32}",
     "distill.mixed_precision must be one of no, bf16, fp16, not 'fp32'; did you mean 'no'?"),
    ("", "distill: {train: 1}", "distill.train must be one of all, factors, non_factors, not 1"),
    ("", "svd: {compensate_toward: student}", "svd.compensate_toward must be one of teacher, input, not 'student'"),
    ("", "svd: {activations: true}", "svd.activations must be one of student, teacher, not true"),
    ("", "remove_blocks: {count: 1, criterion: false}",
     "remove_blocks.criterion must be one of scan, proxy, learned, not false"),
    ("", "remove_blocks: {count: 1, criterion: learned, estimator: gumble}",
     "remove_blocks.estimator must be one of gumbel, score, not 'gumble'; did you mean 'gumbel'?"),
    ("compute_dtype: fp16\n", "svd", "compute_dtype must be one of float32, float16, bfloat16, not 'fp16'; "
                                     "did you mean 'float16'?"),
    ("calibration: {source: false}\n", "svd",
     "calibration.source must be one of auto, toy, pipeline, synthetic, not false"),
    ("device: gpu\n", "svd", "device must be one of auto, cpu, cuda, cuda:N, not 'gpu'; did you mean 'cuda'?"),
    ("device: false\n", "svd", "device must be one of auto, cpu, cuda, cuda:N, not false"),
])
def test_every_choice_key_is_refused_in_one_wording(top, option, message):
    """Three wordings: 'distill: mixed_precision must be one of no, bf16, fp16, not 'bf16x'' (no
    suggestion), 'compute_dtype must be one of 'float32' | 'float16' | 'bfloat16', not 'fp16'; did
    you mean...', 'svd.compensate_toward must be one of teacher, input; got 'student''; and a boolean
    where a choice was wanted said only 'distill.mixed_precision must be a string, not false'. Now one:
    the key, its choices, the value as YAML spells it, the choice meant where one is close (false: no)."""
    assert refusal(_one_pass(top, option)) == f"r.yaml:{3 if top else 4}: {message}"


@pytest.mark.parametrize("value, message", [
    ("cuda:x", "not 'cuda:x'; cuda:N takes a GPU's index: cuda:0, cuda:1, ..."),
    ("cuda:N", "not 'cuda:N'; cuda:N takes a GPU's index: cuda:0, cuda:1, ..."),
    ("cuda:-1", "not 'cuda:-1'; cuda:N takes a GPU's index: cuda:0, cuda:1, ..."),
    ("cuda0", "not 'cuda0'; did you mean 'cuda:0'?"),
    ("cpuu", "not 'cpuu'; did you mean 'cpu'?"),
])
def test_a_device_is_never_told_to_be_the_placeholder_cuda_n(value, message):
    """device: cuda:x was asked "did you mean 'cuda:N'?" (the placeholder, itself refused), and
    device: cuda:N too; now a value starting cuda: is told to give a GPU's index."""
    said = refusal(f"model: pixart\nteacher: toy:pixart\ndevice: {value}\npasses: [svd]\n")
    assert said == f"r.yaml:3: device must be one of auto, cpu, cuda, cuda:N, {message}"
    for fine in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert parse_recipe(f"model: pixart\nteacher: toy:pixart\ndevice: {fine}\npasses: [svd]\n").device == fine


@pytest.mark.parametrize("top, option, message", [
    ("", "distill: {mixed_precision: [bf16]}", "r.yaml:4: distill.mixed_precision must be one of no, bf16, fp16, "
                                               "not a list"),
    ("", "remove_blocks: {count: 1, criterion: learned, estimator: [x]}",
     "r.yaml:4: remove_blocks.estimator must be one of gumbel, score, not a list"),
    ("", "svd: {compensate_toward: {a: 1}}", "r.yaml:4: svd.compensate_toward must be one of teacher, input, "
                                             "not a mapping"),
    ("compute_dtype: [fp16]\n", "svd", "r.yaml:3: compute_dtype must be one of float32, float16, bfloat16, "
                                        "not a list"),
])
def test_a_list_or_mapping_given_a_choice_key_is_refused_in_the_same_wording(top, option, message):
    """distill: {mixed_precision: [bf16]} said "distill.mixed_precision must be 'no' | 'bf16' | 'fp16'"
    (a third wording, and it was "must be a string" before 4f062c6), estimator: [x] lost "not a list"."""
    assert refusal(_one_pass(top, option)) == message


def test_a_config_built_in_code_is_refused_in_the_recipes_words():
    """DistillConfig(mixed_precision='bf16x').validate() (as the runner's checks call it) said
    'distill: mixed_precision must be one of no, bf16, fp16, not 'bf16x''; select_trainable
    'distill: train must be one of ...'."""
    import torch

    from compress.distill_utils import select_trainable
    from compress.passes.distill import DistillConfig
    from compress.passes.remove_blocks_config import RemoveBlocksConfig

    with pytest.raises(UserError) as e:
        DistillConfig(mixed_precision="bf16x").validate()
    assert str(e.value) == "distill.mixed_precision must be one of no, bf16, fp16, not 'bf16x'; did you mean 'bf16'?"
    with pytest.raises(UserError) as e:
        select_trainable(torch.nn.Linear(2, 2), "factor")
    assert str(e.value) == "distill.train must be one of all, factors, non_factors, not 'factor'; did you mean 'factors'?"
    RemoveBlocksConfig(count=1, criterion="learned").validate()  # estimator null: its default
    with pytest.raises(UserError) as e:
        RemoveBlocksConfig(count=1, criterion="learned", estimator=False).validate()
    assert str(e.value) == "remove_blocks.estimator must be one of gumbel, score, not false"


def test_a_config_built_in_code_gets_the_hint_a_recipe_gets():
    """DistillConfig(mixed_precision='fp32').validate() gave no hint where the recipe gave "did you
    mean 'no'?" (the aliases were passed at recipe load only); float64's hint alike."""
    from compress.errors import not_one_of
    from compress.passes.distill import DistillConfig
    from compress.recipe import DTYPES

    with pytest.raises(UserError) as e:
        DistillConfig(mixed_precision="fp32").validate()
    assert str(e.value) == "distill.mixed_precision must be one of no, bf16, fp16, not 'fp32'; did you mean 'no'?"
    assert not_one_of("export.dtype", "float64", DTYPES).endswith("; float32 is the most precise offered "
                                                                  "(the factorizations compute in float64 whatever it is)")
    assert not_one_of("export.dtype", "half", DTYPES).endswith("not 'half'; did you mean 'float16'?")


@pytest.mark.parametrize("option, override, said", [
    ("svd: {asymmetric: 1}", (), "r.yaml:4: svd.asymmetric must be true, false or auto, not 1"),  # T1's v2/asym_1
    ("svd: {sequential: 0.5}", (), "r.yaml:4: svd.sequential must be true, false or auto, not 0.5"),
    ("svd", ("passes.0.svd.sequential=1",),
     "r.yaml (--set passes.0.svd.sequential=1): svd.sequential must be true, false or auto, not 1"),
    ("svd: {asymmetric: yes}", (), "r.yaml:4: svd.asymmetric must be true, false or auto, not 'yes' "
                                   "(write true: in YAML 1.2 only true and false are booleans)"),
])
def test_a_number_for_a_boolean_or_word_is_said_with_the_words_the_key_takes(option, override, said):
    """`asymmetric: 1` said 'must be true or false or a string, not 1' (the type's union refused it before
    the check that names auto ran)."""
    assert refusal(_one_pass("", option), override) == said


@pytest.mark.parametrize("value, tag", [
    ("!!python/object:os.system ls", "!!python/object:os.system"),  # T1's v2/tag_py.yaml
    ("!custom x", "!custom"),
])
def test_a_tag_yaml_has_no_constructor_for_is_said_as_a_tag_not_read(value, tag):
    """Said 'teacher: could not determine a constructor for the tag 'tag:yaml.org,2002:python/object:os.system''."""
    assert refusal(f"model: pixart\nteacher: {value}\npasses: [svd]\n") == \
        f"r.yaml:2: teacher: the YAML tag {tag} is not read: a recipe holds plain values; remove the tag"


OPTIONS_UNDER = "model: pixart\nteacher: toy:pixart\npasses:\n  - svd:\n"  # the pass's options: line 5


@pytest.mark.parametrize("options, said", [
    ("      ratio:0.5\n",  # T1's v5/nospace_key.yaml
     "r.yaml:5: passes[0].svd must be a mapping of options, not 'ratio:0.5' (write 'ratio: 0.5', a space after ':')"),
    ("      ratio 0.5\n",
     "r.yaml:5: passes[0].svd must be a mapping of options, not 'ratio 0.5' (write 'ratio: 0.5', a ':' after the key)"),
    ("      rato:0.5\n", "r.yaml:5: passes[0].svd must be a mapping of options, not 'rato:0.5'"),  # no option's
    ("      fast\n", "r.yaml:5: passes[0].svd must be a mapping of options, not 'fast'"),
    ("      [mlp]\n", "r.yaml:5: passes[0].svd must be a mapping of options, not a list"),
])
def test_options_that_are_no_mapping_are_quoted_with_how_to_write_them(options, said):
    """`ratio:0.5` (a ':' without its space) said 'passes[0].svd must be a mapping of options': no value, no hint."""
    assert refusal(OPTIONS_UNDER + options) == said


def test_calibration_that_is_no_mapping_is_quoted_with_how_to_write_it():
    assert refusal("model: pixart\nteacher: toy:pixart\ncalibration:\n  seed:0\npasses: [svd]\n") == \
        "r.yaml:4: calibration must be a mapping of options, not 'seed:0' (write 'seed: 0', a space after ':')"
