"""tools/frontier.py: option-cost times joined with eval-attention errors by config."""

import importlib.util
import json
from dataclasses import asdict, replace
from pathlib import Path

from hyperattn import HyperAttentionConfig

SPEC = importlib.util.spec_from_file_location("frontier", Path(__file__).parents[2] / "tools" / "frontier.py")
frontier = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(frontier)


def option_row(options, config, ms, seq_len=131072, head_dim=64, mode="fwd"):
    return dict(head_dim=head_dim, kv_heads=32, causal=True, seq_len=seq_len, mode=mode, options=options,
                config=config, ms=ms)


def test_points_join_times_and_errors_by_config_whatever_min_seq_len(tmp_path, capsys):
    times = dict(card="H200", results=[
        option_row("cudnn", None, 100.0), option_row("default", {}, 10.0),
        option_row("heavy", dict(heavy_keys=448, block_size=64, sample_size=0), 12.5),
        option_row("default", {}, 50.0, seq_len=32768),  # another length: not joined
    ])
    evaluated = HyperAttentionConfig(min_seq_len=2048, exact_up_to=0)  # the evaluation's lower min_seq_len
    errors = dict(model="smollm2", text="paul-graham", seq_len=8192, budget=528, config=asdict(evaluated),
                  summary=dict(hyper=0.16, topk=0.03, streaming=0.25), compare={
                      "heavy": dict(config=asdict(replace(evaluated, heavy_keys=448, block_size=64, sample_size=0)),
                                    summary=dict(hyper=0.05)),
                      "untimed": dict(config=asdict(replace(evaluated, exact_window=64)), summary=dict(hyper=0.04)),
                  })
    later = dict(card="H200", results=[option_row("cudnn", None, 90.0), option_row("default", {}, 9.0)])
    again = dict(errors, budget=336, summary=dict(hyper=0.2, topk=0.05, streaming=0.3), compare={})
    [panel] = frontier.frontier([times, later], [errors, again], 131072, 64, "fwd")  # one model and text
    assert [(p["label"], p["error"], p["speedup"]) for p in panel["points"]] == [
        ("default", 0.16, 10.0), ("heavy", 0.05, 8.0)]  # the later file's default, against its own cuDNN
    assert panel["missing"] == ["untimed"]
    assert [(r["budget"], r["topk"]) for r in panel["references"]] == [(528, 0.03), (336, 0.05)]
    times_path, errors_path = tmp_path / "times.json", tmp_path / "errors.json"
    times_path.write_text(json.dumps(times))
    errors_path.write_text(json.dumps(errors))
    out = tmp_path / "frontier.json"
    assert frontier.main(["--times", str(times_path), "--errors", str(errors_path), "--plot",
                          str(tmp_path / "f.png"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["panels"][0]["points"][1]["speedup"] == 8.0
    assert "heavy" in capsys.readouterr().out
    assert (tmp_path / "f.png").stat().st_size > 0
