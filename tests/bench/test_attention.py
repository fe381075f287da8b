from dataclasses import asdict

from hyperattn.bench.attention import format_table
from hyperattn.config import HyperAttentionConfig


def _result(config: dict) -> dict:
    rows = [dict(seq_len=n, head_dim=64, causal=True, mode="fwd", impl=impl, ms=1.0, peak_gib=0.5)
            for n in (4096, 16384, 32768) for impl in ("cudnn", "ours")]
    return dict(card="test card", batch=1, heads=32, dtype="bfloat16", config=config, results=rows)


def _exact_rows(table: str) -> list[int]:
    return [int(line.split()[0]) for line in table.splitlines() if line.endswith("  exact")]


def test_rows_where_our_call_ran_exact_attention_are_marked():
    assert _exact_rows(format_table(_result(asdict(HyperAttentionConfig())))) == [4096, 16384]


def test_results_from_before_exact_up_to_use_the_papers_rule():
    old = asdict(HyperAttentionConfig())
    del old["exact_up_to"]
    assert _exact_rows(format_table(_result(old))) == [4096]
