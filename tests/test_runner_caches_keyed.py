"""compress.runner_caches_keyed: what each fingerprint keying a run folder's caches was measured under (the
statistics and dit-compress versions its run recorded in stages/run.json), and the note's words of the caches
of another key a plain rerun keeps."""

from __future__ import annotations

import json
import re

from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE, run_recipe


def _caches_by_fingerprint(run_dir):
    """The names of a run folder's calib/<fingerprint>/ folders."""
    return sorted(p.name for p in (run_dir / "calib").iterdir())


def test_a_note_names_caches_of_another_dit_compress_version_so(tmp_path, monkeypatch, capsys):
    """compress.__version__ keys the caches (runner_resume.fingerprint): after a new dit-compress of the same
    statistics version a rerun of a finished run said its run folder 'holds … of caches of another teacher or
    calibration (calib/…); --restart removes them', of the same teacher and calibration. Now 'of caches of
    another dit-compress version (0.1.0, now 0.1.0.post1: calib/…)', each run recording its version
    (VERSION_OF); an older record (none) by its calibration's version string, for its own fingerprint; where the
    statistics version changed too, the statistics are named, as before."""
    import compress
    import compress.calib_stats as calib_stats

    tiny_pixart().save_pretrained(tmp_path / "teacher")
    text = SIMPLE.format(teacher=tmp_path / "teacher", passes="  - svd: {targets: [attention], ratio: 0.5, multiple: 2}\n")
    run_dir, record = tmp_path / "run-r", tmp_path / "run-r" / "stages" / "run.json"
    run_recipe(tmp_path, text, "r")
    (first,) = _caches_by_fingerprint(run_dir)
    was = compress.__version__
    monkeypatch.setattr(compress, "__version__", f"{was}.post1")
    capsys.readouterr()
    run_recipe(tmp_path, text, "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    assert re.search(rf"holds [0-9.]+ KiB of caches of another dit-compress version \({re.escape(was)}, now "
                     rf"{re.escape(was)}\.post1: calib/{first}\); --restart removes them", said), said
    assert "another teacher or calibration" not in said, said

    from compress.runner_caches_keyed import VERSION_OF, versions_under

    (second,) = set(_caches_by_fingerprint(run_dir)) - {first}
    assert json.loads(record.read_text())[VERSION_OF] == {first: was, second: f"{was}.post1"}
    older = {k: v for k, v in json.loads(record.read_text()).items() if k != VERSION_OF}
    record.write_text(json.dumps(older))  # as 41d9cb1's dit-compress wrote it: its own version in its calibration
    assert versions_under(run_dir) == {second: f"{was}.post1"}

    monkeypatch.setattr(compress, "__version__", f"{was}.post2")
    monkeypatch.setattr(calib_stats, "STATS_VERSION", calib_stats.STATS_VERSION + 1)
    run_recipe(tmp_path, text, "r", overwrite=True)
    said = " ".join(capsys.readouterr().err.split())
    both = ", ".join(sorted([f"calib/{first}", f"calib/{second}"]))
    assert re.search(rf"holds [0-9.]+ KiB of caches measured with other statistics \(dit-compress's statistics "
                     rf"{calib_stats.STATS_VERSION - 1}, now {calib_stats.STATS_VERSION}: {both}\); --restart "
                     "removes them", said), said
