"""compress.guided: classifier-free guidance of two predictions, the branch pairs of a pipeline's records
joined in one batch, and the relative distance of guided predictions."""

import pytest
import torch

from compress.guided import (CalibrationGuidance, HeldOutGuidance, branch_pairs, calibration_pairs, guided,
                             guided_predictions, relative_distance, same_inputs)


def test_guided_is_the_pipelines_combination():
    """uncond + s (cond − uncond): the toy pipeline's `guide` on [uncond; cond], scale 1 the prompt's branch."""
    from compress.toy.pipeline import guide

    g = torch.Generator().manual_seed(0)
    uncond, cond = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    torch.testing.assert_close(guided(uncond, cond, 1.0), cond)
    torch.testing.assert_close(guided(uncond, cond, 3.0), guide(torch.cat([uncond, cond]), 3.0))
    torch.testing.assert_close(guided(uncond, cond, 4.5), uncond + 4.5 * (cond - uncond))
    assert torch.equal(guided(torch.zeros(2), torch.ones(2), 3.0), torch.full((2,), 3.0))


def test_branch_pairs_of_records_joined_in_a_batch():
    """Records of 4 and 2 rows ([empty × k; prompt × k] each) joined: rows 0-1 and 4 are the empty prompt's,
    paired in order with 2-3 and 5."""
    uncond, cond = branch_pairs([4, 2])
    assert uncond.tolist() == [0, 1, 4] and cond.tolist() == [2, 3, 5]


def test_same_inputs_asks_one_input_per_pair_and_every_row_paired():
    latents, t = torch.randn(2, 4, 2, 2), torch.tensor([10, 20])
    batch = {"hidden_states": torch.cat([latents, latents]), "timestep": torch.cat([t, t])}
    uncond, cond = branch_pairs([4])
    assert same_inputs(batch, uncond, cond)
    assert not same_inputs(batch, *branch_pairs([2, 2]))  # rows 0 / 1 are two inputs
    assert not same_inputs(dict(batch, timestep=torch.tensor([10, 20, 10, 21])), uncond, cond)
    assert not same_inputs(batch, uncond[:1], cond[:1])  # rows left unpaired


def test_guided_predictions_pair_rows_or_forward_the_empty_prompts_batches():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(4, 3, generator=g)
    both = HeldOutGuidance(2.0, pairs=[branch_pairs([4])])
    torch.testing.assert_close(guided_predictions([pred], both, None)[0], pred[:2] + 2.0 * (pred[2:] - pred[:2]))
    empty = torch.randn(4, 3, generator=g)
    alone = HeldOutGuidance(3.0, unconditional=[{"rows": "empty"}])
    got = guided_predictions([pred], alone, lambda kw: empty if kw == {"rows": "empty"} else None)
    torch.testing.assert_close(got[0], empty + 3.0 * (pred - empty))


def test_relative_distance_over_all_batches():
    teacher = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]
    student = [torch.tensor([3.0, 1.0]), torch.tensor([[0.0, 4.0]])]
    assert relative_distance(student, teacher) == pytest.approx(1 / 5)
    assert relative_distance(teacher, teacher) == 0.0


def _two_branches(inputs: int = 3, seed: int = 0) -> dict:
    """A toy calibration batch's layout (inputs.interleave_branches): empty prompt, prompt, empty prompt, …"""
    g = torch.Generator().manual_seed(seed)
    latents, t = torch.randn(inputs, 4, 2, 2, generator=g), torch.arange(inputs) * 100
    text = torch.randn(inputs, 5, 8, generator=g)
    rows = torch.arange(inputs).repeat_interleave(2)  # (2n,)
    empty = torch.zeros(2 * inputs, 1, 1, dtype=torch.bool)
    empty[0::2] = True
    return {"hidden_states": latents[rows], "timestep": t[rows],
            "encoder_hidden_states": torch.where(empty, torch.zeros(()), text[rows])}


def test_calibration_pairs_find_each_inputs_two_branches_the_empty_prompts_first():
    """Interleaved (the toy source's) and [empty × k; prompt × k] (a pipeline record's) rows are paired; a
    batch where some input has one row, or three, has no pairs."""
    batch = _two_branches()
    uncond, cond = calibration_pairs(batch)
    assert uncond.tolist() == [0, 2, 4] and cond.tolist() == [1, 3, 5]
    record = {k: torch.cat([v[0::2], v[1::2]]) for k, v in batch.items()}
    uncond, cond = calibration_pairs(record)
    assert uncond.tolist() == [0, 1, 2] and cond.tolist() == [3, 4, 5]
    assert calibration_pairs({k: v[:5] for k, v in batch.items()}) is None  # input 2's prompt row cut off
    assert calibration_pairs({k: torch.cat([v, v[:1]]) for k, v in batch.items()}) is None  # input 0 thrice
    same_latents = dict(batch, timestep=torch.arange(6))  # one latent, but another timestep per row
    assert calibration_pairs(same_latents) is None


def test_calibration_guidance_guides_each_batchs_pairs_and_finds_the_layers_whose_input_a_pair_shares():
    batch = _two_branches()
    guide = CalibrationGuidance(3.0, [calibration_pairs(batch)])
    pred = torch.randn(6, 2)
    torch.testing.assert_close(guide.of(pred, 0), pred[0::2] + 3.0 * (pred[1::2] - pred[0::2]))
    timestep_only = batch["timestep"].float()[:, None].repeat(1, 4)  # (6, 4): the same in each pair
    text = batch["encoder_hidden_states"]  # (6, 5, 8): the empty prompt's and the prompt's
    assert guide.shared(timestep_only, 0) and not guide.shared(text, 0)
    assert not guide.shared(timestep_only[:4], 0)  # not this batch's rows
