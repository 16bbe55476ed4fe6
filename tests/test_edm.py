"""EDM sampler against the closed-form probability-flow ODE of Gaussian data."""
import numpy as np
import pytest
import torch

from edm_generate import edm_generate_latents
from kdm.edm import EDMPrecond, edm_sampler, nfe, seed_latents, sigma_steps


def gaussian_denoiser(mu, var):
    """The optimal denoiser of N(mu, var): E[x0 | x] = mu + var / (var + s^2) (x - mu)."""
    def denoise(x, sigma, class_labels=None):
        s2 = sigma.to(torch.float64).reshape(-1, 1) ** 2
        return (mu + var / (var + s2) * (x.to(torch.float64) - mu)).to(torch.float32)
    return denoise


def exact_solution(x_T, mu, var, sigma_max):
    """x(0) = mu + (x_T - mu) sqrt(v) / sqrt(v + s_T^2) per dimension."""
    return mu + (x_T - mu) * var.sqrt() / (var + sigma_max ** 2).sqrt()


def heun_error(steps, mu, var, x_T):
    got = edm_sampler(gaussian_denoiser(mu, var), x_T, steps, 0.002, 80.0, 7.0).to(torch.float64)
    want = exact_solution(x_T.to(torch.float64), mu, var, 80.0)
    # relative to the distance the solution ends from the mean, per dimension
    return ((got - want).abs() / (want - mu).abs()).max().item()


def test_heun_converges_to_closed_form_at_second_order():
    """Heun is 2nd order: doubling the steps cuts the error about 4x. With 18 steps (the pairs' setting)
    this stiff case (variance 0.01) is within 15%; with 144 steps within 0.2%."""
    mu = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    var = torch.tensor([0.25, 1.0, 0.01], dtype=torch.float64)
    x_T = 80.0 * seed_latents(np.arange(256), (3,))[0]
    errors = {n: heun_error(n, mu, var, x_T) for n in (18, 36, 72, 144)}
    assert errors[18] < 0.15, errors
    assert errors[144] < 2e-3, errors
    for n in (18, 36):
        assert 3.0 < errors[n] / errors[2 * n] < 5.5, errors


def test_heun_is_exact_for_a_point_mass_denoiser():
    """D = const makes the ODE x(s) = c + (x_T - c) s / s_T, which Heun integrates exactly."""
    c = torch.tensor([0.5, -0.25])
    x_T = 80.0 * seed_latents(np.arange(16), (2,))[0]
    got = edm_sampler(lambda x, s, y: c.expand_as(x), x_T, 18, 0.002, 80.0, 7.0)
    assert torch.allclose(got, c.expand_as(got), atol=1e-6)


def test_sigma_steps_and_nfe():
    t = sigma_steps(18, 0.002, 80.0, 7.0)
    assert len(t) == 19 and t[-1] == 0
    assert t[0].item() == pytest.approx(80.0) and t[-2].item() == pytest.approx(0.002)
    assert (t[:-1].diff() < 0).all()
    assert nfe(18) == 35


def test_precond_coefficients_at_extremes():
    """With F = 0, D(x; s) = c_skip x: identity as s -> 0, zero as s -> inf."""
    class Zero(torch.nn.Module):
        def forward(self, x, c_noise, class_labels=None):
            return torch.zeros_like(x)
    net = EDMPrecond(Zero(), sigma_data=0.5)
    x = torch.ones(4, 2)
    assert torch.allclose(net(x, torch.full((4,), 1e-6)), x)
    assert net(x, torch.full((4,), 1e6)).abs().max() < 1e-9


def test_seed_latents_are_a_function_of_the_seed_alone():
    (a, ya), (b, yb) = seed_latents([5, 6, 7], (3,), 10), seed_latents([7, 6], (3,), 10)
    assert torch.equal(a[2], b[0]) and torch.equal(a[1], b[1]) and ya[2] == yb[0] and ya[1] == yb[1]
    assert not torch.equal(a[0], a[1])
    assert torch.equal(seed_latents([5, 6, 7], (3,))[0], a), "the label is drawn after the noise"


def test_seed_latents_are_edms_noise_and_labels():
    seeds = np.arange(100)
    noise, labels = seed_latents(seeds, (1, 8, 8), 10)
    edm_noise, edm_labels = edm_generate_latents(seeds, (1, 8, 8), 10)
    assert torch.equal(noise, edm_noise) and labels.tolist() == edm_labels
    assert len(set(edm_labels)) == 10
