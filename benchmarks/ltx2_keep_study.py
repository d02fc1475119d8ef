"""Which LTX-2 linears stay in high precision: the measured error of quantizing each group (CPU, not a test).

    PYTHONPATH=. python benchmarks/ltx2_keep_study.py [--seeds 0,1,2] [--out ltx2_keep.json]

Tiny random LTX-2 transformers (``q8lib.models.LTX2_TINY_CONFIG``: 2 blocks, video 2x64, audio 2x32, split RoPE;
"gated": + gated attention, cross-attention modulation, no FFN bias, STG processors, no caption projection, as
LTX-2.3), fp32, seeded; inputs as ``LTX2Pipeline`` passes them (``ltx2_dummy_inputs``). Each row quantizes one
group of linears (reference backend, diffusers' attention: ``attention="keep"``, so only the linears differ)
and reports the relative error of the video and audio outputs against the fp32 model, max over seeds.
Inside the blocks a group is chosen with ``quantize_``'s ``filter_fn``; outside them (``proj_in`` ...) the linears
are swapped for ``Q8Linear.from_linear`` by hand, since q8lib never converts those.

Measured (CPU, torch 2.13, diffusers 0.42.1, seeds 0-2, max over seeds; video / audio relative error):

| group quantized | plain int8 | plain fp8_e4m3 | gated int8 | gated fp8_e4m3 |
| --- | --- | --- | --- | --- |
| to_gate_logits only | (none) | (none) | 0.0026 / 0.0023 | 0.0103 / 0.0105 |
| block linears but the gates (the default) | 0.0097 / 0.0105 | 0.0432 / 0.0398 | 0.0107 / 0.0106 | 0.0506 / 0.0382 |
| block linears and the gates | 0.0097 / 0.0105 | 0.0432 / 0.0398 | 0.0109 / 0.0111 | 0.0530 / 0.0409 |
| proj_in + audio_proj_in | 0.0052 / 0.0051 | 0.0236 / 0.0260 | 0.0059 / 0.0050 | 0.0283 / 0.0267 |
| proj_out + audio_proj_out | 0.0086 / 0.0087 | 0.0392 / 0.0354 | 0.0095 / 0.0089 | 0.0357 / 0.0371 |
| timestep / modulation embeddings | 0.0025 / 0.0027 | 0.0095 / 0.0114 | 0.0035 / 0.0029 | 0.0118 / 0.0106 |

Decision: the gates alone add a quarter (int8) to a fifth (e4m3) of the error of all the block linears (errors add
in quadrature: 0.0107 -> 0.0109), for 0.15% of LTX-2.3's weights and a quantization pass over each gated attention's
input for a GEMM of ``heads`` outputs: they stay in high precision (``KEEP_HIGH_PRECISION_LTX2``). Outside the
blocks everything stays in high precision as for LTX-1: the input projections alone would add half of the whole
model's error, the output projections nearly as much as all block linears, the embeddings a quarter, for a
negligible share of the FLOPs (they run once per forward or on 128 channels).
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
from diffusers import LTX2VideoTransformer3DModel

import q8lib
from q8lib.models import LTX2_TINY_CONFIG, ltx2_dummy_inputs

GATED = dict(gated_attn=True, cross_attn_mod=True, audio_gated_attn=True, audio_cross_attn_mod=True, ff_bias=False,
             audio_ff_bias=False, perturbed_attn=True, use_prompt_embeddings=False)
OUTSIDE = {
    "proj_in + audio_proj_in": ("proj_in", "audio_proj_in"),
    "proj_out + audio_proj_out": ("proj_out", "audio_proj_out"),
    "timestep / modulation embeddings": ("time_embed", "audio_time_embed", "av_cross_attn_", "prompt_adaln",
                                         "audio_prompt_adaln"),
}


def rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / a.double().norm()).item()


def _swap_outside(model, prefixes, config):
    for name, m in list(model.named_modules()):
        if isinstance(m, torch.nn.Linear) and name.split(".")[0].startswith(prefixes):
            parent, _, child = name.rpartition(".")
            q = q8lib.Q8Linear.from_linear(m, config.weight_dtype, config.hadamard_block, backend="reference")
            setattr(model.get_submodule(parent) if parent else model, child, q)


@torch.no_grad()
def run(seeds, variants=("plain", "gated")):
    rows = []
    for variant in variants:
        cfg = dict(LTX2_TINY_CONFIG, **(GATED if variant == "gated" else {}))
        for dtype in ("int8", "fp8_e4m3"):
            config = q8lib.Q8Config(weight_dtype=dtype, keep_high_precision=())
            cases = {
                "to_gate_logits only": lambda m, n: n.endswith("to_gate_logits"),
                "all block linears but the gates": lambda m, n: not n.endswith("to_gate_logits"),
                "all block linears and the gates": lambda m, n: True,
            }
            errs = {k: [] for k in list(cases) + list(OUTSIDE)}
            for seed in seeds:
                torch.manual_seed(seed)
                model = LTX2VideoTransformer3DModel(**cfg).eval()
                inputs = ltx2_dummy_inputs(cfg, seed=seed)
                ref = model(**inputs, return_dict=False)
                for name, fn in cases.items():
                    q = q8lib.quantize_(copy.deepcopy(model), config, fn, backend="reference", attention="keep",
                                        progress=False)
                    out = q(**inputs, return_dict=False)
                    errs[name].append((rel(ref[0], out[0]), rel(ref[1], out[1])))
                for name, prefixes in OUTSIDE.items():
                    q = copy.deepcopy(model)
                    _swap_outside(q, prefixes, config)
                    out = q(**inputs, return_dict=False)
                    errs[name].append((rel(ref[0], out[0]), rel(ref[1], out[1])))
            for name, e in errs.items():
                rows.append(dict(variant=variant, weight_dtype=dtype, group=name, video=max(v for v, _ in e),
                                 audio=max(a for _, a in e)))
                print(f"{variant:6s} {dtype:9s} {name:40s} video {rows[-1]['video']:.4f} audio {rows[-1]['audio']:.4f}")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = run([int(s) for s in args.seeds.split(",")])
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
