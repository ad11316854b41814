"""`FisherMeasurement`, which SVDPass mixes in: the measuring of its targets' output Fishers into the
pass's roots (`fisher: all`: the final prediction's, in sweeps over the whole model; `fisher: block`:
each block's own, as the walk reaches it), and the gradient rows a sweep gives each of them."""

from __future__ import annotations

from torch import nn

from compress.arch.base import Adapter, LinearInfo
from compress.calib import BlockCalibration
from compress.errors import UserError
from compress.passes.svd_fisher import block_fisher, sweeps
from compress.passes.svd_fisher_budget import block_chunks, sweep_chunks


class FisherMeasurement:
    """SVDPass's Fisher measuring, mixed into the pass. It reads the pass's config, block loader,
    Fisher roots (`self.roots`, written) and bytes per sweep (`self.budget`), and its
    `_prediction_fisher`."""

    def _measure_fishers(self, model, adapter, targets, batches) -> None:
        """The output Fisher of each weighted target (none when disabled), of the model as the pass
        finds it, in chunks of at most `fisher_memory_gb`, into `self.roots` (on disk; those an
        interrupted run left there are not measured again)."""
        c = self.config
        chosen = [i for i in targets if self._prediction_fisher(i)]
        if chosen and not getattr(self.loader, "resident", True):
            raise UserError("svd.fisher needs the whole model in memory (one forward and backward "
                            "per probe); with block weights streamed set svd.fisher: block (each "
                            "block's own output Fisher) or none")
        # those an interrupted run of this pass measured are read back (the runner's line as the pass
        # starts says so with the statistics: runner_read_back.say_read_back)
        self.fishers_read = [i.name for i in chosen if i.name in self.roots]  # runner_read_back counts them
        chosen = [i for i in chosen if i.name not in self.roots]
        samples = sum(b["hidden_states"].shape[0] for b in batches)
        rows = self._fisher_rows(adapter, chosen, samples)
        chunks = sweep_chunks(model, adapter, batches, chosen, self.budget, rows)  # taps counted too
        sweeps(model, adapter, batches, chunks, c.fisher_probes, self.roots, c.progress, self.guide_for("fisher"))
        self.roots.say_zero()  # those of zero Fisher, in one line (fisher: block's, as the pass ends)

    def _fisher_rows(self, adapter: Adapter, infos: list[LinearInfo], samples: int | None) -> dict[str, int]:
        """name -> gradient rows one sweep gives the Fisher of each target that reads one row per
        sample (samples x probes; the others read a row per token: too many to keep). None: unknown."""
        if not samples:
            return {}
        return {i.name: samples * self.config.fisher_probes for i in infos if adapter.per_sample(i)}

    def _block_roots(self, cal: BlockCalibration, block: nn.Module, infos: list[LinearInfo]) -> None:
        """fisher: block: (L, L⁻¹) of each target of `block` from its block-local output Fisher on
        the block's current calibration inputs, in chunks of at most `fisher_memory_gb`."""
        c = self.config
        samples = sum(cal.adapter.hidden_of(args, kwargs)[0].shape[0] for args, kwargs in cal.inputs)
        rows = self._fisher_rows(cal.adapter, infos, samples)
        for names in block_chunks(cal.model, cal.adapter, block, cal.inputs, infos, self.budget, rows):
            fisher = block_fisher(cal.model, cal.adapter, block, cal.inputs, names, c.fisher_probes, seed=0)
            for name, f in fisher.items():
                self.roots.add(name, f, next(cal.model.parameters()).dtype)
