"""Shared fixtures: tiny params for fast end-to-end runs, and a tiny teacher."""
import os
from pathlib import Path

import pytest
import yaml

from kdm import smoke

ROOT = Path(__file__).resolve().parents[1]


def shipped() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tiny_params() -> dict:
    """The shipped checkerboard experiment shrunk to seconds."""
    return smoke.tiny_checkerboard(shipped())


def tiny_digits(name: str = "digits-cond") -> dict:
    """A shipped digits experiment shrunk to seconds."""
    return smoke.tiny_digits(shipped(), name)


@pytest.fixture
def params():
    return tiny_params()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # the CLI's subprocesses: one thread each keeps runs comparable and the suite quick on 2 cores
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
