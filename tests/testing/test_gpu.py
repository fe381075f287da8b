import pytest

from hyperattn.testing.gpu import main


@pytest.mark.parametrize("argv,message", [
    (["--cases", "no such case"], "unknown case"),
    (["--cases", " , "], "no case named"),
    (["--repeat", "0"], "--repeat must be >= 1"),
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
