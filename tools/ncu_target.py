"""One causal HyperAttention forward+backward at 131k tokens (32 heads, d 64, bf16): a target
for Nsight Compute, e.g.

    ncu --clock-control none -k regex:hyper_fwd_kernel -c 1 --section SpeedOfLight \\
        --section WarpStateStats python3 tools/ncu_target.py

Needs a CUDA GPU and Nsight Compute; ``tools/gpu_session.sh OUT ncu`` profiles ``NCU_KERNELS`` with it.
"""
import torch

from hyperattn import HyperAttentionConfig, hyper_attention

q, k, v = (torch.randn(1, 32, 131072, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
hyper_attention(q, k, v, causal=True, config=HyperAttentionConfig(exact_up_to=0), seed=0).backward(torch.randn_like(q))
torch.cuda.synchronize()
