"""q8lib's attention modes side by side, read from committed results (notebook 05): kernel time on the H200 at
LTX's self-attention shapes, error against fp32 attention, and how much each mode moves the trained tiny model's
videos. Nothing is measured here."""
from __future__ import annotations

from .fast_path import load

__all__ = ["MODES", "SHAPES", "E2E_FILE", "attention_modes", "attention_modes_table"]

#: mode -> (what it computes, the kernel's record in the attention benchmark, that benchmark's results file)
MODES = {
    "sdpa": ("bf16 SDPA (cuDNN): the baseline", "sdpa_cudnn_bf16", "attention_cudnn_fp8_h200.json"),
    "fp8": ("q8lib's FP8 kernel: rotated q/k, per-token scales", "q8_fp8_kernel", "attention_cudnn_fp8_h200.json"),
    "int8": ("q8lib's INT8 kernel: INT8 q·k, 16-bit P·V", "q8_int8_kernel", "attention_h200_int8.json"),
    "fp8_tensor": ("cuDNN's FP8 engine: per-tensor scales, K smoothing", "cudnn_fp8_kernel",
                   "attention_cudnn_fp8_h200.json"),
}
#: [B, H, S, D] self-attention shapes of the attention benchmark: the 2B's head dim 64 and the 13B's 128
SHAPES = ("self_2x32x3630x64", "self_2x32x3630x128")
#: the end-to-end runs on the trained tiny model (``benchmarks/int8_attention_accuracy.py``)
E2E_FILE = "accuracy/fp8_tensor_e2e_cpu.json"


def _load(results_dir, name: str) -> dict:
    return load(results_dir, [name])[name]  # (a missing file: FileNotFoundError naming it)


def attention_modes(results_dir) -> dict[str, dict]:
    """``{mode: {what, ms: {shape: ms}, rel_err, psnr_alone_db, psnr_with_linears_db}}`` from the committed JSON:
    kernel milliseconds per :data:`SHAPES` entry (``None`` where not measured), relative error against fp32 on
    Gaussian inputs at the first shape, and the tiny model's mean PSNR against its fp32 videos with fp32 linears
    (``None`` for SDPA: that run is the reference itself) and with int8 Q8 linears."""
    runs = _load(results_dir, E2E_FILE)["end_to_end"]["runs"]
    files = {file: _load(results_dir, file)["shapes"] for _, _, file in MODES.values()}
    out = {}
    for mode, (what, record, file) in MODES.items():
        shapes = files[file]
        ms = {s: (shapes.get(s, {}).get("results", {}).get(record) or {}).get("ms") for s in SHAPES}
        first = shapes.get(SHAPES[0], {}).get("results", {}).get(record) or {}
        alone, linears = runs.get(f"fp32_linears+{mode}"), runs.get(f"q8_linears+{mode}")
        out[mode] = dict(what=what, ms=ms, rel_err=first.get("rel_err"),
                         psnr_alone_db=alone["psnr_db_mean"] if alone else None,
                         psnr_with_linears_db=linears["psnr_db_mean"] if linears else None)
    return out


def attention_modes_table(results_dir) -> str:
    """:func:`attention_modes` as a text table (kernel times also as a multiple of cuDNN's bf16 SDPA's speed), with
    a legend of what each mode computes."""
    rows = attention_modes(results_dir)
    base = rows["sdpa"]["ms"]

    def cell(v, fmt):
        return "–" if v is None else format(v, fmt)

    def shape(s):
        return "[" + s.split("_", 1)[1].replace("x", ", ") + "]"

    lines = [f"{'mode':<11}" + "".join(f"{'kernel ms ' + shape(s):>30}" for s in SHAPES)
             + f"{'err vs fp32':>13}{'PSNR alone':>12}{'+ int8 linears':>16}"]
    for mode, r in rows.items():
        times = "".join(f"{cell(r['ms'][s], '.3f')} ({cell(base[s] / r['ms'][s] if r['ms'][s] else None, '.2f')}x)"
                        .rjust(30) for s in SHAPES)
        alone = "exact" if mode == "sdpa" else cell(r["psnr_alone_db"], ".1f")
        lines.append(f"{mode:<11}{times}{cell(r['rel_err'], '.4f'):>13}{alone:>12}"
                     f"{cell(r['psnr_with_linears_db'], '.1f'):>16}")
    lines += [""] + [f"{mode:<11}{r['what']}" for mode, r in rows.items()]
    return "\n".join(lines)
