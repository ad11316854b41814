"""lora: a LoRA trained on the teacher (made here with peft, saved as diffusers saves Flux LoRAs or as a
peft adapter folder) merged exactly into the teacher and into a compressed student of it."""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch

from compress.inputs import moved
from compress.errors import UserError
from compress.lora import merge_lora
from compress.lowrank import LowRankLinear
from tests.conftest import forward, model_inputs, tiny_flux, tiny_pixart
from tests.runner_helpers import RECIPE, run_recipe

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = ["to_q", "proj_mlp", "norm1.linear", "ff.net.0.proj"]  # low-rank, dense and fused-GELU ones
RANK, ALPHA = 4, 8


def _lora(model, folder, targets=TARGETS, how="diffusers", **options):
    """`model` with a random LoRA on `targets` (its outputs: the reference); the LoRA saved in `folder`.
    `options`: more LoraConfig (lora_bias=True: random lora_B biases; use_dora=True: random magnitudes)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights=False, **options)
    model.add_adapter(config) if hasattr(model, "add_adapter") else peft.inject_adapter_in_model(config, model)
    _randomize_extras(model)
    if how == "diffusers":
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(model),
                                       transformer_lora_adapter_metadata=config.to_dict())
    else:  # peft's own adapter folder
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(str(folder))
        save_file({f"base_model.model.{k}": v.contiguous() for k, v in get_peft_model_state_dict(model).items()},
                  str(folder / "adapter_model.safetensors"))
    return model


def _randomize_extras(model, seed=1):
    """Random lora_B biases, and DoRA magnitudes off peft's start (m = ‖W + s·B A‖: m / n = 1)."""
    from peft.tuners.lora import LoraLayer

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLayer):
                if module.lora_B["default"].bias is not None:
                    module.lora_B["default"].bias.copy_(torch.randn(module.out_features, generator=g))
                if "default" in module.lora_magnitude_vector:
                    module.lora_magnitude_vector["default"].weight.mul_(
                        1 + 0.5 * torch.rand(module.out_features, generator=g))


@pytest.mark.filterwarnings("ignore:.*invalid shape")
@pytest.mark.parametrize("options", [{}, {"lora_bias": True}, {"use_dora": True}], ids=["lora", "bias", "dora"])
@pytest.mark.parametrize("family, how", [("flux", "diffusers"), ("flux", "peft"), ("pixart", "peft")])
def test_a_merged_lora_gives_the_teacher_what_peft_gives_it(tmp_path, family, how, options):
    """Format, scaling (alpha / r), names, lora_B biases and DoRA as diffusers / peft read them: the
    merged teacher's prediction is the peft-wrapped teacher's."""
    teacher = tiny_flux() if family == "flux" else tiny_pixart()
    plain, inputs = copy.deepcopy(teacher), model_inputs(teacher)
    targets = TARGETS if family == "flux" else ["to_q", "ff.net.0.proj", "adaln_single.linear"]
    wrapped = _lora(teacher, tmp_path / "lora", targets, how, **options).double()  # (its file: float32)
    plain, inputs = plain.double(), moved(inputs, torch.device("cpu"), torch.float64)
    with torch.no_grad():
        want, before = forward(wrapped, inputs), forward(plain, inputs)
    report = merge_lora(plain, tmp_path / "lora")
    assert report["dropped"] == [] and report["merged"] > 0 and report["not_merged"] == []
    # in float64 (a float64 model merges in float64): the same function to round-off, not float32's noise
    torch.testing.assert_close(forward(plain, inputs), want, rtol=1e-10, atol=1e-10)
    assert (want - before).abs().max() > 1e-2  # the LoRA changes the prediction
    if options:  # the biases, the magnitudes count: other ones predict otherwise
        _randomize_extras(wrapped, seed=2)
        assert (forward(wrapped, inputs) - want).abs().max() > 1e-3


def _rewritten(wrapped, how: str) -> dict:
    """The peft LoRA of `wrapped` as a file without a config: diffusers-style keys without metadata
    (each module's scaling folded into B: alpha = rank, scaling 1) or kohya-style keys with alphas and a
    text-encoder module."""
    from peft.tuners.lora import LoraLayer

    state = {}
    for name, layer in wrapped.named_modules():
        if isinstance(layer, LoraLayer):
            a, b, s = layer.lora_A["default"].weight, layer.lora_B["default"].weight, layer.scaling["default"]
            if how == "bare":
                state.update({f"transformer.{name}.lora_A.weight": a, f"transformer.{name}.lora_B.weight": b * s})
            else:
                flat = "lora_unet_" + name.replace(".", "_")
                state.update({f"{flat}.lora_down.weight": a, f"{flat}.lora_up.weight": b,
                              f"{flat}.alpha": torch.tensor(s * a.shape[0])})
    if how == "kohya":
        state.update({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(RANK, 8),
                      "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(8, RANK)})
    return {k: v.detach().contiguous() for k, v in state.items()}


@pytest.mark.filterwarnings("ignore:.*invalid shape")
@pytest.mark.parametrize("how, options", [("diffusers", {}), ("bare", {}), ("kohya", {}),
                                          ("diffusers", {"use_dora": True}), ("diffusers", {"lora_bias": True})])
def test_a_pixart_lora_file_gives_the_teacher_what_peft_gives_it(tmp_path, how, options):
    """PixArt-Σ LoRAs as one .safetensors file (diffusers has no PixArt LoRA loader): diffusers-style
    keys (`transformer.` prefix) with diffusers' metadata or without (alpha = rank), or kohya-style
    `lora_unet_` keys with alphas; ranks per module from the keys. The merged teacher predicts what the
    peft-wrapped teacher does (with DoRA and lora_B biases too); kohya's text-encoder module is
    reported, not merged."""
    from safetensors.torch import save_file

    teacher = tiny_pixart()
    plain, inputs = copy.deepcopy(teacher), model_inputs(teacher)
    wrapped = _lora(teacher, tmp_path / "lora", ["to_q", "ff.net.0.proj", "adaln_single.linear"],
                    rank_pattern={"ff.net.0.proj": 2}, **options)
    file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"
    if how != "diffusers":
        file = tmp_path / f"{how}.safetensors"
        save_file(_rewritten(wrapped, how), str(file))
    with torch.no_grad():
        want, before = forward(wrapped, inputs), forward(plain, inputs)
    report = merge_lora(plain, file)
    torch.testing.assert_close(forward(plain, inputs), want, rtol=1e-5, atol=1e-5)
    assert (want - before).abs().max() > 1e-2
    assert report["not_merged"] == (["lora_te1_text_model_encoder_layers_0_mlp_fc1"] if how == "kohya" else [])
    with pytest.raises(UserError, match="which PixArtTransformer2DModel does not have"):
        merge_lora(plain, {"transformer.no_such.lora_A.weight": torch.zeros(2, 4),
                           "transformer.no_such.lora_B.weight": torch.zeros(4, 2)})


def _student(tmp_path):
    """A compressed tiny Flux student (double block 0 removed, attention + MLP at rank ≈ half) and
    the teacher it was made from."""
    from compress.io_output import load_transformer

    teacher = tiny_flux()
    teacher.save_pretrained(tmp_path / "teacher")
    run_recipe(tmp_path, RECIPE.format(family="flux", teacher=tmp_path / "teacher", group="double"), "s")
    return load_transformer(tmp_path / "out-s"), teacher


def test_a_student_takes_its_teachers_lora_exactly(tmp_path):
    """Each adapted student module computes its own output plus s·B A x (inside the fused GELU of
    ff.net.0.proj), under the student's name for the teacher's block (double 1 -> 0); the LoRA's
    weights for the removed double block 0 are dropped; factors grow by the LoRA's rank, or where that
    reaches the break-even rank (to_q: 4 + 4 of 16 x 16) the layer is stored dense."""
    from safetensors.torch import load_file

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    before = copy.deepcopy(student)
    report = merge_lora(student, tmp_path / "lora", scale=0.5)
    weights = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    assert sorted(report["dropped"]) == sorted({k[len("transformer."):k.index(".lora_")] for k in weights
                                                if k.startswith("transformer.transformer_blocks.0.")})
    x = torch.randn(3, 5, 32)
    checked = 0
    for key in [k for k in weights if k.endswith("lora_A.weight") and ".transformer_blocks.0." not in k]:
        teacher_name = key[len("transformer."):-len(".lora_A.weight")]
        name = re.sub(r"^transformer_blocks\.1\.", "transformer_blocks.0.", teacher_name)  # double 1 -> 0
        a, b = weights[key], weights[key.replace("lora_A", "lora_B")]
        old, new = before.get_submodule(name), student.get_submodule(name)
        xi = x[..., : a.shape[1]] if a.shape[1] <= 32 else torch.randn(3, 5, a.shape[1])
        delta = 0.5 * (ALPHA / RANK) * (xi @ a.T @ b.T)
        if isinstance(old, LowRankLinear) and (old.rank + RANK) * (old.in_features + old.out_features) >= \
                old.in_features * old.out_features:
            assert type(new) is torch.nn.Linear and name in report["densified"] and name not in report["rank_added"]
            want = old(xi) + delta
        elif isinstance(old, LowRankLinear):
            assert new.rank == old.rank + RANK and report["rank_added"][name] == RANK
            pre = old.up(old.down(xi)) + delta
            want = torch.nn.functional.gelu(pre, approximate="tanh") if old.activation == "gelu_tanh" else pre
            checked += old.activation == "gelu_tanh"
        else:
            want = old(xi) + delta
        torch.testing.assert_close(new(xi), want, rtol=1e-5, atol=1e-5, msg=name)
    assert checked  # a fused-GELU layer was among them
    assert student.config.compression["ranks"]["transformer_blocks.0.ff.net.0.proj"] == \
        before.get_submodule("transformer_blocks.0.ff.net.0.proj").rank + RANK
    assert "transformer_blocks.0.attn.to_q" not in student.config.compression["ranks"]  # stored dense
    assert student.compression_meta["loras"][0]["scale"] == 0.5


def _want(teacher_layer, old, x, s):
    """What the peft layer `teacher_layer` (of the wrapped teacher) adds to the student's layer `old`
    (before the merge), at scaling s: old's pre-activation + s·(B A x + b_B), or with DoRA
    diag(m / ‖W_teacher + s·B A‖) (old's W x + s·B A x), then old's bias and activation."""
    a, b = teacher_layer.lora_A["default"].weight, teacher_layer.lora_B["default"].weight
    pre = torch.nn.functional.linear(x, old.weight) + s * (x @ a.T @ b.T)  # (B, N, out), without the bias
    if teacher_layer.lora_B["default"].bias is not None:
        pre = pre + s * teacher_layer.lora_B["default"].bias
    if "default" in teacher_layer.lora_magnitude_vector:
        norm = torch.linalg.norm(teacher_layer.base_layer.weight + s * b @ a, dim=1)
        pre = teacher_layer.lora_magnitude_vector["default"].weight / norm * pre
    pre = pre + old.bias
    return torch.nn.functional.gelu(pre, approximate="tanh") if getattr(old, "activation", None) else pre


@pytest.mark.filterwarnings("ignore:.*invalid shape")
@pytest.mark.parametrize("options", [{"lora_bias": True}, {"use_dora": True}], ids=["bias", "dora"])
def test_a_student_takes_a_biased_lora_and_a_dora_as_its_teacher_does(tmp_path, options):
    """Every adapted student layer (low-rank, dense, fused GELU) computes what peft's layer computes on
    the teacher, with the student's own weight in place of the teacher's: + s·b_B for a lora_B bias;
    for DoRA the teacher's row norms ‖W + s·B A‖ (read from the teacher the student recorded, or given),
    which differ from the student's own."""
    from peft.tuners.lora import LoraLayer

    student, teacher = _student(tmp_path)
    wrapped = _lora(copy.deepcopy(teacher), tmp_path / "lora", **options)
    before, given = copy.deepcopy(student), copy.deepcopy(student)
    report = merge_lora(student, tmp_path / "lora", scale=0.5)
    s, x, checked, differ = 0.5 * ALPHA / RANK, torch.randn(3, 5, 32), 0, 0.0
    for teacher_name, layer in wrapped.named_modules():
        if not isinstance(layer, LoraLayer) or teacher_name.startswith("transformer_blocks.0."):
            continue  # double block 0 is removed
        name = re.sub(r"^transformer_blocks\.1\.", "transformer_blocks.0.", teacher_name)
        old, new = before.get_submodule(name), student.get_submodule(name)
        xi = x[..., : old.in_features] if old.in_features <= 32 else torch.randn(3, 5, old.in_features)
        with torch.no_grad():
            torch.testing.assert_close(new(xi), _want(layer, old, xi, s), rtol=1e-5, atol=1e-5, msg=name)
            if options.get("use_dora") and isinstance(old, LowRankLinear):
                a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
                own = torch.linalg.norm(old.weight + s * b @ a, dim=1)
                differ = max(differ, (own - torch.linalg.norm(layer.base_layer.weight + s * b @ a, dim=1)).abs().max())
        checked += 1
    assert checked == report["merged"] > 0
    if options.get("use_dora"):
        assert differ > 1e-3  # the student's own norms would give other outputs
        merge_lora(given, tmp_path / "lora", scale=0.5, teacher=teacher)  # the teacher as a model: the same
        inputs = model_inputs(student)
        torch.testing.assert_close(forward(given, inputs), forward(student, inputs), rtol=1e-6, atol=1e-6)
        again, with_lora = copy.deepcopy(student), copy.deepcopy(teacher)
        merge_lora(again, tmp_path / "lora")  # after another LoRA: the recorded teacher, with that LoRA
        merge_lora(with_lora, tmp_path / "lora", scale=0.5)
        merge_lora(given, tmp_path / "lora", teacher=with_lora)
        torch.testing.assert_close(forward(again, inputs), forward(given, inputs), rtol=1e-6, atol=1e-6)
        before.compression_meta.pop("teacher")
        with pytest.raises(UserError, match=r"records no teacher: pass --teacher \(dit-compress lora\) or "
                                            r"teacher= to merge_lora$"):
            merge_lora(before, tmp_path / "lora")


def _with_text_encoder(file, keys):
    """The LoRA `file` rewritten with text-encoder LoRA weights under `keys` (module names) too."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(file), framework="pt") as f:
        state, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    for key in keys:
        down, up = ("lora_down", "lora_up") if key.startswith("lora_te") else ("lora_A", "lora_B")
        state.update({f"{key}.{down}.weight": torch.randn(RANK, 8), f"{key}.{up}.weight": torch.randn(8, RANK)})
    save_file(state, str(file), metadata=metadata)


def test_text_encoder_weights_are_reported_not_merged(tmp_path, capsys):
    """A LoRA that also adapts the text encoder: the transformer's part is merged as without it, the
    text-encoder modules are listed in the result and named in the command's output."""
    from compress.cli import main
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    alone = copy.deepcopy(student)
    merge_lora(alone, tmp_path / "lora")
    te = [f"text_encoder.text_model.encoder.layers.0.self_attn.{p}_proj" for p in "kq"]
    _with_text_encoder(tmp_path / "lora" / "pytorch_lora_weights.safetensors", te)
    capsys.readouterr()
    report = merge_lora(student, tmp_path / "lora")
    assert report["not_merged"] == te and report["merged"] > 0
    assert "2 text-encoder modules not merged: the student is the transformer only" in capsys.readouterr().err
    inputs = model_inputs(student)
    assert torch.equal(forward(student, inputs), forward(alone, inputs))
    assert main(["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new")]) == 0
    assert "2 text-encoder modules not merged" in capsys.readouterr().err
    assert torch.equal(forward(load_transformer(tmp_path / "new"), inputs), forward(alone, inputs))


def test_a_merged_student_saves_and_loads_back(tmp_path):
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    merge_lora(student, tmp_path / "lora")
    student.save_pretrained(tmp_path / "merged")
    again = load_transformer(tmp_path / "merged")
    inputs = model_inputs(student)
    assert torch.equal(forward(again, inputs), forward(student, inputs))


@pytest.mark.filterwarnings("ignore:.*lora_bias=True. was passed")
def test_lora_mistakes_are_one_line_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="no LoRA there"):
        merge_lora(tiny_flux(), tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(UserError, match="not a LoRA diffusers reads"):
        merge_lora(tiny_flux(), tmp_path / "bad.safetensors")
    with pytest.raises(UserError, match="Hugging Face Hub"):
        merge_lora(tiny_flux(), "nobody/no-such-lora")
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_config.json").write_text("{")
    with pytest.raises(UserError, match="not a readable peft LoRA adapter"):
        merge_lora(tiny_flux(), tmp_path / "peft")
    no_bias = tiny_pixart()
    no_bias.transformer_blocks[0].attn1.to_q.bias = None
    with pytest.raises(UserError, match="a bias on lora_B for 'transformer_blocks.0.attn1.to_q', a layer without"):
        merge_lora(no_bias, {f"transformer.transformer_blocks.0.attn1.to_q.lora_{k}": torch.ones(shape)
                             for k, shape in [("A.weight", (2, 16)), ("B.weight", (16, 2)), ("B.bias", (16,))]})
    _lora(tiny_flux(), tmp_path / "flux-lora")
    with pytest.raises(UserError, match="which PixArtTransformer2DModel does not have"):
        merge_lora(tiny_pixart(), tmp_path / "flux-lora")


def test_without_peft_the_error_says_what_to_install(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(UserError, match=r"pip install 'dit-compress\[lora\]'"):
        merge_lora(tiny_flux(), tmp_path / "lora.safetensors")


def test_the_lora_command_writes_a_new_output(tmp_path, capsys):
    """`dit-compress lora OUT LORA NEW --scale s`: NEW loads as the student merged in Python does,
    keeps the output's files and records the merge; an existing NEW is refused."""
    from compress.cli import main
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    merge_lora(student, tmp_path / "lora", scale=0.5)
    args = ["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new"), "--scale", "0.5"]
    assert main(args) == 0
    assert "layers took the LoRA at scale 0.5" in capsys.readouterr().out
    new = load_transformer(tmp_path / "new")
    inputs = model_inputs(student)
    assert torch.equal(forward(new, inputs), forward(student, inputs))
    assert (tmp_path / "new" / "block_map.json").is_file() and new.compression_meta["loras"][0]["scale"] == 0.5
    # the copied report and card speak of the merged model: its parameters, the LoRA (they kept the old count)
    from compress.report import param_count

    report = json.loads((tmp_path / "new" / "report.json").read_text())
    assert report["student_params"] == param_count(new) > param_count(load_transformer(tmp_path / "out-s"))
    assert report["loras"][0]["scale"] == 0.5 and "A LoRA was merged in afterwards" in \
        (tmp_path / "new" / "README.md").read_text()
    assert main(["inspect", str(tmp_path / "new"), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["layers"]}
    grown = [n for n, r in rows.items() if r["rank"] and r["rank"] != report["svd"]["layers"].get(n, {}).get("rank")]
    kept = [n for n, r in rows.items() if r["rank"] and r["rank"] == report["svd"]["layers"].get(n, {}).get("rank")]
    assert grown and all("loss_ratio" not in rows[n] for n in grown)  # not the grown layer's numbers
    assert kept and all("loss_ratio" in rows[n] for n in kept)  # layers the LoRA leaves alone keep theirs
    assert main(["inspect", str(tmp_path / "new")]) == 0
    assert main(args) == 2 and "exists" in capsys.readouterr().err


@pytest.mark.parametrize("options", [{}, {"use_dora": True}], ids=["lora", "dora"])
def test_eval_gives_the_teacher_the_students_lora(tmp_path, monkeypatch, options):
    """A LoRA output stands for its teacher with the LoRA: load_teacher_of (eval, bench) merges what
    the student recorded (its absolute path, its scale) into the teacher, which then predicts what
    the peft-wrapped teacher does (a DoRA's norms at that scale too); a LoRA merged from a state dict
    cannot be replayed: an error."""
    from compress.cli import main
    from compress.io import load_teacher_of
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    wrapped = _lora(copy.deepcopy(teacher), tmp_path / "lora", **options)
    monkeypatch.chdir(tmp_path)
    assert main(["lora", "out-s", "lora", "new", "--scale", "0.5"]) == 0  # relative paths
    monkeypatch.chdir("/")
    new = load_transformer(tmp_path / "new")
    assert new.compression_meta["loras"][0]["source"] == str((tmp_path / "lora").resolve())
    ref = load_teacher_of(new, str(tmp_path / "teacher"))
    wrapped.set_adapters("default", 0.5)  # the LoRA at the student's scale
    inputs = model_inputs(teacher)
    torch.testing.assert_close(forward(ref, inputs), forward(wrapped, inputs), rtol=1e-5, atol=1e-5)
    from safetensors.torch import load_file

    merge_lora(student, load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors")))
    with pytest.raises(UserError, match="merged from a state dict"):
        load_teacher_of(student, str(tmp_path / "teacher"))


def _module_lora(name: str, out_f: int, in_f: int, how: str, **extra) -> dict:
    """A rank-2 LoRA state dict on module `name` (diffusers- or kohya-style keys) plus `extra` parts."""
    a, b = torch.randn(2, in_f), torch.randn(out_f, 2)
    if how == "kohya":
        prefix = "lora_unet_" + name.replace(".", "_")
        state = {f"{prefix}.lora_down.weight": a, f"{prefix}.lora_up.weight": b, f"{prefix}.alpha": torch.tensor(2.0)}
    else:
        prefix = f"transformer.{name}"
        state = {f"{prefix}.lora_A.weight": a, f"{prefix}.lora_B.weight": b}
    return state | {f"{prefix}.{k}": v for k, v in extra.items()}


@pytest.mark.filterwarnings("ignore:While injecting the PEFT adapters")
def test_keys_nothing_reads_are_refused_not_dropped(tmp_path):
    """peft ignores keys it does not know (and diffusers drops a Flux LoRA's dora_scale): a LyCORIS DoRA's
    dora_scale, a `lora.up` beside lora_A, an alpha of a module without weights would be merged as if absent. Each is a one-line error naming
    the key (dora_scale: refused, LyCORIS's norms and strength are not peft's DoRA's)."""
    from safetensors.torch import save_file

    q, k = "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k"
    out_f, in_f = tiny_pixart().get_submodule(q).weight.shape
    rows = _module_lora(q, out_f, in_f, "kohya", dora_scale=torch.rand(out_f, 1) + 1)  # LyCORIS wd_on_out
    save_file(rows, str(tmp_path / "rows.safetensors"))
    with pytest.raises(UserError, match=r"rows.safetensors: 'lora_unet_transformer_blocks_0_attn1_to_q.dora_scale' "
                                        r"is a LyCORIS DoRA \(dora_scale, row norms\), which is not supported"):
        merge_lora(tiny_pixart(), tmp_path / "rows.safetensors")
    columns = _module_lora(q, out_f, in_f, "diffusers", dora_scale=torch.rand(1, in_f) + 1)  # LyCORIS's default
    with pytest.raises(UserError, match=r"LyCORIS DoRA \(dora_scale, column-wise norms\), which is not supported$"):
        merge_lora(tiny_pixart(), columns)
    stray = _module_lora(q, out_f, in_f, "diffusers") | {f"transformer.{k}.lora.up.weight": torch.randn(out_f, 2)}
    with pytest.raises(UserError, match=rf"^the LoRA state dict: 'transformer.{k}.lora.up.weight' is not a key "
                                        "peft reads, so merging would drop it silently"):
        merge_lora(tiny_pixart(), stray)
    alpha = _module_lora(q, out_f, in_f, "kohya") | {"lora_unet_transformer_blocks_0_attn1_to_k.alpha": torch.tensor(4.)}
    with pytest.raises(UserError, match="'lora_unet_transformer_blocks_0_attn1_to_k.alpha' is not a key peft reads"):
        merge_lora(tiny_pixart(), alpha)
    fq, fk = "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k"  # Flux: diffusers' reader
    out_f, in_f = tiny_flux().get_submodule(fq).weight.shape
    flux = _module_lora(fq, out_f, in_f, "diffusers")
    save_file(flux | {f"transformer.{fq}.dora_scale": torch.rand(1, in_f)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(UserError, match=rf"flux.safetensors: 'transformer.{fq}.dora_scale' is a LyCORIS DoRA"):
        merge_lora(tiny_flux(), tmp_path / "flux.safetensors")  # diffusers drops it with a log line
    with pytest.raises(UserError, match=rf"'transformer.{fk}.lora.up.weight' is not a key peft reads"):
        merge_lora(tiny_flux(), flux | {f"transformer.{fk}.lora.up.weight": torch.randn(out_f, 2)})


def test_a_module_without_its_dora_magnitude_is_named(tmp_path):
    """A DoRA file where one module has lora_A and lora_B but no lora_magnitude_vector: the error says
    that its magnitude is missing (not that it has no weights)."""
    q, k = "transformer_blocks.0.attn1.to_q", "transformer_blocks.0.attn1.to_k"
    out_f, in_f = tiny_pixart().get_submodule(q).weight.shape
    state = _module_lora(q, out_f, in_f, "diffusers", lora_magnitude_vector=torch.rand(out_f) + 1) | \
        _module_lora(k, out_f, in_f, "diffusers")
    with pytest.raises(UserError, match=rf"^the LoRA has lora_A and lora_B but no DoRA magnitude "
                                        rf"\(lora_magnitude_vector\) for '{k}', though"):
        merge_lora(tiny_pixart(), state)


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_the_lora_command_takes_a_doras_teacher(tmp_path, capsys, monkeypatch):
    """`dit-compress lora ... --teacher FILE --teacher-config CONFIG` reads a DoRA's norms from a
    single-file teacher through the teacher loader (no `stream`/convert advice), as merge_lora given the
    teacher model does; a Hub teacher is announced on stderr before it downloads; errors say --teacher."""
    from safetensors.torch import save_file

    from compress.cli import main
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", use_dora=True)
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(tmp_path / "teacher.safetensors"))
    base = ["lora", str(tmp_path / "out-s"), str(tmp_path / "lora")]
    capsys.readouterr()
    assert main(base + [str(tmp_path / "no-config"), "--teacher", str(tmp_path / "teacher.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "pass --teacher-config" in err and "stream" not in err and len(err.strip().splitlines()) == 1
    assert main(base + [str(tmp_path / "new"), "--teacher", str(tmp_path / "teacher.safetensors"),
                        "--teacher-config", str(tmp_path / "teacher")]) == 0
    with pytest.raises(UserError, match=r"^the given teacher has no linear 'transformer_blocks\.1\..*', which the DoRA"):
        merge_lora(copy.deepcopy(student), tmp_path / "lora", teacher=tiny_pixart())
    merge_lora(student, tmp_path / "lora", teacher=teacher)
    inputs = model_inputs(student)
    torch.testing.assert_close(forward(load_transformer(tmp_path / "new"), inputs), forward(student, inputs),
                               rtol=1e-6, atol=1e-6)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capsys.readouterr()
    assert main(base + [str(tmp_path / "hub"), "--teacher", "nobody/no-such-teacher"]) == 2
    err = capsys.readouterr().err
    assert "a DoRA's norms need teacher nobody/no-such-teacher's weights: downloading from the Hugging Face Hub" in err
    assert "a DoRA's norms need the teacher's weights, read from nobody/no-such-teacher" in err


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_a_compressed_output_is_no_doras_teacher(tmp_path, capsys):
    """A dit-compress output (a folder, a pipeline folder holding one, a loaded model) given as a DoRA's
    teacher is one line saying that its norms need the uncompressed teacher (naming the output and the
    teacher it was compressed from), never streaming advice; a student that took LoRAs before (whose
    teacher is loaded, not read) is refused the same, not given factorized norms. A recorded teacher
    that is an output leads to the teacher that output records, whose weights the norms are then
    (lora_teacher.lora_base): the same merge as from the student recording that teacher itself."""
    import json
    import shutil

    from compress.cli import main
    from compress.io_output import load_transformer

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", use_dora=True)
    out = tmp_path / "out-s"
    (tmp_path / "pipe").mkdir()
    index = {"transformer": ["diffusers", "FluxTransformer2DModel"]}
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps(index))
    shutil.copytree(out, tmp_path / "pipe" / "transformer")
    _lora(copy.deepcopy(teacher), tmp_path / "lora-plain")
    took_one = copy.deepcopy(student)
    merge_lora(took_one, tmp_path / "lora-plain")  # its DoRA teacher is loaded, with this LoRA
    recorded = copy.deepcopy(student)  # compressed from out, removing no block more
    recorded.compression_meta.update(teacher=str(out.resolve()), block_map=None)
    wanted = (r"is a dit-compress output, its layers factorized: a DoRA's norms need the uncompressed teacher the "
              rf"DoRA was trained on \(it was compressed from {re.escape(str(tmp_path / 'teacher'))}\); pass that with "
              r"--teacher \(dit-compress lora\) or teacher= to merge_lora$")
    pipe = tmp_path / "pipe"
    for model, given, who in [(student, str(out), f"teacher {out}"), (student, str(pipe), f"teacher {pipe}"),
                              (took_one, str(out), f"teacher {out}"),
                              (student, load_transformer(out), "the given teacher")]:
        with pytest.raises(UserError, match=f"^{re.escape(who)} {wanted}"):
            merge_lora(copy.deepcopy(model), tmp_path / "lora", teacher=given)
    direct = copy.deepcopy(student)
    assert merge_lora(recorded, tmp_path / "lora")["blocks_of"] == merge_lora(direct, tmp_path / "lora")["blocks_of"]
    assert all(torch.equal(v, direct.state_dict()[k]) for k, v in recorded.state_dict().items())
    capsys.readouterr()
    assert main(["lora", str(out), str(tmp_path / "lora"), str(tmp_path / "new"), "--teacher", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "stream" not in err and "uncompressed teacher" in err
    assert not (tmp_path / "new").exists()


def test_a_doras_teacher_is_read_alone_from_a_toy_or_a_folder(tmp_path):
    """The recorded or given teacher's weights of the adapted layers, read from a toy teacher, a
    transformer folder or a pipeline folder, are the teacher's own."""
    import json

    from compress.io import load_teacher
    from compress.lora_teacher import dora_weights

    teacher = load_teacher("toy:flux")
    names = {n: n for n in ["transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_mlp"]}
    student = copy.deepcopy(teacher)
    student.compression_meta = {"teacher": "toy:flux"}
    teacher.save_pretrained(tmp_path / "pipe" / "transformer", max_shard_size="40KB")
    (tmp_path / "pipe" / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "x"]}))
    for given in [None, str(tmp_path / "pipe"), str(tmp_path / "pipe" / "transformer")]:
        weights = dora_weights(student, names, given)
        assert sorted(weights) == sorted(names)
        for name in names:
            assert torch.equal(weights[name], teacher.get_submodule(name).weight), (given, name)


@pytest.mark.filterwarnings("ignore:.*invalid shape")
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "one-file"])
def test_a_hub_doras_teacher_downloads_only_the_shards_it_reads(tmp_path, monkeypatch, capsys, sharded):
    """A Hub id as a DoRA's teacher (the hub's downloads faked from a local repo): its transformer/
    config and index first, then only the shards holding the adapted layers (a teacher in one weight
    file: that file); the merged student is the one the same teacher's local folder gives."""
    import json

    import huggingface_hub
    from safetensors.torch import load_file

    from compress.io import INDEX
    from tests.test_io_hub import hub_info

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", use_dora=True)
    repo = tmp_path / "repo"
    teacher.save_pretrained(repo / "transformer", **({"max_shard_size": "40KB"} if sharded else {}))
    (repo / "model_index.json").write_text(json.dumps({"transformer": ["diffusers", "FluxTransformer2DModel"]}))
    files, fetched = sorted(str(f.relative_to(repo)) for f in repo.rglob("*") if f.is_file()), []

    def hf_hub_download(repo_id, filename, subfolder=None, **kw):
        assert repo_id == "owner/teacher"
        fetched.append(f"{subfolder}/{filename}" if subfolder else filename)
        return str(repo / fetched[-1])

    def model_info(api, repo_id, timeout=None, **kw):
        assert repo_id == "owner/teacher" and timeout  # bounded: list_repo_files / snapshot_download wait forever
        return hub_info(files)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: pytest.fail("snapshot_download"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr("compress.io_hub.hub_head", lambda repo, name: (None, None))  # the Hub answers
    local = copy.deepcopy(student)
    merge_lora(local, tmp_path / "lora")  # the teacher the student records: the local folder
    capsys.readouterr()
    merge_lora(student, tmp_path / "lora", teacher="owner/teacher")
    assert "downloading from the Hugging Face Hub (unless cached) its transformer's config and index, then the " \
        "weight files holding the" in capsys.readouterr().err
    inputs = model_inputs(student)
    assert torch.equal(forward(student, inputs), forward(local, inputs))
    weights = {name for name in fetched if name.endswith(".safetensors")}
    if not sharded:
        assert weights == {"transformer/diffusion_pytorch_model.safetensors"}
        return
    lora = load_file(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"))
    adapted = {k[len("transformer."):k.index(".lora_A")] for k in lora
               if ".lora_A." in k and not k.startswith("transformer.transformer_blocks.0.")}  # block 0: removed
    shards = json.loads((repo / "transformer" / INDEX).read_text())["weight_map"]
    assert weights == {f"transformer/{shards[f'{name}.weight']}" for name in adapted}
    assert len(weights) < len(set(shards.values()))  # not the whole folder


def test_a_scale_that_merges_nothing_or_not_a_number_is_refused(tmp_path):
    """scale 0 grew every adapted low-rank layer by the LoRA's rank for nothing; NaN was taken."""
    teacher = tiny_flux()
    _lora(teacher, tmp_path / "lora")
    for scale in (0, 0.0, float("nan"), float("inf")):
        model = tiny_flux()
        before = copy.deepcopy(model.state_dict())
        with pytest.raises(UserError, match="a scale of 0 merges nothing" if scale == 0 else "finite number"):
            merge_lora(model, tmp_path / "lora", scale=scale)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("merge", ["api", "cli"])
def test_a_scale_that_overflows_the_weights_is_refused_naming_the_layer(tmp_path, capsys, merge):
    """--scale 1e300 reported success with NaN/Inf in 10+ tensors of the new output."""
    from compress.cli import main
    from compress.errors import NumericError

    student, teacher = _student(tmp_path)
    _lora(teacher, tmp_path / "lora")
    if merge == "api":
        with pytest.raises(NumericError, match=r"merging the LoRA into '[\w.]+' gives its \w+ \d+ NaN/Inf"):
            merge_lora(student, tmp_path / "lora", scale=1e300)
        return
    argv = ["lora", str(tmp_path / "out-s"), str(tmp_path / "lora"), str(tmp_path / "new"), "--scale"]
    capsys.readouterr()
    assert main(argv + ["1e300"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "merging the LoRA into '" in err and not (tmp_path / "new").exists()
    assert main(argv + ["0"]) == 2
    assert "a scale of 0 merges nothing" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_a_numpy_scale_is_a_scale():
    """merge_lora(scale=np.float32(0.8)) was refused as not a number."""
    import numpy as np

    from compress.lora import check_scale

    check_scale(np.float32(0.8))
    with pytest.raises(UserError, match="finite number"):
        check_scale(np.float64("nan"))


def test_a_compiled_student_takes_a_lora_as_the_model_it_wraps(tmp_path):
    """merge_lora of a torch.compile'd model refused its class (OptimizedModule); it merges into the
    model the wrapper holds, as into that model itself."""
    teacher = tiny_pixart()
    _lora(copy.deepcopy(teacher), tmp_path / "lora", targets=["to_q"])
    plain, wrapped = copy.deepcopy(teacher), copy.deepcopy(teacher)
    want = merge_lora(plain, tmp_path / "lora")
    assert merge_lora(torch.compile(wrapped, backend="eager"), tmp_path / "lora") == want
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), wrapped.state_dict().values()))
    assert not torch.equal(plain.state_dict()["transformer_blocks.0.attn1.to_q.weight"],
                           teacher.state_dict()["transformer_blocks.0.attn1.to_q.weight"])
