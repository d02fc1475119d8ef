"""Small shared test utilities."""
import torch


def sqnr_db(ref: torch.Tensor, x: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``x`` against ``ref`` in dB (float64)."""
    ref, x = ref.double(), x.double()
    return (10 * torch.log10(ref.pow(2).sum() / (ref - x).pow(2).sum())).item()


def rel_err(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return ((x - ref).norm() / ref.norm()).item()


def outlier_heavy(*shape, channels=4, factor=50.0, dtype=torch.float32):
    """Gaussian activations with a few channels scaled up, as LLM/DiT activations look."""
    x = torch.randn(*shape, dtype=dtype)
    idx = torch.randperm(shape[-1])[:channels]
    x[..., idx] *= factor
    return x
