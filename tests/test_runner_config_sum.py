"""runner_config_sum: the config file a teacher reads, and a checksum of what it holds."""

import json

from compress.runner_config_sum import config_checksum, config_read, config_target


def test_the_config_a_teacher_reads(tmp_path):
    """A --teacher-config's file (a folder's config.json, a pipeline folder's transformer/config.json), else
    a folder teacher's own or the config.json beside a single file; none for a toy, a Hub id, a path
    that is not there or a single file with no config beside it."""
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    (tmp_path / "pipe" / "transformer" / "config.json").write_text("{}")
    (tmp_path / "single").mkdir()
    (tmp_path / "single" / "t.safetensors").write_bytes(b"x")
    (tmp_path / "bare.safetensors").write_bytes(b"x")
    transformer = tmp_path / "pipe" / "transformer" / "config.json"
    assert config_read("toy:pixart", str(tmp_path / "pipe")) == transformer == config_target(str(tmp_path / "pipe"))
    assert config_read(str(tmp_path / "pipe"), None) == transformer
    assert config_read(str(tmp_path / "single" / "t.safetensors"), None) is None
    (tmp_path / "single" / "config.json").write_text("{}")
    assert config_read(str(tmp_path / "single" / "t.safetensors"), None) == tmp_path / "single" / "config.json"
    for source in ("toy:pixart", "acme/teacher", str(tmp_path / "gone"), str(tmp_path / "bare.safetensors")):
        assert config_read(source, None) is None, source


def test_the_checksum_is_of_what_the_config_holds(tmp_path):
    """Its keys but those starting with '_' (another diffusers' re-save, other order or spacing: the same);
    any other value another checksum; a file not JSON by its bytes; one not there, None."""
    files = {"a": '{"norm_eps": 1e-06, "sample_size": 8, "_diffusers_version": "0.30"}',
             "same": '{\n  "sample_size": 8,\n  "norm_eps": 1e-06, "_diffusers_version": "0.31"\n}',
             "eps": '{"norm_eps": 1e-05, "sample_size": 8}', "text": "not json", "other": "not json either"}
    for name, held in files.items():
        (tmp_path / name).write_text(held)
    sums = {name: config_checksum(tmp_path / name) for name in files}
    assert sums["a"] == sums["same"] and len(set(sums.values())) == 4
    assert config_checksum(tmp_path / "gone") is None


def test_keys_diffusers_loads_as_defaults_are_not_what_the_config_holds(tmp_path):
    """diffusers loads the defaults of the keys a config's _use_default_values lists, whatever the file
    says: editing one made a config 'another teacher' though the model was the same, and editing the
    list (which changes the model) was no change."""
    import json

    from compress.runner_config_sum import config_checksum

    def checksum(**config):
        (tmp_path / "config.json").write_text(json.dumps(config))
        return config_checksum(tmp_path / "config.json")

    base = checksum(norm_eps=1e-6, sample_size=8, _use_default_values=["norm_eps"])
    assert checksum(norm_eps=1e-5, sample_size=8, _use_default_values=["norm_eps"]) == base  # loaded alike
    assert checksum(norm_eps=1e-6, sample_size=8, _use_default_values=[]) != base  # norm_eps now read
    assert checksum(norm_eps=1e-6, sample_size=9, _use_default_values=["norm_eps"]) != base


def test_an_outputs_refusal_of_plain_diffusers_is_no_part_of_the_checksum(tmp_path):
    """An older output used as a teacher gains the quantization_config marker when re-saved (1c47d1e): the same
    model, as teacher_identity says; a real quantization_config is kept (R2 stop 51 #3)."""
    from compress.output_names import REFUSAL, REFUSAL_KEY

    config = {"_class_name": "PixArtTransformer2DModel", "num_layers": 2, "compression": {"format": 1}}
    files = {name: tmp_path / f"{name}.json" for name in ("old", "marked", "null", "quantized")}
    files["old"].write_text(json.dumps(config))
    files["marked"].write_text(json.dumps({**config, REFUSAL_KEY: REFUSAL}))
    files["null"].write_text(json.dumps({**config, REFUSAL_KEY: None}))
    files["quantized"].write_text(json.dumps({**config, REFUSAL_KEY: {"quant_method": "bitsandbytes"}}))
    sums = {name: config_checksum(file) for name, file in files.items()}
    assert sums["old"] == sums["marked"] == sums["null"] != sums["quantized"], sums
