"""Whether a distill checkpoint may be resumed (compress.passes.distill_resume)."""


def test_a_checkpoint_that_records_no_settings_says_what_may_differ():
    """An older dit-compress's meta.json has only the fingerprint and the process count."""
    from compress.passes.distill_resume import setting_changes

    assert setting_changes({"processes": 2}, {"lr": 1e-3}) == ("config, seed, block map, process count: 2, or "
                                                               "another incoming student; this checkpoint does not record which")
    then = {"lr": 1e-3, "seed": 0, "processes": 1, "block_map": {"blocks": [0, 1]}, "student": "a"}
    now = dict(then, seed=1, processes=2, block_map={"blocks": [0, 2]})
    assert setting_changes({"settings": then}, now) == ("block map; process count: 1 in the checkpoint, 2 now; "
                                                        "calibration.seed: 0 in the checkpoint, 1 now")
