"""A model's config against its teacher's as diffusers builds both (config_compare), and the eval /
bench teacher check that reads it (io_teacher_of.check_same_architecture)."""

import pytest

from compress.config_compare import config_differences, shown_differences
from compress.errors import UserError
from compress.io_teacher_of import check_same_architecture
from tests.conftest import tiny_flux, tiny_pixart

FLUX, PIXART = "FluxTransformer2DModel", "PixArtTransformer2DModel"


def test_a_null_and_the_value_the_class_builds_from_it_are_one_config():
    """out_channels: null builds out_channels = in_channels: an explicit 8 beside a null was 'out_channels
    8 (the model's: None)', another model; 7 is one."""
    flux = dict(tiny_flux().config)
    assert flux["out_channels"] is None and flux["in_channels"] == 8
    assert config_differences(flux, {**flux, "out_channels": 8}, FLUX) == []
    assert config_differences({**flux, "out_channels": 8}, flux, FLUX) == []
    assert config_differences(flux, {**flux, "out_channels": 7}, FLUX) == [("out_channels", 7, None)]
    pixart = dict(tiny_pixart(out_channels=None).config)
    assert config_differences(pixart, {**pixart, "out_channels": 4}, PIXART) == []
    assert config_differences(pixart, {**pixart, "out_channels": 8}, PIXART) == [("out_channels", 8, None)]


def test_block_counts_private_keys_and_the_compression_section_are_not_compared():
    pixart = dict(tiny_pixart().config)
    theirs = {**pixart, "num_layers": 1, "_diffusers_version": "0.0", "compression": {"format": 1}}
    assert config_differences(pixart, theirs, PIXART) == []
    differ = config_differences(pixart, {**pixart, "norm_eps": 1e-3, "cross_attention_dim": 8}, PIXART)
    assert differ == [("cross_attention_dim", 8, 16), ("norm_eps", 1e-3, pixart["norm_eps"])]
    assert shown_differences(differ) == ("cross_attention_dim 8 (the model's: 16), "
                                         f"norm_eps 0.001 (the model's: {pixart['norm_eps']!r})")
    assert shown_differences([(k, 1, 2) for k in "abcd"]).endswith("c 1 (the model's: 2) …")


def test_the_teacher_check_takes_a_null_for_the_value_it_builds():
    """eval and bench refused a teacher whose config says out_channels 8 where the model's says null."""
    check_same_architecture(tiny_flux(), tiny_flux(out_channels=8), "t")
    with pytest.raises(UserError, match=r"^teacher t is not the model this one was compressed from: its config has "
                                        r"out_channels 7 \(the model's: None\); pass its teacher with --teacher$"):
        check_same_architecture(tiny_flux(), tiny_flux(out_channels=7), "t")
