"""Students, training loop, datasets and 2-D metrics."""
import numpy as np
import pytest
import torch

from kdm import metrics
from kdm.datasets import Checkerboard
from kdm.students import KoopmanStudent, OneStepStudent, rec_loss
from kdm.models import build, load_model, save_model
from kdm.training import EMA, EpochOrder, student_kwargs, train_loop


def test_checkerboard_samples_lie_in_its_cells():
    board = Checkerboard(4, 2.0)
    x, labels = board.sample(4000, torch.Generator().manual_seed(0))
    assert labels is None
    cells = board.cell_of(x)
    assert board.n_modes == 8 and (cells >= 0).all()
    assert metrics.in_support_precision(cells) == 1.0 and metrics.mode_coverage(cells, 8) == 1.0
    # the empty cells and the outside of the board are not in the support
    outside = torch.tensor([[0.5, -0.5], [-1.5, -0.5], [2.5, 0.0], [0.0, -3.0]])
    assert (board.cell_of(outside) == -1).all()


def test_mode_coverage_counts_cells_with_one_percent():
    cells = torch.tensor([0] * 195 + [1] * 4 + [2] + [-1] * 10)   # cell 1: 1.9%, cell 2: 0.48%
    assert metrics.mode_coverage(cells, 8) == pytest.approx(2 / 8)


def test_sliced_w2_is_zero_for_equal_samples_and_sees_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 2, generator=g)
    assert metrics.sliced_w2(x, x[torch.randperm(2000, generator=g)], 32, g) < 1e-12
    shifted = metrics.sliced_w2(x, x + torch.tensor([0.5, 0.0]), 256, g)
    assert shifted == pytest.approx(0.5 / np.sqrt(2), rel=0.1)   # E[cos^2] = 1/2 over directions


def test_outliers_flag_an_isolated_point():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.05, (500, 2)), [[3.0, 3.0]]])
    labels, outliers = metrics.clusters_and_outliers(x, k=2, seed=0)
    assert outliers[-1] and outliers[:-1].mean() < 0.05 and set(labels) == {0, 1}


def test_koopman_student_samples_through_E_T_C_D():
    torch.manual_seed(0)
    s = KoopmanStudent(data_shape=[2], net={"kind": "mlp", "hidden": 16, "layers": 3}, latent_dim=8, x_T_scale=80.0)
    x_T = torch.randn(5, 2) * 80
    assert torch.equal(s(x_T), s.D.net(s.C(s.ET.net(x_T / 80.0))))
    terms = s.losses(torch.randn(5, 2), x_T, torch.Generator().manual_seed(0), latent_noise=0.4, rec=rec_loss({"kind": "l2"}))
    assert set(terms) == {"latent", "rec", "push"} and all(t.ndim == 0 for t in terms.values())
    terms["latent"].backward()
    assert s.E0.net[0].weight.grad.abs().sum() > 0, "z_0 must not be detached in the latent loss"
    assert s.sampling_params() < sum(p.numel() for p in s.parameters())


def test_pseudo_huber_between_l1_and_l2():
    f = rec_loss({"kind": "pseudo_huber", "c": 0.03})
    assert f(torch.zeros(1), torch.zeros(1)) == 0
    assert f(torch.tensor([10.0]), torch.zeros(1)).item() == pytest.approx(10 - 0.03, abs=1e-3)


def test_training_reduces_the_loss_and_is_deterministic():
    def fit():
        net = build("kd", dict(data_shape=[2], net={"kind": "mlp", "hidden": 32, "layers": 3}, x_T_scale=1.0), seed=3)
        def batch(gen):     # learn x_0 = -x_T
            x_T = torch.randn(64, 2, generator=gen)
            return net.losses(-x_T, x_T, gen, rec=rec_loss({"kind": "l2"}))
        optim = dict(iterations=60, batch=64, lr=1e-2, lr_schedule="cosine", betas=[0.9, 0.999], ema=0.5, log_every=10)
        return train_loop(net, batch, {}, optim, seed=5)
    (ema1, rows1), (ema2, _) = fit(), fit()
    assert rows1[-1]["loss"] < 0.1 * rows1[0]["loss"]
    for a, b in zip(ema1.state_dict().values(), ema2.state_dict().values()):
        assert torch.equal(a, b)


def test_a_term_weighted_zero_is_logged_but_not_backpropagated():
    """The checkerboard KDM's push term (weight 0) is logged, backward never runs through it, and the student
    is bitwise the one trained with its zero gradients added in."""
    def fit(fold: bool):
        net = build("kdm", dict(data_shape=[2], net={"kind": "mlp", "hidden": 32, "layers": 3}, latent_dim=16,
                                x_T_scale=80.0), seed=3)
        reached = []

        def batch(gen):
            x_T = torch.randn(64, 2, generator=gen) * 80
            terms = net.losses(x_T.tanh(), x_T, gen, latent_noise=0.4, rec=rec_loss({"kind": "l2"}))
            terms["push"].register_hook(reached.append)
            if fold:        # as before: 0 * push in the summed loss, its gradients (zeros) added to the others'
                terms["rec"] = terms["rec"] + 0.0 * terms.pop("push")
            return terms
        optim = dict(iterations=20, batch=64, lr=1e-2, lr_schedule="cosine", betas=[0.9, 0.999], ema=0.5, log_every=5)
        ema, rows = train_loop(net, batch, {"push": 0.0}, optim, seed=5)
        return ema, rows, reached
    (ema, rows, reached), (ref, _, ref_reached) = fit(False), fit(True)
    assert "push" in rows[-1] and np.isfinite(rows[-1]["push"])
    assert not reached and len(ref_reached) == 20
    for a, b in zip(ema.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)


def test_nonfinite_gradients_are_zeroed():
    net = torch.nn.Linear(2, 1)
    before = net.weight.detach().clone()
    def batch(gen):
        return {"bad": net(torch.ones(1, 2)).sum() * torch.tensor(float("nan"))}
    optim = dict(iterations=3, batch=1, lr=0.1, lr_schedule="constant", betas=[0.9, 0.999], ema=0.9)
    ema, _ = train_loop(net, batch, {}, optim, seed=0)
    assert torch.equal(net.weight, before) and torch.isfinite(ema.weight).all()


def test_ema_tracks_parameters():
    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(1.0)
    start = ema.module.weight.item()
    ema.update(net)
    assert ema.module.weight.item() == pytest.approx(0.5 * start + 0.5)


def test_ema_decay_zero_keeps_the_raw_weights():
    """ema: 0 samples the last raw weights, as the authors' 2-D trainer saves them: exactly, not approximately."""
    net = torch.nn.Linear(3, 3)
    ema = EMA(net, decay=0.0)
    with torch.no_grad():
        net.weight.mul_(1.7).add_(0.3)
    ema.update(net)
    assert torch.equal(ema.module.weight, net.weight) and torch.equal(ema.module.bias, net.bias)


def test_authors_2d_network_options():
    """time_input: a constant last input column (E_0, D: 0; E_T: 1); encoder_act silu: the encoders end in a Swish;
    scale_x_T false: E_T sees the raw x_T. Unset, the kwargs and state dict are as before the options existed."""
    net = {"kind": "mlp", "hidden": 16, "layers": 3}
    plain = KoopmanStudent(data_shape=[2], net=net, latent_dim=8, x_T_scale=80.0)
    assert "E0.t" not in plain.state_dict() and plain.E0.net[0].in_features == 2
    torch.manual_seed(0)
    s = KoopmanStudent(data_shape=[2], net=net | {"time_input": True}, latent_dim=8, x_T_scale=1.0, encoder_act="silu")
    assert (s.E0.t.item(), s.ET.t.item(), s.D.t.item()) == (0.0, 1.0, 0.0) and s.E0.net[0].in_features == 3
    x = torch.randn(5, 2)
    first = s.ET.net[0]
    expected = torch.nn.functional.linear(torch.cat([x, torch.ones(5, 1)], 1), first.weight, first.bias)
    assert torch.allclose(s.ET.net[:1](torch.cat([x, torch.ones(5, 1)], 1)), expected)
    z = s.encode_T(x * 50, None)
    assert torch.equal(z, torch.nn.functional.silu(s.ET(x * 50)))       # raw x_T, then the Swish
    assert z.min() >= -0.2785
    with pytest.raises(ValueError, match="kdm.encoder_act"):
        KoopmanStudent(data_shape=[2], net=net, latent_dim=8, x_T_scale=80.0, encoder_act="tanh")
    p = {"net": net, "latent_dim": 8, "operator": {"kind": "dense"}}
    assert student_kwargs("kdm", p, (2,), 80.0, 0) == dict(data_shape=[2], net=net, x_T_scale=80.0, label_dim=0,
                                                          latent_dim=8, operator={"kind": "dense"})
    authors = student_kwargs("kdm", p | {"scale_x_T": False, "encoder_act": "silu"}, (2,), 80.0, 0)
    assert (authors["x_T_scale"], authors["encoder_act"]) == (1.0, "silu")


def test_epoch_order_visits_every_row_once_per_epoch_and_resumes():
    """data_order: epochs - the authors' sampler: a permutation per epoch, consecutive batches, the last one
    short; the order depends on (seed, epoch) only, and a restored step count continues it."""
    order = EpochOrder(10, 4, seed=3)
    batches = [order.next_rows() for _ in range(6)]
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert not all(np.array_equal(a, b) for a, b in zip(batches[:3], batches[3:])), "each epoch reshuffles"
    resumed = EpochOrder(10, 4, seed=3)
    resumed.load_state_dict({"step": 4})
    assert np.array_equal(resumed.next_rows(), batches[4]) and order.state_dict() == {"step": 6}
    other = EpochOrder(10, 4, seed=4)
    assert not all(np.array_equal(other.next_rows(), b) for b in batches[:3])


def test_saved_model_roundtrip_and_corrupt_file(tmp_path):
    kwargs = dict(data_shape=[2], net={"kind": "mlp", "hidden": 8, "layers": 2}, latent_dim=4, x_T_scale=80.0)
    net = build("kdm", kwargs, seed=0)
    save_model(tmp_path / "m.pt", "kdm", kwargs, net, data_shape=(2,))
    back = load_model(tmp_path / "m.pt")
    x = torch.randn(3, 2)
    assert torch.equal(back(x), net(x)) and back.data_shape == (2,)
    (tmp_path / "bad.pt").write_bytes((tmp_path / "m.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"bad.pt: not a loadable model checkpoint"):
        load_model(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt: missing"):
        load_model(tmp_path / "missing.pt")


@pytest.mark.parametrize("eigen_loss", ["none", "target", "unit_circle"])
def test_decomposed_operator_equals_the_dense_matrix_it_represents(eigen_loss):
    from kdm.koopman import DecomposedOperator
    torch.manual_seed(0)
    op = DecomposedOperator(12, eigen_loss=eigen_loss)
    with pytest.raises(ValueError, match="even latent dimension"):
        DecomposedOperator(7)
    with torch.no_grad():
        op.bias.normal_()
    z = torch.randn(5, 12, dtype=torch.float32)
    assert torch.allclose(op(z), z @ op.matrix().T + op.bias, atol=1e-5)
    lam_re, lam_im = op.eigenvalues()
    assert ((lam_re ** 2 + lam_im ** 2).sqrt() <= 1).all()
    terms = op.losses()
    assert set(terms) == ({"inverse"} if eigen_loss == "none" else {"inverse", "eigen"})


def test_decomposed_operator_with_exact_inverse_has_its_eigenvalues():
    """With Q = P^-1 the real block matrix of P diag(lambda) P^-1 has exactly the eigenvalues lambda and
    their conjugates, and the inverse-consistency loss is zero."""
    from kdm.koopman import DecomposedOperator
    torch.manual_seed(1)
    op = DecomposedOperator(12).double()
    Q = torch.linalg.inv(torch.complex(op.P_re, op.P_im))
    with torch.no_grad():
        op.Q_re.copy_(Q.real)
        op.Q_im.copy_(Q.imag)
    assert op.losses()["inverse"] < 1e-20
    lam = torch.complex(*op.eigenvalues())
    want = torch.cat([lam, lam.conj()])
    got = torch.linalg.eigvals(op.matrix())
    key = lambda v: torch.sort(v.real * 1e3 + v.imag).values
    assert torch.allclose(key(got), key(want), atol=1e-6)


def test_koopman_student_with_decomposed_operator_trains_its_extra_losses():
    torch.manual_seed(0)
    s = KoopmanStudent(data_shape=[2], net={"kind": "mlp", "hidden": 16, "layers": 3}, latent_dim=8, x_T_scale=80.0,
                       operator={"kind": "decomposed", "eigen_loss": "unit_circle"})
    terms = s.losses(torch.randn(4, 2), torch.randn(4, 2) * 80, torch.Generator().manual_seed(0),
                     latent_noise=0.4, rec=rec_loss({"kind": "l2"}))
    assert set(terms) == {"latent", "rec", "push", "inverse", "eigen"}
    sum(terms.values()).backward()
    assert s.C.nu.grad is not None and s.C.P_im.grad.abs().sum() > 0
