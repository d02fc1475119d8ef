"""The toy layer: a tiny LTX-Video trained here on synthetic moving shapes, the embedded default.

* :mod:`~q8lib.tiny.components`: seeded random tiny components and the trained default pipeline
  (:func:`default_pipeline`, shipped in ``q8lib/assets/tiny-ltx-shapes``);
* :mod:`~q8lib.tiny.shapes`: the data (captions and rendered clips);
* :mod:`~q8lib.tiny.judge`: an automatic judge of the clips and the bf16-vs-Q8 evaluation;
* :mod:`~q8lib.tiny.trainer` / :mod:`~q8lib.tiny.train`: how it was trained (``python -m q8lib.tiny.train``).

Depends on the inference library only; the app, tutorial and bench layers build on it.
"""
from ..models import LTX_2B_CONFIG, LTX_13B_CONFIG  # the catalogue's; earlier code imported them from here
from .components import (SHAPES_DIR, SHAPES_GENERATION, SHAPES_SCHEDULER_CONFIG, SHAPES_T5_CONFIG,
                         SHAPES_TRANSFORMER_CONFIG, SHAPES_VAE_CONFIG, TINY_TRANSFORMER_CONFIG, TinyDefaultMissingError,
                         default_pipeline, has_default_pipeline, make_shapes_components, make_tiny_text_encoder,
                         make_tiny_tokenizer, make_tiny_transformer, make_tiny_vae)

__all__ = ["TINY_TRANSFORMER_CONFIG", "make_tiny_transformer", "make_tiny_tokenizer", "make_tiny_text_encoder",
           "make_tiny_vae", "SHAPES_DIR", "SHAPES_TRANSFORMER_CONFIG", "SHAPES_VAE_CONFIG", "SHAPES_T5_CONFIG",
           "SHAPES_GENERATION", "SHAPES_SCHEDULER_CONFIG", "make_shapes_components", "has_default_pipeline",
           "default_pipeline", "TinyDefaultMissingError", "LTX_2B_CONFIG", "LTX_13B_CONFIG"]
