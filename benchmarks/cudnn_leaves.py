"""cuDNN and flash SDPA on the causal diagonal leaves of a 131k-token call (32 leaves x 32 heads
of 4096 tokens, head dim 64, bf16): the baseline our dense leaf kernels compare with.

    python benchmarks/cudnn_leaves.py

Times SDPA (cuDNN, flash) forward and forward+backward on (1024, 1, 4096, 64), and the
low-level cuDNN op that also returns lse, forward and backward (medians of do_bench);
checks the op's out and lse against float32 on two problems.
"""
import torch
import triton.testing
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def main():
    B, L, D = 1024, 4096, 64
    q, k, v = (torch.randn(B, 1, L, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)
    for name, be in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        def fwd():
            with sdpa_kernel(be), torch.no_grad():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        def fb():
            with sdpa_kernel(be):
                F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(g)
        try:
            print(name, "fwd", triton.testing.do_bench(fwd, return_mode="median"), "f+b",
                  triton.testing.do_bench(fb, grad_to_none=[q, k, v], return_mode="median"))
        except Exception as e:
            print(name, "failed", e)
    # low-level ops
    scale = D ** -0.5
    with torch.no_grad():
        try:
            res = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, True, False, scale=scale)
            print("cudnn op outputs:",
                  [(tuple(r.shape), r.dtype, r.stride()) if isinstance(r, torch.Tensor) else r for r in res])
            out, lse = res[0], res[1]
            ref = F.scaled_dot_product_attention(q[:2].float(), k[:2].float(), v[:2].float(), is_causal=True)
            s = (q[:2].float() @ k[:2].float().transpose(-1, -2)) * scale
            s = s.masked_fill(torch.ones(L, L, device="cuda", dtype=torch.bool).triu(1), float("-inf"))
            lse_err = (lse[:2].reshape(2, 1, L).float() - torch.logsumexp(s, -1).reshape(2, 1, L)).abs().max()
            print("out err", (out[:2].float() - ref).abs().max().item(), "lse err", lse_err.item())
            t = triton.testing.do_bench(lambda: torch.ops.aten._scaled_dot_product_cudnn_attention(
                q, k, v, None, True, 0.0, True, False, scale=scale), return_mode="median")
            print("cudnn op fwd+lse ms", t)
            dout = g
            def bwd():
                return torch.ops.aten._scaled_dot_product_cudnn_attention_backward(
                    dout, q, k, v, out, lse, res[6], res[7], None, res[2], res[3], res[4], res[5], 0.0, True,
                    scale=scale)
            grads = bwd()
            print("cudnn bwd outputs", [(tuple(x.shape), x.dtype) for x in grads])
            print("cudnn op bwd ms", triton.testing.do_bench(bwd, return_mode="median"))
        except Exception as e:
            import traceback; traceback.print_exc()
        try:
            res = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scale)
            print("flash op outputs:", [(tuple(r.shape), r.dtype) if isinstance(r, torch.Tensor) else r for r in res])
            flash = torch.ops.aten._scaled_dot_product_flash_attention
            print("flash op fwd+lse ms", triton.testing.do_bench(
                lambda: flash(q, k, v, 0.0, True, False, scale=scale), return_mode="median"))
        except Exception as e:
            import traceback; traceback.print_exc()


if __name__ == "__main__":
    main()
