"""Real activations and the 8-bit grids, measured for notebook 03 (no plotting here: :mod:`q8lib.tutorial.quant_plots`).

:func:`capture_linear_inputs` records what chosen linears of a model receive in one forward (forward pre-hooks,
removed afterwards); :func:`roundtrip_error` and :func:`quantization_errors` measure per-token INT8 / FP8 e4m3
round trips of such activations with and without the Hadamard rotation; :func:`e4m3_values` and
:func:`int8_values` list the values each format can represent, and :func:`e4m3_fields` splits one e4m3 byte
into its sign, exponent and mantissa bits.
"""
from __future__ import annotations

import torch
from torch import nn

from ..hadamard import hadamard_transform
from ..quant import FP8, dequantize_rowwise, quantize_rowwise

__all__ = ["capture_linear_inputs", "outlier_ratio", "channel_spread", "most_outlying", "roundtrip_error",
           "quantization_errors", "format_error_table", "short_name", "e4m3_values", "int8_values", "e4m3_fields"]


def capture_linear_inputs(model: nn.Module, inputs: dict, names) -> dict:
    """Run ``model(**inputs)`` once without gradients and return ``{name: input}`` for the modules ``names``.

    Each input is the first positional argument the module received on its first call, as a float32 CPU tensor
    ``[tokens, K]`` (all leading dims flattened). The hooks are forward *pre*-hooks that return ``None``, so
    the forward is unchanged; they are removed even if the forward fails. Unknown names raise ``KeyError``
    listing a few valid ones."""
    names = list(names)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)][:8]
        raise KeyError(f"no module named {missing} in {type(model).__name__}; linears include {linears}")
    captured: dict = {}

    def hook_for(name):
        def hook(module, args):
            if name not in captured and args:
                x = args[0].detach()
                captured[name] = x.reshape(-1, x.shape[-1]).float().cpu()
            return None  # a pre-hook that returns something would replace the module's input

        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in names]
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    return {n: captured[n] for n in names if n in captured}


def outlier_ratio(x: torch.Tensor) -> float:
    """``max |x| / mean |x|`` over the whole tensor: about 4-5 for Gaussian data, tens with outlier channels."""
    a = x.float().abs()
    return (a.amax() / a.mean().clamp_min(1e-30)).item()


def channel_spread(x: torch.Tensor) -> float:
    """Largest per-channel ``max |x|`` (over tokens) divided by the median one: how much one channel stands out."""
    per_channel = x.float().abs().reshape(-1, x.shape[-1]).amax(0)
    return (per_channel.max() / per_channel.median().clamp_min(1e-30)).item()


def most_outlying(acts: dict) -> str:
    """The name in ``{name: activations}`` whose :func:`channel_spread` is largest (the most informative layer
    to look at first)."""
    if not acts:
        raise ValueError("no activations given")
    return max(acts, key=lambda n: channel_spread(acts[n]))


def roundtrip_error(x: torch.Tensor, qdtype="int8", rotate: bool = False, block_size: int | None = None) -> float:
    """Relative error ``‖x̂ − x‖ / ‖x‖`` of per-token (row-wise) 8-bit quantization of ``x [..., K]``.

    With ``rotate`` the rows are Hadamard-rotated (``block_size`` channels at a time, default all ``K``) before
    quantizing and rotated back after (``H`` is its own inverse), so the error is measured in the original space."""
    x = x.float()
    xr = hadamard_transform(x, block_size) if rotate else x
    back = dequantize_rowwise(*quantize_rowwise(xr, qdtype))
    back = hadamard_transform(back, block_size) if rotate else back
    return ((back - x).norm() / x.norm().clamp_min(1e-30)).item()


def quantization_errors(acts: dict, formats=("int8", "fp8_e4m3")) -> list[dict]:
    """One row per (activation, format): ``name``, ``K``, ``format``, the outlier measures and the relative
    round-trip error ``plain`` and ``rotated`` (see :func:`roundtrip_error`)."""
    rows = []
    for name, x in acts.items():
        for fmt in formats:
            rows.append({"name": name, "K": int(x.shape[-1]), "tokens": int(x.numel() // x.shape[-1]),
                         "format": fmt, "outlier_ratio": outlier_ratio(x), "channel_spread": channel_spread(x),
                         "plain": roundtrip_error(x, fmt, rotate=False),
                         "rotated": roundtrip_error(x, fmt, rotate=True)})
    return rows


def short_name(name: str) -> str:
    """``transformer_blocks.3.attn2.to_q`` -> ``block 3.attn2.to_q`` (for labels)."""
    return name.replace("transformer_blocks.", "block ")


def format_error_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`quantization_errors` rows: errors in percent to 3 significant digits (trailing zeros
    kept), their ratio to 2 decimals (its third digit moves with the CPU's summation order)."""
    out = [f"{'layer input':<28}{'K':>6}{'max/mean':>10}{'format':>10}{'plain %':>10}{'rotated %':>11}"
           f"{'rotated/plain':>15}"]
    for r in rows:
        out.append(f"{short_name(r['name']):<28}{r['K']:>6}{r['outlier_ratio']:>#10.3g}{r['format']:>10}"
                   f"{100 * r['plain']:>#10.3g}{100 * r['rotated']:>#11.3g}{r['rotated'] / r['plain']:>15.2f}")
    return "\n".join(out)


def e4m3_values() -> torch.Tensor:
    """All positive finite values of ``torch.float8_e4m3fn``, ascending (float32): the 256 byte codes read as
    e4m3, minus zero, negatives and NaN. 126 values from ``2**-9`` (smallest subnormal) to 448."""
    codes = torch.arange(256, dtype=torch.int16).to(torch.uint8).view(FP8).float()
    return torch.unique(codes[torch.isfinite(codes) & (codes > 0)])


def int8_values() -> torch.Tensor:
    """The positive INT8 codes q8lib uses (1..127) as float32: evenly spaced, step 1."""
    return torch.arange(1, 128, dtype=torch.float32)


def e4m3_fields(code: int) -> dict:
    """The byte ``code`` (0-255) read as e4m3: ``sign``, ``exponent`` (4 bits, bias 7), ``mantissa`` (3 bits) and
    ``value`` (normal: ``±2**(e-7) * (1 + m/8)``; exponent 0: subnormal ``±2**-6 * m/8``; ``0x7F``/``0xFF``: NaN)."""
    if not 0 <= int(code) <= 255:
        raise ValueError(f"an e4m3 code is one byte (0-255), got {code}")
    code = int(code)
    value = torch.tensor([code], dtype=torch.uint8).view(FP8).float().item()
    return {"code": code, "bits": f"{code >> 7:01b} {(code >> 3) & 0xF:04b} {code & 0x7:03b}", "sign": code >> 7,
            "exponent": (code >> 3) & 0xF, "mantissa": code & 0x7, "value": value}
