import pytest
import torch

from compress.toy.weights import load_toy_teacher


@pytest.fixture(scope="session", params=["pixart", "flux"])
def family(request):
    return request.param


@pytest.fixture(scope="session")
def teachers():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return {f: load_toy_teacher(f) for f in ("pixart", "flux")}
