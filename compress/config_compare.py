"""A model's config against its teacher's, as diffusers builds a model from each (`config_differences`):
the keys where they describe other models, the block counts aside (removed blocks). A key one config
leaves null and the other sets is no difference where the models the class builds from both hold the same
value under its name (Flux's and PixArt's `out_channels: null` is `in_channels`): an explicit value equal
to what the null resolves to makes the same model. For io_teacher_of.check_same_config (eval, bench, load_pipeline)
and report_teacher's check of a config edited in place since the run."""

from __future__ import annotations

import json

from compress.output_names import without_refusal

PLAIN = (bool, int, float, str)  # the values an attribute a config key sets is compared by


def config_differences(mine: dict, theirs: dict, class_name: str) -> list[tuple[str, object, object]]:
    """(key, theirs, mine) of each key where the diffusers configs `mine` (the model's) and `theirs` (its
    teacher's) differ as the class `class_name` builds models from them, sorted; keys starting with '_',
    the block counts, the compression section and an output's refusal of plain diffusers are not compared."""
    from compress.arch import get_adapter
    from compress.io import model_class, taken_keys

    counts = {g.config_key for g in get_adapter(class_name).groups}
    # keys the class does not take (an older PixArt repo's Transformer2DModel-only ones) describe nothing
    a, b = (_compared(taken_keys(model_class(class_name), c), counts) for c in (mine, theirs))
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    alike = built_alike([k for k in differ if a.get(k) is None or b.get(k) is None], (mine, theirs), class_name)
    return [(k, b.get(k), a.get(k)) for k in differ if k not in alike]


def shown_differences(differ: list[tuple[str, object, object]]) -> str:
    """'out_channels 7 (the model's: None), ...': the first three of `config_differences`, '…' after."""
    shown = ", ".join(f"{k} {theirs!r} (the model's: {mine!r})" for k, theirs, mine in differ[:3])
    return shown + (" …" if len(differ) > 3 else "")


def _compared(config: dict, counts: set[str]) -> dict:
    config = {k: v for k, v in without_refusal(config).items()
              if not k.startswith("_") and k not in counts and k != "compression"}
    return json.loads(json.dumps(config, default=str))  # tuples as lists, as a saved config


def built_alike(keys: list[str], configs: tuple[dict, dict], class_name: str) -> set[str]:
    """Those of `keys` (one config null there) for which the models of `class_name` built from both
    `configs` (on meta: no weights) hold the same plain value in the attribute of that name."""
    if not keys:
        return set()
    built = [built_values(c, class_name, keys) for c in configs]
    return {k for k in keys if k in built[0] and k in built[1] and built[0][k] == built[1][k]}


def built_values(config: dict, class_name: str, keys: list[str]) -> dict:
    """{key: the plain value the model `class_name` builds from `config` holds in the attribute of that
    name} for `keys`; {} where the config does not build one (the comparison stays by the config alone)."""
    from accelerate import init_empty_weights

    from compress.io import model_class, quiet_diffusers

    plain = {k: v for k, v in without_refusal(config).items() if not k.startswith("_") and k != "compression"}
    try:
        with init_empty_weights(), quiet_diffusers():
            model = model_class(class_name).from_config(plain)
    except Exception:  # noqa: BLE001 - a config that builds nothing is compared as written
        return {}
    return {k: v for k in keys if isinstance(v := model.__dict__.get(k), PLAIN)}
