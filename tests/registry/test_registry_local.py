"""Pins, path safety, directory verification and the local-folder source."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec
import pytest

from config.registry import RegistrySettings, registry_settings_from_env
from crucible.registry.errors import ChecksumMismatch, MissingFile, PinError, UnsafePath
from crucible.registry.paths import check_relative_path, resolve_inside
from crucible.registry.pins import build_pin, decode_pin, encode_pin, load_pin
from crucible.registry.store import ArtifactStore, LocalSource
from crucible.registry.verify import FileState, verify_directory
from schemas.sakana import ArtifactPin

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors"


def _write(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def test_anchor_pin_decodes_unchanged_and_round_trips() -> None:
    pin = load_pin(ANCHORS / "artifact_pin.json")
    assert pin.repo_id == "nshkrdotcom/trinity-coordinator-adapted-qwen3-0.6b" and pin.revision == "v1.0.0"
    assert len(pin.files) == 11 and pin.file("manifest.json").sha256 == pin.manifest_sha256
    assert decode_pin(encode_pin(pin)) == pin


@pytest.mark.parametrize("bad", ["../x", "/etc/passwd", "a/../../b", "a\\b", "C:/x", "a//b", "./a", ""])
def test_unsafe_paths_are_refused(bad: str) -> None:
    with pytest.raises(UnsafePath):
        check_relative_path(bad)


def test_pin_with_dotdot_path_is_refused_on_decode() -> None:
    raw = {"version": 1, "repo_id": "a/b", "revision": "main", "manifest_sha256": "0" * 64,
           "files": [{"path": "../escape", "sha256": "1" * 64}]}
    with pytest.raises(PinError, match=r"no .\.\.."):
        decode_pin(msgspec.json.encode(raw))


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"x")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    with pytest.raises(UnsafePath, match="symlink escape"):
        resolve_inside(root, "link/secret")
    os.symlink(root / "inner", root / "ok-link")
    assert resolve_inside(root, "ok-link/x") == root / "ok-link" / "x"


def test_build_pin_and_verify_directory(tmp_path: Path) -> None:
    files = {"manifest.json": b"{}", "a/b.bin": b"abc", "c.bin": b"cc"}
    _write(tmp_path, files)
    pin = build_pin(tmp_path, list(files), repo_id="me/art", revision="v1")
    assert pin.manifest_sha256 == hashlib.sha256(b"{}").hexdigest()
    assert pin.file("a/b.bin").sha256 == hashlib.sha256(b"abc").hexdigest()
    report = verify_directory(tmp_path, pin)
    assert report.ok and report.summary() == "3/3 files verified"
    (tmp_path / "a" / "b.bin").write_bytes(b"abd")
    (tmp_path / "c.bin").unlink()
    (tmp_path / "extra.txt").write_bytes(b"!")
    report = verify_directory(tmp_path, pin)
    assert not report.ok
    states = {f.path: f.state for f in report.files}
    assert states == {"manifest.json": FileState.OK, "a/b.bin": FileState.MISMATCH, "c.bin": FileState.MISSING}
    assert report.unpinned == ("extra.txt",)
    assert report.summary() == "1/3 files verified, 1 missing, 1 mismatch, 1 unpinned file(s) ignored"
    with pytest.raises(PinError, match=r"manifest\.json"):
        build_pin(tmp_path, ["extra.txt"], repo_id="me/art", revision="v1")


def test_local_source_fetch_verifies(tmp_path: Path, artifact: dict[str, bytes], pin: ArtifactPin) -> None:
    src = tmp_path / "mirror"
    _write(src, artifact)
    settings = RegistrySettings(cache_dir=str(tmp_path / "cache"))
    result = ArtifactStore(settings, LocalSource(src)).fetch(pin)
    assert result.downloaded == 3 and all(result.path(p).read_bytes() == d for p, d in artifact.items())
    assert ArtifactStore(settings, LocalSource(src)).fetch(pin).downloaded == 0
    # a mirror with a wrong byte is refused and nothing lands in the cache
    bad = tmp_path / "bad-mirror"
    _write(bad, {**artifact, "manifest.json": b'{"fake": "manifesT"}\n'})
    other = RegistrySettings(cache_dir=str(tmp_path / "cache2"))
    with pytest.raises(ChecksumMismatch, match=r"manifest\.json"):
        ArtifactStore(other, LocalSource(bad)).fetch(pin)
    assert not (ArtifactStore(other).artifact_dir(pin) / "manifest.json").exists()
    (bad / "manifest.json").unlink()
    with pytest.raises(MissingFile):
        ArtifactStore(other, LocalSource(bad)).fetch(pin)


def test_local_source_refuses_symlink_out_of_the_mirror(tmp_path: Path, artifact: dict[str, bytes],
                                                        pin: ArtifactPin) -> None:
    src = tmp_path / "mirror"
    _write(src, artifact)
    elsewhere = tmp_path / "elsewhere"
    _write(elsewhere, {"m": artifact["manifest.json"]})
    (src / "manifest.json").unlink()
    os.symlink(elsewhere / "m", src / "manifest.json")
    with pytest.raises(UnsafePath):
        ArtifactStore(RegistrySettings(cache_dir=str(tmp_path / "c")), LocalSource(src)).fetch(pin)


def test_settings_from_env_mapping() -> None:
    s = registry_settings_from_env({"HF_ENDPOINT": "http://mirror:8080/", "HF_TOKEN": "t", "HF_HUB_OFFLINE": "0"})
    assert (s.endpoint, s.offline, s.token is not None and s.token.get()) == ("http://mirror:8080", False, "t")
    with pytest.raises(ValueError, match="endpoint"):
        RegistrySettings(endpoint="ftp://x")
