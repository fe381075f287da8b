"""Loading pretrained causal language models for evaluation."""

from __future__ import annotations

import torch

from hyperattn.config import HyperAttentionConfig
from hyperattn.eval.assets import resolve_model

# The config evaluations use when given none: the paper's, every input above min_seq_len
# approximated (the library's default runs short inputs exactly, and would measure nothing).
PAPER_CONFIG = HyperAttentionConfig(exact_up_to=0)


def load_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for ``smollm2``, ``gemma3``, a GGUF file or a model directory.

    GGUF weights are dequantized to ``dtype`` by transformers (needs the ``gguf`` package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    folder, gguf_file = resolve_model(spec)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=dtype,
                                                     attn_implementation="sdpa")
    finally:
        logging.set_verbosity(verbosity)
    return model.to(device).eval(), tokenizer


def context_length(model) -> int:
    """Longest sequence the model was trained for (``max_position_embeddings``)."""
    return int(model.config.max_position_embeddings)


def check_length(model, seq_len: int) -> None:
    limit = context_length(model)
    if seq_len > limit:
        raise ValueError(f"sequence length {seq_len} is longer than the model's context of {limit} tokens")


def count_attention_layers(model) -> int:
    from hyperattn.integrations.transformers import attention_modules

    return len(attention_modules(model))
