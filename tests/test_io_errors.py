"""io_errors: why a teacher's weights did not load, in one line."""

from __future__ import annotations

import pytest

from compress import load_teacher
from compress.errors import UserError
from tests.conftest import tiny_pixart
from tests.test_io_hub_snapshots import MAIN, _as_blobs, _cached_pipeline


@pytest.mark.parametrize("shard", [None, "10KB"])
def test_a_snapshot_folder_whose_weights_link_to_a_gone_blob_says_so_and_how_to_mend_it(tmp_path, shard):
    """A cache's snapshot folder given as a local teacher, its weights a link to a removed blob: 'is
    not a readable safetensors file (No such file or directory …); it may be truncated or corrupted'
    after diffusers' 'Error no file named …' log line, or for a shard 'lists 1 shard(s) not in …
    (an incomplete download?)'. Now the link, what is gone and the hf download that fetches it again."""
    folder, said = gone_blob(tmp_path, shard)
    with pytest.raises(UserError) as e:
        load_teacher(str(folder))
    assert str(e.value) == said


def gone_blob(tmp_path, shard: str | None) -> tuple:
    """(the transformer folder of a cached snapshot of acme/pix whose first weight file (or shard, at
    `shard` max_shard_size) links to a removed blob, the words broken_weights says of it)."""
    repo = _cached_pipeline(tmp_path, tiny_pixart(), **({"max_shard_size": shard} if shard else {}))
    _as_blobs(repo)
    folder = repo / "snapshots" / MAIN / "transformer"
    name = sorted(f.name for f in folder.glob("diffusion_pytorch_model*.safetensors"))[0]
    blob = (folder / name).resolve()
    blob.unlink()
    return folder, (f"{folder / name} links to ../../../blobs/{blob.name}, which is gone; download it again "
                    f"online (hf download acme/pix transformer/{name} --revision {MAIN})")


def test_a_link_to_a_gone_file_outside_the_cache_is_to_be_copied_again(tmp_path):
    tiny_pixart().save_pretrained(tmp_path / "t")
    weights = tmp_path / "t" / "diffusion_pytorch_model.safetensors"
    weights.rename(tmp_path / "elsewhere.safetensors")
    weights.symlink_to(tmp_path / "moved.safetensors")
    with pytest.raises(UserError, match=rf"^{weights} links to {tmp_path / 'moved.safetensors'}, which is gone; "
                                        "copy it again$"):
        load_teacher(str(tmp_path / "t"))


@pytest.mark.parametrize("variant", [None, "fp16"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_stale_index_beside_a_whole_weight_file_is_said_stale_not_an_incomplete_download(tmp_path, variant, stream):
    """save_pretrained of an unsharded model into a folder of shards deletes the shards and leaves the
    index (diffusers' from_pretrained fails on that folder too): '… lists 3 shard(s) not in …: …
    (an incomplete download?)'. Now it says the index is stale beside the whole file, and to remove it."""
    from compress.stream_files import weight_map

    folder = tmp_path / "t"
    tiny_pixart(1).save_pretrained(folder, max_shard_size="40KB", variant=variant)
    tiny_pixart(0).save_pretrained(folder, variant=variant)
    index = next(folder.glob("*.index*.json"))
    whole = "diffusion_pytorch_model" + (f".{variant}" if variant else "") + ".safetensors"
    assert (folder / whole).is_file() and not list(folder.glob("*-of-*"))
    with pytest.raises(UserError) as e:
        weight_map(folder) if stream else load_teacher(str(folder))
    assert str(e.value).endswith(f": a stale index beside the whole weight file {whole}: remove {index.name}")
    assert str(e.value).startswith(f"{index} lists 3 shard(s) not in {folder}: ")
