"""Which inputs a run calibrates on (compress.inputs): the calibration source's kind for a teacher."""

import pytest
import torch

from compress.errors import UserError
from compress.inputs import ToySource, input_source, source_kind
from compress.recipe import CalibrationConfig
from tests.teacher_chain_helpers import chained_outputs


def test_an_output_compressed_from_a_toy_is_calibrated_on_that_toys_inputs(tmp_path):
    """An output (or an output made from one) whose recorded teacher is toy:flux became the pipeline
    source under auto (asking for prompts) and was refused by source: toy; it is calibrated as
    toy:flux is, on the same inputs. An output of a teacher that is no toy stays the pipeline's."""
    a, d = chained_outputs(tmp_path, "toy:flux")
    for teacher in ("toy:flux", str(a), str(d)):
        for source in ("auto", "toy"):
            assert source_kind(CalibrationConfig(source=source), teacher) == "toy", (teacher, source)
    calib = CalibrationConfig(num_prompts=2, timesteps=2, batch_size=8)
    src = input_source("flux", str(d), calib, None)
    assert isinstance(src, ToySource)
    want = ToySource("flux", calib).calibration()
    assert all(torch.equal(got["hidden_states"], w["hidden_states"]) for got, w in zip(src.calibration(), want))

    (tmp_path / "bare").mkdir()  # a transformer folder: no toy at the end of the chain
    _, real = chained_outputs(tmp_path / "real", str(tmp_path / "bare"))
    assert source_kind(CalibrationConfig(), str(real)) == "pipeline"
    with pytest.raises(UserError, match=r"calibration.source 'toy' needs a toy teacher .*or an output compressed "
                                        r"from one\), not .*real"):
        source_kind(CalibrationConfig(source="toy"), str(real))
