"""Moved: ``q8lib.ltx`` was split into :mod:`q8lib.convert` (quantize_, skeletons, state dicts),
:mod:`q8lib.checkpoint` (save_q8, load_q8) and :mod:`q8lib.inspection` (inspect_transformer). This module only
re-exports their names for code written against earlier q8lib versions."""
import warnings

from .checkpoint import Q8CheckpointError, check_checkpoint_source, load_q8, quantize_pretrained, save_q8
from .convert import (activate_q8, build_q8_skeleton, check_ltx_transformer, check_q8_config, convert_state_dict,
                      is_quantized, quantize_)
from .inspection import InspectReport, inspect_transformer

warnings.warn("q8lib.ltx moved to q8lib.convert, q8lib.checkpoint and q8lib.inspection; import from there "
              "(this module only re-exports them for earlier code)", FutureWarning, stacklevel=2)

__all__ = ["Q8CheckpointError", "check_ltx_transformer", "quantize_", "convert_state_dict", "save_q8", "load_q8",
           "quantize_pretrained", "inspect_transformer", "InspectReport", "is_quantized", "build_q8_skeleton",
           "activate_q8", "check_q8_config", "check_checkpoint_source"]
