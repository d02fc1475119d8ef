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


def ltx_attention(cross: bool = False, dim_head: int = 64, heads: int = 2, device="cpu"):
    """A diffusers ``LTXAttention`` (query dim 128; cross-attention from 96-wide context) with random weights."""
    from diffusers.models.transformers.transformer_ltx import LTXAttention

    attn = LTXAttention(query_dim=128, heads=heads, kv_heads=heads, dim_head=dim_head,
                        cross_attention_dim=96 if cross else None)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.1 if p.ndim == 2 else 0.5)
    return attn.eval().to(device)
