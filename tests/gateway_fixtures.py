"""pytest fixtures shared by the gateway tests (import them into a test module):

    gguf    the TinyStories GGUF in ../shared/models (a real file for local tiers)
    stack   an ExitStack closed after the test (servers, gateways, clients)
"""
from __future__ import annotations

import contextlib

import pytest


@pytest.fixture
def gguf(models):
    return str(models / "TinyStories-656K-Q8_0.gguf")


@pytest.fixture
def stack():
    with contextlib.ExitStack() as s:
        yield s
