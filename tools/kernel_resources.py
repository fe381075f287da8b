"""Registers, spills and shared memory of each Triton kernel family, compiled for Hopper without a GPU.

    python tools/kernel_resources.py --head-dims 64,128
    python tools/kernel_resources.py --family hyper_dq --configs 128,64,4,3 128,64,8,3
    python tools/kernel_resources.py --head-dims 64,128 --family hyper_fwd --instructions
    python tools/kernel_resources.py --family hyper_samples --loops
    python tools/kernel_resources.py --head-dims 64,128 --variant rank       # or --variant window
    python tools/kernel_resources.py --head-dims 128 --variant bucket --block-size 64 --samples 448

Compiles every kernel family (``hyperattn.executors.triton.tiles.KERNEL_FAMILIES``) for sm_90a
with Triton's own compiler and ``ptxas -v`` (both ship with Triton), at the tile configs the
library launches (or those given), and prints registers per thread, spill stores, shared
memory, the number of wgmma instructions and the ``num`` of every ``ttg.async_wait``: the
copy groups a wait leaves in flight, so 0 at the top of a key loop means its next tiles were
not loading during this tile's math (no prefetch). No GPU and no CUDA driver are needed, so tile
changes can be screened on a CPU machine before any device time is spent: a config that
spills hundreds of bytes inside a key loop is rarely the fastest one. Integer arguments are
compiled as multiples of 16 except the small counts that are not (tiles, rectangles, group),
as at the benchmark's lengths; the device compiles the same way for those shapes.

``--loops`` disassembles the kernel (``nvdisasm``, also shipped with Triton) and lists the SASS
instructions of each loop body by opcode: what one iteration issues per warp. Softmax-bound
loops should spend most of them on the scores (FFMA, MUFU, FMNMX, FADD, F2FP); selects, integer
divisions (CALL) or address arithmetic there are overhead.

Run from the repository root with the package importable (installed, or ``PYTHONPATH=src``),
with ``TRITON_INTERPRET`` unset.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import os
import re
import subprocess
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("kernel_resources.py compiles real kernels: unset TRITON_INTERPRET")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

from hyperattn.executors.triton import backward, forward  # noqa: E402
from hyperattn.executors.triton.tiles import KERNEL_FAMILIES, index_widths, launch_config, query_chunk  # noqa: E402

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
NVDISASM = os.path.join(os.path.dirname(PTXAS), "nvdisasm")
SMALL_INTS = {"tiles_per_block", "num_tiles", "rects", "group", "key_tiles_per_block", "sample_chunks", "segments"}
FLOATS = {"scale", "scale_log2"}
BF16, F32, I64 = "*bf16", "*fp32", "*i64"
POINTERS = dict(Q=BF16, K=BF16, V=BF16, DO=BF16, Out=F32, Lse=F32, Delta=F32, DQAcc=F32, DQ=BF16, DKAcc=F32, DK=BF16,
                DVAcc=F32, DV=BF16, QPerm=I64, KPerm=I64, SIdx=I64, SBlk=I64, SLogW=F32, QBlk=I64, QOff="*i32")
# family: (kernel, constexprs besides dims and tiles), as launched for the causal levels of the default
FAMILIES = {
    "hyper_fwd": (forward.hyper_fwd_kernel, dict(MERGE=True, EXACT_BLOCK_N=16)),
    "dense_fwd": (forward.dense_fwd_kernel, dict(MERGE=True, CAUSAL=True)),
    "hyper_dq": (backward.hyper_bwd_dq_kernel, dict(WRITE="add", EXACT_BLOCK_N=16)),
    "dense_dq": (backward.dense_bwd_dq_kernel, dict(WRITE="add", CAUSAL=True)),
    "hyper_dkdv": (backward.hyper_bwd_dkdv_kernel, dict(WRITE="add")),
    "dense_dkdv": (backward.dense_bwd_dkdv_kernel, dict(WRITE="add", CAUSAL=True)),
    "hyper_samples": (backward.hyper_bwd_samples_kernel, dict()),
}
assert set(FAMILIES) == set(KERNEL_FAMILIES), "a kernel family has no entry here"


VARIANTS = ("bucket", "rank", "window")


def compile_family(family: str, head_dim: int, block_m: int, block_n: int, warps: int, stages: int, arch: int,
                   variant: str = "bucket", block_size: int = 256, samples: int = 256):
    """The compiled kernel (Triton's CompiledKernel) of ``family`` at these tiles; ``variant``:
    the default's launch (the bucket rule: the plan's query blocks and block offsets as pointers),
    the rank rule's (``query_blocks="rank"``: none) or the exact window's (the rank rule with band
    masks on); ``block_size`` and
    ``samples`` (heavy keys included) set the register-held index widths."""
    kernel, extra = FAMILIES[family]
    pad = max(16, triton.next_power_of_2(head_dim))
    constexprs = dict(extra, HEAD_DIM=head_dim, HEAD_DIM_V=head_dim, D_PAD=pad, DV_PAD=pad, BLOCK_M=block_m,
                      BLOCK_N=block_n)
    if "EXACT_BLOCK_N" in constexprs:
        constexprs["EXACT_BLOCK_N"] = min(16, block_n)
    params = list(inspect.signature(kernel.fn).parameters)
    if "BLOCK_KEYS" in params:
        constexprs.update(index_widths(block_size, samples, block_n))
    if "QUERY_CHUNK" in params:
        constexprs["QUERY_CHUNK"] = query_chunk(256 if family == "hyper_dkdv" else 1 << 20, block_m)
    for name in ("QBlk", "QOff"):
        if name in params and variant != "bucket":
            constexprs[name] = None
    for name in ("HeavyOut", "HeavyLse"):  # heavy keys by cuDNN: not the default's launch
        if name in params:
            constexprs[name] = None
    if "WINDOW" in params:
        constexprs["WINDOW"] = variant == "window"
    if "BAND" in params:
        constexprs["BAND"] = 1 if variant == "window" else 0
    signature, attrs = {}, {}
    for i, name in enumerate(params):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in POINTERS:
            signature[name], attrs[(i,)] = POINTERS[name], [["tt.divisibility", 16]]
        elif name in FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
            if name not in SMALL_INTS:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = triton.compiler.ASTSource(kernel, signature, attrs=attrs,
                                       constexprs={(params.index(k),): v for k, v in constexprs.items()})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=warps, num_stages=stages))


# PTX instructions --instructions counts: the special-function unit's exponentials, fp32 FMAs,
# and the shared-memory and shuffle traffic of layout changes
INSTRUCTIONS = {"ex2": r"ex2\.approx", "fma": r"fma\.rn\.f32", "st.shared": r"st\.shared", "ld.shared": r"ld\.shared",
                "shfl": r"shfl\.sync"}


def resources(compiled, arch: int) -> dict:
    """Registers and spill stores per thread (ptxas -v), shared memory bytes, wgmma instructions."""
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        report = subprocess.run([PTXAS, f"-arch=sm_{arch}a", "-v", f.name, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
    registers = re.findall(r"Used (\d+) registers", report)
    spills = re.findall(r"(\d+) bytes spill stores", report)
    # the copies a loop waits for at its start may leave this many younger copy groups in flight:
    # 0 means the tile loads of the next iteration do not overlap this iteration's math
    waits = re.findall(r"ttg\.async_wait[^{]*\{num = (\d+)", compiled.asm["ttgir"])
    return dict(registers=int(registers[0]), spill_stores=int(spills[0]) if spills else 0,
                shared=compiled.metadata.shared, wgmma=ptx.count("wgmma.mma_async"), waits=",".join(waits),
                instructions={name: len(re.findall(pattern, ptx)) for name, pattern in INSTRUCTIONS.items()})


def sass_loops(compiled) -> list[collections.Counter]:
    """Opcode counts (``Counter``: opcode without modifiers -> instructions) of each loop body of the
    kernel's SASS, in program order; a branch back to an earlier label closes a body, and a body
    that encloses another loop counts that loop's instructions once."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        sass = subprocess.run([NVDISASM, "-c", f.name], capture_output=True, text=True, check=True).stdout
    opcodes, labels, loops = [], {}, []
    for line in sass.splitlines():
        label = re.match(r"\s*(\.L_x_\d+):", line)
        if label:
            labels[label.group(1)] = len(opcodes)
            continue
        instruction = re.match(r"\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)[^;]*;", line)
        if instruction:
            opcodes.append(instruction.group(1))
            target = re.search(r"\bBRA\b.*?(\.L_x_\d+)", line)
            if target and labels.get(target.group(1), len(opcodes)) < len(opcodes) - 1:
                loops.append(collections.Counter(opcodes[labels[target.group(1)]:]))
    return loops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head-dims", default="64")
    parser.add_argument("--family", choices=sorted(FAMILIES), help="one family (default: all)")
    parser.add_argument("--configs", nargs="*", default=None, metavar="BM,BN,W,S",
                        help="tile configs to compile (default: the ones the library launches)")
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 90 (default)")
    parser.add_argument("--variant", choices=VARIANTS, default="bucket",
                        help="the launch compiled: the default's (the bucket rule), the rank rule's or the exact "
                             "window's")
    parser.add_argument("--block-size", type=int, default=256, help="the plan's block size (index widths)")
    parser.add_argument("--samples", type=int, default=256,
                        help="the plan's samples per (problem, kv head), heavy keys included (index widths)")
    parser.add_argument("--instructions", action="store_true",
                        help="also count PTX instructions: " + ", ".join(INSTRUCTIONS))
    parser.add_argument("--loops", action="store_true", help="also list each loop body's SASS instructions by opcode")
    args = parser.parse_args()
    counted = "".join(f" {name:>9}" for name in INSTRUCTIONS) if args.instructions else ""
    print(f"{'family':>14} {'d':>4} {'BM,BN,W,S':>12} {'regs':>5} {'spill B':>8} {'smem B':>8} {'wgmma':>6}{counted}  "
          f"async waits (in program order)")
    for head_dim in map(int, args.head_dims.split(",")):
        for family in [args.family] if args.family else KERNEL_FAMILIES:
            if args.configs:
                configs = [tuple(int(x) for x in c.split(",")) for c in args.configs]
            else:
                cfg = launch_config(family, head_dim, head_dim)
                configs = [(cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"])]
            for config in configs:
                compiled = compile_family(family, head_dim, *config, args.arch, args.variant, args.block_size, args.samples)
                r = resources(compiled, args.arch)
                counts = "".join(f" {n:>9}" for n in r["instructions"].values()) if args.instructions else ""
                print(f"{family:>14} {head_dim:>4} {','.join(map(str, config)):>12} {r['registers']:>5} "
                      f"{r['spill_stores']:>8} {r['shared']:>8} {r['wgmma']:>6}{counts}  {r['waits']}", flush=True)
                for i, loop in enumerate(sass_loops(compiled) if args.loops else []):
                    print(f"{'':>20}loop {i + 1}: {sum(loop.values())} SASS instructions: "
                          + ", ".join(f"{op} {n}" for op, n in loop.most_common(12)))


if __name__ == "__main__":
    main()
