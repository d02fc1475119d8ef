"""Which versions of the packages q8lib builds on are supported, and a check of the installed ones.

The bounds below are the ones in ``pyproject.toml``, extras included (a test keeps the two equal); each bound
exists because of a known break, named beside it. Tested combinations: torch 2.13 (CPU) with
triton 3.9 under the interpreter, and torch 2.11 (CUDA 13) with triton 3.6 on Hopper.
"""
from __future__ import annotations

import platform
import warnings
from importlib import metadata

__all__ = ["__version__", "SUPPORTED", "check_versions", "warn_unsupported", "package_versions"]

# q8lib's own version (pyproject.toml's; tests/test_packaging.py keeps them equal): what saved checkpoints record.
__version__ = "0.1.0"

# distribution -> (specifier, why that bound)
SUPPORTED = {
    "torch": (">=2.6", "torch.library.triton_op and wrap_triton (the CUDA row ops), torch.OutOfMemoryError, "
                      "custom_op with register_fake, float8_e4m3fn GEMMs"),
    "diffusers": ("==0.42.1", "LTXAttention and its processor signature, LTXVideoTransformer3DModel's module "
                              "names and compile_repeated_blocks are those of diffusers 0.42"),
    "transformers": (">=4.46", "the T5 encoder and tokenizer classes diffusers 0.42's LTX pipelines load"),
    "safetensors": (">=0.4", "metadata in safetensors headers (q8lib marks its checkpoints there)"),
    "triton": (">=3.0", "tl.dot with float8 operands and tl.permute/tl.reshape in the kernels (GPU extra)"),
    "peft": (">=0.18", "custom LoRA layers (LoraConfig._register_custom_module) for q8lib.load_lora; 0.17 does not "
                       "import with transformers 5; tested 0.18.0, 0.20.0, 0.21.2 (lora extra)"),
    "accelerate": (">=0.31", "diffusers 0.42's enable_model_cpu_offload / enable_sequential_cpu_offload ask for "
                             "accelerate>=0.31; q8lib.offload runs its hooks (_hf_hook, pre_forward/post_forward; "
                             "offload extra)"),
    "av": (">=18", "PyAV for diffusers 0.42's encode_video (LTX-2's mp4 with its audio track) and LTX-2's "
                   "conditioning-image re-encoding; tested 18.1.0, older releases untested (ltx2 extra)"),
    "nvidia-cudnn-frontend": (">=1.8", "pygraph.sdpa_fp8 with per-tensor descales and an FP8 output, behind "
                                       "attention='fp8_tensor'; tested 1.32.0 on the H200, older releases untested "
                                       "(cudnn extra)"),
}


def check_versions(installed: dict[str, str | None] | None = None) -> list[str]:
    """One sentence per installed package outside :data:`SUPPORTED`; empty when all are inside.

    ``installed`` maps distribution names to versions (default: what ``importlib.metadata`` finds);
    packages that are not installed are not reported here (their import fails with its own message).
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    problems = []
    for name, (spec, why) in SUPPORTED.items():
        if installed is not None:
            version = installed.get(name)
        else:
            try:
                version = metadata.version(name)
            except metadata.PackageNotFoundError:
                version = None
        if version is None:
            continue
        try:
            ok = Version(version) in SpecifierSet(spec)
        except InvalidVersion:
            ok = False
        if not ok:
            problems.append(f"{name} {version} is outside the supported range {name}{spec} ({why}); "
                            f"install a supported one: pip install '{name}{spec}'")
    return problems


def warn_unsupported() -> list[str]:
    """Warn once per unsupported installed package (:func:`check_versions`); returns the sentences."""
    problems = check_versions()
    for p in problems:
        warnings.warn(p, UserWarning, stacklevel=2)
    return problems


def package_versions(*names: str) -> dict[str, str | None]:
    """``{"python": ..., "torch": ..., "cuda": ...}`` plus the installed version of each distribution in
    ``names`` (``None`` when not installed): the version block of every results JSON q8lib writes."""
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
