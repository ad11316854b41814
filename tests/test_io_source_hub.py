"""Hub teachers checked before anything loads: a Hub id's family from its config alone (fetched, or
read from the Hugging Face cache; a transformer-only repo's root config), refused offline when known,
and an owner/name read as a path (moved from tests/test_io_source.py)."""

import pytest

from compress.errors import UserError
from compress.io_source_recipe import checked_sources
from tests.conftest import tiny_flux, tiny_pixart
from tests.test_io_source import _recipe


def _no_hub(monkeypatch):
    import huggingface_hub

    import compress.io

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail(f"fetched {a} {k}"))
    monkeypatch.setattr(compress.io, "_load_hub", lambda *a: pytest.fail("loaded the weights"))


def test_a_known_hub_teacher_of_another_family_is_refused_offline(tmp_path, monkeypatch):
    _no_hub(monkeypatch)
    recipe = _recipe(tmp_path, model="pixart")
    with pytest.raises(UserError, match=r"r.yaml:1: model is 'pixart' but the teacher black-forest-labs/FLUX.1-dev "
                                        r"\(--teacher\) is a FluxTransformer2DModel \(flux\)"):
        checked_sources(recipe, teacher="black-forest-labs/FLUX.1-dev")


def test_a_hub_teacher_is_checked_by_its_config_alone(tmp_path, monkeypatch):
    """Run's check fetches transformer/config.json of an unknown Hub id, never its weights; plan
    fetches nothing."""
    import huggingface_hub

    tiny_flux().save_config(tmp_path / "cfg")
    fetched = []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda repo, name, subfolder=None: fetched.append((repo, subfolder, name))
                        or str(tmp_path / "cfg" / "config.json"))
    recipe = _recipe(tmp_path / "r", teacher="org/model")
    with pytest.raises(UserError, match="model is 'pixart' but the teacher org/model is a FluxTransformer2DModel"):
        checked_sources(recipe)
    assert fetched == [("org/model", "transformer", "config.json")]
    with pytest.raises(UserError, match=r"cannot find a config for teacher 'org/model' without the Hugging Face Hub, "
                                         r"which plan does not ask: plan reads [^()]*--teacher-config"):
        checked_sources(recipe, hub=False)  # HF_HUB_OFFLINE unset: plan said 'offline'
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"cannot find a config for teacher 'org/model' offline \(HF_HUB_OFFLINE\): "
                                         r"plan reads [^()]*--teacher-config"):  # one parenthesis, not two
        checked_sources(recipe, hub=False)
    assert len(fetched) == 1


def test_eval_and_bench_refuse_a_hub_teacher_of_another_family_before_its_weights(monkeypatch):
    from compress.io_teacher_of import load_teacher_of

    _no_hub(monkeypatch)
    with pytest.raises(UserError, match="teacher black-forest-labs/FLUX.1-dev is a FluxTransformer2DModel; the model "
                                        "to compare with it is a PixArtTransformer2DModel"):
        load_teacher_of(tiny_pixart(), "black-forest-labs/FLUX.1-dev")


def test_a_transformer_only_hub_teacher_is_checked_by_its_root_config(tmp_path, monkeypatch):
    """A Hub repo holding a transformer alone (config.json at its root, as fine-tunes are shared):
    run's check read transformer/config.json only and said it cannot fetch it."""
    from huggingface_hub.utils import httpx  # the hub's HTTP library (httpx2 in hub 2)
    import huggingface_hub
    from huggingface_hub.errors import RemoteEntryNotFoundError

    tiny_flux().save_config(tmp_path / "cfg")
    fetched = []

    def fetch(repo, name, subfolder=None):
        fetched.append((subfolder, name))
        if subfolder:
            response = httpx.Response(404, request=httpx.Request("HEAD", f"https://huggingface.co/{repo}"))
            raise RemoteEntryNotFoundError("404", response=response)
        return str(tmp_path / "cfg" / "config.json")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fetch)
    with pytest.raises(UserError, match="model is 'pixart' but the teacher org/fine-tune is a FluxTransformer2DModel"):
        checked_sources(_recipe(tmp_path / "r", teacher="org/fine-tune"))
    assert fetched == [("transformer", "config.json"), (None, "config.json")]


def test_plan_reads_a_hub_teachers_config_from_the_cache(tmp_path, monkeypatch):
    """plan (hub=False) said 'cannot find a config for teacher … offline' of a repo the Hugging
    Face cache holds; it reads the cached config.json (transformer/'s, or a transformer-only
    repo's root one), and asks the Hub nothing."""
    import huggingface_hub

    from tests.pipelines import hub_cache

    tiny_flux().save_config(tmp_path / "only")
    (tmp_path / "pipe" / "transformer").mkdir(parents=True)
    tiny_flux().save_config(tmp_path / "pipe" / "transformer")
    for repo, folder in (("acme/only", "only"), ("acme/pipe", "pipe")):
        hub_cache(tmp_path / "hub", repo, tmp_path / folder)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _no_hub(monkeypatch)
    for repo in ("acme/only", "acme/pipe"):
        with pytest.raises(UserError, match=f"model is 'pixart' but the teacher {repo} is a FluxTransformer2DModel"):
            checked_sources(_recipe(tmp_path / "r", teacher=repo), hub=False)
    with pytest.raises(UserError, match=rf"(offline \(HF_HUB_OFFLINE\)|which plan does not ask): plan reads the configs "
                                        rf"of local teachers, of Hub ids in the Hugging Face cache {tmp_path}/hub and of "):
        checked_sources(_recipe(tmp_path / "r", teacher="acme/other"), hub=False)


def test_an_owner_name_read_as_a_path_because_the_owner_is_a_folder_here_says_so(tmp_path, monkeypatch):
    """With ./acme/ in the current folder, acme/pix is a path: 'teacher not found' said only the
    path looked for, not why the Hub id was not used nor how to mean it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "acme").mkdir()
    with pytest.raises(UserError) as e:
        checked_sources(_recipe(tmp_path / "r", teacher="acme/pix"), teacher="acme/pix")
    assert str(e.value) == (f"--teacher: teacher not found: acme/pix (there is no {tmp_path}/acme/pix; it is read as a path, "
                            f"not as the Hugging Face id acme/pix, because {tmp_path}/acme/ is a folder here: to "
                            "mean the Hub id, run from another folder or rename that one)")
