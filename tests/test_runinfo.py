import json
import platform

import torch

from hyperattn.runinfo import environment, write_json


def test_environment_names_the_machine_versions_and_command():
    run = environment(torch.device("cpu"), "hyperattn eval ppl")
    assert run["card"].startswith(platform.machine()) and run["card"].endswith("threads")
    assert run["date"].endswith("+00:00")  # UTC
    assert run["torch"].startswith(torch.__version__.split("+")[0]) and run["python"] == platform.python_version()
    assert run["command"] == "hyperattn eval ppl"


def test_write_json_round_trips(tmp_path):
    result = dict(card="cpu", results=[dict(ms=1.5)])
    write_json(result, tmp_path / "result.json")
    assert json.loads((tmp_path / "result.json").read_text()) == result
