"""Cross-attention k/v calibrated on the caption tokens attention reads vs on every padded token.

PixArt-Σ's pipeline pads each prompt to 300 T5 tokens and masks the padding out of cross-attention,
so most rows of an unmasked caption Gram are tokens the model never reads. This builds the tiny
PixArtSigmaPipeline of the tests (random transformer, real T5 tokenizer/encoder classes and padding),
factorizes its cross-attention at 30% kept parameters with `dit-compress run`, and prints the
held-out teacher-relative error with the caption Gram masked (the pass's behaviour) and with every
row (what it did before), for plain whitening and with the output Fisher. The shipped toy teacher
shows no difference: its 8-token captions pad with exact zeros.

    python tools/bench_caption_mask.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":  # --help says what it measures; it takes no options: both answered before torch loads
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compress.arch.pixart as pixart  # noqa: E402
from compress.recipe import parse_recipe  # noqa: E402
from compress.runner import Runner  # noqa: E402
from tests.pipelines import pixart_pipeline  # noqa: E402

PROMPTS = ["a photo of a cat", "a red car on a street", "a handwritten digit seven", "an astronaut riding a horse",
           "the quick brown fox", "a cat on a car", "a horse on a street", "a red fox", "the lazy dog", "a quick cat"]
RECIPE = f"""\
model: pixart
teacher: {{teacher}}
calibration: {{{{source: pipeline, prompts: {json.dumps(PROMPTS)}, sample_steps: 4, timesteps: 2,
              batch_size: 8, heldout: 8}}}}
passes:
  - svd: {{{{targets: [cross_attention], ratio: 0.3, multiple: 1, fisher: {{fisher}}, progress: false}}}}
"""


def error(root: Path, teacher: Path, fisher: str, masked: bool) -> float:
    real = pixart.PixArtAdapter.caption_rows
    if not masked:
        pixart.PixArtAdapter.caption_rows = lambda self, kwargs: None  # every token, padding included
    try:
        tag = f"{fisher}-{'masked' if masked else 'all'}"
        recipe = parse_recipe(RECIPE.format(teacher=teacher, fisher=fisher), str(root / f"{tag}.yaml"))
        out = Runner(recipe, root / f"out-{tag}", root / f"run-{tag}").run()
    finally:
        pixart.PixArtAdapter.caption_rows = real
    return json.loads((out / "report.json").read_text())["stages"][-1]["relative_error"]


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pipe").mkdir()
        teacher = pixart_pipeline(root / "pipe" / "pixart")
        for fisher in ("none", "all"):
            every, masked = error(root, teacher, fisher, False), error(root, teacher, fisher, True)
            print(f"fisher: {fisher:4s}  held-out error, caption Gram over every token {every:.5f}, "
                  f"over the tokens attention reads {masked:.5f} ({masked / every:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
