"""Interrupted work resumes: training from its checkpoint, pair sampling from its saved batches."""
import numpy as np
import pytest
import torch

from kdm.sampling import sample
from kdm.students import rec_loss
from kdm.models import build
from kdm.training import NonFiniteLoss, train_loop

OPTIM = dict(iterations=40, batch=32, lr=5e-3, lr_schedule="cosine", betas=[0.9, 0.999], ema=0.9, log_every=5,
             checkpoint_every=10, max_nonfinite_steps=5)


class Killed(Exception):
    pass


def fit(checkpoint=None, die_at=None):
    net = build("kdm", dict(data_shape=[2], net={"kind": "mlp", "hidden": 16, "layers": 3}, latent_dim=8, x_T_scale=80.0),
                seed=1)
    calls = {"n": 0}

    def batch(gen):
        calls["n"] += 1
        if calls["n"] == die_at:
            raise Killed
        x_T = 80 * torch.randn(32, 2, generator=gen)
        return net.losses(torch.tanh(x_T / 40), x_T, gen, latent_noise=0.4, rec=rec_loss({"kind": "l2"}))

    return train_loop(net, batch, {}, OPTIM, seed=7, checkpoint=checkpoint, run_id="run-a")


@pytest.mark.parametrize("die_at", [5, 17, 33])
def test_resumed_training_ends_bitwise_equal(tmp_path, die_at):
    ref, ref_rows = fit()
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        fit(ckpt, die_at=die_at)
    assert ckpt.is_file() == (die_at > 10)
    got, rows = fit(ckpt)
    for (k, a), b in zip(ref.state_dict().items(), got.state_dict().values()):
        assert torch.equal(a, b), k
    assert rows == ref_rows


def test_checkpoint_of_another_run_is_ignored(tmp_path, caplog):
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        fit(ckpt, die_at=25)
    state = torch.load(ckpt, weights_only=True)
    state["run_id"] = "other-params"
    torch.save(state, ckpt)
    ref, _ = fit()
    got, _ = fit(ckpt)
    assert "made with other params" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), got.state_dict().values()))


def test_truncated_checkpoint_is_ignored(tmp_path, caplog):
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(b"PK\x03\x04 truncated")
    fit(ckpt)
    assert "ignoring unreadable checkpoint" in caplog.text


def test_persistent_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    net = torch.nn.Linear(2, 1)
    calls = {"n": 0}

    def batch(gen):
        calls["n"] += 1
        scale = float("nan") if calls["n"] > 23 else 1.0
        return {"l2": (net(torch.randn(4, 2, generator=gen)) ** 2).mean() * scale}

    ckpt = tmp_path / "checkpoint.pt"
    # NaN from iteration 24: the 5th at 28, read at the checkpoint step 30 (the count stays on the device
    # between log and checkpoint steps), which is not written
    with pytest.raises(NonFiniteLoss, match=r"non-finite for 7 consecutive steps \(seen at iteration 30;.*checkpoint.pt"):
        train_loop(net, batch, {}, OPTIM, seed=0, checkpoint=ckpt, run_id="x")
    assert torch.load(ckpt, weights_only=True)["iteration"] == 20


def test_a_nonfinite_run_between_two_reads_still_stops():
    """Five NaN losses at iterations 12-16, finite again when log step 21 reads the count: the longest run counts."""
    net = torch.nn.Linear(2, 1)
    calls = {"n": 0}

    def batch(gen):
        calls["n"] += 1
        scale = float("nan") if 12 <= calls["n"] <= 16 else 1.0
        return {"l2": (net(torch.randn(4, 2, generator=gen)) ** 2).mean() * scale}

    with pytest.raises(NonFiniteLoss, match=r"non-finite for 5 consecutive steps \(seen at iteration 21;"):
        train_loop(net, batch, {}, {**OPTIM, "log_every": 10}, seed=0)


class DyingNet(torch.nn.Module):
    """A teacher stand-in whose process 'dies' on its n-th call."""
    data_shape, label_dim = (2,), 0

    def __init__(self, die_at=None):
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        torch.nn.init.eye_(self.lin.weight)
        torch.nn.init.zeros_(self.lin.bias)
        self.calls, self.die_at = 0, die_at

    def forward(self, x, sigma, labels=None):
        self.calls += 1
        if self.calls == self.die_at:
            raise Killed
        return 0.5 * self.lin(x) / (1 + sigma[:, None])


def test_resumed_pair_sampling_is_byte_identical(tmp_path):
    seeds = np.arange(50, 150)
    sampler = {"steps": 4, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
    ref = sample(DyingNet(), seeds, sampler, batch=16, desc="ref")
    partial = tmp_path / "shard-0.partial"
    with pytest.raises(Killed):
        sample(DyingNet(die_at=7 * 4), seeds, sampler, batch=16, desc="a", partial=partial, run_id="r")
    assert len(list(partial.glob("[0-9]*.npy"))) == 3          # batches 0..2 finished (7 calls each)
    net = DyingNet()
    got = sample(net, seeds, sampler, batch=16, desc="b", partial=partial, run_id="r")
    assert got["x0"].tobytes() == ref["x0"].tobytes()
    assert net.calls == 7 * (7 - 3)                             # only the 4 missing batches were sampled
    other = sample(DyingNet(), seeds, sampler, batch=16, desc="c", partial=partial, run_id="other")
    assert other["x0"].tobytes() == ref["x0"].tobytes() and len(list(partial.glob("[0-9]*.npy"))) == 7


def test_resume_directory_must_be_a_partial_dir(tmp_path):
    with pytest.raises(ValueError, match="must be named"):
        sample(DyingNet(), np.arange(4), {"steps": 2, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0},
               batch=4, desc="x", partial=tmp_path, run_id="r")
