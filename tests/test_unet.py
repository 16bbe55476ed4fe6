"""The SongUNet: shapes, label path, noise conditioning; and compatibility with EDM's DDPM++ SongUNet.

EDM's parameter names and shapes, and its forward pass, are re-derived here independently of kdm/unet.py
(from a reading of NVlabs/edm training/networks.py): `edm_shapes` follows EDM's constructor loops,
`edm_forward` computes EDM's forward pass from a bare state dict with functional ops.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from kdm.edm import EDMPrecond
from kdm.unet import SongUNet

CIFAR = dict(img_resolution=32, in_channels=3, out_channels=3, model_channels=128, channel_mult=(2, 2, 2),
             num_blocks=4, attn_resolutions=(16,), augment_dim=9)      # EDM's edm-cifar10-32x32-*-vp networks


def edm_shapes(img_resolution, in_channels, out_channels, model_channels, channel_mult, num_blocks,
               attn_resolutions, label_dim=0, augment_dim=0, **_):
    """{key: shape} of EDM's EDMPrecond(SongUNet) state dict in the DDPM++ configuration."""
    emb, keys, width = 4 * model_channels, {}, {}

    def add(name, *shape, bias=True, resample=False):
        keys[f"model.{name}.weight"] = shape
        if bias:
            keys[f"model.{name}.bias"] = shape[:1]
        if resample:
            keys[f"model.{name}.resample_filter"] = (1, 1, 2, 2)

    def block(name, cin, cout, attention=False, resample=False):
        add(f"{name}.norm0", cin)
        add(f"{name}.conv0", cout, cin, 3, 3, resample=resample)
        add(f"{name}.affine", cout, emb)
        add(f"{name}.norm1", cout)
        add(f"{name}.conv1", cout, cout, 3, 3)
        if cin != cout or resample:
            add(f"{name}.skip", cout, cin, 1, 1, resample=resample)
        if attention:
            add(f"{name}.norm2", cout)
            add(f"{name}.qkv", 3 * cout, cout, 1, 1)
            add(f"{name}.proj", cout, cout, 1, 1)
        width[name] = cout

    if label_dim:
        add("map_label", model_channels, label_dim)
    if augment_dim:
        add("map_augment", model_channels, augment_dim, bias=False)
    add("map_layer0", emb, model_channels)
    add("map_layer1", emb, emb)
    c = in_channels
    for level, mult in enumerate(channel_mult):
        r = img_resolution >> level
        if level == 0:
            add(f"enc.{r}x{r}_conv", model_channels, c, 3, 3)
            width[f"enc.{r}x{r}_conv"] = c = model_channels
        else:
            block(f"enc.{r}x{r}_down", c, c, resample=True)
        for i in range(num_blocks):
            block(f"enc.{r}x{r}_block{i}", c, model_channels * mult, attention=r in attn_resolutions)
            c = model_channels * mult
    skips = list(width.values())        # every encoder output
    for level, mult in reversed(list(enumerate(channel_mult))):
        r = img_resolution >> level
        if level == len(channel_mult) - 1:
            block(f"dec.{r}x{r}_in0", c, c, attention=True)
            block(f"dec.{r}x{r}_in1", c, c)
        else:
            block(f"dec.{r}x{r}_up", c, c, resample=True)
        for i in range(num_blocks + 1):
            block(f"dec.{r}x{r}_block{i}", c + skips.pop(), model_channels * mult,
                  attention=i == num_blocks and r in attn_resolutions)
            c = model_channels * mult
    add(f"dec.{img_resolution}x{img_resolution}_aux_norm", c)
    add(f"dec.{img_resolution}x{img_resolution}_aux_conv", out_channels, c, 3, 3)
    return keys


def random_edm_state(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.full(s, 0.25) if k.endswith("resample_filter") else torch.randn(s, generator=g) * 0.3
            for k, s in shapes.items()}


def edm_forward(p, x, noise_labels, class_labels=None):
    """EDM's SongUNet forward (DDPM++) from a state dict: [1, 1] resampling as average pooling / nearest
    up-sampling, attention with EDM's (B, C, 3, HW) qkv reshape, sin/cos swapped embedding."""
    p = {k[len("model."):]: v for k, v in p.items()}
    names = list(dict.fromkeys(".".join(k.split(".")[:2]) for k in p if k.startswith(("enc.", "dec."))))

    def lin(h, n):
        return h @ p[f"{n}.weight"].t() + (p[f"{n}.bias"] if f"{n}.bias" in p else 0)

    def gn(h, n):
        return F.group_norm(h, min(32, h.shape[1] // 4), p[f"{n}.weight"], p[f"{n}.bias"], eps=1e-6)

    def conv(h, n, up=False, down=False):
        h = F.interpolate(h, scale_factor=2, mode="nearest") if up else F.avg_pool2d(h, 2) if down else h
        return F.conv2d(h, p[f"{n}.weight"], p[f"{n}.bias"], padding=p[f"{n}.weight"].shape[-1] // 2)

    def block(h, n):
        up, down = n.endswith("_up"), n.endswith("_down")
        y = conv(F.silu(gn(h, f"{n}.norm0")), f"{n}.conv0", up, down)
        y = F.silu(gn(y + lin(emb, f"{n}.affine")[:, :, None, None], f"{n}.norm1"))
        y = conv(y, f"{n}.conv1")
        h = (y + (conv(h, f"{n}.skip", up, down) if f"{n}.skip.weight" in p else h)) * math.sqrt(0.5)
        if f"{n}.qkv.weight" in p:
            q, k, v = conv(gn(h, f"{n}.norm2"), f"{n}.qkv").reshape(h.shape[0], h.shape[1], 3, -1).unbind(2)
            w = torch.einsum("ncq,nck->nqk", q, k / math.sqrt(k.shape[1])).softmax(dim=2)
            h = (conv(torch.einsum("nqk,nck->ncq", w, v).reshape(h.shape), f"{n}.proj") + h) * math.sqrt(0.5)
        return h

    c = p["map_layer0.weight"].shape[1]
    freqs = (1 / 10000) ** (torch.arange(c // 2) / (c // 2 - 1))
    emb = torch.cat([(noise_labels[:, None] * freqs).cos(), (noise_labels[:, None] * freqs).sin()], 1)
    emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)
    if class_labels is not None:
        emb = emb + lin(class_labels * math.sqrt(class_labels.shape[1]), "map_label")
    emb = F.silu(lin(F.silu(lin(emb, "map_layer0")), "map_layer1"))
    skips = []
    for n in (n for n in names if n.startswith("enc.")):
        x = conv(x, n) if n.endswith("_conv") else block(x, n)
        skips.append(x)
    for n in (n for n in names if n.startswith("dec.") and "aux" not in n):
        if x.shape[1] != p[f"{n}.norm0.weight"].shape[0]:
            x = torch.cat([x, skips.pop()], dim=1)
        x = block(x, n)
    aux = [n for n in names if "aux" in n]
    return conv(F.silu(gn(x, aux[0])), aux[1])


def test_cifar_config_has_edm_keys_and_shapes():
    with torch.device("meta"):
        ours = EDMPrecond(SongUNet(**CIFAR), sigma_data=0.5)
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    want = edm_shapes(**CIFAR)
    assert got.keys() == want.keys() and got == want
    assert "model.enc.32x32_conv.weight" in got and "model.dec.8x8_in0.qkv.weight" in got
    n = sum(p.numel() for p in ours.parameters())
    assert 55e6 < n < 56.5e6, n              # EDM's DDPM++ CIFAR-10 network: 56M parameters


@pytest.mark.parametrize("cfg", [
    dict(img_resolution=8, in_channels=3, out_channels=3, model_channels=16, channel_mult=(1, 2, 2), num_blocks=2,
         attn_resolutions=(4,), augment_dim=9),
    dict(img_resolution=8, in_channels=1, out_channels=2, model_channels=32, channel_mult=(2, 2), num_blocks=1,
         attn_resolutions=(8,), label_dim=10),
])
def test_edm_state_dict_loads_strictly_and_gives_edm_outputs(cfg):
    state = random_edm_state(edm_shapes(**cfg))
    net = EDMPrecond(SongUNet(**cfg), sigma_data=0.5, label_dim=cfg.get("label_dim", 0)).eval()
    net.load_state_dict(state, strict=True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, cfg["in_channels"], 8, 8, generator=g)
    noise = torch.randn(3, generator=g)
    labels = torch.eye(10)[[1, 4, 9]] if cfg.get("label_dim") else None
    with torch.no_grad():
        ours = net.model(x, noise, labels)
    torch.testing.assert_close(ours, edm_forward(state, x, noise, labels), rtol=1e-4, atol=1e-4)


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
    """All but map_augment, which only holds EDM's augmentation weights (no augmentation labels are given)."""
    torch.manual_seed(0)
    net = SongUNet(8, 1, 1, model_channels=16, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                   label_dim=3, augment_dim=2)
    net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.eye(3)[:2]).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == ["map_augment.weight"], missing


def test_the_schema_and_the_library_know_the_same_unet_kinds():
    from kdm.config import UNET_KINDS
    from kdm.unet import UNETS
    assert set(UNETS) == set(UNET_KINDS)


def test_compact_unet_shapes_and_labels():
    from kdm.unet import CompactUNet
    net = CompactUNet(8, 1, 2, model_channels=8, channel_mult=(1, 2), num_blocks=1, attn_resolutions=(4,),
                      label_dim=10)
    y = torch.nn.functional.one_hot(torch.arange(5) % 10, 10).float()
    out = net(torch.randn(5, 1, 8, 8), torch.zeros(5), y)
    assert out.shape == (5, 2, 8, 8)
    with pytest.raises(ValueError, match="class_labels"):
        net(torch.randn(5, 1, 8, 8), torch.zeros(5))
