"""Run by tests/test_ddp.py under torchrun: a tiny KDM UNet with the adversary, trained by every rank; each rank
saves what it holds to OUT/rank<r>.pt (the test checks that the ranks agree)."""
import sys

import torch

from kdm.students import Adversary, rec_loss
from kdm.device import rank_batch, ranks
from kdm.models import build
from kdm.training import train_loop

UNET = {"kind": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [4],
        "dropout": 0.1}


def student():
    return build("kdm", dict(data_shape=[1, 8, 8], net=UNET, latent_dim=32, x_T_scale=80.0, latent_channels=1), seed=3)


def main(out: str):
    net, adv = student(), Adversary(1, 8, [8, 16], 1e-3, [0.9, 0.99], seed=4)
    rec, batch = rec_loss({"kind": "pseudo_huber", "c": 0.03}), rank_batch(8, "batch")

    def batch_losses(gen):
        x_T = 80 * torch.randn(batch, 1, 8, 8, generator=gen)
        return net.losses(torch.tanh(x_T / 40), x_T, gen, latent_noise=0.4, rec=rec, adversary=adv)

    optim = dict(iterations=5, batch=8, lr=1e-3, lr_schedule="constant", betas=[0.9, 0.99], ema=0.9, log_every=1,
                 precision="bf16", channels_last=True)
    ema, rows = train_loop(net, batch_losses, {"adv": 0.01}, optim, seed=5, companions={"adversary": adv})
    # the discriminator's parameters only: its BatchNorm statistics follow each rank's batches (unused in training)
    disc = {k: p.detach() for k, p in adv.disc.named_parameters()}
    torch.save({"model": net.state_dict(), "ema": ema.state_dict(), "disc": disc, "rows": rows},
               f"{out}/rank{ranks()[0]}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
