"""Does a tile config fault, or change the output, against the default config? Needs a CUDA GPU.

    python benchmarks/tile_fault_check.py --trees .ab/main/src src

Each (source tree, causal, HYPERATTN_TRITON_CONFIG) runs forward+backward at 16k tokens,
8 heads, head dim 64, bf16, seed 0, in its own process (a faulting kernel loses its process's
CUDA context), ten processes at a time. Each line prints CRASH, or the relative difference of
out, dq, dk and dv from the same tree's default config: about 1e-3 where a tile changes the
order of the sums, 0 where it does not. ``.ab/main/src``: ``git archive COMMIT src | tar -x -C .ab/main``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

CONFIGS = ["", "hyper_fwd=128,32,4,3", "hyper_dq=128,32,4,3", "hyper_fwd=256,64,8,3", "hyper_dq=256,64,8,3",
           "hyper_fwd=64,32,4,3;hyper_dq=64,32,4,3", "hyper_samples=64,32,4,3;hyper_dkdv=64,32,4,3"]


def run_one(seq_len: int, causal: bool, path: str) -> None:
    """Child process: forward+backward under the inherited PYTHONPATH and config; save the results."""
    import torch

    from hyperattn import HyperAttentionConfig, hyper_attention

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 8, seq_len, 64, device="cuda", dtype=torch.bfloat16, generator=gen,
                           requires_grad=True) for _ in range(3))
    out = hyper_attention(q, k, v, causal=causal, config=HyperAttentionConfig(exact_up_to=0), seed=0)
    out.backward(torch.ones_like(out))
    torch.save([t.detach().float().cpu() for t in (out, q.grad, k.grad, v.grad)], path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", nargs="+", default=["src"], help="source trees (PYTHONPATH) to compare")
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, help="HYPERATTN_TRITON_CONFIG values; '' = default")
    parser.add_argument("--child", nargs=3, metavar=("SEQ_LEN", "CAUSAL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(int(args.child[0]), args.child[1] == "1", args.child[2])
        return
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("tile_fault_check.py runs the kernels on a CUDA GPU; none is visible")
    configs = [""] + [c for c in args.configs if c]  # the default first: the others compare with it
    jobs = [(tree, causal, config) for tree in args.trees for causal in (0, 1) for config in configs]
    folder = tempfile.mkdtemp()

    def run(numbered_job):
        number, (tree, causal, config) = numbered_job
        path = os.path.join(folder, f"{number}.pt")
        env = dict(os.environ, PYTHONPATH=tree, HYPERATTN_TRITON_CONFIG=config)
        result = subprocess.run([sys.executable, __file__, "--child", str(args.seq_len), str(causal), path],
                                env=env, capture_output=True, text=True)
        return path, result

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(run, enumerate(jobs)))
    defaults = {}
    for (tree, causal, config), (path, result) in zip(jobs, results):
        head = f"{tree:14} n={args.seq_len} causal={causal} {config or 'default':48}"
        if result.returncode:
            errors = [line for line in result.stderr.splitlines() if "Error" in line] or result.stderr.splitlines()
            print(head, "CRASH", errors[-1:])
            continue
        grads = torch.load(path)
        base = defaults.setdefault((tree, causal), grads)
        print(head, "ok", " ".join(f"{name}={((a - b).norm() / b.norm()).item():.1e}"
                                   for name, a, b in zip(("out", "dq", "dk", "dv"), grads, base)))


if __name__ == "__main__":
    main()
