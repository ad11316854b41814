"""lora: a LoRA trained on the teacher (made here with peft, saved as diffusers saves Flux LoRAs or as a
peft adapter folder) merged exactly into the teacher and into a compressed student of it. Its refusals are in
test_lora_refusals.py, a DoRA's teacher (lora_teacher) in test_lora_teacher_dora.py."""

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
    from compress.io_teacher_of import load_teacher_of
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
