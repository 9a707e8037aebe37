"""PatchGAN discriminator: patch-map shapes, the stage rule, seeding, and that it can learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cdc.discriminator import default_stages, logit_size, make_discriminator

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    ("channels", "size", "n_layers", "side"),
    [(4, 64, None, 3), (4, 64, 4, 3), (12, 16, None, 3), (4, 16, 3, 1), (4, 32, None, 3), (4, 4, None, 1)],
)
def test_patch_map_shape(channels, size, n_layers, side):
    d = make_discriminator(channels, size, n_layers, width=8)
    out = d(torch.randn(2, channels, size, size))
    assert out.shape == (2, 1, side, side)
    assert logit_size(size, d.n_layers) == side


def test_released_layout_on_sd_latents():
    # DoCo's gan.py: 4 stride-2 convs (first without norm), widths 64..512, final 1-channel conv.
    assert default_stages(64) == 4
    d = make_discriminator(4, 64)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules()) == 3


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="leaves no logits"):
        make_discriminator(12, 16, n_layers=4)
    with pytest.raises(ValueError, match="unknown discriminator norm"):
        make_discriminator(12, 16, norm="layer")


@pytest.mark.parametrize("norm", ["instance", "none"])
def test_other_norms_run_on_a_batch_of_one(norm):
    d = make_discriminator(12, 16, norm=norm, width=8)
    assert torch.isfinite(d(torch.randn(1, 12, 16, 16))).all()


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = make_discriminator(12, 16, seed=5, width=8)
    after = torch.rand(1)
    b = make_discriminator(12, 16, seed=5, width=8)
    assert torch.equal(before, after)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_it_learns_to_separate_two_distributions():
    g = torch.Generator().manual_seed(0)
    d = make_discriminator(12, 16, width=16, seed=0)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.999))
    for _ in range(25):
        real = torch.randn(8, 12, 16, 16, generator=g)
        fake = torch.randn(8, 12, 16, 16, generator=g) + 0.5
        lr_, lf = d(real), d(fake)
        loss = F.binary_cross_entropy_with_logits(lr_, torch.zeros_like(lr_)) + F.binary_cross_entropy_with_logits(
            lf, torch.ones_like(lf)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    d.eval()
    real = torch.randn(16, 12, 16, 16, generator=g)
    fake = torch.randn(16, 12, 16, 16, generator=g) + 0.5
    with torch.no_grad():
        acc = ((d(real) < 0).float().mean() + (d(fake) > 0).float().mean()) / 2
    assert acc > 0.9
