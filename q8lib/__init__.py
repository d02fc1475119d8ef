"""q8lib: 8-bit (Q8) inference of LTX-Video in Hugging Face diffusers.

Hadamard-rotated 8-bit linears (per-token x per-channel scales), fused RMSNorm/GELU/quantization
and FP8 attention, with a pure-PyTorch reference that runs anywhere and faster GPU backends.
"""
from .attention import Q8AttnProcessor, mask_to_key_lengths, restore_attention, set_q8_attention
from .backends import Backend, get_backend, list_backends, register_backend, resolve_backend
from .config import KEEP_HIGH_PRECISION, Q8Config
from .cudagraph import CUDAGraphForward, disable_cuda_graphs, enable_cuda_graphs
from .errors import (BackendUnavailableError, ModelUnavailableError, Q8CheckpointError, Q8Error,
                     Q8FallbackWarning, Q8Warning, SettingsError, UnsupportedModelError)
from .hadamard import hadamard_matrix, hadamard_transform
from .ltx import (activate_q8, build_q8_skeleton, convert_state_dict, inspect_transformer,
                  is_quantized, load_q8, quantize_, quantize_pretrained, save_q8)
from .modules import Q8GELU, Q8Linear, Q8RMSNorm, quantize_weight
from .quant import dequantize_rowwise, quantize_rowwise

__version__ = "0.1.0"
