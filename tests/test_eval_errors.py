"""eval's teacher-relative errors (compress/eval_errors.py): what it reads of the run's folder, and that it
writes nothing outside the output folder it is given."""

import json
import shutil

import pytest

from compress.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def _files(root) -> dict:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stream", ["false", "true"])
def test_eval_writes_nothing_in_the_run_folder_gone_or_holding_an_unreadable_call(stream, tmp_path, capsys):
    """eval OUT took the sampled-inputs folder report.json records (inputs_cache, in the run folder) as
    its own cache: with the run folder moved away it made it again and wrote the held-out calls there
    (read-only: an OSError traceback; a full disk: one, leaving empty folders). It reads what is there and
    valid, samples the rest in memory, writes nothing, and says so where the folder is gone."""
    from tests.pipelines import RECIPE as PIPELINE_RECIPE
    from tests.pipelines import pixart_pipeline
    from tests.runner_helpers import run_recipe

    pipe = pixart_pipeline(tmp_path / "pipe")
    text = PIPELINE_RECIPE.replace("{teacher}", str(pipe)).replace("{family}", "pixart").replace("{size}", "")
    out = run_recipe(tmp_path, text.format(stream=stream), "p")
    capsys.readouterr()
    assert main(["eval", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    cache = json.loads((out / "report.json").read_text())["inputs_cache"]
    calls = sorted((tmp_path / "run-p" / "inputs").rglob("*.pt"))
    assert calls and all(str(c).startswith(cache) for c in calls)
    for call in calls:
        call.write_bytes(b"not a torch file")  # unreadable: sampled again, in memory, and left as it is
    before = _files(tmp_path)
    assert main(["eval", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pred_rel_error"] == pytest.approx(first["pred_rel_error"])
    assert _files(tmp_path) == before
    shutil.move(str(tmp_path / "run-p"), str(tmp_path / "moved"))
    before = _files(tmp_path)
    assert main(["eval", str(out), "--json"]) == 0
    said = capsys.readouterr()
    assert json.loads(said.out)["pred_rel_error"] == pytest.approx(first["pred_rel_error"])
    assert _files(tmp_path) == before and not (tmp_path / "run-p").exists()
    assert f"note: eval: the run's sampled inputs ({cache}, report.json's inputs_cache) are gone: the held-out " \
           "inputs are sampled again, in memory" in " ".join(said.err.split())
