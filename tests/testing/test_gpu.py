import pytest

from hyperattn.testing.gpu import main


@pytest.mark.parametrize("argv,message", [
    (["--cases", "no such case"], "unknown case"),
    (["--cases", " , "], "no case named"),
    (["--repeat", "0"], "--repeat must be >= 1"),
    (["--shard", "3/2"], "--shard: expected K/N"),
    (["--shard", "0/2"], "--shard: expected K/N"),
    (["--shard", "2"], "--shard: expected K/N"),
    (["--selected-tile-rows", "24"], "--selected-tile-rows: expected 0 or a power of two"),
])
def test_bad_arguments_are_refused_before_any_run(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err


def test_case_names_may_carry_spaces(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # stop after parsing
    monkeypatch.setenv("HYPERATTN_LEAVES", "auto")  # main sets it; restored after the test
    assert main(["--cases", "sinks prefill, exact lse, tail only"]) == 2


def test_one_kv_head_a_leaf_call_names_cases():
    from hyperattn.testing.gpu import CASES, ONE_KV_HEAD_A_LEAF_CALL

    names = {case[0] for case in CASES}
    assert set(ONE_KV_HEAD_A_LEAF_CALL) <= names
    # (name, batch, Hq, Hkv, ...): more than one call each, one of them with grouped query heads
    chosen = [case for case in CASES if case[0] in ONE_KV_HEAD_A_LEAF_CALL]
    assert all(case[1] * case[3] > 1 for case in chosen) and any(case[2] > case[3] for case in chosen)


def test_shards_share_the_cases(monkeypatch):
    import hyperattn.testing.gpu as gpu

    seen = []
    monkeypatch.setattr(gpu, "check_case", lambda *case, dtype: (seen.append(case[0]), (True, 0, {}))[1])
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    monkeypatch.setattr("torch.cuda.get_device_name", lambda: "fake")
    monkeypatch.setenv("HYPERATTN_LEAVES", "auto")  # main sets it; restored after the test
    for shard in ("1/3", "2/3", "3/3"):
        argv = ["--shard", shard, "--long", "", "--long-backward", "", "--no-graph", "--dtypes", "bfloat16"]
        assert gpu.main(argv) == 0
    assert sorted(seen) == sorted(case[0] for case in gpu.CASES)


@pytest.mark.parametrize("name,budget", [("causal gqa d128", 1), ("causal d64", None)])
def test_check_case_sets_the_leaf_call_budget_for_its_case_only(name, budget, monkeypatch):
    import hyperattn.testing.gpu as gpu
    from hyperattn.executors import cudnn

    default = cudnn.LEAF_BACKWARD_ELEMENTS
    seen = []

    def fails(*args):
        seen.append(cudnn.LEAF_BACKWARD_ELEMENTS)
        raise RuntimeError("a failing case")

    monkeypatch.setattr(gpu, "_check_case", fails)
    case = next(case for case in gpu.CASES if case[0] == name)
    with pytest.raises(RuntimeError, match="a failing case"):
        gpu.check_case(*case, dtype=None)
    assert seen == [default if budget is None else budget]
    assert cudnn.LEAF_BACKWARD_ELEMENTS == default  # restored after the failure


def test_long_backward_check_compares_the_last_head():
    """The scale check's plumbing at a small size on the CPU (Triton interpreter, fp16): a plan
    cut to the last head and the reference on it agree with the kernels."""
    import torch

    from hyperattn import HyperAttentionConfig
    from hyperattn.testing.gpu import check_long_backward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = HyperAttentionConfig(block_size=16, sample_size=16, min_seq_len=64, exact_sinks=4)
    ok, _, _, errors = check_long_backward(300, 3, head_dim=16, dtype=torch.float16, config=config, device=device)
    assert ok, errors
