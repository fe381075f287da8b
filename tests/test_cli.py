import json

import pytest

from hyperattn.cli import main


def test_demo_prints_a_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "demo.json"
    assert main(["demo", "--seq-lens", "64,96", "--heads", "2", "--head-dim", "8", "--block-size", "8",
                 "--sample-size", "8", "--min-seq-len", "16", "--device", "cpu", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "seq_len" in out and "speed-up" in out
    result = json.loads(path.read_text())
    assert [row["seq_len"] for row in result["rows"]] == [64, 96]
    for row in result["rows"]:
        assert row["exact_ms"] > 0 and row["hyper_ms"] > 0 and 0 < row["rel_error"] < 10


def test_demo_bad_config_is_a_clear_error(capsys):
    assert main(["demo", "--seq-lens", "64", "--block-size", "0", "--device", "cpu"]) == 2
    assert "block_size" in capsys.readouterr().err


def test_bad_lengths_are_rejected():
    with pytest.raises(SystemExit):
        main(["demo", "--seq-lens", "64,x"])
