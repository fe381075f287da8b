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
