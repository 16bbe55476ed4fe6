"""The image setting: digits data, UNet students (conditional, projected latent, adversarial term),
conditional pairs, the evaluator's extractors."""
import numpy as np
import pytest
import torch

from edm_generate import edm_generate_latents
from conftest import tiny_digits
from workspace import TINY_UNET
from kdm import dag
from kdm.datasets import Digits
from kdm.nets import Discriminator, make_net
from kdm.students import Adversary, KoopmanStudent, OneStepStudent, rec_loss
from kdm.models import build, load_model, save_model
from kdm.pairset import open_pairset, write_pairset
from kdm.training import student_setup, train_loop

SHAPE = (1, 8, 8)
HUBER = rec_loss({"kind": "pseudo_huber", "c": 0.03})


def test_digits_are_real_scaled_and_split():
    d = Digits(conditional=True)
    assert d.x.shape == (1797, 1, 8, 8) and d.x.min() == -1 and d.x.max() == 1
    assert d.label_dim == 10 and set(d.y.tolist()) == set(range(10))
    x, y = d.sample(64, torch.Generator().manual_seed(0))
    assert x.shape == (64, 1, 8, 8) and y.shape == (64,)
    assert Digits(conditional=False).sample(4, torch.Generator().manual_seed(0))[1] is None
    train, held = d.split(0.2, seed=0)
    assert len(held) == 359 and len(train) + len(held) == 1797 and not set(train) & set(held)
    assert np.array_equal(d.split(0.2, seed=0)[1], held) and not np.array_equal(d.split(0.2, seed=1)[1], held)


@pytest.mark.parametrize("spec,out", [(TINY_UNET, (3, 8, 8)), ({"kind": "mlp", "hidden": 16, "layers": 2}, (5,))])
def test_make_net_shapes_and_label_path(spec, out):
    torch.manual_seed(0)
    net = make_net(spec, SHAPE, out, label_dim=10, t=0.0).eval()
    x = torch.randn(2, *SHAPE)
    y = torch.nn.functional.one_hot(torch.tensor([1, 1]), 10).float()
    y2 = torch.nn.functional.one_hot(torch.tensor([1, 2]), 10).float()
    with torch.no_grad():
        a, b = net(x, y), net(x, y2)
    assert a.shape == (2,) + out
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])


def test_discriminator_reaches_one_logit():
    d = Discriminator(1, 8, (8, 16, 32))
    assert d(torch.randn(5, 1, 8, 8)).shape == (5,)
    with pytest.raises(ValueError, match="do not fit a 8x8"):
        Discriminator(1, 8, (8, 16, 32, 64))


def test_discriminator_patch_head_gives_one_logit_per_window():
    """The authors' head, a 4x4 conv without padding: one logit at 32x32, 5x5 at 64x64; at 32x32 it has the
    linear head's parameter count (the same function class)."""
    patch, linear = Discriminator(3, 32, (8, 16, 32), head="patch"), Discriminator(3, 32, (8, 16, 32))
    assert patch(torch.randn(2, 3, 32, 32)).shape == (2,)
    assert sum(p.numel() for p in patch.parameters()) == sum(p.numel() for p in linear.parameters())
    assert Discriminator(3, 64, (8, 16, 32), head="patch")(torch.randn(2, 3, 64, 64)).shape == (2, 25)
    with pytest.raises(ValueError, match="do not fit a 16x16 image with the patch head"):
        Discriminator(3, 16, (8, 16, 32), head="patch")


def test_conditional_koopman_student_pushes_with_B_y():
    torch.manual_seed(0)
    s = KoopmanStudent(SHAPE, TINY_UNET, latent_dim=64, x_T_scale=80.0, label_dim=10, latent_channels=1).eval()
    x_T = torch.randn(4, *SHAPE) * 80
    labels = torch.tensor([0, 1, 2, 3])
    y = torch.nn.functional.one_hot(labels, 10).float()
    with torch.no_grad():
        z = s.encode_T(x_T, y)
        assert z.shape == (4, 64)
        assert torch.allclose(s.push(z, y), s.C(z) + y @ s.B.weight.T)
        assert torch.equal(s(x_T, labels), s.decode(s.push(z, y), y))
        assert not torch.allclose(s(x_T, labels), s(x_T, labels.flip(0)))
    assert s.sampling_params() < sum(p.numel() for p in s.parameters())     # E_0 is not used to sample


def test_unet_latent_grid_is_projected_to_latent_dim():
    torch.manual_seed(0)
    s = KoopmanStudent(SHAPE, TINY_UNET, latent_dim=16, x_T_scale=80.0, latent_channels=2)
    assert s.grid == (2, 8, 8) and s.C.matrix().shape == (16, 16)
    assert s.PT.weight.shape == (16, 128) and s.PD.weight.shape == (128, 16)
    assert s(torch.randn(3, *SHAPE)).shape == (3, *SHAPE)


def test_adversarial_term_trains_the_discriminator_apart():
    torch.manual_seed(0)
    s = KoopmanStudent(SHAPE, TINY_UNET, latent_dim=64, x_T_scale=80.0, latent_channels=1)
    adv = Adversary(1, 8, (8, 16), lr=1e-3, betas=(0.9, 0.999), seed=1)
    before = [p.detach().clone() for p in adv.disc.parameters()]
    terms = s.losses(torch.rand(8, *SHAPE) * 2 - 1, torch.randn(8, *SHAPE) * 80, torch.Generator().manual_seed(0),
                     latent_noise=0.4, rec=HUBER, adversary=adv)
    assert set(terms) == {"latent", "rec", "push", "adv", "disc"}
    assert terms["adv"].requires_grad and not terms["disc"].requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, adv.disc.parameters())), "the discriminator stepped"
    terms["adv"].backward()
    assert s.D.unet.conv_out.weight.grad.abs().sum() > 0, "the adversarial term reaches the decoder"


def test_resume_with_adversary_is_bitwise_equal(tmp_path):
    """The discriminator and its optimiser live in the checkpoints: a resumed run equals an uninterrupted one."""
    g = torch.Generator().manual_seed(0)
    x0_all, xT_all = torch.rand(64, *SHAPE, generator=g) * 2 - 1, torch.randn(64, *SHAPE, generator=g) * 80
    optim = dict(iterations=12, batch=8, lr=1e-3, lr_schedule="cosine", betas=[0.9, 0.999], ema=0.9,
                 log_every=2, checkpoint_every=4, max_nonfinite_steps=5)

    def fit(stop_at=None, ckpt=None):
        kwargs = dict(data_shape=list(SHAPE), net=TINY_UNET, latent_dim=64, x_T_scale=80.0, latent_channels=1)
        net = build("kdm", kwargs, seed=0)
        adv = Adversary(1, 8, (8, 16), lr=1e-3, betas=(0.9, 0.999), seed=1)
        calls = [0]

        def batch(gen):
            calls[0] += 1
            if calls[0] == stop_at:
                raise KeyboardInterrupt
            idx = torch.randint(64, (8,), generator=gen)
            return net.losses(x0_all[idx], xT_all[idx], gen, latent_noise=0.4, rec=HUBER, adversary=adv)
        ema, rows = train_loop(net, batch, {"adv": 0.01}, optim, seed=0, checkpoint=ckpt, run_id="r",
                               companions={"adversary": adv})
        return ema, rows, adv

    ref, ref_rows, ref_adv = fit()
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(stop_at=7, ckpt=ckpt)           # dies after the checkpoint at iteration 4
    got, rows, adv = fit(ckpt=ckpt)
    assert rows == ref_rows
    for a, b in zip(list(ref.state_dict().values()) + list(ref_adv.disc.state_dict().values()),
                    list(got.state_dict().values()) + list(adv.disc.state_dict().values())):
        assert torch.equal(a, b)


def test_conditional_kd_student_uses_labels():
    torch.manual_seed(0)
    s = OneStepStudent(SHAPE, TINY_UNET, x_T_scale=80.0, label_dim=10).eval()
    x_T = torch.randn(2, *SHAPE) * 80
    with torch.no_grad():
        assert not torch.allclose(s(x_T, torch.tensor([0, 0])), s(x_T, torch.tensor([0, 5])))


def test_conditional_pairs_carry_the_labels_their_seeds_request(tmp_path):
    from kdm.stages import pairs as pairs_stage
    kwargs = dict(data_shape=list(SHAPE), net=TINY_UNET, sigma_data=0.5, label_dim=10)
    teacher_pt = tmp_path / "teacher.pt"
    save_model(teacher_pt, "teacher", kwargs, build("teacher", kwargs, seed=0), data_shape=SHAPE)
    out = tmp_path / "shard"
    stage = dag.Stage(name="p", cmd="", deps=dag.Files(teacher=str(teacher_pt)), outs=dag.Files(shard=str(out)),
                      params=(), log="",
                      args={"shard": 1})
    pairs = {"count": 40, "shards": 2, "batch": 8, "seed_start": 100}
    sampler = {"steps": 3, "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
    pairs_stage.run(stage, {"pairs": pairs, "sampler": sampler})
    labels, seeds = np.load(out / "labels.npy"), np.load(out / "seeds.npy")
    assert seeds.tolist() == list(range(120, 140))
    assert labels.tolist() == edm_generate_latents(seeds, SHAPE, 10)[1] and len(set(labels.tolist())) > 3
    # the teacher sees the label: the same noise with other labels gives other images
    net = load_model(teacher_pt)
    from kdm.edm import edm_sampler
    xT = torch.from_numpy(np.load(out / "xT.npy"))
    other = edm_sampler(net, xT, 3, 0.002, 80.0, 7.0, labels=torch.from_numpy((labels + 1) % 10))
    assert not np.allclose(other.numpy(), np.load(out / "x0.npy"))


def test_inception_extractor_needs_local_weights(tmp_path):
    from kdm.metrics import INCEPTION_URL, resolve_extractor, to_uint8_rgb
    missing = tmp_path / "weights-inception.pth"
    with pytest.raises(FileNotFoundError) as e:
        resolve_extractor({"kind": "inception-v3-compat", "weights": str(missing)}, classifier_pt=None)
    assert str(missing) in str(e.value) and INCEPTION_URL in str(e.value) and "kind: classifier" in str(e.value)
    x = to_uint8_rgb(torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 1, 1, 3))
    assert x.dtype == torch.uint8 and x.shape == (1, 3, 1, 3) and x[0, 2].tolist() == [[0, 128, 255]]


def test_inception_path_reads_local_weights(inception_weights):
    """The standard extractor through our path: a local weights file (random weights, conftest), uint8 RGB
    conversion and torch-fidelity's resize to 299."""
    import math
    from kdm.metrics import fidelity_metrics, resolve_extractor
    name, path = resolve_extractor({"kind": "inception-v3-compat", "weights": inception_weights}, classifier_pt=None)
    x = Digits(conditional=False).x
    metrics = fidelity_metrics(x[:40], x[40:80], name, path, kid_subset=20)
    assert set(metrics) == {"fid", "kid", "precision", "recall", "isc", "isc_splits_std"}
    assert all(math.isfinite(v) for v in metrics.values()) and metrics["isc"] >= 1


def test_lpips_reads_local_backbone_weights(tmp_path):
    """LPIPS with the lpips package's own linear layers on a backbone loaded from a local file (random
    weights here: ImageNet weights cannot be fetched offline); a missing file names what to download."""
    import torchvision
    from kdm.students import LPIPS
    with pytest.raises(FileNotFoundError, match=r"rec_loss.weights: .*missing.pth does not exist.*alexnet-owt"):
        rec_loss({"kind": "lpips", "net": "alex", "weights": str(tmp_path / "missing.pth")})
    torch.manual_seed(0)
    weights = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet().state_dict(), weights)
    loss = rec_loss({"kind": "lpips", "net": "alex", "weights": str(weights)})
    assert isinstance(loss, LPIPS)
    state = torch.load(weights)
    assert torch.equal(loss.model.net.slice2.__getattr__("3").weight, state["features.3.weight"])
    x = torch.rand(4, *SHAPE) * 2 - 1
    pred = (x + 0.3 * torch.randn(x.shape)).requires_grad_()
    value = loss(pred, x)
    assert value.ndim == 0 and value > 0 and loss(x, x) < 1e-6
    value.backward()
    assert pred.grad.abs().sum() > 0
    avg = rec_loss({"kind": "lpips", "net": "alex", "weights": str(weights), "pooling": "avg"})
    pools = [type(m).__name__ for m in avg.model.net.modules() if "Pool" in type(m).__name__]
    assert pools and set(pools) == {"AvgPool2d"}, "pooling avg replaces every max-pool (piq's replace_pooling)"
    assert avg(x, x) < 1e-6 and not torch.isclose(avg(pred, x), value)
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not torchvision's alex"):
        rec_loss({"kind": "lpips", "net": "alex", "weights": str(tmp_path / "other.pth")})


def test_a_conditional_mlp_without_labels_is_a_clear_error():
    net = make_net({"kind": "mlp", "hidden": 8, "layers": 2}, SHAPE, (4,), label_dim=10, t=0.0)
    with pytest.raises(ValueError, match=r"class_labels: expected shape \(2, 10\), got None"):
        net(torch.randn(2, *SHAPE))


def test_device_choice_is_checked(monkeypatch):
    from kdm.device import device
    monkeypatch.setenv("KDM_DEVICE", "cpu")
    assert device().type == "cpu"
    monkeypatch.setenv("KDM_DEVICE", "tpu")
    with pytest.raises(ValueError, match="KDM_DEVICE='tpu': expected 'cpu', or 'cuda'"):
        device()


def test_adversary_at_weight_zero_is_not_trained_and_changes_no_byte(tmp_path):
    """A loss-term ablation (kdm.loss_weights.adv: 0) trains no discriminator: the same student, bitwise, as one
    trained beside a discriminator whose term is weighted 0."""
    g = torch.Generator().manual_seed(0)
    write_pairset(tmp_path / "store", {"x0": (torch.rand(64, *SHAPE, generator=g) * 2 - 1).numpy(),
                                       "xT": (torch.randn(64, *SHAPE, generator=g) * 80).numpy(),
                                       "seeds": np.arange(64)},
                  {"teacher": {"label_dim": 0}, "sampler": {"sigma_max": 80.0}})
    store = open_pairset(tmp_path / "store")
    p = tiny_digits("digits")["digits"]["kdm"] | {"iterations": 6, "batch": 8, "log_every": 2}
    p["loss_weights"] = p["loss_weights"] | {"adv": 0.0}
    assert p.get("adversary")
    net, _, batch_losses, companions = student_setup("kdm", p, store, seed=0, on=torch.device("cpu"))
    assert "adversary" not in companions
    got, rows = train_loop(net, batch_losses, p["loss_weights"], p, seed=0, companions=companions)
    assert "adv" not in rows[-1] and "disc" not in rows[-1]

    net, _, batch_losses, companions = student_setup("kdm", p | {"loss_weights": p["loss_weights"] | {"adv": 0.01}},
                                                     store, seed=0, on=torch.device("cpu"))   # with a discriminator,
    ref, ref_rows = train_loop(net, batch_losses, p["loss_weights"], p, seed=0,               # its term weighted 0
                               companions=companions)
    assert "disc" in ref_rows[-1]
    for a, b in zip(ref.state_dict().values(), got.state_dict().values()):
        assert torch.equal(a, b)
