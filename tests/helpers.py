"""Small shared test utilities."""
import torch

from q8lib.compare import sqnr_db  # noqa: F401 (re-exported for the tests)


def rel_err(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return ((x - ref).norm() / ref.norm()).item()


def outlier_heavy(*shape, channels=4, factor=50.0, dtype=torch.float32):
    """Gaussian activations with a few channels scaled up, as LLM/DiT activations look."""
    x = torch.randn(*shape, dtype=dtype)
    idx = torch.randperm(shape[-1])[:channels]
    x[..., idx] *= factor
    return x
