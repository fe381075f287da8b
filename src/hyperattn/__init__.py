"""hyperattn: HyperAttention (Han et al., ICLR 2024), near-linear-time attention for long contexts."""

from hyperattn.api import Explanation, exact_attention, explain, hyper_attention
from hyperattn.calibration import calibrate
from hyperattn.config import HyperAttentionConfig
from hyperattn.heads import HeadPlan, attention_by_head
from hyperattn.modules import HyperAttention

__version__ = "0.1.0"

__all__ = ["Explanation", "HeadPlan", "HyperAttention", "HyperAttentionConfig", "attention_by_head", "calibrate",
           "exact_attention", "explain", "hyper_attention", "__version__"]
