"""Shared fixtures: tiny params for fast end-to-end runs, and a tiny teacher."""
import os

import pytest

from workspace import ROOT, shipped, tiny  # noqa: F401  (ROOT and shipped: for the tests)


def tiny_params() -> dict:
    """The shipped checkerboard experiment shrunk to seconds."""
    return tiny("checkerboard")


def tiny_digits(name: str = "digits-cond") -> dict:
    """A shipped digits experiment shrunk to seconds."""
    return tiny(name)


def both_kinds() -> dict:
    """The tiny checkerboard and conditional digits experiments together: a vector and an image experiment."""
    p, d = tiny_params(), tiny_digits("digits-cond")
    return {"experiments": p["experiments"] + d["experiments"], **{k: v for k, v in (p | d).items() if k != "experiments"}}


@pytest.fixture
def params():
    return tiny_params()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    # the CLI's subprocesses: one thread each keeps runs comparable and the suite quick on 2 cores
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory) -> str:
    """A weights file for torch-fidelity's inception-v3-compat holding random weights of the same network (the
    real ones cannot be fetched offline): the numbers are meaningless, the code path is the real one."""
    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as inception
    with pytest.MonkeyPatch.context() as m:      # build the network once without any weights to save its shape
        m.setattr(inception, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("weights") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return str(path)
