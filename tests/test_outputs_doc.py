"""docs/OUTPUTS.md names every key of report.json that a run writes.

Tiny runs write report.json, each key path walked down to the per-layer and per-stage records: every pass of a
recipe (importance, a learned removal, a global svd pass with compensation and an asymmetric fit, an svd pass of
the modulation, two distill passes) on a single-file teacher with its `teacher_config`, exported in bfloat16; a
streamed run; a run from that output (a chain: its `base`) removing a block by proxy and distilling toward the
base at a high lr (the error rises), then `dit-compress lora` of its output; a Flux run whose compensation is
refused for some layers, one layer's inputs all zero (no loss ratio); and a run calibrating in the toy pipeline
(its inputs' cache). A dict keyed by names (layers, compensation stages, block groups, files) is passed through:
its values' keys are report keys, its own are not. A key is named where it is written in backticks (`key`, or a
part of `svd.layers.<name>.guard`; a code span may break across lines, as in Markdown) in its top-level key's
entry of the `## report.json` list (the item starting with `svd`), or anywhere in the document for a top-level key
without an entry of its own.
"""

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from compress.cli import main
from tests.conftest import tiny_flux, tiny_pixart
from tests.runner_helpers import run_recipe, streamed_teacher
from tests.test_lora_limits import _save, _state

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "OUTPUTS.md"

RECIPE = """\
model: pixart
teacher: {teacher}
teacher_config: {config}
export: {{dtype: bfloat16}}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - importance: {{buckets: 2, progress: false}}
  - remove_blocks: {{count: {{blocks: 1}}, criterion: learned, learn_steps: 2}}
  - svd: {{targets: [attention, mlp], allocation: global, ratio: 0.5, multiple: 2, asymmetric: true,
          progress: false}}
  - svd: {{targets: [modulation], ranks: {{modulation: 4}}, progress: false}}
  - distill: {{data: teacher_samples, num_samples: 8, sample_steps: 2, steps: 2, warmup_steps: 0, batch_size: 4,
              progress: false, plot: false, checkpoint_every: 0}}
  - distill: {{data: teacher_samples, num_samples: 8, sample_steps: 2, steps: 2, warmup_steps: 0, batch_size: 4,
              progress: false, plot: false, checkpoint_every: 0}}
"""
CHAIN = """\
model: pixart
teacher: {teacher}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - remove_blocks: {{count: {{blocks: 1}}, criterion: proxy}}
  - distill: {{data: teacher_samples, num_samples: 8, sample_steps: 2, steps: 2, warmup_steps: 0, batch_size: 4,
              kd_teacher: base, lr: 0.05, progress: false, plot: true, checkpoint_every: 0}}
"""
FLUX = """\
model: flux
teacher: {teacher}
calibration: {{source: synthetic, num_prompts: 4, timesteps: 2, batch_size: 4, heldout: 4}}
passes:
  - remove_blocks: {{blocks: {{double: [0], single: [0, 1]}}}}
  - svd: {{targets: [attention, mlp], ratio: 0.5, multiple: 1, compensate_batches: 1, progress: false}}
"""
TOY = """\
model: pixart
teacher: toy:pixart
calibration: {source: pipeline, prompts: [a 1, a 2], sample_steps: 1, timesteps: 1, batch_size: 4, heldout: 1}
passes:
  - remove_blocks: {blocks: {blocks: [0]}}
"""

# paths (their ending) of the dicts keyed by names, not by report keys
NAMED = ("svd.layers", ".compensation", "refused[].layers", "global.weights", "weights_measured_below_uniform",
         "max_loss_ratio_by_method", ".removed", "blocks_before", "blocks_after", "removed_total", "block_map",
         "teacher_files.files", "activation_max", "rank_added")


def key_paths(value, path: str = "") -> set[str]:
    """Every key path of `value` ('svd.layers.<name>.rank', 'stages[].pass')."""
    found = set()
    if isinstance(value, dict):
        named = path.endswith(NAMED)
        for key, inner in value.items():
            below = f"{path}.<name>" if named else f"{path}.{key}" if path else key
            if not named:
                found.add(below)
            found |= key_paths(inner, below)
    elif isinstance(value, list):
        for inner in value:
            found |= key_paths(inner, f"{path}[]")
    return found


def _names(text: str) -> set[str]:
    """The identifiers written in backticks in `text`: in its code spans, which may break across lines
    (fenced code blocks left out)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {w for span in re.findall(r"`([^`]+)`", text) for w in re.findall(r"[A-Za-z_]\w*", span)}


def doc_names() -> tuple[set[str], dict[str, set[str]]]:
    """(the names in backticks anywhere in the document, top-level key -> those of its `## report.json` entry)."""
    text = DOC.read_text()
    section = re.search(r"^## report\.json\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "docs/OUTPUTS.md has no '## report.json' section"
    entries = re.split(r"^- (?=`)", section.group(1), flags=re.M)[1:]
    return _names(text), {re.match(r"`(\w+)`", e).group(1): _names(e) for e in entries}


def unnamed(paths: set[str]) -> list[str]:
    """The key paths whose last key the document does not name where it should."""
    anywhere, entries = doc_names()
    missing = []
    for path in sorted(paths):
        parts = [p for p in re.split(r"\.|\[\]", path) if p and p != "<name>"]
        where = entries.get(parts[0], anywhere) if len(parts) > 1 else anywhere
        if parts[-1] not in where:
            missing.append(path)
    return missing


def _outputs(tmp_path) -> list[Path]:
    """The runs' output folders (the module's docstring says which)."""
    model = tiny_pixart()
    save_file(model.state_dict(), str(tmp_path / "pix.safetensors"))
    model.save_config(tmp_path / "cfg")
    run_recipe(tmp_path, RECIPE.format(teacher=tmp_path / "pix.safetensors", config=tmp_path / "cfg"), "all")
    streamed = tmp_path / "s"
    streamed.mkdir()
    run_recipe(streamed, streamed_teacher(streamed, "pixart").format(stream="true"), "stream")
    run_recipe(tmp_path, CHAIN.format(teacher=tmp_path / "out-all"), "chain")
    lora = _save(_state(tiny_pixart(), ["attn1.to_q"], rank=2), tmp_path / "lora.safetensors")
    assert main(["lora", str(tmp_path / "out-chain"), str(lora), str(tmp_path / "out-lora")]) == 0
    flux = tiny_flux()
    with torch.no_grad():  # double block 1's ff.net.2 sees only zeros: no loss ratio (its loss_ratio_note)
        flux.transformer_blocks[1].ff.net[0].proj.weight.zero_()
        flux.transformer_blocks[1].ff.net[0].proj.bias.zero_()
    flux.save_pretrained(tmp_path / "flux")
    run_recipe(tmp_path, FLUX.format(teacher=tmp_path / "flux"), "flux")
    run_recipe(tmp_path, TOY, "toy")
    return [tmp_path / "out-all", streamed / "out-stream", tmp_path / "out-lora", tmp_path / "out-flux",
            tmp_path / "out-toy"]


def test_docs_outputs_names_every_key_a_run_writes_into_report_json(tmp_path):
    paths = set()
    for out in _outputs(tmp_path):
        paths |= key_paths(json.loads((out / "report.json").read_text()))
    # the runs reach what they were written for (else the check below checks less than it says)
    for wanted in ("remove_blocks.learned.windows[].likeliest[].probability", "svd.layers.<name>.fit_gap",
                   "svd.global.predicted_error_vs_uniform", "svd.compensation.<name>.step", "distill.earlier[].first.feat",
                   "stream.resident_params", "stages[].activation_near_float16", "importance.blocks[].scan",
                   "teacher_config", "export.activation_max", "base.params", "stages[].kd_teacher.relative_error",
                   "distill.kd_teacher.chain", "distill.error_rose.reads", "distill.files.loss_png",
                   "remove_blocks.reused_importance", "loras[].blocks_of", "export.before_loras",
                   "svd.layers.<name>.guard.why", "svd.compensation.<name>.unguarded_step",
                   "svd.layers.<name>.loss_ratio_note", "inputs_cache"):
        assert wanted in paths, wanted
    assert unnamed(paths) == []
