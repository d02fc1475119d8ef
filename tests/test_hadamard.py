import pytest
import torch

from q8lib import hadamard_matrix, hadamard_transform


@pytest.mark.parametrize("n", [1, 2, 16, 64, 256, 2048])
def test_matrix_is_orthonormal_and_symmetric(n):
    h = hadamard_matrix(n, torch.float64)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.equal(h, h.T)
    assert torch.allclose(h.abs(), torch.full_like(h, n**-0.5))


@pytest.mark.parametrize("n", [64, 1024, 8192])
def test_transform_matches_matrix_and_is_self_inverse(seed, n):
    x = torch.randn(5, 3, n, dtype=torch.float64)
    y = hadamard_transform(x)
    assert torch.allclose(y, x @ hadamard_matrix(n, torch.float64), atol=1e-10)
    assert torch.allclose(hadamard_transform(y), x, atol=1e-10)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))  # orthonormal: norms kept


@pytest.mark.parametrize("block", [16, 128])
def test_block_diagonal(seed, block):
    n = 512
    x = torch.randn(7, n, dtype=torch.float64)
    h = torch.block_diag(*[hadamard_matrix(block, torch.float64)] * (n // block))
    assert torch.allclose(hadamard_transform(x, block), x @ h, atol=1e-10)


def test_float32_and_bf16_keep_dtype(seed):
    x = torch.randn(4, 256)
    ref = hadamard_transform(x.double())
    y32 = hadamard_transform(x)
    assert y32.dtype == torch.float32 and (y32.double() - ref).abs().max() < 1e-5
    yb = hadamard_transform(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    # bf16 output: one rounding of the float32 result (rel. 2^-8), the input already rounded once
    assert ((yb.double() - ref).norm() / ref.norm()) < 2 * 2**-8


@pytest.mark.parametrize("n,block", [(96, None), (100, None), (512, 48), (64, 128)])
def test_unsupported_sizes_raise(n, block):
    with pytest.raises(ValueError, match="power-of-two|does not divide"):
        hadamard_transform(torch.randn(2, n), block)


def test_signs_under_fake_tensors_do_not_poison_the_cache():
    """torch.compile traces a triton_op's launcher with fake tensors; the ±1 matrix it builds then must not be
    cached, or later eager calls would get a tensor without data."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    from q8lib.hadamard import hadamard_signs

    with FakeTensorMode():
        fake = hadamard_signs(32, torch.float32, torch.device("cpu"))
    assert isinstance(fake, FakeTensor) and fake.shape == (32, 32)
    real = hadamard_signs(32, torch.float32, torch.device("cpu"))
    assert not isinstance(real, FakeTensor)
    assert torch.equal(real, hadamard_matrix(32, torch.float64).mul(32 ** 0.5).round().float())
