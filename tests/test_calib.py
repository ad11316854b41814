import pytest
import torch

from compress.arch import get_adapter
from compress.calib import BlockCalibration
from compress.calib_stats import Reader, Stats, StatsCache
from compress.errors import NumericError
from compress.passes.svd_layer import compress_layer
from tests.conftest import factorize, model_inputs, tiny_flux, tiny_pixart


pytestmark = pytest.mark.usefixtures("one_thread")


def _batches(model, n=2):
    return [model_inputs(model, seed=i) for i in range(n)]


def _direct_rows(model, module_name, batches, output=False):
    """A module's input (or bias-free output) rows over full forwards, the slow obvious way."""
    rows = []
    mod = model.get_submodule(module_name)

    def hook(m, args, out):
        y = out.double() - m.bias.double() if output else args[0]
        rows.append(y.detach().reshape(-1, y.shape[-1]).double())

    h = mod.register_forward_hook(hook)
    with torch.no_grad():
        for b in batches:
            model(**b)
    h.remove()
    return torch.cat(rows)


def _direct_gram(model, module_name, batches, output=False):
    x = _direct_rows(model, module_name, batches, output)
    return x.T @ x


def _block_stats(model, batches, readers_by_block, activations="teacher", on_block=None, **kw):
    cal = BlockCalibration(model, get_adapter(model), batches, activations, progress=False, **kw)
    cal.capture()
    out = {}
    for bs in cal.blocks(lambda g, i: readers_by_block.get((g, i), []), lambda g, i: f"{g}-{i}"):
        out.update(bs.stats)
        if on_block:
            on_block(bs)
    return out


def test_grams_equal_direct_computation():
    model = tiny_pixart()
    batches = _batches(model)
    readers = {("blocks", 1): [Reader("q", "transformer_blocks.1.attn1.to_q"),
                               Reader("ff", "transformer_blocks.1.ff.net.2"),
                               Reader("o", "transformer_blocks.1.ff.net.0.proj", output=True)]}
    stats = _block_stats(model, batches, readers)
    for key, name, output in (("q", "transformer_blocks.1.attn1.to_q", False),
                              ("ff", "transformer_blocks.1.ff.net.2", False),
                              ("o", "transformer_blocks.1.ff.net.0.proj", True)):
        torch.testing.assert_close(stats[key].gram, _direct_gram(model, name, batches, output),
                                   rtol=1e-9, atol=1e-9)
    assert stats["q"].gram.dtype == torch.float64
    assert stats["q"].rows == 2 * 16 * 2  # batches x tokens x batch size


def test_flux_single_block_output_gram_is_w_g_wt():
    model = tiny_flux()
    batches = _batches(model)
    name = "single_transformer_blocks.1.proj_out"
    readers = {("single", 1): [Reader("in", name), Reader("out", name, output=True)]}
    stats = _block_stats(model, batches, readers)
    w = model.get_submodule(name).weight.double()
    exact = w @ stats["in"].gram @ w.T  # the float32 forward rounds y: compare at float32 precision
    torch.testing.assert_close(stats["out"].gram, exact, rtol=1e-4, atol=1e-5 * float(exact.abs().max()))
    torch.testing.assert_close(stats["out"].in_sq, torch.diagonal(stats["in"].gram))


def test_a_captions_gram_counts_every_forward_that_reads_it():
    """The caption is the same tensor at every timestep of a prompt: its Gram is computed once
    (dedupe) but weighs as often as it is read, as the direct Σ xᵀx over the forwards; two prompts
    of the same text weigh twice one."""
    model = tiny_pixart()
    b = model_inputs(model)  # 2 prompts of 5 caption tokens
    name = "transformer_blocks.0.attn2.to_k"
    same_prompts = [dict(b, timestep=torch.tensor([10, 500])), dict(b, timestep=torch.tensor([700, 900]))]
    readers = {("blocks", 0): [Reader("caption", name, dedupe=True)]}
    stats = _block_stats(model, same_prompts, readers)["caption"]
    torch.testing.assert_close(stats.gram, _direct_gram(model, name, same_prompts), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stats.gram, 2 * _direct_gram(model, name, same_prompts[:1]), rtol=1e-9, atol=1e-9)
    assert stats.rows == 2 * 2 * 5  # timesteps x prompts x tokens
    twins = dict(b, encoder_hidden_states=b["encoder_hidden_states"][:1].repeat(2, 1, 1))  # one text, twice
    stats = _block_stats(model, [twins], readers)["caption"]
    one = _direct_rows(model, name, [twins])[:5]  # (5, d): the first prompt's caption
    torch.testing.assert_close(stats.gram, 2 * one.T @ one, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stats.total, 2 * one.sum(0), rtol=1e-9, atol=1e-9)
    assert stats.rows == 10


def test_caption_gram_keeps_only_the_tokens_attention_reads():
    """PixArt-Σ pads every prompt to 300 T5 tokens and masks the padding out of cross-attention:
    the caption Gram sums the rows the mask lets through, from the model's 1/0 mask as the
    transformer turns it into its blocks' additive bias (and all rows without a mask)."""
    model = tiny_pixart()
    b = model_inputs(model)  # 2 prompts of 5 caption tokens
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]])
    masked = dict(b, encoder_attention_mask=mask)
    readers = {("blocks", 0): [Reader("caption", "transformer_blocks.0.attn2.to_k", dedupe=True)]}
    stats = _block_stats(model, [masked], readers)
    rows = _direct_rows(model, "transformer_blocks.0.attn2.to_k", [masked]).reshape(2, 5, -1)
    kept = rows[mask.bool()]  # (6, d)
    assert stats["caption"].rows == 6
    torch.testing.assert_close(stats["caption"].gram, kept.T @ kept, rtol=1e-9, atol=1e-9)
    plain = _block_stats(model, [dict(b, encoder_attention_mask=None)], readers)
    assert plain["caption"].rows == 10


def test_student_activations_differ_from_teacher_after_compression():
    batches = _batches(tiny_pixart())
    name0, name1 = "transformer_blocks.0.ff.net.2", "transformer_blocks.1.attn1.to_q"
    readers = {("blocks", 0): [Reader("ff0", name0)], ("blocks", 1): [Reader("q1", name1)]}
    grams = {}
    for mode in ("teacher", "student"):
        model = tiny_pixart()
        grams[mode] = (_block_stats(model, batches, readers, mode, _squash_block0(model, name0))["q1"].gram,
                       model)
    teacher_direct = _direct_gram(tiny_pixart(), name1, batches)
    student_model = grams["student"][1]
    torch.testing.assert_close(grams["teacher"][0], teacher_direct, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(grams["student"][0], _direct_gram(student_model, name1, batches),
                               rtol=1e-6, atol=1e-6)
    assert (grams["student"][0] - teacher_direct).norm() > 1e-3 * teacher_direct.norm()


def _squash_block0(model, name):
    """on_block: compress block 0's layer `name` hard (rank 2) once its stats are in."""
    info = next(i for i in get_adapter(model).linears(model) if i.name == name)

    def squash(bs):
        if bs.index == 0:
            compress_layer(model, info, bs.stats["ff0"], method="whitened", alpha=0.5,
                           center=False, gram_is_output=False, choose_rank=lambda d: 2)
    return squash


@pytest.mark.parametrize("cached", [False, True])
def test_asymmetric_cross_pairs_reference_and_student_rows(tmp_path, cached):
    """Stats.cross = Σ x_ref x̃ᵀ row by row: x_ref from the model as it was, x̃ from the student
    (block 0 compressed); equal to the Gram before anything changed upstream. From the cache too."""
    batches = _batches(tiny_pixart())
    name0, name1 = "transformer_blocks.0.ff.net.2", "transformer_blocks.1.attn1.to_q"
    readers = {("blocks", 0): [Reader("ff0", name0)],
               ("blocks", 1): [Reader("q1", name1), Reader("k2", "transformer_blocks.1.attn2.to_k", dedupe=True)]}
    runs = 2 if cached else 1
    for _ in range(runs):  # the second run loads every block's stats from the cache
        model, cache = tiny_pixart(), StatsCache(tmp_path)
        stats = _block_stats(model, batches, readers, "student", _squash_block0(model, name0),
                             asymmetric=True, cache=cache)
    assert cache.hits == (["blocks-0", "blocks-1"] if cached else [])
    ref, student = _direct_rows(tiny_pixart(), name1, batches), _direct_rows(model, name1, batches)
    torch.testing.assert_close(stats["q1"].cross, ref.T @ student, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats["q1"].gram, student.T @ student, rtol=1e-6, atol=1e-6)
    assert (stats["q1"].cross - stats["q1"].gram).norm() > 1e-3 * stats["q1"].gram.norm()
    # the reference's sum over the same rows (its mean, for a centered asymmetric fit)
    torch.testing.assert_close(stats["q1"].ref_total, ref.sum(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats["q1"].ref_mean, ref.mean(0), rtol=1e-6, atol=1e-6)
    assert (stats["q1"].ref_total - stats["q1"].total).norm() > 1e-3 * stats["q1"].total.norm()
    torch.testing.assert_close(stats["ff0"].cross, stats["ff0"].gram, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stats["ff0"].ref_total, stats["ff0"].total, rtol=1e-9, atol=1e-9)
    assert stats["k2"].cross is None and stats["k2"].ref_total is None  # no upstream error in the caption


def test_asymmetric_needs_student_activations():
    model = tiny_pixart()
    with pytest.raises(ValueError, match="student"):
        BlockCalibration(model, get_adapter(model), [], "teacher", asymmetric=True)


def test_nan_activation_names_layer_and_block():
    model = tiny_pixart()
    batch = model_inputs(model)
    batch["hidden_states"][0, 0, 0, 0] = float("nan")
    readers = {("blocks", 0): [Reader("q", "transformer_blocks.0.attn1.to_q", where="blocks block 0")]}
    with pytest.raises(NumericError, match=r"transformer_blocks\.0\.attn1\.to_q.*blocks block 0") as e:
        _block_stats(model, [batch], readers)
    # a float32 model's activations: no float16 to blame (the words said 'a float16 compute_dtype overflowing?')
    assert "float16" not in str(e.value) and "float32 reaches 3.4e38" in str(e.value), e.value


def test_stats_cache_round_trip(tmp_path):
    cache = StatsCache(tmp_path)
    st = Stats.zeros(3)
    st.add(torch.randn(5, 3, dtype=torch.float64))
    cache.save("blk", {"k": st})
    back = cache.load("blk")["k"]
    torch.testing.assert_close(back.gram, st.gram)
    assert back.rows == 5 and cache.hits == []  # written by this cache: not a hit (report.json's cache_hits, d722925)
    later = StatsCache(tmp_path)  # a later run's cache of the same folder reads it back
    assert later.load("blk")["k"].rows == 5 and later.load("blk") is not None and later.hits == ["blk"]  # once
    assert StatsCache(None).load("blk") is None


def test_stats_cache_does_not_read_a_cross_term_without_the_references_sum(tmp_path):
    """A file written before Stats kept `ref_total` has a cross term but not the reference's mean a
    centered asymmetric fit needs: it is not read (computed again, then overwritten); files without
    a cross term (no reference stream) still are."""
    cache = StatsCache(tmp_path)
    st = Stats.zeros(3)
    x = torch.randn(5, 3, dtype=torch.float64)
    st.add(x)
    st.add_cross(x + 1, x)
    old = {k: v for k, v in st.to_dict().items() if k != "ref_total"}
    torch.save({"k": old}, tmp_path / "old.pt")
    assert cache.load("old") is None and cache.hits == []
    cache.save("new", {"k": st})
    torch.testing.assert_close(cache.load("new")["k"].ref_total, (x + 1).sum(0))
    torch.save({"k": {k: v for k, v in Stats.zeros(3).to_dict().items() if k != "ref_total"}}, tmp_path / "plain.pt")
    assert cache.load("plain") is not None and cache.hits == ["plain"]  # "new" this cache wrote (d722925)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_stats_cache_reads_back_onto_the_runs_device(tmp_path):
    """A resumed GPU run factorizes its cached Grams on the GPU, not on the CPU they were read to."""
    st = Stats.zeros(3, device="cuda")
    st.add(torch.randn(5, 3, dtype=torch.float64, device="cuda"))
    StatsCache(tmp_path).save("blk", {"k": st})
    assert StatsCache(tmp_path).load("blk")["k"].gram.device.type == "cpu"
    back = StatsCache(tmp_path, "cuda").load("blk")["k"]
    assert back.gram.device.type == back.mean.device.type == "cuda"
    torch.testing.assert_close(back.gram, st.gram)


def test_conditioning_grid_spans_timesteps():
    model = tiny_pixart()
    cal = BlockCalibration(model, get_adapter(model), _batches(model, 1), progress=False)
    stats = cal.conditioning([Reader("adaln.in", "adaln_single.linear")], grid=8)
    assert stats["adaln.in"].rows == 8 * 2  # 8 grid timesteps x batch 2
    own = cal.conditioning([Reader("adaln.in", "adaln_single.linear")], grid=0)
    assert own["adaln.in"].rows == 2


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_the_block_walk_says_how_far_it_got_off_a_terminal(family, capsys):
    """Off a terminal (a job's log) calibration, and the svd stages run between its blocks, said
    nothing until the pass ended: hours on a real model. Now a line per tenth of the blocks, naming
    the block by module as inspect and the warnings do: 'transformer_blocks.3', Flux's
    'single_transformer_blocks.3' (it read 'block 3', 'single block 3')."""
    model = tiny_pixart() if family == "pixart" else tiny_flux()
    cal = BlockCalibration(model, get_adapter(model), _batches(model, 1), progress=True)
    cal.capture()
    for _ in cal.blocks(lambda group, index: []):
        pass
    counts = get_adapter(model).block_counts(model)
    n = sum(counts.values())
    lines = [line.split() for line in capsys.readouterr().err.splitlines() if line.startswith("calibrate: ")]
    walk = [words[1:-1] for words in lines if words[1] != "capture"]  # less 'calibrate:' and the clock
    lists = {"blocks": "transformer_blocks", "double": "transformer_blocks", "single": "single_transformer_blocks"}
    named = [f"{lists[g]}.{i}" for g, k in counts.items() for i in range(k)]
    assert [" ".join(words) for words in walk] == [f"{name} {k}/{n}" for k, name in enumerate(named, 1)]


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_the_block_walk_stays_on_the_models_device(family, monkeypatch):
    """Capture, both streams of the asymmetric walk and every Gram, with model and inputs on the
    meta device standing in for a GPU (a tensor made on the CPU on the way would be an error); the
    NaN/Inf check reads values, which meta tensors do not have, so it is left out here."""
    import compress.calib_stats as cs
    from compress.arch import get_adapter
    from compress.inputs import moved
    from compress.io import cast, load_teacher
    from compress.passes.svd_targets import resolve_targets
    from compress.passes.svd_walk import readers
    from tests.conftest import model_inputs

    monkeypatch.setattr(cs, "_check_finite", lambda x, r: None)
    meta = torch.device("meta")
    model = cast(load_teacher(f"toy:{family}"), meta)
    adapter = get_adapter(model)
    batches = [moved(model_inputs(model, batch=2, seed=s), meta, torch.float32) for s in range(2)]
    targets = resolve_targets(adapter.linears(model), ["attention", "mlp", "modulation"], [])
    cal = BlockCalibration(model, adapter, batches, progress=False, asymmetric=True)
    cal.capture()
    walked = list(cal.blocks(lambda g, i: readers([t for t in targets if (t.group, t.block) == (g, i)])))
    assert len(walked) == 6 and all(bs.stats for bs in walked)
    stats = [s for bs in walked for s in bs.stats.values()]
    assert all(s.gram.is_meta and (s.cross is None or s.cross.is_meta) for s in stats)
    assert any(s.cross is not None for s in stats)


def test_rerun_takes_grams_after_the_blocks_earlier_linears_changed():
    """Within-block sequential calibration: `rerun` gives the Gram of a later linear's inputs with an
    earlier linear of the same block already compressed (by hand: a full forward of the changed
    model), and its cross term pairs them with the inputs the block as yielded gives the
    reference stream (by hand: the teacher's), not the changed block's."""
    batches = _batches(tiny_pixart())
    first, later = "transformer_blocks.0.ff.net.0.proj", "transformer_blocks.0.ff.net.2"
    model = tiny_pixart()
    cal = BlockCalibration(model, get_adapter(model), batches, progress=False, asymmetric=True)
    cal.capture()
    reader = Reader("ff2", later)
    for bs in cal.blocks(lambda g, i: [reader] if i == 0 else []):
        if bs.index == 0:
            before = bs.stats["ff2"]
            original = {first: model.get_submodule(first)}
            factorize(model, [first], rank=2)
            after = cal.rerun(bs.block, [reader], original)["ff2"]
            assert model.get_submodule(first) is not original[first]  # the compressed one is back
    teacher_rows, student_rows = _direct_rows(tiny_pixart(), later, batches), _direct_rows(model, later, batches)
    torch.testing.assert_close(before.gram, teacher_rows.T @ teacher_rows, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(after.gram, student_rows.T @ student_rows, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(after.cross, teacher_rows.T @ student_rows, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(after.ref_total, teacher_rows.sum(0), rtol=1e-6, atol=1e-6)
    assert (after.gram - before.gram).norm() > 1e-2 * before.gram.norm()
    assert (after.cross - after.gram).norm() > 1e-2 * after.gram.norm()


def test_a_rerun_ends_each_forward_after_its_last_reader_with_the_same_stats(monkeypatch):
    """A rerun wants its readers' inputs only: after the first batch (which counts how often each
    reader fires) the student's and the reference's forwards end at the last reader's last call.
    The stats are those of whole forwards, bit for bit; the block's later linears run only in the
    first batch."""
    import compress.calib as calib

    batches = [model_inputs(tiny_pixart(), seed=s) for s in range(3)]
    model = tiny_pixart()
    cal = BlockCalibration(model, get_adapter(model), batches, progress=False, asymmetric=True)
    cal.capture()
    first, reader = "transformer_blocks.0.attn1.to_q", Reader("attn1", "transformer_blocks.0.attn1.to_q")
    last = model.get_submodule("transformer_blocks.0.ff.net.2")
    ran = []
    handle = last.register_forward_hook(lambda m, a, o: ran.append(1))
    whole = calib._stopping

    def rerun(bs, early: bool):
        if not early:
            monkeypatch.setattr(calib, "_stopping", lambda model, readers, calls: whole(model, readers, None))
        ran.clear()
        stats = cal.rerun(bs.block, [reader], {first: original})["attn1"]
        monkeypatch.setattr(calib, "_stopping", whole)
        return stats, len(ran)

    for bs in cal.blocks(lambda g, i: []):
        if bs.index == 0:
            original = model.get_submodule(first)
            factorize(model, [first], rank=2)  # the reader's own module compressed: still read
            (ended, ran_ended), (full, ran_full) = rerun(bs, True), rerun(bs, False)
    handle.remove()
    assert (ran_ended, ran_full) == (2, 6)  # 2 streams x 1 batch, against 2 x 3
    for field_ in ("gram", "total", "cross", "ref_total"):
        assert torch.equal(getattr(ended, field_), getattr(full, field_)), field_
    assert ended.rows == full.rows


def test_the_block_walk_names_a_renumbered_block_by_its_teacher_index_too(capsys):
    """After a removal the progress counted student blocks ('calibrate: transformer_blocks.1 2/3' for
    the teacher's block 2) while inspect labels it 'transformer_blocks.1 (teacher 2)': now the same."""
    model = tiny_pixart()
    adapter = get_adapter(model)
    block_map = adapter.remove_blocks(model, {"blocks": [1]})  # student blocks 1, 2 are the teacher's 2, 3
    cal = BlockCalibration(model, adapter, _batches(model, 1), progress=True, block_map=block_map)
    cal.capture()
    for _ in cal.blocks(lambda group, index: []):
        pass
    lines = [line.split() for line in capsys.readouterr().err.splitlines() if line.startswith("calibrate: ")]
    walk = [" ".join(words[1:-1]) for words in lines if words[1] != "capture"]  # less 'calibrate:' and the clock
    n = len(block_map["blocks"])
    assert walk == [f"transformer_blocks.{i}{'' if i == t else f' (teacher {t})'} {i + 1}/{n}"
                    for i, t in enumerate(block_map["blocks"])]
    assert walk[-1].startswith(f"transformer_blocks.{n - 1} (teacher {n})")
