"""The streamed skip scan (wave_pass): the resident scan's numbers, each block read once per batch."""

import pytest
import torch

from compress.arch import get_adapter
from compress.calib_store import BlockLoader
from compress.passes.importance import scan
from compress.passes.importance_forward import block_cosine, clean_pass, skip_prediction
from compress.passes.importance_stream import wave_pass
from compress.runner_stream import StreamedModels
from tests.conftest import model_inputs, tiny_flux, tiny_pixart

pytestmark = pytest.mark.usefixtures("one_thread")


class Counting(BlockLoader):
    """A resident model's loader that counts what it is asked to read."""

    def __init__(self):
        self.reads = []

    def materialize(self, group, index, block):
        self.reads.append((group, index))


@pytest.mark.parametrize("make", [tiny_pixart, tiny_flux])
def test_wave_pass_gives_the_replayed_scans_numbers_bit_for_bit(make):
    """Prediction, cosine proxies and every skipped prediction equal the resident scan's (clean
    forward, then blocks before the skipped one replayed), with each block asked for once."""
    model = make().eval()
    adapter = get_adapter(model)
    kwargs = model_inputs(model, batch=3, seed=1)
    loader = Counting()
    with torch.no_grad():
        pred, cosines, skipped = wave_pass(model, adapter, kwargs, loader, block_cosine)
        want, inputs, outputs = clean_pass(model, adapter, kwargs)
        assert torch.equal(pred, want)
        for i, (a, o) in enumerate(zip(inputs, outputs)):
            assert torch.equal(cosines[i], block_cosine(adapter, a, o))
            assert torch.equal(skipped[i], skip_prediction(model, adapter, kwargs, i, inputs, outputs))
    assert loader.reads == [(g, i) for g, i, _ in adapter.iter_blocks(model)]


def test_the_streamed_skip_scan_reads_each_block_once_per_batch(tmp_path):
    """Streamed from the toy Flux's checkpoint: N block reads per batch where replaying the
    resident scan would read N(N+1)/2, and every block back on meta after."""
    from compress.inputs import input_source
    from compress.recipe import CalibrationConfig
    from compress.stream import CheckpointBlocks

    models = StreamedModels(tmp_path)
    teacher = models.teacher("toy:flux", None)
    loader = models.loaders[id(teacher)]
    reads, real = [], CheckpointBlocks.materialize
    loader.materialize = lambda g, i, blk: (reads.append((g, i)), real(loader, g, i, blk))[1]
    src = input_source("flux", "toy:flux", CalibrationConfig(num_prompts=4, timesteps=2, batch_size=4), teacher, None)
    result = scan(teacher, loader.adapter, src.calibration()[:3], buckets=1, progress=False, loader=loader)
    n = len(result.blocks)
    assert len(reads) == 3 * n and reads[:n] == [(b.group, b.index) for b in result.blocks]
    assert all(p.is_meta for _, _, blk in loader.adapter.iter_blocks(teacher) for p in blk.parameters())
    assert all(b.scan > 0 for b in result.blocks)
