"""compress.guided: classifier-free guidance of two predictions, the branch pairs of a pipeline's records
joined in one batch, and the relative distance of guided predictions."""

import pytest
import torch

from compress.guided import HeldOutGuidance, branch_pairs, guided, guided_predictions, relative_distance, same_inputs


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
