"""Single-file teachers: original PixArt checkpoints, wrong shapes, the family from the keys."""

import json

import pytest
import torch
from safetensors.torch import save_file

from compress import load_teacher
from compress.errors import UserError
from tests.bfl import flux_to_bfl
from tests.conftest import diffusers_log, forward, model_inputs, tiny_flux, tiny_pixart


def _to_original_pixart(sd):
    """Inverse of the converter, for the test only: diffusers keys -> original PixArt keys."""
    out = {}
    ren = {"pos_embed.proj": "x_embedder.proj", "adaln_single.emb.timestep_embedder.linear_1":
           "t_embedder.mlp.0", "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.mlp.2",
           "adaln_single.linear": "t_block.1", "caption_projection.linear_1": "y_embedder.y_proj.fc1",
           "caption_projection.linear_2": "y_embedder.y_proj.fc2", "proj_out": "final_layer.linear",
           "scale_shift_table": "final_layer.scale_shift_table"}
    blk = {"attn1.to_out.0": "attn.proj", "attn2.to_q": "cross_attn.q_linear",
           "attn2.to_out.0": "cross_attn.proj", "ff.net.0.proj": "mlp.fc1", "ff.net.2": "mlp.fc2",
           "scale_shift_table": "scale_shift_table"}
    for k, v in sd.items():
        if k.startswith("transformer_blocks."):
            _, i, rest = k.split(".", 2)
            for d, o in blk.items():
                if rest.startswith(d):
                    out[f"blocks.{i}.{o}{rest[len(d):]}"] = v
        else:
            for d, o in ren.items():
                if k.startswith(d):
                    out[o + k[len(d):]] = v
    n = len({k.split(".")[1] for k in sd if k.startswith("transformer_blocks.")})
    for i in range(n):
        for suf in ("weight", "bias"):
            p = f"transformer_blocks.{i}."
            out[f"blocks.{i}.attn.qkv.{suf}"] = torch.cat([sd[p + f"attn1.to_{x}.{suf}"] for x in "qkv"])
            out[f"blocks.{i}.cross_attn.kv_linear.{suf}"] = torch.cat(
                [sd[p + f"attn2.to_{x}.{suf}"] for x in "kv"])
    out["y_embedder.y_embedding"] = torch.zeros(5, 12)
    return out


def test_original_pixart_pth(tmp_path):
    model = tiny_pixart()
    torch.save({"state_dict": _to_original_pixart(model.state_dict())}, tmp_path / "PixArt.pth")
    model.save_config(tmp_path / "cfg")
    teacher = load_teacher(str(tmp_path / "PixArt.pth"), config=str(tmp_path / "cfg"))
    inputs = model_inputs(model)
    torch.testing.assert_close(forward(teacher, inputs), forward(model, inputs), rtol=1e-5, atol=1e-5)


def test_single_file_tensor_of_the_wrong_shape(tmp_path):
    model = tiny_pixart()
    sd = model.state_dict()
    sd["proj_out.weight"] = sd["proj_out.weight"][:-1]
    save_file(sd, str(tmp_path / "model.safetensors"))
    model.save_config(tmp_path)
    with pytest.raises(UserError, match="does not match the config.*proj_out.weight"):
        load_teacher(str(tmp_path / "model.safetensors"))


def test_family_of_bfl_keys_as_comfyui_saves_them():
    from compress.io_single import detect_family

    keys = ["model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "model.diffusion_model.img_in.weight"]
    assert detect_family(keys) == "flux"
    assert detect_family([k.removeprefix("model.") for k in keys]) == "flux"
    with pytest.raises(UserError, match="cannot tell"):
        detect_family(["model.other.weight"])


def test_original_pixart_key_without_a_diffusers_counterpart_is_one_line(tmp_path):
    """A qk-norm checkpoint (PixArt-Σ's `--qk_norm` variant): diffusers' class has no such weight."""
    model = tiny_pixart()
    sd = _to_original_pixart(model.state_dict())
    sd["blocks.0.attn.q_norm.weight"] = torch.ones(8)
    torch.save(sd, tmp_path / "PixArt.pth")
    model.save_config(tmp_path)
    with pytest.raises(UserError, match=r"PixArt\.pth: original PixArt key 'blocks\.0\.attn\.q_norm\.weight' has no"):
        load_teacher(str(tmp_path / "PixArt.pth"))


def test_converter_produces_every_diffusers_key_once():
    from compress.arch.pixart_convert import convert_original_pixart

    model = tiny_pixart(use_additional_conditions=True, num_attention_heads=3, cross_attention_dim=24)
    sd = model.state_dict()
    original = _to_original_pixart(sd)
    for name in ("resolution", "aspect_ratio"):  # the micro-conditions of PixArt-α / Σ-MS checkpoints
        for i, layer in ((0, "linear_1"), (2, "linear_2")):
            for suf in ("weight", "bias"):
                short = "csize" if name == "resolution" else "ar"
                original[f"{short}_embedder.mlp.{i}.{suf}"] = sd[f"adaln_single.emb.{name}_embedder.{layer}.{suf}"]
    original["pos_embed"] = torch.zeros(1, 16, 24)  # the fixed sin-cos table: dropped
    converted = convert_original_pixart(original)
    assert converted.keys() == sd.keys()  # pos_embed.pos_embed is a non-persistent buffer
    for k, v in converted.items():
        assert torch.equal(v, sd[k]), k
    original["blocks.0.attn1.to_q.weight"] = original["blocks.0.attn.proj.weight"]  # not an original key
    with pytest.raises(KeyError, match="no counterpart"):
        convert_original_pixart(original)


def test_single_file_of_another_family_than_needed(tmp_path):
    """eval/bench pass the student's family: a teacher file of the other family says so, in one line."""
    model = tiny_pixart()
    torch.save({"state_dict": _to_original_pixart(model.state_dict())}, tmp_path / "PixArt.pth")
    model.save_config(tmp_path)
    with pytest.raises(UserError, match=r"PixArt\.pth holds a pixart transformer, not the flux one needed here"):
        load_teacher(str(tmp_path / "PixArt.pth"), family="flux")


def test_flux_single_file_with_diffusers_keys_and_comfyui_prefix(tmp_path):
    model = tiny_flux()
    model.save_config(tmp_path)
    sd = model.state_dict()
    save_file(sd, str(tmp_path / "flux.safetensors"))
    comfy = {"model.diffusion_model." + k: v for k, v in sd.items()}
    comfy["vae.decoder.conv_in.weight"] = torch.zeros(2)  # an all-in-one file: other parts are dropped
    save_file(comfy, str(tmp_path / "comfy.safetensors"))
    inputs = model_inputs(model)
    for name in ("flux", "comfy"):
        teacher = load_teacher(str(tmp_path / f"{name}.safetensors"))
        torch.testing.assert_close(forward(teacher, inputs), forward(model, inputs), rtol=0, atol=0)


@pytest.mark.parametrize("single", [2, 4])
def test_flux_single_file_with_other_blocks_than_its_config(tmp_path, single):
    """A file with more or fewer blocks than its config says so first, by count (diffusers' own
    converter converted the blocks a file holds and only logged the others: a shorter teacher)."""
    tiny_flux().save_config(tmp_path)  # 2 double, 3 single blocks
    save_file(tiny_flux(num_single_layers=single).state_dict(), str(tmp_path / "flux.safetensors"))
    with pytest.raises(UserError, match="do not match config.json: (missing|unexpected) single_transformer_blocks"):
        load_teacher(str(tmp_path / "flux.safetensors"))
    bfl = {f"double_blocks.{i}.img_mod.lin.weight": torch.zeros(1) for i in range(2)}
    bfl.update({f"model.diffusion_model.single_blocks.{i}.linear1.weight": torch.zeros(1) for i in range(single)})
    save_file({("" if k.startswith("model.") else "model.diffusion_model.") + k: v for k, v in bfl.items()},
              str(tmp_path / "bfl.safetensors"))
    with pytest.raises(UserError, match=f"bfl.safetensors holds 2 double and {single} single blocks; the config "
                                        ".* says num_layers 2, num_single_layers 3"):
        load_teacher(str(tmp_path / "bfl.safetensors"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_single_file_says_so(tmp_path, suffix):
    model = tiny_pixart()
    model.save_config(tmp_path)
    whole = tmp_path / f"whole{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": _to_original_pixart(model.state_dict())}, whole)
    else:
        save_file(model.state_dict(), str(whole))
    data = whole.read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="; it may be truncated or corrupted") as err:
        load_teacher(str(tmp_path / f"cut{suffix}"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("guidance", [True, False])  # FLUX.1-dev; FLUX.1-schnell has no guidance_in
@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])  # as BFL ships it; as ComfyUI saves it
def test_bfl_flux_file_loads_the_model_it_was_written_from(tmp_path, guidance, prefix):
    model = tiny_flux(guidance_embeds=guidance)
    model.save_config(tmp_path / "cfg")
    bfl = flux_to_bfl(model, prefix)
    assert ("guidance_in.in_layer.weight" in str(list(bfl))) == guidance
    save_file({k: v.to(torch.bfloat16) for k, v in bfl.items()}, str(tmp_path / "flux1.safetensors"))
    teacher = load_teacher(str(tmp_path / "flux1.safetensors"), config=str(tmp_path / "cfg"))
    want = model.to(torch.bfloat16).float()  # the file's values, in the float32 the teacher loads in
    assert teacher.state_dict().keys() == want.state_dict().keys()
    assert all(v.dtype == torch.float32 for v in teacher.state_dict().values())
    inputs = model_inputs(model)
    inputs["guidance"] = inputs["guidance"] if guidance else None  # FluxPipeline passes none to schnell
    torch.testing.assert_close(forward(teacher, inputs), forward(want, inputs), rtol=0, atol=0)


def test_bfl_flux_file_that_does_not_fill_its_config_is_one_line(tmp_path):
    """A tensor missing, a schnell file with dev's config and the reverse, another width: each names
    what is wrong in one line (the block counts have their own test above)."""
    dev, schnell = tiny_flux(), tiny_flux(guidance_embeds=False)
    dev.save_config(tmp_path / "dev")
    schnell.save_config(tmp_path / "schnell")
    tiny_flux(num_attention_heads=3).save_config(tmp_path / "wide")
    bfl = flux_to_bfl(dev)
    del bfl["double_blocks.1.txt_attn.qkv.bias"]
    save_file(bfl, str(tmp_path / "cut.safetensors"))
    save_file(flux_to_bfl(dev), str(tmp_path / "dev.safetensors"))
    save_file(flux_to_bfl(schnell), str(tmp_path / "schnell.safetensors"))
    for name, config, said in [
            ("cut", "dev", r"cut\.safetensors: the weights do not match .*/dev/config\.json: missing "
                           r"transformer_blocks\.1\.attn\.add_k_proj\.bias, transformer_blocks\.1\.attn\.add_q_proj\.bias"),
            ("schnell", "dev", r"schnell\.safetensors has no guidance embedder, .*: give a config with guidance_embeds: false"),
            ("dev", "schnell", r"dev\.safetensors holds a guidance embedder, .*: give a config with guidance_embeds: true"),
            ("dev", "wide", r"dev\.safetensors: BFL Flux tensor 'double_blocks\.0\.img_attn\.qkv\.\w+' of shape "
                            r"\(48\b.* does not split into .* of width 24")]:
        with pytest.raises(UserError, match=said) as err:
            load_teacher(str(tmp_path / f"{name}.safetensors"), config=str(tmp_path / config))
        assert "\n" not in str(err.value)


def test_the_family_of_a_safetensors_file_is_read_from_its_header(tmp_path, monkeypatch):
    import compress.io_single as io_single

    save_file(tiny_pixart().state_dict(), str(tmp_path / "p.safetensors"))
    monkeypatch.setattr(io_single, "read_state_dict", lambda *a: pytest.fail("read the tensors"))
    assert io_single.file_family(tmp_path / "p.safetensors") == "pixart"
    torch.save({"a": torch.zeros(1)}, tmp_path / "p.pth")
    assert io_single.file_family(tmp_path / "p.pth") is None  # a pickle: told as it loads


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("weights, config", [("flux", "pixart"), ("pixart", "flux")])
def test_a_single_file_with_a_config_of_the_other_family_is_one_line(tmp_path, suffix, weights, config):
    """run loads with the recipe's family: the file's keys tell one, the config another; not the
    shape mismatch of building the config's numbers into the file's class."""
    make = {"pixart": tiny_pixart, "flux": tiny_flux}
    sd = make[weights]().state_dict()
    save_file(sd, str(tmp_path / "t.safetensors")) if suffix == ".safetensors" else torch.save(sd, tmp_path / "t.pth")
    make[config]().save_config(tmp_path / "cfg")
    for family in (weights, None):
        with pytest.raises(UserError) as e:
            load_teacher(str(tmp_path / f"t{suffix}"), config=str(tmp_path / "cfg"), family=family)
        assert str(e.value) == (f"{tmp_path}/t{suffix}: the checkpoint's weights are a {weights} transformer while "
                                f"the config in {tmp_path}/cfg describes a {config} one; give the config of its own "
                                "transformer (config=)")  # load_teacher's argument (the commands: --teacher-config)


@pytest.mark.parametrize("named", ["myconf.json", "config.json"])
def test_a_teacher_config_json_file_of_any_name_is_the_config_itself(tmp_path, named):
    """--teacher-config myconf.json was taken for a folder: "no config.json there"."""
    from compress.io_single_config import config_file
    from compress.io_source_config import checked

    model = tiny_pixart()
    (tmp_path / "w").mkdir()
    save_file(model.state_dict(), tmp_path / "w" / "m.safetensors")
    model.save_config(tmp_path / "c")
    (tmp_path / "c" / "config.json").rename(tmp_path / "c" / named)
    given = str(tmp_path / "c" / named)
    assert config_file(tmp_path / "w" / "m.safetensors", given) == tmp_path / "c" / named
    assert checked(str(tmp_path / "w" / "m.safetensors"), given).config_file() == tmp_path / "c" / named
    loaded = load_teacher(str(tmp_path / "w" / "m.safetensors"), config=given)
    inputs = model_inputs(model)
    assert torch.equal(forward(loaded, inputs), forward(model.eval(), inputs))


def test_the_shipped_flux_config_is_taken_as_teacher_config(tmp_path):
    from importlib import resources

    from compress.io_single import empty_model
    from compress.io_single_config import config_file

    shipped = resources.files("compress.configs") / "FLUX.1-dev.json"
    model = empty_model("flux", config_file(tmp_path / "flux.safetensors", str(shipped)))
    assert model.config.num_layers == 19
    with pytest.raises(UserError, match="no config.json there"):
        config_file(tmp_path / "flux.safetensors", str(tmp_path))


def test_a_pipelines_model_index_as_teacher_config_names_what_to_give(tmp_path):
    """model_index.json was read as a transformer config: 'size mismatch for scale_shift_table'."""
    from tests.pipelines import pixart_pipeline

    model = tiny_pixart()
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    (tmp_path / "pp").mkdir()
    pipe = pixart_pipeline(tmp_path / "pp" / "pipe")
    with pytest.raises(UserError, match=rf"^config='{pipe}/model_index.json' is a pipeline's index, not a "
                                        rf"transformer config: give the pipeline folder {pipe} or its "
                                        r"transformer/config.json$"):
        load_teacher(str(tmp_path / "m.safetensors"), config=str(pipe / "model_index.json"))


@pytest.mark.parametrize("config, what", [({"_class_name": "AutoencoderKL", "in_channels": 3}, "describes AutoencoderKL"),
                                          ({}, "has no _class_name"),
                                          ({"svd": {"dense": ["x"] * 500}}, "has no _class_name")])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_teacher_config_of_no_transformer_is_one_line(tmp_path, capfd, config, what, suffix):
    """A VAE's config, {} or a report.json was read as the default PixArt config: a shape mismatch
    (after diffusers printed the JSON it did not expect)."""
    sd = tiny_pixart().state_dict()
    save_file(sd, str(tmp_path / "t.safetensors")) if suffix == ".safetensors" else torch.save(sd, tmp_path / "t.pth")
    (tmp_path / "c.json").write_text(json.dumps(config))
    with diffusers_log() as logged, pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / f"t{suffix}"), config=str(tmp_path / "c.json"))
    assert str(e.value) == (f"{tmp_path}/t{suffix}: the config in {tmp_path}/c.json {what}, not a PixArt/Flux "
                            "transformer config; give the config of its own transformer (config=)")
    assert capfd.readouterr().err == "" and logged == []


def test_a_teacher_config_json_that_is_a_folder_says_so(tmp_path):
    """--teacher-config D1/config.json where that path is a folder said 'D1/config.json: no config.json
    there'; a run says it before the teacher loads."""
    sd = tiny_pixart().state_dict()
    save_file(sd, str(tmp_path / "t.safetensors"))
    (tmp_path / "D1" / "config.json").mkdir(parents=True)
    given = str(tmp_path / "D1" / "config.json")
    with pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "t.safetensors"), config=given)
    assert str(e.value) == f"config={given!r} is a folder, not a JSON file, and holds no config.json"


def test_a_runs_pickle_teacher_refusals_start_where_the_teacher_was_given(tmp_path):
    """T7 F3: a .pth teacher's refusals as it loads (weights that do not fill its config, weights of another
    family) lacked the place a .safetensors file's have: the recipe's 'r.yaml:2: ', or '--teacher: '."""
    from compress.recipe import parse_recipe
    from compress.runner_setup import load_checked_teacher

    model = tiny_pixart()
    pth = tmp_path / "PixArt.pth"
    torch.save({"state_dict": _to_original_pixart(model.state_dict())}, pth)
    model.save_config(tmp_path / "cfg")
    tiny_pixart(num_layers=model.config.num_layers + 1).save_config(tmp_path / "more")
    pixart = parse_recipe(f"model: pixart\nteacher: {pth}\ncalibration: {{source: synthetic}}\npasses: [svd]\n", str(tmp_path / "r.yaml"))
    with pytest.raises(UserError, match=rf"^{tmp_path}/r.yaml:2: {pth}: the weights do not match {tmp_path}/more/config.json: missing "):
        load_checked_teacher(pixart, config=str(tmp_path / "more"))
    flux = parse_recipe("model: flux\nteacher: toy:flux\ncalibration: {source: synthetic}\npasses: [svd]\n", str(tmp_path / "f.yaml"))
    with pytest.raises(UserError, match=rf"^{tmp_path}/f.yaml:1: model is 'flux' but the teacher {pth} \(--teacher\) is a "):
        load_checked_teacher(flux, teacher=str(pth), config=str(tmp_path / "cfg"))


@pytest.mark.parametrize("given", ["recipe", "--teacher"])
def test_runs_refusal_of_a_pickle_of_another_family_is_plans_and_a_safetensors_files(tmp_path, monkeypatch, given):
    """S46 F3 #2: run refused a .pth teacher of another family (its config of that family too) as 'r.yaml:2:
    t/Flux.pth holds a flux transformer, not the pixart one needed here', where plan said 'r.yaml:1: model is
    'pixart' but the config ... describes a FluxTransformer2DModel (flux); set model: flux or give ...' and
    run (as plan) of a .safetensors file 'r.yaml:1: model is 'pixart' but the teacher t/Flux.safetensors is
    a FluxTransformer2DModel (flux); set model: flux or give a pixart teacher'. Now run says a pickle's as a
    .safetensors file's: having read its weights, it names the teacher, not its config."""
    from compress.plan import make_plan
    from compress.recipe import parse_recipe
    from compress.runner_setup import load_checked_teacher

    model = tiny_flux()
    (tmp_path / "t").mkdir()
    torch.save(model.state_dict(), tmp_path / "t" / "Flux.pth")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "t" / "Flux.safetensors"))
    model.save_config(tmp_path / "t")
    monkeypatch.chdir(tmp_path)
    text = "model: pixart\nteacher: {}\ncalibration: {{source: synthetic}}\npasses: [svd]\n"
    said = {}
    for suffix in ("pth", "safetensors"):
        file = f"t/Flux.{suffix}"
        recipe = parse_recipe(text.format(file if given == "recipe" else "toy:pixart"), "r.yaml")
        teacher = None if given == "recipe" else file
        for name, refuse in (("run", lambda: load_checked_teacher(recipe, teacher)),
                             ("plan", lambda: make_plan(recipe, teacher=teacher))):
            with pytest.raises(UserError) as e:
                refuse()
            said[name, suffix] = str(e.value).replace(file, "FILE")
    flag = " (--teacher)" if given == "--teacher" else ""
    assert said["run", "pth"] == said["run", "safetensors"] == said["plan", "safetensors"] == (
        f"r.yaml:1: model is 'pixart' but the teacher FILE{flag} is a FluxTransformer2DModel (flux); set model: flux "
        "or give a pixart teacher")
    assert said["plan", "pth"] == (f"r.yaml:1: model is 'pixart' but the config t/config.json beside the teacher "
                                   f"FILE{flag} describes a FluxTransformer2DModel (flux); set model: flux or give the "
                                   "config of its own transformer")


def test_load_teachers_errors_name_its_config_argument_the_commands_their_flag(tmp_path):
    """T1 stop 53: load_teacher("x.safetensors") without a config said 'pass --teacher-config', a flag of the
    commands, where the Python argument is config=; the commands (and a TeacherSource's recipe key) keep theirs."""
    from compress.io_single_config import config_file

    save_file(tiny_pixart().state_dict(), str(tmp_path / "t.safetensors"))
    with pytest.raises(UserError) as e:
        load_teacher(str(tmp_path / "t.safetensors"))
    assert str(e.value) == (f"single file {tmp_path / 't.safetensors'} has no config.json beside it; pass config= "
                            "with the diffusers config of the transformer (a folder or config.json)")
    with pytest.raises(UserError, match="beside it; pass --teacher-config with the diffusers config"):
        load_teacher(str(tmp_path / "t.safetensors"), config_key="--teacher-config")
    with pytest.raises(UserError, match="beside it; pass --teacher-config with the diffusers config"):
        config_file(tmp_path / "t.safetensors", None)  # convert's, the commands'
