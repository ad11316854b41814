"""Kernel tests: CPU Triton interpreter without a GPU (see _env.py for when that runs in-process)."""

import pytest

from tests.kernels._env import DEVICE


@pytest.fixture
def device() -> str:
    return DEVICE
