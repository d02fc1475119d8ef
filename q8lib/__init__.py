"""q8lib: 8-bit (Q8) inference of LTX-Video in Hugging Face diffusers.

Hadamard-rotated 8-bit linears (per-token x per-channel scales), fused RMSNorm/GELU/quantization
and FP8 attention, with a pure-PyTorch reference that runs anywhere and faster GPU backends.

The inference library is this package's top level (math: ``reference``, ``quant``, ``hadamard``;
``backends`` + ``kernels``; ``modules``, ``config``; LTX integration: ``convert``, ``checkpoint``,
``pretrained``, ``attention``, ``fused``, ``parallel``, ``cudagraph``, ``lora``; LTX-2 specifics: ``ltx2``).
Layers above it, each importing only downward:
:mod:`q8lib.tiny` (the trained toy default), :mod:`q8lib.app` (generate/compare/memory and the CLI),
:mod:`q8lib.bench` (benchmarks), :mod:`q8lib.tutorial` (notebook helpers). The modules ``pipeline``, ``ltx``,
``cli``, ``video``, ``viz``, ``patching``, ``judge``, ``shapes`` and ``train`` at this level only re-export the
names of earlier versions from their new places, with a ``FutureWarning``.
"""
from .attention import Q8AttnProcessor, Q8LTX2AttnProcessor, mask_to_key_lengths, restore_attention, set_q8_attention
from .backends import Backend, get_backend, list_backends, register_backend, resolve_backend
from .checkpoint import load_q8, quantize_pretrained, save_q8
from .config import KEEP_HIGH_PRECISION, KEEP_HIGH_PRECISION_LTX2, Q8Config, Q8Runtime
from .convert import activate_q8, build_q8_skeleton, convert_state_dict, is_quantized, quantize_
from .cudagraph import CUDAGraphForward, disable_cuda_graphs, enable_cuda_graphs
from .errors import (BackendUnavailableError, ModelUnavailableError, Q8CheckpointError, Q8Error,
                     Q8FallbackWarning, Q8Warning, SettingsError, UnsupportedModelError)
from .hadamard import hadamard_matrix, hadamard_transform
from .inspection import inspect_transformer
from .lora import load_lora
from .modules import Q8GELU, Q8Linear, Q8RMSNorm, quantize_weight
from .pretrained import load_pipeline_q8
from .quant import dequantize_rowwise, quantize_rowwise
from .text_encoder import quantize_text_encoder_
from .versions import __version__

__all__ = ["Q8AttnProcessor", "Q8LTX2AttnProcessor", "mask_to_key_lengths", "restore_attention", "set_q8_attention", "Backend", "get_backend",
           "list_backends", "register_backend", "resolve_backend", "load_q8", "quantize_pretrained", "save_q8",
           "load_pipeline_q8", "__version__",
           "KEEP_HIGH_PRECISION", "KEEP_HIGH_PRECISION_LTX2", "Q8Config", "Q8Runtime", "activate_q8", "build_q8_skeleton", "convert_state_dict",
           "is_quantized", "quantize_", "CUDAGraphForward", "disable_cuda_graphs", "enable_cuda_graphs",
           "BackendUnavailableError", "ModelUnavailableError", "Q8CheckpointError", "Q8Error", "Q8FallbackWarning",
           "Q8Warning", "SettingsError", "UnsupportedModelError", "hadamard_matrix", "hadamard_transform",
           "inspect_transformer", "load_lora", "Q8GELU", "Q8Linear", "Q8RMSNorm", "quantize_weight",
           "dequantize_rowwise", "quantize_rowwise", "quantize_text_encoder_"]
