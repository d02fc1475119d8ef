"""Whole-forward CUDA graphs: capture a model's forward once per input signature, then replay it.

Why: a compiled Q8 transformer forward is ~500 custom-op launches, and their Python cost (op
dispatch, Triton's launcher: ~56 ms of host work against ~50 ms of GPU work on the H100, see
benchmarks/NOTES_linear.md) leaves the GPU waiting. One graph replay launches them all at once.
``torch.compile(mode="reduce-overhead")`` does this per compiled region, but with LTX's regional
compilation all 28 blocks share one compiled region, and each replay overwrites the output the
next block still reads; capturing the whole forward by hand avoids that.

Use::

    fwd = CUDAGraphForward(transformer)          # works on eager or compiled models
    out = fwd(hidden_states=..., encoder_hidden_states=..., timestep=..., ...)   # same call as the model

or, inside a diffusers pipeline, ``enable_cuda_graphs(pipe.transformer)`` (undo:
``disable_cuda_graphs``): the module keeps its hooks and attributes, only its forward replays.

Each new signature (tensor shapes/dtypes/devices and the values of non-tensor arguments) is
warmed up and captured on first use (a few forwards); later calls copy the inputs into the
captured buffers and replay (:func:`graph_key` is that signature). A pipeline whose step calls the transformer
from several call sites keeps one graph per site: LTX-2's pipelines (diffusers 0.42.1) call it three times a step
(the CFG batch, the spatio-temporal-guidance pass with ``spatio_temporal_guidance_blocks``, the modality-isolation
pass with ``isolate_modalities=True``), each with one signature at every step (timesteps arrive as tensors;
``tests/test_app_pipelines.py`` checks it), so three graphs. Outputs (tensors, tuples such as LTX-2's
``return_dict=False`` pair, diffusers' output dataclasses: pytree nodes) are cloned out of the graph's memory unless
``clone_outputs=False`` (then the next call, of any signature, may overwrite them: the graphs share one memory
pool). Inference only: call it
under ``torch.inference_mode()``/``no_grad``; the model's weights must not be reassigned
(in-place updates are seen by the graph). So a model under CPU offload (diffusers'
``enable_model_cpu_offload`` / ``enable_sequential_cpu_offload``, group offloading), whose weights are
re-allocated at every call, is refused with a :class:`~q8lib.errors.SettingsError` (:mod:`q8lib.offload`).
"""
from __future__ import annotations

import torch
from torch.utils import _pytree as pytree

from .errors import BackendUnavailableError, SettingsError
from .offload import check_not_offloaded, is_offloaded

__all__ = ["CUDAGraphForward", "enable_cuda_graphs", "disable_cuda_graphs", "graph_key"]


def _signature(flat):
    return tuple((("T", tuple(a.shape), a.dtype, a.device, a.stride()) if isinstance(a, torch.Tensor) else ("V", repr(a)))
                 for a in flat)


def graph_key(args: tuple, kwargs: dict):
    """``(key, flat, spec)`` of a call ``forward(*args, **kwargs)``: the call flattened (``torch.utils._pytree``) and
    the key :class:`CUDAGraphForward` keeps one graph per: shapes, dtypes, devices and strides of the tensors, the
    ``repr`` of every other leaf, and the call's structure. Calls with equal keys replay the same graph (CPU-safe:
    tests check that a pipeline's calls keep one key per call site across denoising steps)."""
    flat, spec = pytree.tree_flatten((args, kwargs))
    return (_signature(flat), spec), flat, spec


class CUDAGraphForward:
    """Callable replacing ``module(*args, **kwargs)`` with captured CUDA-graph replays (see module docs).

    ``warmup``: eager calls on a side stream before capture (compilation, Triton autotuning and
    q8lib's per-shape launch choices happen there). ``max_graphs``: signatures kept before a
    ``RuntimeError`` says the inputs keep changing shape (each graph holds its own activations).
    """

    def __init__(self, module, warmup: int = 2, clone_outputs: bool = True, max_graphs: int = 8):
        if not torch.cuda.is_available():
            raise BackendUnavailableError("CUDAGraphForward needs a CUDA GPU; use it on a model on --device cuda")
        self.module = module
        self.warmup = max(1, int(warmup))
        self.clone_outputs = clone_outputs
        self.max_graphs = max_graphs
        self.graphs: dict = {}  # signature -> (graph, static flat inputs, static output)
        self._pool = torch.cuda.graph_pool_handle()
        owner = getattr(module, "__self__", module)  # enable_cuda_graphs passes the bound class forward
        self._owner = owner if isinstance(owner, torch.nn.Module) else None
        self._check_offload()

    def _check_offload(self):
        if self._owner is not None:
            check_not_offloaded(self._owner, "CUDAGraphForward")

    def _capture(self, flat, spec):
        if len(self.graphs) >= self.max_graphs:
            raise SettingsError(f"CUDAGraphForward: more than {self.max_graphs} input signatures captured; "
                               "pad inputs to fixed shapes or raise max_graphs")
        self._check_offload()  # offload hooks added since __init__
        static = [a.clone() if isinstance(a, torch.Tensor) else a for a in flat]
        if any(isinstance(a, torch.Tensor) and not a.is_cuda for a in static):
            raise SettingsError("CUDAGraphForward: every tensor argument must be on the GPU")
        args, kwargs = pytree.tree_unflatten(static, spec)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.module(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.module(*args, **kwargs)
        return graph, static, out

    def __call__(self, *args, **kwargs):
        if self._owner is not None and is_offloaded(self._owner):  # offloaded after a capture (one lookup)
            self._check_offload()
        key, flat, spec = graph_key(args, kwargs)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(flat, spec)
        graph, static, out = entry
        for dst, src in zip(static, flat):
            if isinstance(src, torch.Tensor) and dst.data_ptr() != src.data_ptr():
                dst.copy_(src)
        graph.replay()
        if not self.clone_outputs:
            return out
        return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)

    def reset(self):
        """Drop every captured graph (frees their memory once no outputs refer to it)."""
        self.graphs.clear()


def enable_cuda_graphs(module, **kwargs) -> CUDAGraphForward:
    """Route ``module``'s forward through a :class:`CUDAGraphForward` (instance attribute; the class is
    untouched, forward hooks still run). Returns the runner; :func:`disable_cuda_graphs` undoes it.

    Raises :class:`~q8lib.errors.SettingsError` if ``module`` is under CPU offload (see :mod:`q8lib.offload`)."""
    if "_q8_cuda_graph" in module.__dict__:
        return module._q8_cuda_graph
    check_not_offloaded(module, "enable_cuda_graphs")
    runner = CUDAGraphForward(type(module).forward.__get__(module), **kwargs)
    module._q8_cuda_graph = runner
    module.forward = runner
    return runner


def disable_cuda_graphs(module) -> bool:
    """Give ``module`` back its own forward (and free the captured graphs); ``False`` if none was enabled."""
    runner = module.__dict__.pop("_q8_cuda_graph", None)
    if runner is None:
        return False
    runner.reset()
    if module.__dict__.get("_old_forward") is runner:  # an accelerate hook (CPU offload) wraps the graph: keep the hook
        module._old_forward = type(module).forward.__get__(module)
    else:
        module.__dict__.pop("forward", None)
    return True
