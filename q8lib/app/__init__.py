"""The app layer: whole runs of an LTX pipeline with a Q8 transformer, as a library and as ``q8lib``.

* :mod:`~q8lib.app.run`: :func:`generate`, :func:`compare`, :func:`memory`, :func:`convert`, :func:`demo`,
  what the command line, the notebooks and the benchmarks call;
* :mod:`~q8lib.app.settings` (model names, :class:`GenerationSettings`, device/dtype/backend checks),
  :mod:`~q8lib.app.inputs` (image, prompt cache, outputs, W&B), :mod:`~q8lib.app.loading`
  (:func:`load_pipeline`, :func:`load_transformer`), :mod:`~q8lib.app.pipelines` (which diffusers pipeline
  runs a model: LTX-Video 0.9.x, 0.9.7/0.9.8, LTX-2), :mod:`~q8lib.app.prompts` (T5 embeddings and
  their cache), :mod:`~q8lib.app.measure` (timed runs, memory), :mod:`~q8lib.app.video` (mp4, plots);
* :mod:`~q8lib.app.cli`: ``q8lib`` itself, which parses arguments and prints reports only.

Builds on the inference library and the tiny default (:mod:`q8lib.tiny`); nothing below imports it.
"""
from .loading import load_pipeline, load_transformer, random_q8_transformer, transformer_config
from .measure import environment, oom_message, run_pipeline, transformer_memory
from .prompts import PromptCache, encode_prompts, free_text_encoder, random_prompt_embeds
from .run import RunOptions, compare, convert, convert_checkpoint, demo, generate, memory
from .settings import (DEFAULT_NEGATIVE_PROMPT, MODEL_ALIASES, RANDOM_MODELS, TINY, GenerationSettings, check_backend,
                       check_cuda_graph, resolve_device, resolve_dtype, settings_for)

__all__ = ["generate", "compare", "memory", "convert", "convert_checkpoint", "demo", "RunOptions",
           "load_pipeline", "load_transformer", "random_q8_transformer", "transformer_config",
           "run_pipeline", "transformer_memory", "environment", "oom_message",
           "PromptCache", "encode_prompts", "free_text_encoder", "random_prompt_embeds",
           "TINY", "RANDOM_MODELS", "MODEL_ALIASES", "DEFAULT_NEGATIVE_PROMPT", "GenerationSettings", "settings_for",
           "resolve_device", "resolve_dtype", "check_backend", "check_cuda_graph"]
