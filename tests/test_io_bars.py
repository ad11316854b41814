"""diffusers' tqdm 'Loading checkpoint shards' bar: no command prints it loading a sharded teacher
(io._load_folder holds it off, progress.no_library_bars), nor diffusers' and transformers' bars
loading a pipeline (io_hub_pipeline.hub_or_cache), and a library user's setting of the bars is as it
was after."""

from __future__ import annotations

import pytest
from diffusers.utils import logging as diffusers_logging

from tests.runner_helpers import SIMPLE

SHARDS = "Loading checkpoint shards"
SVD = "  - svd: {targets: [mlp], ratio: 0.5, multiple: 2}\n"  # a short run


@pytest.fixture
def sharded(tmp_path):
    """tmp_path/r.yaml: a short recipe on a tiny PixArt teacher saved sharded in tmp_path/teacher."""
    from tests.conftest import tiny_pixart

    tiny_pixart().save_pretrained(tmp_path / "teacher", max_shard_size="40KB")  # sharded, as big models are
    assert len(list((tmp_path / "teacher").glob("*.safetensors"))) > 1
    (tmp_path / "r.yaml").write_text(SIMPLE.format(teacher=tmp_path / "teacher", passes=SVD))
    return tmp_path


def _argv(command: str, tmp_path) -> list[str]:
    """`command`'s arguments loading the sharded teacher (eval: an output recording it)."""
    if command == "eval":
        from compress import save_compressed
        from tests.conftest import factorize, tiny_pixart

        save_compressed(factorize(tiny_pixart(), ["transformer_blocks.0.ff.net.2"], rank=2), tmp_path / "out",
                        extra={"teacher": str(tmp_path / "teacher")})
        (tmp_path / "out" / "recipe.yaml").write_text((tmp_path / "r.yaml").read_text())  # eval's inputs
        return ["eval", str(tmp_path / "out")]
    if command == "run":
        return ["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "run")]
    return ["importance", str(tmp_path / "r.yaml"), "--png", str(tmp_path / "i.png")]


@pytest.mark.parametrize("shown", [True, False])
@pytest.mark.parametrize("command, says", [("run", "wrote "), ("eval", "pred_rel_error"),
                                           ("importance", "Block importance")])
def test_commands_loading_a_sharded_teacher_print_no_diffusers_bar(sharded, capfd, command, says, shown):
    from compress.cli import main

    argv = _argv(command, sharded)
    (diffusers_logging.enable_progress_bar if shown else diffusers_logging.disable_progress_bar)()
    try:
        assert main(argv) == 0
        said = capfd.readouterr()
        assert says in said.out + said.err  # the command ran to its end
        assert SHARDS not in said.out + said.err
        assert diffusers_logging.is_progress_bar_enabled() is shown  # as the user had it
    finally:
        diffusers_logging.enable_progress_bar()


def test_load_teacher_of_a_sharded_folder_prints_no_bar(sharded, capfd):
    from compress import load_teacher

    load_teacher(str(sharded / "teacher"))
    said = capfd.readouterr()
    assert SHARDS not in said.out + said.err
    assert diffusers_logging.is_progress_bar_enabled()


def test_no_library_bars_puts_the_setting_back_as_it_was():
    from compress.progress import no_library_bars

    for shown in (True, False):
        (diffusers_logging.enable_progress_bar if shown else diffusers_logging.disable_progress_bar)()
        with pytest.raises(KeyError), no_library_bars():
            assert not diffusers_logging.is_progress_bar_enabled()
            raise KeyError  # put back after an error too
        assert diffusers_logging.is_progress_bar_enabled() is shown
    diffusers_logging.enable_progress_bar()


@pytest.mark.parametrize("shown", [True, False])
def test_a_pipeline_loads_without_diffusers_or_transformers_bars(tmp_path, capfd, shown):
    """A calibration pipeline's load printed diffusers' 'Loading pipeline components' and
    transformers' 'Loading weights' bars (one per text encoder) beside the run's own lines."""
    from diffusers import PixArtTransformer2DModel
    from transformers.utils import logging as transformers_logging

    from compress.calib_pipeline import load_pipeline_for
    from tests.pipelines import pixart_pipeline

    folder = pixart_pipeline(tmp_path / "pipe")
    teacher = PixArtTransformer2DModel.from_pretrained(folder / "transformer")
    capfd.readouterr()
    for library in (diffusers_logging, transformers_logging):
        (library.enable_progress_bar if shown else library.disable_progress_bar)()
    try:
        assert load_pipeline_for(teacher, str(folder)).transformer is teacher
        said = capfd.readouterr()
        assert "Loading pipeline components" not in said.err + said.out
        assert "Loading weights" not in said.err + said.out
        assert diffusers_logging.is_progress_bar_enabled() is shown  # as the user had them
        assert transformers_logging.is_progress_bar_enabled() is shown
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
