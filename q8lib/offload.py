"""A Q8 transformer under diffusers' memory options (CPU offload through accelerate's hooks).

* ``pipe.enable_model_cpu_offload()`` moves the whole transformer to the GPU before its forward (accelerate's
  ``CpuOffload`` hook, ``module.to(device)``) and back to the CPU after the pipeline call. Q8 modules keep their
  8-bit buffers and their dtypes through ``.to()`` and resolve their backend from the device at every call, so
  this works as is. Quantize (or ``load_q8``) on the GPU first: the fused block forward is installed for the
  device the model is on when it is quantized (:func:`q8lib.fused.install_if_fast`).
* ``pipe.enable_sequential_cpu_offload()`` leaves meta tensors in the model and keeps the weights on the CPU;
  each module's own tensors go to the GPU only for the duration of that module's forward (accelerate's
  ``AlignDevicesHook``, one per module that holds tensors, 8-bit buffers included). q8lib's fused block forward
  and its attention producers read tensors of submodules they do not call (the linears' 8-bit weights and
  scales, ``norm_q``/``norm_k``), so they load those submodules' tensors themselves for the duration of the call
  (:func:`onloaded`): one block's weights are on the GPU at a time.
* CUDA graphs replay fixed GPU addresses, and both offloads free and re-allocate the weights at every call:
  :func:`q8lib.enable_cuda_graphs` refuses an offloaded model (:func:`check_not_offloaded`), and so does a
  graph whose model is offloaded after the capture, at its next call.

Works without accelerate installed (the hooks are recognised by their attributes).
"""
from __future__ import annotations

import contextlib

from torch import nn

from .errors import SettingsError

__all__ = ["is_offloaded", "offloaded_modules", "check_not_offloaded", "onloaded"]

# diffusers' group offloading (pipe.enable_group_offload / model.enable_group_offload) registers this hook name
_GROUP_OFFLOADING = "group_offloading"


def _moves_tensors(hook) -> bool:
    """Whether one of accelerate's hooks moves the module's tensors between devices at each call."""
    if type(hook).__name__ == "CpuOffload" or getattr(hook, "offload", False):
        return True
    return any(_moves_tensors(h) for h in getattr(hook, "hooks", ()))  # accelerate's SequentialHook


def is_offloaded(module: nn.Module) -> bool:
    """Whether accelerate's hook on ``module`` itself moves its tensors at each call (sequential or model CPU
    offload). One dictionary lookup when there is no hook: cheap enough for every forward."""
    hook = module.__dict__.get("_hf_hook")
    return hook is not None and _moves_tensors(hook)


def offloaded_modules(model: nn.Module) -> list[str]:
    """Dotted names (``""`` for ``model`` itself) of the modules whose tensors an offload hook moves at each
    call: accelerate's (diffusers' ``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload``) or
    diffusers' group offloading."""
    out = []
    for name, m in model.named_modules():
        registry = m.__dict__.get("_diffusers_hook")
        group = registry is not None and getattr(registry, "get_hook", lambda _: None)(_GROUP_OFFLOADING) is not None
        if is_offloaded(m) or group:
            out.append(name)
    return out


def check_not_offloaded(model: nn.Module, what: str) -> None:
    """Raise :class:`SettingsError` if an offload hook moves ``model``'s tensors (``what`` names the feature)."""
    names = offloaded_modules(model)
    if names:
        shown = ", ".join(repr(n) if n else "the model itself" for n in names[:3]) + (", ..." if len(names) > 3 else "")
        raise SettingsError(
            f"{what} cannot run a model whose weights are offloaded (CPU offload hooks on {shown}): a CUDA graph "
            "replays fixed GPU addresses, and offloading frees and re-allocates the weights at every call. Use "
            "either the CUDA graph (no offload: pipe.to('cuda')) or the offload (without CUDA graphs: "
            "q8lib.disable_cuda_graphs(pipe.transformer) before pipe.enable_model_cpu_offload()).")


@contextlib.contextmanager
def onloaded(modules):
    """Run the offload hooks of ``modules`` around a block of code that reads their tensors without calling
    them: their tensors are on the execution device inside the block and offloaded again after it.

    A no-op for modules without accelerate hooks. Used by the fused block forward and the Q8 attention
    processor under ``enable_sequential_cpu_offload``.
    """
    hooked = [(m, m.__dict__["_hf_hook"]) for m in modules if is_offloaded(m)]
    for m, hook in hooked:
        hook.pre_forward(m)
    try:
        yield
    finally:
        for m, hook in reversed(hooked):
            hook.post_forward(m, None)
