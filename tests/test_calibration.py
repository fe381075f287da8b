"""Calibrated head plans on a tiny random-weight model (CPU)."""

import math

import pytest
import torch

pytest.importorskip("transformers")

from hyperattn import HyperAttentionConfig  # noqa: E402
from hyperattn.calibration import calibrate, format_calibration, head_hardness, plan_at, rank_correlation  # noqa: E402
from hyperattn.eval.attention import CapturedAttention  # noqa: E402
from hyperattn.eval.perplexity import window_nll  # noqa: E402
from hyperattn.integrations.transformers import patch_model  # noqa: E402
from tests.integrations.test_transformers import tiny_model, tokens  # noqa: E402

CHEAP = HyperAttentionConfig(block_size=8, sample_size=8, exact_up_to=0, min_seq_len=32, exact_sinks=4, exact_tail=0)
DEARER = HyperAttentionConfig(block_size=16, sample_size=32, exact_up_to=0, min_seq_len=32, exact_sinks=4,
                              exact_tail=0)


def test_a_threshold_gives_each_head_its_first_tolerable_candidate():
    errors = {"cheap": {0: [0.1, 0.5, 0.9], 3: [0.2, 0.2, 0.2]}, "dearer": {0: [0.05, 0.3, 0.8], 3: [0.1, 0.1, 0.1]}}
    assert plan_at(errors, 0.3) == {0: ("cheap", "dearer", "exact"), 3: ("cheap", "cheap", "cheap")}
    assert plan_at(errors, 0.01) == {0: ("exact",) * 3, 3: ("exact",) * 3}
    # whole layers: a layer takes a candidate only if its worst head does
    assert plan_at(errors, 0.3, per="layer") == {0: ("exact",) * 3, 3: ("cheap",) * 3}
    assert plan_at(errors, 0.8, per="layer") == {0: ("dearer",) * 3, 3: ("cheap",) * 3}


@pytest.mark.parametrize("scale", [0.5, 40.0])  # 40: rows whose light entries underflow float32's P
def test_hardness_matches_its_definition_on_dense_matrices(scale):
    """alpha = N max_j sum_i P_ij^2 over columns from the sinks on, and log kappa the 1%-99%
    spread of each row's log sum of exp(scores) without its largest entries, over rows from
    start on; computed in chunks of rows, checked against the dense float64 matrices."""
    gen = torch.Generator().manual_seed(7)
    n, start, sinks, heavy = 40, 10, 2, 3
    q, k, v = torch.randn(1, 4, n, 8, generator=gen), torch.randn(1, 2, n, 8, generator=gen), torch.randn(1, 2, n, 8)
    k[0, 1, 5] *= 6  # a heavy column for the heads of kv head 1
    alpha, log_kappa = head_hardness(CapturedAttention(q, k, v, scale), start, sinks, heavy,
                                     chunk_elements=4 * n * 7)  # 7-row chunks
    for h in range(4):
        scores = (q[0, h].double() @ k[0, h // 2].double().T) * scale
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -torch.inf)[start:]
        p = torch.softmax(scores, -1)
        assert alpha[h].item() == pytest.approx(n * p.square().sum(0)[sinks:].max().item(), rel=1e-4)
        kept = scores.sort(-1, descending=True).values[:, heavy:].logsumexp(-1)
        spread = kept.quantile(0.99) - kept.quantile(0.01)
        assert log_kappa[h].item() == pytest.approx(spread.item(), rel=1e-4)
    if scale == 0.5:
        assert alpha[2:].min() > alpha[:2].max()  # the heavy column shows


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)


def perplexity(model, ids):
    return math.exp(window_nll(model, ids).mean().item())


def test_calibrated_plans_keep_the_budget_they_report():
    """SmolLM2 on 384 tokens of Paul Graham's essays, its first and last layers: approximating
    every head costs more than the budget (+0.25% against +0.22%), so the bisection keeps some
    heads exact; the plan,
    applied again, gives the perplexity it reports, and the model is left exact."""
    from hyperattn.eval.assets import load_text
    from hyperattn.eval.models import load_model
    from hyperattn.eval.perplexity import token_windows

    model, tokenizer = load_model("smollm2")
    ids = token_windows(tokenizer, load_text("paul-graham"), 384, 1)[0]
    cheap = HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=64, exact_up_to=0, query_blocks="rank")
    dearer = HyperAttentionConfig(block_size=32, sample_size=64, min_seq_len=64, exact_up_to=0, query_blocks="rank")
    with torch.no_grad():
        exact_logits = model(ids[None]).logits
    result = calibrate(model, ids, {"cheap": cheap, "dearer": dearer}, budget=0.0022, layers=[0, -1], steps=4,
                       model_name="smollm2", progress=False)
    plan, measured = result.plan, result.plan.measured
    assert sorted(result.errors["cheap"]) == [0, 29] and len(result.errors["dearer"][29]) == 9
    assert result.steps[0]["change"] > 0.0022 and result.steps[0]["heads"]["cheap"] == 18  # all at the cheapest: over
    assert len(result.steps) >= 2 and measured["change"] <= 0.0022 and plan.model == "smollm2"
    assert "task_budget" not in measured and result.steps[0]["task_changes"] is None  # no tasks given
    with torch.no_grad():
        torch.testing.assert_close(model(ids[None]).logits, exact_logits)  # the model is left exact
        assert perplexity(model, ids) == pytest.approx(measured["exact_ppl"])
        assert 0 < plan.head_counts()["exact"] < 18  # some heads approximated, some not
        patch_model(model, plan=plan, seed=0)  # the plan, applied again, gives the perplexity it reports
        assert perplexity(model, ids) == pytest.approx(measured["ppl"])
    assert set(result.hardness) == {"alpha", "log_kappa"} and len(result.hardness["alpha"][29]) == 9
    assert all(-1 <= value <= 1 for value in result.predicts.values())
    assert "heads approximated" in format_calibration(result) and "rank correlation" in format_calibration(result)
    whole = calibrate(model, ids, {"cheap": cheap, "dearer": dearer}, budget=0.0022, layers=[0, -1], steps=4,
                      per="layer", progress=False)  # the same measurements, whole layers
    assert whole.errors == result.errors and whole.plan.measured["change"] <= 0.0022
    assert all(len(set(names)) == 1 for names in whole.plan.layers.values())
    with pytest.raises(ValueError, match="per must be"):
        calibrate(model, ids, {"cheap": cheap}, per="group")


def test_a_task_budget_keeps_the_answers_likelihood_it_reports():
    """SmolLM2 on a 512-token Paul Graham window with one prompt per retrieval task: an ample
    perplexity budget lets every head of the first and last layers take the cheap candidate, a
    task budget of 0.01 nats does not (some task's answer gets less likely); the plan kept reports each task's change, which the
    plan, applied again, reproduces, and keeps the budget."""
    from hyperattn.eval.assets import load_text
    from hyperattn.eval.models import load_model
    from hyperattn.eval.perplexity import token_windows
    from hyperattn.eval.ruler import TASKS, answer_logprob, build_samples

    model, tokenizer = load_model("smollm2")
    text = load_text("paul-graham")
    ids = token_windows(tokenizer, text, 512, 1)[0]
    tasks = list(build_samples(tokenizer, text, list(TASKS), [512], 1, "calibration/0").values())
    cheap = HyperAttentionConfig(block_size=8, sample_size=8, min_seq_len=64, exact_up_to=0, query_blocks="rank")
    result = calibrate(model, ids, {"cheap": cheap}, budget=1.0, layers=[0, -1], steps=5, tasks=tasks,
                       task_budget=0.01, progress=False)
    first, measured = result.steps[0], result.plan.measured
    assert first["heads"]["cheap"] == 18 and first["change"] <= 1.0  # within the perplexity budget ...
    assert min(first["task_changes"].values()) < -0.01 and not first["kept"]  # ... not the tasks'
    assert set(measured["task_changes"]) == set(TASKS) and measured["task_prompts"] == 4
    assert min(measured["task_changes"].values()) >= -0.01 and result.plan.head_counts()["cheap"] < 18
    with torch.no_grad():
        exact = {sample.task: answer_logprob(model, sample) for sample in tasks}
        patch_model(model, plan=result.plan, seed=0)
        for sample in tasks:  # the plan gives the changes it reports
            change = answer_logprob(model, sample) - exact[sample.task]
            assert change == pytest.approx(measured["task_changes"][sample.task], abs=1e-6)
        patch_model(model, "last:0")
    assert "answer log-likelihood" in format_calibration(result)
    with pytest.raises(ValueError, match="task_budget"):
        calibrate(model, ids, {"cheap": cheap}, tasks=tasks, task_budget=-1.0, progress=False)
    with pytest.raises(TypeError, match="Sample"):
        calibrate(model, ids, {"cheap": cheap}, tasks=["prompt"], progress=False)


def test_an_ample_budget_approximates_every_head_with_the_first_candidate():
    model = tiny_model("llama")
    result = calibrate(model, tokens(200)[0], {"cheap": CHEAP, "dearer": DEARER}, budget=100.0, steps=3,
                       progress=False)
    assert len(result.steps) == 1  # the first step, every head at its cheapest, keeps the budget
    assert result.plan.head_counts() == {"exact": 0, "cheap": 16, "dearer": 0}
    assert result.plan.measured["threshold"] == max(e for heads in result.errors["cheap"].values() for e in heads)


@pytest.mark.parametrize("kwargs,message", [
    (dict(candidates={}), "at least one"),
    (dict(candidates={"exact": CHEAP}), "reserved"),
    (dict(budget=-0.1), "budget"),
    (dict(steps=0), "steps"),
    (dict(candidates={"long": HyperAttentionConfig(min_seq_len=4096, exact_up_to=0)}), "runs attention over 64"),
])
def test_bad_calibration_arguments_are_named(kwargs, message):
    arguments = dict(candidates={"cheap": CHEAP}, budget=0.01, steps=2)
    with pytest.raises(ValueError, match=message):
        calibrate(tiny_model("llama"), tokens(64)[0], **{**arguments, **kwargs}, progress=False)
