"""compress.runner_heldout.check_stage: a stage whose student's held-out prediction is not finite stops
the run, naming the pass and the student's first layer to hold NaN/Inf; nothing is exported."""

import pytest

from compress.errors import NumericError
from tests.conftest import tiny_pixart
from tests.runner_helpers import SIMPLE, run_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_stage_whose_prediction_is_not_finite_is_refused_naming_its_first_layer(tmp_path, monkeypatch):
    """A pass that hands on a student whose prediction overflows (here an svd pass whose output layer is
    set to 1e38, finite): the run printed 'teacher-relative error nan' and wrote the output."""
    from compress.passes.svd import SVDPass

    real = SVDPass.run

    def overflowing(self, model, ctx):
        model = real(self, model, ctx)
        model.transformer_blocks[1].ff.net[2].bias.data[:] = 1e38  # finite; its output's sums are not
        return model

    monkeypatch.setattr(SVDPass, "run", overflowing)
    tiny_pixart().save_pretrained(tmp_path / "teacher")
    passes = "  - svd: {targets: [attention], ratio: 0.5, multiple: 2, fisher: none}\n"
    with pytest.raises(NumericError) as e:
        run_recipe(tmp_path, SIMPLE.format(teacher=tmp_path / "teacher", passes=passes), "r")
    assert str(e.value).startswith(f"{tmp_path / 'r.yaml'}:5: pass 1/1 (svd): the student's prediction holds "
                                   "NaN/Inf on held-out batch 1 of "), e.value
    assert "'s output is the first to hold it" in str(e.value)
    assert str(e.value).endswith("; change its settings and rerun with --resume (it keeps the passes before it)")
    assert not (tmp_path / "out-r").exists()
