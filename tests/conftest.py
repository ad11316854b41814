"""Tiny random configs of the real diffusers classes, and inputs for them."""

from __future__ import annotations

import contextlib
import functools
import logging

import pytest
import torch
from diffusers import FluxTransformer2DModel, PixArtTransformer2DModel

from tests import hub_server  # before any test patches huggingface_hub: it keeps the real calls

PIXART_TINY = dict(sample_size=4, num_layers=3, num_attention_heads=2, attention_head_dim=8,
                   in_channels=4, out_channels=8, cross_attention_dim=16, caption_channels=12,
                   patch_size=1, norm_type="ada_norm_single", use_additional_conditions=False)
FLUX_TINY = dict(patch_size=1, in_channels=8, num_layers=2, num_single_layers=3,
                 attention_head_dim=8, num_attention_heads=2, joint_attention_dim=12,
                 pooled_projection_dim=10, guidance_embeds=True, axes_dims_rope=(2, 2, 4))


@pytest.fixture(autouse=True)
def _the_hub_answers(monkeypatch):
    """Tests fake the Hub's downloads; its reachability check (io_hub.hub_head, one request before a
    Hub id is fetched) answers too, as on a machine with a network, naming no commit (the cache's is
    then not taken as the Hub's); a test of no network replaces it. No test reaches the real Hub."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *a, **k: object())


@pytest.fixture(autouse=True)
def _hub_answers_forgotten(monkeypatch):
    """What io_hub_requests remembers of the Hub (hub_head's answers, the file lists asked, those
    lost) starts empty in each test, as in a new process, and the test's are forgotten after it: a
    test that wants a process's memory sets it, or asks twice."""
    import compress.io_hub_requests as io_hub_requests

    for memory in ("_HEADS", "_LISTS", "_LOST"):
        monkeypatch.setattr(io_hub_requests, memory, {})


@pytest.fixture(autouse=True)
def _sigterm_acted_on():
    """SIGTERM's default action in this process while a test runs (restored after), and so in the
    children it starts, as a terminal's command has it: a launcher may start the tests with it ignored
    (SIG_IGN, which the runner keeps, as it should), and then the SIGTERM a test sends would be ignored.
    A test that wants it ignored ignores it itself."""
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.fixture
def hanging_hub(monkeypatch):
    """A Hub on 127.0.0.1 that answers HEADs and holds every other request (tests/hub_server.py);
    yields the requests it saw."""
    yield from hub_server.hanging_hub(monkeypatch)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """$HOME in tmp_path/home, the current folder tmp_path/cwd (where a literal `~` folder would appear)."""
    (tmp_path / "home").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "cwd")
    return tmp_path / "home"


@pytest.fixture
def pixart(tmp_path, monkeypatch):
    """runner_helpers.pixart_runner's (tmp_path, a Runner factory, teacher loads): the tiny PixArt
    teacher in tmp_path/teacher, RECIPE in tmp_path/r.yaml."""
    from tests.runner_helpers import pixart_runner

    return pixart_runner(tmp_path, monkeypatch)


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """diffusers zero-inits some layers (adaLN, proj_out); fill everything so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def tiny_pixart(seed: int = 0, **overrides) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    return _randomize(PixArtTransformer2DModel(**{**PIXART_TINY, **overrides}), seed)


def tiny_flux(seed: int = 0, **overrides) -> FluxTransformer2DModel:
    torch.manual_seed(seed)
    return _randomize(FluxTransformer2DModel(**{**FLUX_TINY, **overrides}), seed)


def pixart_inputs(model, batch: int = 2, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    c, s = model.config.in_channels, model.config.sample_size
    return dict(
        hidden_states=torch.randn(batch, c, s, s, generator=g),  # (B, C, H, W)
        encoder_hidden_states=torch.randn(batch, 5, model.config.caption_channels, generator=g),
        encoder_attention_mask=torch.ones(batch, 5),
        timestep=torch.tensor([10, 500][:batch] + [900] * max(0, batch - 2)),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


def flux_inputs(model, batch: int = 2, seed: int = 0, side: int = 4, text: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    n = side * side
    img_ids = torch.zeros(n, 3)
    img_ids[:, 1] = torch.arange(n) // side
    img_ids[:, 2] = torch.arange(n) % side
    return dict(
        hidden_states=torch.randn(batch, n, cfg.in_channels, generator=g),  # (B, N, C)
        encoder_hidden_states=torch.randn(batch, text, cfg.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g),
        timestep=torch.rand(batch, generator=g),
        img_ids=img_ids, txt_ids=torch.zeros(text, 3),
        guidance=torch.full((batch,), 3.5),
    )


def model_inputs(model, **kw) -> dict:
    return (pixart_inputs if type(model).__name__.startswith("PixArt") else flux_inputs)(model, **kw)


def factorize(model, names, rank: int):
    """Swap the named linears for LowRankLinear with plain-SVD factors of rank ≤ `rank`."""
    from compress.lowrank import LowRankLinear

    for name in names:
        lin = model.get_submodule(name)
        u, s, vh = torch.linalg.svd(lin.weight.detach(), full_matrices=False)
        r = min(rank, s.numel())
        model.set_submodule(name, LowRankLinear.from_factors(u[:, :r] * s[:r], vh[:r], lin.bias))
    return model


def forward(model, inputs: dict) -> torch.Tensor:
    """The model's prediction on `inputs`, without autograd."""
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


@contextlib.contextmanager
def diffusers_log():
    """What diffusers logs (at its verbosity) while in the block. Its handler writes to the sys.stderr
    of its import, which capsys and capfd do not see under pytest: a test of no diffusers warning
    through them passes whatever diffusers says (caplog sees it from pytest 9.1 on, non-propagating loggers too)."""
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    try:
        yield logged
    finally:
        logger.removeHandler(handler)


@pytest.fixture(params=["pixart", "flux"])
def tiny_model(request):
    return tiny_pixart() if request.param == "pixart" else tiny_flux()


@pytest.fixture
def one_thread():
    """One torch thread: on a shared 2-core machine two threads fight over tiny matmuls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def exact_gpu_float32(monkeypatch):
    """CUDA float32 matmuls and convolutions without TF32 (cuDNN allows it for convolutions by
    default: PixArt's patch embedding), and diffusers' sinusoidal timestep (and Flux guidance)
    embedding computed on the CPU whatever the device, so a GPU run compares with the CPU's at float
    tolerance. That embedding's float32 exp and sin/cos (arguments up to 1000; Flux's guidance 3.5:
    3500) are within an ulp or two on either device but not bit-equal, and an ulp in its frequencies
    moves the tiny models' compensated factors by up to 150x the GPU tests' tolerance (measured on
    the CPU, where float32 vs float64 forwards move a held-out error by 1e-7 and that ulp by up to
    7e-4): noise of the embedding in float32, not of a device path, and larger than what the
    comparison is there to catch."""
    import diffusers.models.embeddings as embeddings

    monkeypatch.setattr(embeddings, "get_timestep_embedding", on_the_cpu(embeddings.get_timestep_embedding))
    matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, conv


def on_the_cpu(embedding):
    """`embedding(timesteps, ...)` computed from the timesteps on the CPU, returned on their device."""
    @functools.wraps(embedding)
    def wrapped(timesteps, *args, **kwargs):
        return embedding(timesteps.cpu(), *args, **kwargs).to(timesteps.device)
    return wrapped


@pytest.fixture
def ctrl_c_raises():
    """SIGINT raising KeyboardInterrupt, as in a terminal, for a test that sends itself one: a background
    job (a CI under nohup) starts with SIGINT ignored, where os.kill(SIGINT) would do nothing."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)
