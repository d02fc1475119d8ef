"""q8lib.metrics: per-frame PSNR/SSIM against the direct formulas."""
from __future__ import annotations


import pytest
import torch

from q8lib.app.video import side_by_side
from q8lib.metrics import psnr, ssim

pytestmark = pytest.mark.filterwarnings("ignore::q8lib.errors.Q8FallbackWarning")  # CPU runs use the reference math on purpose


def _ssim_naive(a, b, win=7, sigma=1.5):
    """Direct float64 SSIM over every valid window position (slow, independent of the conv version)."""
    x = torch.arange(win, dtype=torch.float64) - (win - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    w = torch.outer(g, g)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for ch in range(a.shape[0]):
        for i in range(a.shape[1] - win + 1):
            for j in range(a.shape[2] - win + 1):
                pa, pb = a[ch, i:i + win, j:j + win].double(), b[ch, i:i + win, j:j + win].double()
                ma, mb = (w * pa).sum(), (w * pb).sum()
                va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
                cov = (w * (pa - ma) * (pb - mb)).sum()
                vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return torch.stack(vals).mean()


def test_psnr_ssim_against_direct_formulas(seed):
    a = torch.rand(3, 3, 12, 14)
    b = (a + 0.05 * torch.randn_like(a)).clamp(0, 1)
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(psnr(a, b), 10 * torch.log10(1 / mse))
    assert torch.isinf(psnr(a, a)).all()
    s = ssim(a, b, window=7)
    for f in range(3):
        assert abs(s[f].item() - _ssim_naive(a[f], b[f]).item()) < 1e-10
    assert torch.allclose(ssim(a, a), torch.ones(3, dtype=torch.float64))
    assert (ssim(a, b) < 1).all() and torch.allclose(ssim(a, b), ssim(b, a))
    noisier = (a + 0.2 * torch.randn_like(a)).clamp(0, 1)
    assert (ssim(a, noisier) < ssim(a, b)).all() and (psnr(a, noisier) < psnr(a, b)).all()
    sbs = side_by_side(a, b, gap=2)
    assert sbs.shape == (3, 3, 12, 30) and torch.equal(sbs[..., :14], a) and torch.equal(sbs[..., 16:], b)
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, b[:2])
