"""A dit-compress output's weight file given as a DoRA's teacher: one refusal, saying what a DoRA's
norms need (the uncompressed teacher), not first 'give that folder' and then that refusal."""

import copy
import re

import pytest

from compress.errors import UserError
from compress.io import WEIGHTS
from compress.lora import merge_lora
from tests.test_lora import _lora, _student


@pytest.mark.filterwarnings("ignore:.*invalid shape")
def test_an_outputs_weight_file_is_no_doras_teacher_in_one_refusal(tmp_path, capsys):
    from compress.cli import main

    student, teacher = _student(tmp_path)
    _lora(copy.deepcopy(teacher), tmp_path / "lora", use_dora=True)
    out = tmp_path / "out-s"
    weights = str(out / WEIGHTS)
    wanted = (rf"^teacher {re.escape(weights)} is a dit-compress output, its layers factorized: a DoRA's norms need "
              rf"the uncompressed teacher the DoRA was trained on \(it was compressed from "
              rf"{re.escape(str(tmp_path / 'teacher'))}\); pass that with --teacher")
    with pytest.raises(UserError, match=wanted):
        merge_lora(copy.deepcopy(student), tmp_path / "lora", teacher=weights)
    recorded = copy.deepcopy(student)
    recorded.compression_meta["teacher"] = weights  # the recorded teacher: the same
    with pytest.raises(UserError, match=wanted):
        merge_lora(recorded, tmp_path / "lora")
    capsys.readouterr()
    assert main(["lora", str(out), str(tmp_path / "lora"), str(tmp_path / "new"), "--teacher", weights]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "uncompressed teacher" in err and "give that folder" not in err
    assert not (tmp_path / "new").exists()
