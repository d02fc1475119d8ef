"""What the transformer benchmark builds: the models it knows by name (:data:`BENCH_MODELS`), the latent shape of a
video (and its audio, for LTX-2), random-weight transformers built directly on the device, their inputs, and the
FLOPs of their linears.

Random weights (:func:`build_transformer`): the model is built on the meta device, then every tensor is allocated
on the device one at a time, drawn in float32 from a generator seeded per region (everything outside the blocks,
then each block) and cast to the dtype it runs in. So no float32 copy of the model ever exists (the 19B LTX-2 is
37.8 GB in bf16, 75.5 GB in float32), the bf16 weights are the float32 reference's rounded, and an 8-bit variant
quantizes each block as soon as it is filled (``each_block``): its peak is the 8-bit model plus one bf16 block.
The draws follow the modules' default initialization: ``nn.Linear``'s (uniform within ``1/sqrt(fan_in)``, weight
and bias), norm weights one, other vectors zero, modulation tables ``N(0, 1/width)`` as diffusers' ``randn(n,
width) / width**0.5`` (LTX-2.3's prompt and a2v tables, ``randn`` without the scale in diffusers, get it too).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..convert import transformer_class
from ..ltx2 import is_ltx2
from ..models import (LTX2_CONFIG, LTX2_TINY_CONFIG, LTX23_CONFIG, LTX_2B_CONFIG, LTX_13B_CONFIG,
                      LTX_VAE_SCALE_FACTORS, dummy_inputs, latent_grid, ltx2_dummy_inputs)
from ..tiny.components import TINY_TRANSFORMER_CONFIG

__all__ = ["BenchModel", "BENCH_MODELS", "LTX_VAE_SCALE_FACTORS", "latent_grid", "audio_latent_frames",
           "meta_transformer", "build_transformer", "bench_inputs", "linear_flops", "outputs"]

@dataclass(frozen=True)
class BenchModel:
    """One ``--config`` of the benchmark: the name the JSON gives it (``shape.model``), its transformer config,
    its default video (frames, height, width in pixels; the latent grid follows from the VAE), its text length (the pipeline's default ``max_sequence_length``) and, when the float32 reference forward is
    skipped by default, why."""

    name: str
    config: dict
    text: int
    video: tuple[int, int, int]
    fp32_skip: str | None = None


_LTX2_FP32 = ("skipped by default for LTX-2 (--fp32 runs it): its float32 weights are 75.5 GB (they fit an H200, not "
              "an 80 GB GPU), and the build plus a non-TF32 forward cost ~30 s of a run kept under 9 minutes; the "
              "issue's error target is against bf16, which is recorded")
BENCH_MODELS = {
    # 81 frames at 480x704 -> 11x15x22 latents: the LTX-Video shape of record (earlier results files)
    "2b": BenchModel("LTX-Video 2B", LTX_2B_CONFIG, text=128, video=(81, 480, 704)),
    "13b": BenchModel("LTX-Video 0.9.7 13B", LTX_13B_CONFIG, text=128, video=(81, 480, 704)),
    "tiny": BenchModel("LTX-Video tiny (CPU smoke run)", TINY_TRANSFORMER_CONFIG, text=128, video=(81, 480, 704)),
    # LTX2Pipeline: 121 frames of 512x768 (its default height and width), text padded to max_sequence_length=1024
    "ltx2": BenchModel("LTX-2 (19B, Lightricks/LTX-2)", LTX2_CONFIG, text=1024, video=(121, 512, 768),
                       fp32_skip=_LTX2_FP32),
    "ltx2.3": BenchModel("LTX-2.3 layout (LTX23_CONFIG, 19B as configured here; Lightricks/LTX-2.3)", LTX23_CONFIG,
                         text=1024, video=(121, 512, 768), fp32_skip=_LTX2_FP32),
    "ltx2-tiny": BenchModel("LTX-2 tiny (LTX2_TINY_CONFIG, CPU smoke run)", LTX2_TINY_CONFIG, text=16,
                            video=(17, 64, 96), fp32_skip=_LTX2_FP32),
}


def audio_latent_frames(frames: int, config: dict, fps: float = 24.0) -> int:
    """LTX-2's audio latent length for a video of ``frames`` at ``fps``, as ``LTX2Pipeline`` computes it
    (``round(duration_s * audio_latents_per_second)``, with sampling rate / hop length / the audio VAE's 4x time
    compression = 16000 / 160 / 4 = 25 latents per second; the config's ``audio_scale_factor`` is that 4).
    121 frames at 24 fps: 5.04 s -> 126 audio tokens."""
    per_second = config["audio_sampling_rate"] / config["audio_hop_length"] / config["audio_scale_factor"]
    return round(frames / fps * per_second)


def meta_transformer(cfg: dict) -> nn.Module:
    """The transformer ``cfg`` describes (LTX-Video or LTX-2, :func:`q8lib.convert.transformer_class`) on the meta
    device: no memory, no weights."""
    with torch.device("meta"):
        return transformer_class(cfg).from_config(cfg).eval()


def _fill(modules, gen: torch.Generator, device, dtype) -> None:
    """Allocate and draw every meta parameter of ``modules`` (not their children) on ``device`` (module docs)."""
    for mod in modules:
        if any(b is not None and b.is_meta for b in mod._buffers.values()):
            raise RuntimeError(f"{type(mod).__name__} holds buffers; the random-weight builder does not know them")
        for name, t in list(mod._parameters.items()):
            if t is None or not t.is_meta:
                continue
            w = torch.empty(t.shape, device=device, dtype=torch.float32)
            if isinstance(mod, nn.Linear):
                w.uniform_(-mod.in_features ** -0.5, mod.in_features ** -0.5, generator=gen)
            elif t.ndim == 1:
                w.fill_(1.0 if name == "weight" else 0.0)
            else:
                w.normal_(0.0, t.shape[-1] ** -0.5, generator=gen)
            mod._parameters[name] = nn.Parameter(w.to(dtype), requires_grad=False)


@torch.no_grad()
def build_transformer(cfg: dict, device, dtype, seed: int = 0, each_block=None) -> nn.Module:
    """The transformer of ``cfg`` with seeded random weights, allocated on ``device`` in ``dtype`` one tensor at a
    time (module docs). ``each_block(model, index)`` runs as soon as block ``index`` is filled (later blocks are
    still on the meta device): the 8-bit variants quantize it there. The same ``seed`` gives the same weights in
    every dtype (those of a bf16 model are the float32 model's, rounded)."""
    device = torch.device(device)
    model = meta_transformer(cfg)
    gen = torch.Generator(device=device)
    outside = [m for n, m in model.named_modules() if n.split(".")[0] != "transformer_blocks"]
    _fill(outside, gen.manual_seed(seed * 1_000_003), device, dtype)
    for i, block in enumerate(model.transformer_blocks):
        _fill(list(block.modules()), gen.manual_seed(seed * 1_000_003 + 1 + i), device, dtype)
        if each_block is not None:
            each_block(model, i)
    return model


def bench_inputs(cfg: dict, batch: int, frames: int, height: int, width: int, text: int, device,
                 dtype=torch.bfloat16, audio_frames: int | None = None) -> dict:
    """One forward's inputs at the latent grid ``frames x height x width`` (seed 1): LTX-Video's from
    :func:`q8lib.models.dummy_inputs` (``text`` tokens, no padding); LTX-2's from
    :func:`q8lib.models.ltx2_dummy_inputs` with ``audio_frames`` audio tokens (default: those of ``frames``
    latent frames' video, :func:`audio_latent_frames`) and, as ``LTX2Pipeline`` passes them, the RoPE coordinates
    computed once outside the forward (``video_coords [B, 3, tokens, 2]``, ``audio_coords [B, 1, audio, 2]``)."""
    if not is_ltx2(meta := meta_transformer(cfg)):
        return dummy_inputs(cfg, batch, frames, height, width, text, seed=1, device=device, dtype=dtype,
                            text_kept=text)
    if audio_frames is None:
        audio_frames = audio_latent_frames(1 + (frames - 1) * cfg["vae_scale_factors"][0], cfg)
    kw = ltx2_dummy_inputs(cfg, batch, frames, height, width, audio_frames, text, seed=1, device=device, dtype=dtype)
    kw["video_coords"] = meta.rope.prepare_video_coords(batch, frames, height, width, device, fps=kw["fps"])
    kw["audio_coords"] = meta.audio_rope.prepare_audio_coords(batch, audio_frames, device)
    return kw


def linear_flops(cfg: dict, inputs: dict) -> tuple[int, int]:
    """FLOPs (a multiply-add counts 2) of the block linears (the 8-bit ones) and of all linears in one forward with
    ``inputs``: counted from the inputs every ``nn.Linear`` sees in a meta-device forward (no memory, no time)."""
    model = meta_transformer(cfg)
    flops = {"block": 0, "other": 0}

    def count(where):
        def hook(mod, args, out):
            flops[where] += 2 * (args[0].numel() // mod.in_features) * mod.in_features * mod.out_features
        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            mod.register_forward_hook(count("block" if name.startswith("transformer_blocks.") else "other"))
    meta = {k: v.to("meta", torch.float32 if v.is_floating_point() else v.dtype) if torch.is_tensor(v) else v
            for k, v in inputs.items()}
    with torch.no_grad():
        model(**meta)
    return flops["block"], flops["block"] + flops["other"]


def outputs(out) -> dict:
    """A forward's outputs by stream: ``{"video": sample}`` and, for LTX-2, ``"audio": audio_sample``."""
    streams = {"video": out.sample}
    if getattr(out, "audio_sample", None) is not None:
        streams["audio"] = out.audio_sample
    return streams
