"""NVlabs/edm's generate.py as the tests' independent reference for per-seed noise and labels."""
import torch


def edm_generate_latents(seeds, shape, label_dim):
    """EDM's generate.py, written here from its description (StackedRandomGenerator): one torch.Generator per seed,
    seeded with seed % 2**32; latents = randn of the image shape, then class = randint(label_dim) of a scalar."""
    noise, labels = [], []
    for s in seeds:
        g = torch.Generator().manual_seed(int(s) % (1 << 32))
        noise.append(torch.randn(shape, generator=g))
        labels.append(int(torch.randint(label_dim, size=[], generator=g)))
    return torch.stack(noise), labels
