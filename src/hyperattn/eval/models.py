"""Loading pretrained causal language models for evaluation."""

from __future__ import annotations

import torch

from hyperattn.config import PAPER_OVERRIDES, HyperAttentionConfig
from hyperattn.eval.assets import resolve_model
from hyperattn.heads import HeadPlan
from hyperattn.integrations.transformers import attention_modules, patch_model

# The config evaluations use when given none: the library's, except that every input above
# min_seq_len is approximated (the library's exact_up_to runs short inputs exactly, and would
# measure nothing).
EVAL_CONFIG = HyperAttentionConfig(exact_up_to=0)
# The paper's algorithm: no exact sinks or tail, its rank rule, every input above min_seq_len approximated.
PAPER_CONFIG = HyperAttentionConfig(exact_up_to=0, **PAPER_OVERRIDES)

# transformers releases whose GGUF loader builds a different function than the checkpoint:
# model type -> first good release. Gemma-3-270m under 5.17 gives perplexity 192 instead
# of 35.1 on 1024 tokens of Paul Graham's essays (5.18 to 5.24 agree on 35.1).
GGUF_FIRST_GOOD_TRANSFORMERS = {"gemma3": "5.18.0", "gemma3_text": "5.18.0"}


def check_gguf_loader(model_type: str, transformers_version: str) -> None:
    """Raise RuntimeError if this transformers release loads GGUF checkpoints of
    ``model_type`` wrongly (``GGUF_FIRST_GOOD_TRANSFORMERS``)."""
    from packaging.version import Version

    first_good = GGUF_FIRST_GOOD_TRANSFORMERS.get(model_type)
    if first_good is not None and Version(transformers_version).release < Version(first_good).release:
        raise RuntimeError(
            f"transformers {transformers_version} loads {model_type} GGUF checkpoints wrongly (perplexity several "
            f"times the real model's); install transformers>={first_good} (on a machine without network, carry "
            f"its wheel)")


def load_model(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model, tokenizer) for ``smollm2``, ``gemma3``, a GGUF file or a model directory.

    GGUF weights are dequantized to ``dtype`` by transformers (needs the ``gguf`` package)."""
    import transformers
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
    if gguf_file is not None:
        check_gguf_loader(model.config.model_type, transformers.__version__)
    return model.to(device).eval(), tokenizer


def context_length(model) -> int:
    """Longest sequence the model was trained for (``max_position_embeddings``)."""
    return int(model.config.max_position_embeddings)


def check_length(model, seq_len: int) -> None:
    limit = context_length(model)
    if seq_len > limit:
        raise ValueError(f"sequence length {seq_len} is longer than the model's context of {limit} tokens")


def count_attention_layers(model) -> int:
    return len(attention_modules(model))


# The layer setting of a head plan in the evaluations' lists of settings.
PLAN_SETTING = "plan"


def check_plan_setting(layer_specs, plan: HeadPlan | None) -> None:
    """Raise ValueError unless the settings list ``PLAN_SETTING`` exactly when a head plan is given."""
    if (PLAN_SETTING in layer_specs) != (plan is not None):
        raise ValueError(f"layer setting {PLAN_SETTING!r} and a head plan go together (got plan={plan!r:.40})")


def patch_setting(model, spec: str, config: HyperAttentionConfig, plan: HeadPlan | None = None,
                  seed: int = 0) -> list[int]:
    """Patch ``model`` for one evaluation setting: ``PLAN_SETTING`` applies the head plan ``plan``,
    any other ``spec`` the layers it names (``patch_model``; ``"last:0"`` is exact). Returns the
    patched layers."""
    if spec == PLAN_SETTING:
        if plan is None:
            raise ValueError(f"the layer setting {PLAN_SETTING!r} needs a head plan (plan=...)")
        return patch_model(model, plan=plan, seed=seed)
    return patch_model(model, spec, config, seed=seed)
