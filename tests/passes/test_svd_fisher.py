"""svd_fisher_roots.Roots: every weighted target's output Fisher on disk, its (L, L⁻¹) computed when
asked, only a few pairs held (one group's, or each F's eigendecomposition kept in its place). A Fisher
with fewer gradient rows than outputs is kept as those rows (FisherSum), and gives the same (L, L⁻¹)
as F itself."""

import pytest
import torch

from compress.passes.svd_fisher import FisherSum, dense_fisher, is_rows
from compress.passes.svd_fisher_roots import Roots, sqrt_pair

pytestmark = pytest.mark.usefixtures("one_thread")


def _fishers(n=5, d=8):
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(n):
        a = torch.randn(d, 3 * d, generator=g, dtype=torch.float64)
        out[f"l{i}"] = a @ a.T  # (d, d) symmetric PSD
    return out


def test_roots_on_disk_equal_roots_in_memory_and_hold_few_pairs(tmp_path):
    fishers = _fishers()
    pair_bytes = 2 * 8 * 8 * 8  # (L, L⁻¹), 8 x 8 float64
    disk, memory = Roots(tmp_path / "f", 1e-3, keep_bytes=2 * pair_bytes), Roots(None, 1e-3, 1e12)
    for name, f in fishers.items():
        disk.add(name, f)
        memory.add(name, f)
    assert len(list((tmp_path / "f").iterdir())) == 5 and len(disk) == 5
    for name, f in fishers.items():
        want = sqrt_pair(f, 1e-3)
        for got in (disk[name], memory[name]):
            assert all(torch.equal(a, b) for a, b in zip(got, want))
        assert len(disk.recent) <= 2
    view = disk.only(["l1", "l3", "not a target"])
    assert set(view) == {"l1", "l3"} and len(view) == 2 and "l0" not in view and "l0" in disk
    assert view.get("l0") is None and torch.equal(view["l3"][1], sqrt_pair(fishers["l3"], 1e-3)[1])
    assert not Roots(None, 1e-3, 1.0).only([])  # an empty view is falsy (no compensation)
    disk.close()
    assert not (tmp_path / "f").exists()


def test_a_fisher_with_few_rows_is_kept_as_rows_until_it_has_as_many_as_outputs():
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(4, 12, generator=g) for _ in range(4)]  # 4 rows at a time, out = 12
    acc = FisherSum()
    for k, b in enumerate(blocks[:2]):
        acc.add(b)
        assert is_rows(acc.value()) and acc.value().shape == (4 * (k + 1), 12)
    acc.add(blocks[2])  # 12 rows: as many as outputs, F from now on
    acc.add(blocks[3])
    want = sum(b.double().T @ b.double() for b in blocks)
    assert not is_rows(acc.value()) and acc.value().dtype == torch.float64
    torch.testing.assert_close(acc.value(), want, rtol=1e-12, atol=1e-12)
    assert acc.value() is dense_fisher(acc.value())


@pytest.mark.parametrize("n", [1, 5, 11])
def test_roots_from_rows_equal_roots_from_their_fisher(n):
    """L = (F + λI)^{1/2} and L⁻¹ from the n x n Gram of the rows equal those from eigh of F."""
    g = torch.Generator().manual_seed(n)
    rows = torch.randn(n, 12, generator=g, dtype=torch.float64) * torch.logspace(0, -3, 12, dtype=torch.float64)
    fisher = rows.T @ rows
    for damping in (1e-3, 1e-1):
        root, inv = sqrt_pair(rows, damping)
        want_root, want_inv = sqrt_pair(fisher, damping)
        torch.testing.assert_close(root, want_root, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(inv, want_inv, rtol=1e-9, atol=1e-9)
        lam = damping * float(torch.trace(fisher)) / 12
        torch.testing.assert_close(root @ root, fisher + lam * torch.eye(12, dtype=torch.float64))
        torch.testing.assert_close(root @ inv, torch.eye(12, dtype=torch.float64))
    zero_root, zero_inv = sqrt_pair(torch.zeros(3, 12), 1e-3)  # no signal: λ = 1, L = I
    assert torch.equal(zero_root, torch.eye(12, dtype=torch.float64)) and torch.equal(zero_inv, zero_root)


def test_a_fisher_that_overflowed_names_its_layer():
    from compress.errors import NumericError

    f = _fishers()["l0"].clone()
    f[0, 0] = float("inf")  # a float16 backward that overflowed
    with pytest.raises(NumericError, match="layer 'transformer_blocks.1.attn1.to_q': its output Fisher"):
        Roots(None, 1e-3, 1e12).add("transformer_blocks.1.attn1.to_q", f)


def test_a_zero_fisher_is_said_naming_its_layer(capsys):
    """F = 0 (the prediction does not see the layer, or its gradients underflowed) leaves the fit
    unweighted (L = I): said, not silent."""
    roots = Roots(None, 1e-3, 1e12)
    roots.add("blocks.0.ff", torch.zeros(4, 4, dtype=torch.float64))
    roots.say_zero()  # as the pass's measuring ends
    assert "layer 'blocks.0.ff': its output Fisher is zero" in " ".join("".join(capsys.readouterr()).split())
    torch.testing.assert_close(roots["blocks.0.ff"][0], torch.eye(4, dtype=torch.float64))
    roots.add("blocks.1.ff", _fishers()["l0"])
    roots.close()
    assert "Fisher is zero" not in "".join(capsys.readouterr())


def test_zero_fishers_are_said_in_one_line_counting_them(capsys):
    """T1's Flux teacher with every block's modulation weights zero: 41 separate 'its output Fisher is
    zero' warnings. Now one line, said when the pass's Fishers are measured (say_zero) or as it ends
    (close: fisher: block measures them as the walk goes): the count of the weighted targets, the
    first three named, what it means."""
    roots = Roots(None, 1e-3, 1e12)
    for i in range(5):
        roots.add(f"blocks.{i}.ff", torch.zeros(4, 4, dtype=torch.float64))
    roots.add("blocks.9.ff", _fishers()["l0"])
    roots.close()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1, lines
    said = lines[0]
    assert ("svd: 5 of 6 weighted targets have a zero output Fisher (blocks.0.ff, blocks.1.ff, blocks.2.ff "
            "and 2 more): the prediction does not change with their outputs") in said
    assert "fitted without output weighting" in said


@pytest.mark.parametrize("measured, one, many", [
    (("all", False), "(the prediction does not change with its output on the calibration inputs, or the gradients",
     "the prediction does not change with their outputs on the calibration inputs (as in blocks whose modulation "
     "gates are zero), or"),
    (("all", True), "(the guided prediction does not change with its output on the calibration inputs, or",
     "the guided prediction does not change with their outputs on the calibration inputs (as in blocks"),
    (("block", False), "(its block's output (fisher: block measures each block's own, not the prediction's) does "
     "not change with its output on the calibration inputs, or the gradients underflowed)",
     "their blocks' outputs (fisher: block measures each block's own, not the prediction's) do not change with "
     "their outputs on the calibration inputs (as in blocks whose modulation gates are zero), or"),
    (("modulation", False), "(the prediction does not change with its output on the calibration inputs, or",
     "5 of 6 weighted modulation targets have a zero output Fisher (blocks.0.ff, blocks.1.ff, blocks.2.ff and 2 "
     "more): the prediction does not change with their outputs on the calibration inputs, or the gradients"),
], ids=["all", "guided", "block", "modulation"])
def test_the_zero_fisher_words_say_what_each_fisher_measured(capsys, measured, one, many):
    """fisher: block's zero Fishers were said as 'the prediction does not change with their outputs',
    though it measures each block's own output: each svd.fisher's words say what it measured (the guided
    prediction where the sweeps probe it), of one layer and of several; modulation's give no zero-gates
    example (a modulation linear's gate rows see its block's output whatever its gates)."""
    def said(count: int) -> str:
        roots = Roots(None, 1e-3, 1e12, measured=measured)
        for i in range(count):
            roots.add(f"blocks.{i}.ff", torch.zeros(4, 4, dtype=torch.float64))
        roots.add("blocks.9.ff", _fishers()["l0"])
        roots.close()
        return " ".join(capsys.readouterr().err.split())

    assert one in said(1), said(1)
    text = said(5)
    assert many in text, text
    assert ("prediction" in text.replace("not the prediction's", "")) == (measured[0] != "block"), text
    assert ("modulation gates" in text) == (measured[0] != "modulation"), text


@pytest.mark.parametrize("fisher, whose", [("all", "the prediction's"), ("block", "its block output's")])
def test_a_nonfinite_fisher_is_said_as_the_gradients_it_measured(fisher, whose):
    """A NaN/Inf output Fisher named 'the prediction's gradients' under fisher: block too."""
    from compress.errors import NumericError

    with pytest.raises(NumericError, match=rf"its output Fisher \({whose} gradients\) holds NaN/Inf"):
        Roots(None, 1e-3, 1e12, measured=(fisher, False)).add("blocks.0.ff", torch.full((4, 4), float("nan")))


def test_roots_with_groups_hold_the_pairs_of_the_group_asked_for_last_only():
    fishers = _fishers(4)
    groups = {"l0": ("a", 0), "l1": ("a", 0), "l2": ("b", 1), "l3": ("b", 1)}
    roots, plain = Roots(None, 1e-3, 1e12, groups=groups), Roots(None, 1e-3, 1e12)
    for name, f in fishers.items():
        roots.add(name, f)
        plain.add(name, f)
    for name in ["l0", "l1", "l0"]:
        assert all(torch.equal(a, b) for a, b in zip(roots[name], plain[name]))
    assert set(roots.recent) == {"l0", "l1"}
    view = roots.only(["l2", "l3"])
    view["l2"]  # another group: the first one's pairs go
    assert set(roots.recent) == {"l2"} and set(plain.recent) == {"l0", "l1"}


def test_roots_that_are_revisited_keep_each_fs_eigendecomposition_in_its_place(tmp_path):
    """Roots(revisit=True) (allocation: global) replaces a Fisher kept as F, on disk, by its
    eigendecomposition when its pair is first asked for (rows stay rows): the pairs are sqrt_pair's bit
    for bit, asked for again or read back by a rerun (an interrupted pass's folder), at any damping."""
    fishers = {**_fishers(3), "rows": torch.randn(3, 8, generator=torch.Generator().manual_seed(1))}
    roots = Roots(tmp_path / "f", 1e-3, keep_bytes=0, revisit=True)  # only the newest pair held
    for name, f in fishers.items():
        roots.add(name, f)
    for _ in range(2):
        for name, f in fishers.items():
            assert all(torch.equal(a, b) for a, b in zip(roots[name], sqrt_pair(f, 1e-3)))
    kept = {name: roots.store[name] for name in fishers}
    assert torch.equal(kept.pop("rows"), fishers["rows"]) and all(isinstance(k, tuple) for k in kept.values())
    assert len(list((tmp_path / "f").iterdir())) == len(fishers)
    rerun = Roots(tmp_path / "f", 1e-1, keep_bytes=0, reuse=True)  # another damping: the same decomposition
    assert all(torch.equal(a, b) for name, f in fishers.items() for a, b in zip(rerun[name], sqrt_pair(f, 1e-1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_fisher_that_is_not_finite_blames_float16_only_in_a_float16_run(dtype, monkeypatch):
    """A float32 run whose backward overflowed (a student that a distill pass before made NaN) was told 'a
    float16 compute_dtype? try bfloat16'; the words now follow the model's dtype."""
    import compress.passes.svd_fisher as svd_fisher
    from compress.errors import NumericError

    nan = torch.full((2, 2), float("nan"), dtype=torch.float64)
    monkeypatch.setattr(svd_fisher, "output_fisher", lambda *a, **k: {"layer": nan})
    model = torch.nn.Linear(2, 2).to(dtype)
    with pytest.raises(NumericError, match="layer 'layer': its output Fisher .* holds NaN/Inf") as e:
        svd_fisher.sweeps(model, None, [{}], [["layer"]], 1, Roots(None, 0.0, 1e9), progress=False)
    assert ("float16 compute_dtype" in str(e.value)) == (dtype == torch.float16), e.value
