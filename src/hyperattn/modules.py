"""``HyperAttention`` as a ``torch.nn.Module``."""

from __future__ import annotations

import torch

from hyperattn.api import hyper_attention
from hyperattn.config import HyperAttentionConfig


class HyperAttention(torch.nn.Module):
    """A parameter-free attention layer: ``layer(q, k, v, causal=False, scale=None, seed=None)``.

    Holds a :class:`HyperAttentionConfig`; see :func:`hyperattn.hyper_attention` for the
    tensor layout and semantics.
    """

    def __init__(self, config: HyperAttentionConfig | None = None) -> None:
        super().__init__()
        if config is None:
            config = HyperAttentionConfig()
        elif not isinstance(config, HyperAttentionConfig):
            raise TypeError(f"config must be a HyperAttentionConfig or None, got {type(config).__name__}")
        self.config = config

    def forward(self, q, k, v, causal: bool = False, scale: float | None = None, seed: int | None = None,
                return_lse: bool = False):
        return hyper_attention(q, k, v, causal=causal, scale=scale, config=self.config, seed=seed,
                               return_lse=return_lse)

    def extra_repr(self) -> str:
        return repr(self.config)
