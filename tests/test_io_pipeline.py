"""load_pipeline's base (compress.io_pipeline): the teacher an output records, followed through
outputs compressed from outputs. Other load_pipeline tests: test_io.py, test_io_output_paths.py."""

import pytest

from compress import load_pipeline, save_compressed
from compress.errors import UserError
from tests.conftest import factorize
from tests.teacher_chain_helpers import output_config


def _toy_output(folder, teacher: str):
    from compress.toy import load_toy_teacher

    model = factorize(load_toy_teacher("flux"), ["transformer_blocks.0.ff.net.2"], rank=8)
    return save_compressed(model, folder, extra={"teacher": teacher})


def test_an_output_made_from_an_output_takes_the_base_its_chain_records(tmp_path):
    """load_pipeline(d), d compressed from the output a, which was compressed from toy:flux, said a
    is not a pipeline folder and asked for base=: the chain leads to toy:flux. A loop or a missing
    link is one line naming the chain."""
    a = _toy_output(tmp_path / "a", "toy:flux")
    d = _toy_output(tmp_path / "d", str(a.resolve()))
    assert type(load_pipeline(d)).__name__ == "ToyFluxPipeline"

    output_config(a, str(d.resolve()))
    with pytest.raises(UserError) as e:
        load_pipeline(d)
    assert str(e.value) == (f"{d} records the teacher {a.resolve()}, which records {d.resolve()}, which records "
                            f"{a.resolve()}, which it named before (a loop); pass base= (a pipeline folder, a "
                            "Hugging Face id or toy:NAME)")
    output_config(a, str(tmp_path / "gone"))
    with pytest.raises(UserError, match=f"^{d} records the teacher {a.resolve()}, which records {tmp_path}/gone, "
                                        "which is not there; pass base="):
        load_pipeline(d)
