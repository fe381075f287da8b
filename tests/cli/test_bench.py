"""``hyperattn bench attention`` and ``hyperattn bench model``: what runs without CUDA."""

import json
from dataclasses import asdict

import pytest
import torch

from hyperattn.cli import main
from hyperattn.config import HyperAttentionConfig


def test_kv_heads_must_divide_heads(capsys):
    assert main(["bench", "attention", "--heads", "32", "--kv-heads", "5"]) == 2
    assert "kv_heads must divide heads (32), got 5" in capsys.readouterr().err


def test_plot_only_redraws_a_saved_result(tmp_path, capsys):
    rows = [dict(seq_len=n, head_dim=64, causal=True, mode="fwd", impl=impl, ms=ms, peak_gib=0.5)
            for n in (4096, 32768) for impl, ms in (("flash", 2.0), ("cudnn", 2.0), ("ours", 1.0))]
    saved = dict(benchmark="attention", card="test card", date="2026-01-01T00:00:00+00:00", torch="2.0",
                 triton="3.0", python="3.12", command="hyperattn bench attention", batch=1, heads=32,
                 dtype="bfloat16", config=asdict(HyperAttentionConfig()), results=rows)
    path = tmp_path / "attention.json"
    path.write_text(json.dumps(saved))
    assert main(["bench", "attention", "--plot-only", str(path)]) == 0
    assert "test card" in capsys.readouterr().out
    assert (tmp_path / "attention.png").stat().st_size > 0


def test_model_errors(capsys):
    pytest.importorskip("transformers")
    assert main(["bench", "model", "--device", "cpu", "--layers", "exact,most"]) == 2
    assert "layers must be" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "model"]) == 2
        assert "needs a CUDA device" in capsys.readouterr().err
