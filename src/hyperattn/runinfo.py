"""Where and how a result was measured, and results written as JSON."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform

import torch

VERSIONED_PACKAGES = ("torch", "transformers", "triton")


def environment(device: torch.device, command_line: str) -> dict:
    """The card (or CPU) of ``device``, the UTC date, the versions of Python and of the
    installed ``VERSIONED_PACKAGES``, and the command that measured."""
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return dict(card=card, date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                **versions, python=platform.python_version(), command=command_line)


def write_json(result: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
