"""compress.words: a count's noun agrees with it."""

from compress.words import counted


def test_a_count_of_one_takes_the_singular_and_any_other_the_plural():
    assert [counted(n, "layer") for n in (0, 1, 2)] == ["0 layers", "1 layer", "2 layers"]
    assert counted(1, "LoRA") == "1 LoRA" and counted(3, "index", "indices") == "3 indices"
