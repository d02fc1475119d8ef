"""The Q8 attention processor against diffusers' own LTX processor (CPU, reference backend)."""
import pytest
import torch

from q8lib import Q8AttnProcessor, mask_to_key_lengths, restore_attention, set_q8_attention
from q8lib.tiny import make_tiny_transformer
from helpers import sqnr_db


def _ltx_attention(cross: bool):
    from diffusers.models.transformers.transformer_ltx import LTXAttention

    attn = LTXAttention(query_dim=128, heads=2, kv_heads=2, dim_head=64, cross_attention_dim=96 if cross else None)
    for p in attn.parameters():  # non-trivial norm weights and biases
        torch.nn.init.normal_(p, std=0.1 if p.ndim == 2 else 0.5)
    return attn.eval()


def _bias(mask2d):
    # what LTXVideoTransformer3DModel.forward hands to cross-attention: [B, 1, Tk], 0 keep / -10000 drop
    return ((1 - mask2d.float()) * -10000.0).unsqueeze(1)


def _rope(batch, seq, dim):
    ang = torch.randn(batch, seq, dim // 2).repeat_interleave(2, dim=-1)
    return ang.cos(), ang.sin()


@pytest.mark.parametrize("batch", [1, 2])
def test_self_attention_with_rope(seed, batch):
    attn = _ltx_attention(cross=False)
    x = torch.randn(batch, 40, 128)
    rope = _rope(batch, 40, 128)
    with torch.no_grad():
        ref = attn(x, image_rotary_emb=rope)
        sdpa = Q8AttnProcessor(fp8=False)(attn, x, image_rotary_emb=rope)
        fp8 = Q8AttnProcessor(fp8=True)(attn, x, image_rotary_emb=rope)
    assert torch.allclose(sdpa, ref, atol=1e-5)
    assert sqnr_db(ref, fp8) > 20  # measured ~26 dB with e4m3 q/k/v/P


@pytest.mark.parametrize("batch", [1, 2])
def test_cross_attention_with_text_mask(seed, batch):
    attn = _ltx_attention(cross=True)
    x, text = torch.randn(batch, 30, 128), torch.randn(batch, 16, 96)
    mask = torch.ones(batch, 16)
    mask[-1, 5:] = 0  # right padding on the last sample (batch 1: partial length)
    with torch.no_grad():
        ref = attn(x, text, attention_mask=_bias(mask))
        sdpa = Q8AttnProcessor(fp8=False)(attn, x, text, attention_mask=_bias(mask))
        fp8 = Q8AttnProcessor(fp8=True)(attn, x, text, attention_mask=_bias(mask))
        # padded keys must be ignored: changing them changes nothing
        text2 = text.clone()
        text2[-1, 5:] = torch.randn(16 - 5, 96) * 10
        sdpa2 = Q8AttnProcessor(fp8=False)(attn, x, text2, attention_mask=_bias(mask))
    assert torch.allclose(sdpa, ref, atol=1e-5)
    assert torch.allclose(sdpa2, sdpa, atol=1e-5)
    assert sqnr_db(ref, fp8) > 20  # measured ~26 dB


def test_mask_to_key_lengths_forms():
    m = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    want = torch.tensor([3, 1], dtype=torch.int32)
    assert torch.equal(mask_to_key_lengths(_bias(m), 2), want)
    assert torch.equal(mask_to_key_lengths(m.bool(), 2), want)
    assert torch.equal(mask_to_key_lengths(_bias(m)[:, None], 2), want)  # [B, 1, 1, Tk]
    with pytest.raises(ValueError, match="right-padded"):
        mask_to_key_lengths(_bias(torch.tensor([[0, 1, 1, 1]])), 1)


def test_install_and_restore_processors():
    model = make_tiny_transformer()
    before = {n: type(p) for n, p in model.attn_processors.items()}
    originals = set_q8_attention(model)
    assert len(originals) == 2 * model.config.num_layers
    assert all(isinstance(p, Q8AttnProcessor) for p in model.attn_processors.values())
    restore_attention(model)
    assert {n: type(p) for n, p in model.attn_processors.items()} == before
    with pytest.raises(ValueError, match="no Q8 attention"):
        restore_attention(model)
