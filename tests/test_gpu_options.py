"""Speed options on the CPU: bf16 autocast, channels-last, torch.compile (whole networks or UNet blocks), bf16
pairs and EDM's use_fp16, and the params that set them."""
import math
import time

import numpy as np
import pytest
import torch

from kdm import config, teachers
from kdm.sampling import pairs_meta, sample
from kdm.students import Adversary, rec_loss
from kdm.device import rank_batch
from kdm.models import build, load_model, save_model
from kdm.training import train_loop

from conftest import tiny_digits

# no dropout: in channels-last layout the same random draws fill other mask entries, making another run
UNET = {"kind": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
        "dropout": 0.0}
OPTIM = dict(iterations=6, batch=8, lr=1e-3, lr_schedule="constant", betas=[0.9, 0.99], ema=0.9, log_every=1,
             checkpoint_every=3)


def fit(tmp_path=None, **options):
    """A tiny KDM UNet with the adversary and pseudo-Huber loss, a few steps: (EMA, rows, discriminator)."""
    kwargs = dict(data_shape=[1, 8, 8], net=UNET, latent_dim=32, x_T_scale=80.0, latent_channels=1)
    net = build("kdm", kwargs, seed=3)
    adv = Adversary(1, 8, [8, 16], 1e-3, [0.9, 0.99], seed=4)
    rec = rec_loss({"kind": "pseudo_huber", "c": 0.03})

    def batch(gen):
        x_T = 80 * torch.randn(8, 1, 8, 8, generator=gen)
        return net.losses(torch.tanh(x_T / 40), x_T, gen, latent_noise=0.4, rec=rec, adversary=adv)

    ckpt = tmp_path / "checkpoint.pt" if tmp_path else None
    ema, rows = train_loop(net, batch, {"adv": 0.01}, {**OPTIM, **options}, seed=5, checkpoint=ckpt, run_id="r",
                           companions={"adversary": adv})
    if tmp_path:
        save_model(tmp_path / "model.pt", "kdm", kwargs, ema, (1, 8, 8))
    return ema, rows, adv


def assert_close_run(rows, ref, first: float, later: float):
    """Logged losses against a reference run's: the first step (same weights) within `first`, relative; later
    steps within `later` (Adam's normalised steps make tiny differences in near-zero gradients whole steps)."""
    assert len(rows) == len(ref)
    assert rows[0]["loss"] == pytest.approx(ref[0]["loss"], rel=first)
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in ref], rel=later)


@pytest.fixture(scope="module")
def fp32():
    return fit()


def test_bf16_losses_are_finite_and_close_to_fp32(fp32, tmp_path):
    ema, rows, adv = fit(tmp_path, precision="bf16", iterations=7)      # ends past a checkpoint: it stays
    ref_rows = fp32[1]
    assert all(math.isfinite(v) for row in rows for v in row.values())
    assert_close_run(rows[:6], ref_rows, first=0.02, later=0.05)
    # master weights, EMA, optimiser state and the discriminator stay fp32
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    tensors = [*state["model"].values(), *state["ema"].values(), *state["companions"]["adversary"]["disc"].values()]
    tensors += [t for s in state["opt"]["state"].values() for t in s.values() if t.is_floating_point()]
    assert {t.dtype for t in tensors if t.is_floating_point()} == {torch.float32}
    loaded = load_model(tmp_path / "model.pt")                          # on the CPU, no autocast needed
    assert loaded(torch.randn(2, 1, 8, 8)).dtype == torch.float32


def test_channels_last_is_harmless(fp32, tmp_path):
    ema, rows, adv = fit(tmp_path, channels_last=True)
    assert all(p.is_contiguous() for p in ema.state_dict().values())      # saved in the usual layout
    assert_close_run(rows, fp32[1], first=1e-5, later=1e-2)
    assert adv.disc.body[0].weight.is_contiguous(memory_format=torch.channels_last)
    load_model(tmp_path / "model.pt")


def _compile_works() -> str | None:
    try:
        torch.compile(lambda x: x.sin() + 1)(torch.ones(2))
    except Exception as e:  # noqa: BLE001 - no compiler, unsupported platform, ...
        return f"{type(e).__name__}: {e}"
    return None


def test_compile_keeps_plain_state_dicts(tmp_path):
    why = _compile_works()
    if why:
        pytest.skip(f"torch.compile does not work here ({why[:200]})")
    kwargs = dict(data_shape=[2], net={"kind": "mlp", "hidden": 16, "layers": 3}, latent_dim=8, x_T_scale=80.0)
    results = {}
    for compiled in (False, True):
        net = build("kdm", kwargs, seed=1)

        def batch(gen, net=net):
            x_T = 80 * torch.randn(16, 2, generator=gen)
            return net.losses(torch.tanh(x_T / 40), x_T, gen, latent_noise=0.4, rec=rec_loss({"kind": "l2"}))

        ckpt = tmp_path / f"checkpoint-{compiled}.pt"
        started = time.perf_counter()
        ema, rows = train_loop(net, batch, {}, {**OPTIM, "iterations": 3, "checkpoint_every": 2, "compile": compiled},
                               seed=7, checkpoint=ckpt, run_id="r")
        results[compiled] = ema, rows, time.perf_counter() - started
        state = torch.load(ckpt, weights_only=True)
        assert not [k for k in [*state["model"], *state["ema"]] if "_orig_mod" in k]
        save_model(tmp_path / "model.pt", "kdm", kwargs, ema, (2,))
        load_model(tmp_path / "model.pt")                                   # a fresh, eager module on the CPU
    assert list(results[True][0].state_dict()) == list(results[False][0].state_dict())
    assert_close_run(results[True][1], results[False][1], first=1e-5, later=1e-2)
    print(f"compile: {results[True][2]:.1f} s for 3 steps (eager {results[False][2]:.2f} s)")


def test_per_rank_batch_must_divide(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert rank_batch(96, "kdm.batch") == 32
    with pytest.raises(ValueError, match=r"kdm\.batch: 64 is not divisible by the 3 training processes"):
        rank_batch(64, "kdm.batch")


def test_options_in_params():
    p = tiny_digits()
    exp = p["digits-cond"]
    exp["kdm"].update(precision="bf16", channels_last=True, compile=True, gpus=2)
    exp["kd"].update(compile="blocks", compile_mode="reduce-overhead")
    exp["teacher"].update(precision="fp32", gpus=4)
    exp["pairs"]["precision"] = "bf16"
    config.validate(p)
    for key, bad in [("compile", "regions"), ("compile_mode", "fast")]:
        with pytest.raises(config.ParamsError, match=rf"digits-cond\.kd\.{key}: got '{bad}'"):
            config.validate({**p, "digits-cond": {**exp, "kd": {**exp["kd"], key: bad}}})
    with pytest.raises(config.ParamsError, match=r"digits-cond\.pairs\.precision: got 'fp16'"):
        config.validate({**p, "digits-cond": {**exp, "pairs": {**exp["pairs"], "precision": "fp16"}}})
    exp["kd"]["gpus"] = 3
    with pytest.raises(config.ParamsError, match=r"digits-cond\.kd\.gpus: 3 does not divide digits-cond\.kd\.batch"):
        config.validate(p)
    exp["kd"].update(gpus=1, precision="fp16")
    with pytest.raises(config.ParamsError, match=r"digits-cond\.kd\.precision: got 'fp16'"):
        config.validate(p)
    del exp["kd"]["precision"]
    exp["classifier"]["gpus"] = 2          # the classifier trains in one process
    with pytest.raises(config.ParamsError, match=r"classifier.*gpus"):
        config.validate(p)


def test_compile_blocks_compiles_each_unet_block(fp32, monkeypatch):
    why = _compile_works()
    if why:
        pytest.skip(f"torch.compile does not work here ({why[:200]})")
    compiled, plain = [], torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self) or plain(self, *a, **k))
    ema, rows, adv = fit(compile="blocks")
    assert {type(m).__name__ for m in compiled} == {"CompactBlock"} and len(compiled) == 3 * 6    # 6 per UNet
    assert_close_run(rows, fp32[1], first=1e-5, later=1e-2)
    assert not [k for k in ema.state_dict() if "_orig_mod" in k]


def test_bf16_pairs_are_close_to_fp32_and_recorded(tmp_path):
    kwargs = dict(data_shape=[1, 8, 8], net=UNET, sigma_data=0.5)
    net = build("teacher", kwargs, seed=0).eval().requires_grad_(False)
    net.data_shape = (1, 8, 8)
    sampler = {"steps": 4, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
    ref, got = (sample(net, np.arange(4), sampler, 4, "pairs", precision=p)["x0"] for p in ("fp32", "bf16"))
    assert not np.array_equal(ref, got) and np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
    save_model(tmp_path / "model.pt", "teacher", kwargs, net, (1, 8, 8))
    P = {"sampler": sampler, "pairs": {"batch": 4}}
    assert "precision" not in pairs_meta(tmp_path / "model.pt", P, net)           # fp32 pair sets: meta as before
    assert pairs_meta(tmp_path / "model.pt", {**P, "pairs": {"batch": 4, "precision": "bf16"}}, net)["precision"] == "bf16"


def test_edm_pickles_use_fp16_is_kept_only_when_set():
    init = dict(img_resolution=8, img_channels=1, model_type="SongUNet", model_channels=16)
    assert teachers.edm_teacher_kwargs("EDMPrecond", {**init, "use_fp16": True})["use_fp16"] is True
    assert "use_fp16" not in teachers.edm_teacher_kwargs("EDMPrecond", {**init, "use_fp16": False})
    net = build("teacher", dict(data_shape=[1, 8, 8], net=UNET, sigma_data=0.5, use_fp16=True), seed=0)
    assert net(torch.randn(2, 1, 8, 8), torch.ones(2)).dtype == torch.float32       # float32 on the CPU
