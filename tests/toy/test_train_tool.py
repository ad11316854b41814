"""tools/train_toy_teacher.py against the shipped model cards (nothing is trained here)."""
import re
import shlex
import sys

import pytest

from compress.toy.pixart import LOSS_WEIGHT_CAP
from compress.toy.weights import WEIGHTS_DIR
from tools import train_toy_teacher as tool


def card_command(family: str) -> list[str]:
    """The arguments of the card's `reproduce:` command, without --out."""
    line = re.search(r"reproduce: `python tools/train_toy_teacher.py ([^`]*)`", (WEIGHTS_DIR / f"{family}.md").read_text())
    args = shlex.split(line.group(1))
    return args[: args.index("--out")]


def parsed(monkeypatch, argv: list[str]):
    monkeypatch.setattr(sys, "argv", ["train_toy_teacher.py", *argv])
    args = vars(tool.parse_args())
    if args["family"] == "pixart" and args["objective"] == "eps" and args["loss_weight_cap"] is None:
        args["loss_weight_cap"] = LOSS_WEIGHT_CAP  # what train() resolves it to
    return args


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_defaults_are_the_shipped_teachers_command(monkeypatch, family):
    """`--family F` alone trains what the card says shipped (its reproduce command, its training line)."""
    shipped = parsed(monkeypatch, card_command(family))
    assert parsed(monkeypatch, ["--family", family]) == shipped
    training = re.search(r"- training: seed (\d+), (\d+) steps, batch (\d+), AdamW lr ([\d.e-]+) \(warmup (\d+),.*EMA ([\d.]+)",
                         (WEIGHTS_DIR / f"{family}.md").read_text())
    seed, steps, batch, lr, warmup, ema = training.groups()
    assert (shipped["seed"], shipped["steps"], shipped["batch_size"], shipped["warmup"]) == tuple(
        map(int, (seed, steps, batch, warmup)))
    assert (shipped["lr"], shipped["ema_decay"]) == (float(lr), float(ema))
