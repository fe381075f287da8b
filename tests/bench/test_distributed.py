"""``hyperattn bench distributed`` on gloo processes (CPU): every case timed, the table, the errors."""

import json
import socket

import pytest
import torch
import torch.distributed as dist

import hyperattn.bench.distributed as bench
from hyperattn import HyperAttentionConfig
from hyperattn.cli import main

TINY = ["--device", "cpu", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--min-seq-len", "64",
        "--exact-up-to", "0", "--block-size", "16", "--sample-size", "16", "--exact-tail", "8"]


def test_every_case_is_timed_on_every_process_count(tmp_path, capsys):
    path, png = tmp_path / "d.json", tmp_path / "d.png"
    assert main(["bench", "distributed", *TINY, "--gpus", "1,2", "--seq-lens", "128,256", "--exact-max-len", "128",
                 "--reps", "2", "--json", str(path), "--plot", str(png)]) == 0
    result = json.loads(path.read_text())
    keys = {(r["gpus"], r["seq_len"], r["mode"], r["impl"], r["part"]) for r in result["results"]}
    expected = {(p, n, m, "hyper", "call") for p in (1, 2) for n in (128, 256) for m in bench.MODES}
    expected |= {(p, 128, m, "exact", "call") for p in (1, 2) for m in bench.MODES}  # exact up to --exact-max-len
    expected |= {(2, n, m, "hyper", part) for n in (128, 256) for m in bench.MODES for part in ("all-to-all",
                                                                                               "attention")}
    expected |= {(2, 128, m, "exact", "attention") for m in bench.MODES}
    assert keys == expected and len(result["results"]) == len(expected)
    assert all(r["ms"] > 0 and len(r["ms_per_call"]) == 2 for r in result["results"])
    assert result["config"]["min_seq_len"] == 64 and result["kv_heads"] == 2 and result["device"] == "cpu"
    (check,) = result["checks"]  # float32 on gloo: the shards' output is the one-process call's
    assert check["gpus"] == 2 and check["seq_len"] == 128 and check["max_abs_diff"] < 1e-6 < check["out_max_abs"]
    out = capsys.readouterr().out
    assert "check, 2 processes against one at 128 tokens" in out
    assert "4 query / 2 kv heads" in out
    assert sum(line.split()[:2] == ["256", "2"] for line in out.splitlines()) == 2  # a row per mode
    assert png.stat().st_size > 0


def _one_process(port):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def test_the_hyper_cases_run_hyper_attention_with_the_config(monkeypatch):
    calls = []
    real = bench.context_parallel_attention

    def counted(*args, **kwargs):
        calls.append(kwargs["config"])
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "context_parallel_attention", counted)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _one_process(port)
    try:
        config = HyperAttentionConfig(block_size=16, sample_size=16, min_seq_len=64, exact_up_to=0)
        settings = dict(seq_lens=[128], heads=4, kv_heads=2, head_dim=16, causal=True, modes=["fwd"],
                        impls=["hyper"], exact_max_len=0, config=config.__dict__, device="cpu", dtype="float32",
                        warmup=1, reps=3, seed=0)
        rows = bench._run_cases(0, 1, torch.device("cpu"), settings)
    finally:
        dist.destroy_process_group()
    assert [(r["impl"], r["part"]) for r in rows] == [("hyper", "call")]
    assert len(calls) == 4 and all(c == config for c in calls)  # 1 warm-up + 3 timed


@pytest.mark.parametrize("flags, message", [
    (["--gpus", "3", "--kv-heads", "2"], "every GPU count must divide the kv heads (2)"),
    (["--gpus", "2", "--seq-lens", "1001"], "every length must split evenly over 2 processes, got [1001]"),
    (["--heads", "6", "--kv-heads", "4"], "kv_heads must divide heads (6), got 4"),
    (["--modes", "fwd,bwd"], "unknown --modes/--impls ['bwd']"),
])
def test_bad_layouts_fail_before_any_process_starts(flags, message, capsys):
    assert main(["bench", "distributed", "--device", "cpu", *flags]) == 2
    assert message in capsys.readouterr().err


def test_table_marks_runs_out_of_memory():
    rows = [dict(gpus=p, seq_len=1 << 23, mode="fwd", impl="hyper", part="call", ms=ms, peak_gib=gib,
                 **({"error": "out of memory"} if ms is None else {}))
            for p, ms, gib in ((1, None, None), (8, 100.0, 20.0))]
    rows.append(dict(gpus=8, seq_len=1 << 23, mode="fwd", impl="hyper", part="all-to-all", ms=10.0, peak_gib=1.0))
    rows.append(dict(gpus=8, seq_len=1 << 23, mode="fwd", impl="hyper", part="attention", ms=85.0, peak_gib=15.0))
    result = dict(card="H200", heads=32, kv_heads=32, head_dim=64, dtype="bfloat16", causal=True, reps=5,
                  device="cuda", modes=["fwd"], results=rows)  # written before checks existed: none shown
    lines = bench.format_table(result).splitlines()
    assert lines[-2].split()[:3] == ["8388608", "1", "OOM"]
    assert lines[-1].split() == ["8388608", "8", "100.00", "10.00", "85.00", "20.00", "-", "-", "-"]
