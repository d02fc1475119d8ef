"""Small shared test utilities."""
import torch

from q8lib.compare import sqnr_db  # noqa: F401 (re-exported for the tests)
from q8lib.models import dummy_inputs
from q8lib.tiny import TINY_TRANSFORMER_CONFIG


def tiny_inputs(batch: int = 2, dtype=torch.bfloat16, seed: int = 0) -> dict:
    """One forward's inputs for the random tiny transformer: 3x4x4 latents, 16 text tokens, last sample padded."""
    return dummy_inputs(TINY_TRANSFORMER_CONFIG, batch, 3, 4, 4, 16, seed=seed, dtype=dtype)


@torch.no_grad()
def forward(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).sample


def rel_err(ref: torch.Tensor, x: torch.Tensor) -> float:
    ref, x = ref.double(), x.double()
    return ((x - ref).norm() / ref.norm()).item()


def outlier_heavy(*shape, channels=4, factor=50.0, dtype=torch.float32):
    """Gaussian activations with a few channels scaled up, as LLM/DiT activations look."""
    x = torch.randn(*shape, dtype=dtype)
    idx = torch.randperm(shape[-1])[:channels]
    x[..., idx] *= factor
    return x
