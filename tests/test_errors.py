"""compress.errors: reading the text of a file a user gave."""

import pytest

from compress.errors import UserError, read_utf8


def test_a_byte_order_mark_is_no_part_of_the_text(tmp_path):
    """A file saved as 'UTF-8 with BOM' (Windows editors) started its text with U+FEFF: the first
    prompt of a prompt file held it, silently."""
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfa cat\nsnow\n")
    assert read_utf8(tmp_path / "p.txt", "p.txt", "save it as UTF-8") == "a cat\nsnow\n"


def test_text_that_is_not_utf8_after_a_byte_order_mark_names_its_line(tmp_path):
    (tmp_path / "p.txt").write_bytes(b"\xef\xbb\xbfa cat\nsn\xffow\n")
    with pytest.raises(UserError, match=r"^p\.txt:2: not UTF-8 text \(byte 0xff\); save it as UTF-8$"):
        read_utf8(tmp_path / "p.txt", "p.txt", "save it as UTF-8")


# ---- did_you_mean: the closest option, case aside --------------------------------------------------
def _recipe_refusal(text: str) -> str:
    from compress.recipe import parse_recipe

    with pytest.raises(UserError) as e:
        parse_recipe(text, "r.yaml")
    return str(e.value)


RECIPE = "version: 1\nmodel: pixart\nteacher: toy:pixart\ndevice: cpu\npasses:\n  - svd: {targets: [attention]}\n"


@pytest.mark.parametrize("slip, said", [
    (("device: cpu", "device: CDUA"), "r.yaml:4: device must be one of auto, cpu, cuda, cuda:N, not 'CDUA'; "
                                      "did you mean 'cuda'?"),
    (("- svd:", "- SVD:"), "r.yaml:6: unknown pass 'SVD'; did you mean 'svd'? (passes: importance, remove_blocks, "
                           "svd, distill)"),
    (("device:", "DEVICE:"), "r.yaml:4: unknown key 'DEVICE'; did you mean 'device'?"),
    (("{targets: [attention]}", "{targets: [attention], Cener: [mlp]}"),
     "r.yaml:6: unknown key 'Cener' in passes[0].svd; did you mean 'center'? (known: "),
    (("{targets: [attention]}", "{allocation: per_role, ratios: {MLP: 0.5}}"),
     "r.yaml:6: svd.ratios: unknown role 'MLP'; did you mean 'mlp'? (roles: attention, cross_attention, mlp, "),
    (("{targets: [attention]}", "{allocation: per_role, ratios: {Attention: 0.5}}"),
     "svd.ratios: unknown role 'Attention'; did you mean 'attention'? (roles: ")],
    ids=["device", "pass", "key", "key-typo", "role", "role-as-before"])
def test_a_slip_of_case_gets_the_option_meant(slip, said):
    """A recipe's device CDUA, pass SVD, key DEVICE or role MLP got no hint (difflib compared case as it
    is: 'SVD' is no closer to 'svd' than to 'distill'), and a key Cener the wrong one ('energy', where
    'center' was meant). Now the closest option case aside, as `options` spell it (Attention, close
    enough in case as it is, is told 'attention' as before)."""
    assert said in _recipe_refusal(RECIPE.replace(*slip))


def test_a_slip_of_case_in_a_target_pattern_a_toy_name_or_an_option_gets_the_one_meant(capsys):
    from compress import cli
    from compress.arch.base import LinearInfo
    from compress.passes.svd_targets import check_pattern
    from compress.toy.weights import check_toy_name

    infos = [LinearInfo(f"transformer_blocks.0.{n}", role, "x", "blocks", 0, 8, 8, n)
             for n, role in (("attn1.to_q", "attention"), ("ff.net.0.proj", "mlp"))]
    with pytest.raises(UserError, match=r"pattern 'MLP' matches no linear layer of the model; did you mean 'mlp'\?"):
        check_pattern("MLP", infos, "targets")
    with pytest.raises(UserError, match=r"^unknown toy teacher 'toy:PIXART'; did you mean 'toy:pixart'\? \(the"):
        check_toy_name("PIXART")
    with pytest.raises(SystemExit):
        cli.main(["plan", "r.yaml", "--JSON", "-"])
    assert "unrecognized arguments: --JSON -; did you mean '--json'?" in capsys.readouterr().err


def test_where_case_already_matched_the_hint_is_the_same():
    """The hint difflib.get_close_matches gave where word and options are all one case, for 20000 made-up
    words and option lists; an option is suggested as it is spelled, and the closer in case of two."""
    import difflib
    import random

    from compress.errors import did_you_mean

    rng = random.Random(0)
    letters = "abcde_.-"
    for _ in range(20000):
        options = ["".join(rng.choices(letters, k=rng.randint(1, 8))) for _ in range(rng.randint(1, 6))]
        word = "".join(rng.choices(letters, k=rng.randint(1, 8)))
        close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
        assert did_you_mean(word, options) == (f"; did you mean '{close[0]}'?" if close else ""), (word, options)
    assert did_you_mean("attn", ["Attention", "ATTN_OUT"]) == "; did you mean 'ATTN_OUT'?"
    assert did_you_mean("Cuda", ["CUDA", "cuda"]) == "; did you mean 'cuda'?"
    assert did_you_mean("mps", ["auto", "cpu", "cuda"]) == ""
