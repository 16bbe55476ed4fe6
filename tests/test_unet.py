"""The compact SongUNet: shapes, label path, noise conditioning."""
import pytest
import torch

from kdm.unet import SongUNet


@pytest.mark.parametrize("res,cin,cout,mult,attn", [(8, 1, 1, (1, 2), (4,)), (8, 1, 1, (1, 2, 2), ()),
                                                   (16, 3, 1, (1, 2), (8,)), (8, 1, 3, (1,), (8,))])
def test_shapes(res, cin, cout, mult, attn):
    torch.manual_seed(0)
    net = SongUNet(res, cin, cout, model_channels=16, channel_mult=mult, num_blocks=1, attn_resolutions=attn)
    y = net(torch.randn(3, cin, res, res), torch.rand(3))
    assert y.shape == (3, cout, res, res) and torch.isfinite(y).all()


def test_noise_level_and_label_change_the_output():
    torch.manual_seed(0)
    net = SongUNet(8, 1, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, label_dim=10).eval()
    x = torch.randn(2, 1, 8, 8)
    one_hot = torch.nn.functional.one_hot(torch.tensor([3, 3]), 10).float()
    other = torch.nn.functional.one_hot(torch.tensor([3, 7]), 10).float()
    with torch.no_grad():
        base = net(x, torch.zeros(2), one_hot)
        assert not torch.allclose(base, net(x, torch.ones(2), one_hot))
        relabeled = net(x, torch.zeros(2), other)
    assert torch.equal(base[0], relabeled[0]) and not torch.allclose(base[1], relabeled[1])
    with pytest.raises(ValueError, match=r"class_labels: expected shape \(2, 10\), got \(2, 9\)"):
        net(x, torch.zeros(2), torch.zeros(2, 9))


def test_a_scalar_noise_label_is_broadcast():
    """The KDM encoders and decoder use a constant time input (0 or 1) for the whole batch."""
    torch.manual_seed(0)
    net = SongUNet(8, 1, 1, model_channels=16, channel_mult=(1,), num_blocks=1).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(x, torch.tensor(1.0)), net(x, torch.ones(4)))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = SongUNet(8, 1, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,), label_dim=3)
    net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.eye(3)[:2]).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
