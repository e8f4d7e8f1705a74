"""Fetching through huggingface_hub from a local stand-in Hub: verification, faults, offline, tokens."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec
import pytest

from config.registry import RegistrySettings
from config.secrets import Secret
from crucible.registry.errors import (
    ChecksumMismatch,
    FetchError,
    OfflineMiss,
    RemoteNotFound,
    RemoteServerError,
    Unauthorized,
)
from crucible.registry.store import ArtifactStore, HubSource
from schemas.sakana import ArtifactPin, PinnedFile
from tests.registry.hub_server import FakeHub

BIG = "checkpoints/0001_embedder.safetensors"


def _store(settings: RegistrySettings) -> ArtifactStore:
    return ArtifactStore(settings, HubSource(settings))


def test_fetch_verifies_every_file_then_serves_from_cache(settings: RegistrySettings, pin: ArtifactPin,
                                                          hub: FakeHub, artifact: dict[str, bytes]) -> None:
    lines: list[str] = []
    result = _store(settings).fetch(pin, progress=lines.append)
    assert result.downloaded == 3
    for rel, data in artifact.items():
        assert result.path(rel).read_bytes() == data
    assert result.root == Path(settings.cache_dir) / "artifacts" / "acme--trinity-bundle" / "v1.0.0"
    assert [s.path for s in hub.seen if s.method == "GET"] == [f"/{pin.repo_id}/resolve/v1.0.0/{f.path}"
                                                               for f in pin.files]
    assert any("fetching" in line for line in lines)
    requests = len(hub.seen)
    again = _store(settings).fetch(pin)
    assert again.downloaded == 0 and len(hub.seen) == requests  # cached: no request at all
    # the pin is stored beside the verified files
    stored = msgspec.json.decode(result.root.with_name("v1.0.0.pin.json").read_bytes(), type=ArtifactPin)
    assert stored == pin


def test_token_comes_from_settings_only(tmp_path: Path, pin: ArtifactPin, hub: FakeHub,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    hub.token = "hf_right"
    monkeypatch.setenv("HF_TOKEN", "hf_from_env")  # the library's implicit token must never be used
    anonymous = RegistrySettings(endpoint=hub.url, cache_dir=str(tmp_path / "a"))
    with pytest.raises(Unauthorized, match=r"registry\.token") as err:
        _store(anonymous).fetch(pin)
    assert err.value.status == 401
    assert all(s.authorization is None for s in hub.seen)
    authed = RegistrySettings(endpoint=hub.url, cache_dir=str(tmp_path / "b"), token=Secret("hf_right"))
    assert _store(authed).fetch(pin).downloaded == 3
    assert {s.authorization for s in hub.seen if s.authorization} == {"Bearer hf_right"}
    assert "hf_right" not in repr(authed)


def test_missing_file_is_404(settings: RegistrySettings, pin: ArtifactPin, hub: FakeHub) -> None:
    hub.fault("router_head.safetensors", "head-404")
    with pytest.raises(RemoteNotFound, match="404") as err:
        _store(settings).fetch(pin)
    assert err.value.status == 404
    assert not (_store(settings).artifact_dir(pin) / "router_head.safetensors").exists()


def test_wrong_revision_is_404(settings: RegistrySettings, pin: ArtifactPin) -> None:
    other = msgspec.structs.replace(pin, revision="v9.9.9")
    with pytest.raises(RemoteNotFound, match="revision"):
        _store(settings).fetch(other)


def test_server_error_on_body_is_refused(settings: RegistrySettings, pin: ArtifactPin, hub: FakeHub) -> None:
    hub.fault(BIG, "get-500")
    with pytest.raises(RemoteServerError, match="500") as err:
        _store(settings).fetch(pin)
    assert err.value.status == 500
    store = _store(settings)
    assert not (store.artifact_dir(pin) / BIG).exists()
    # files verified before the failure stay cached; the next fetch only gets the rest
    result = store.fetch(pin)
    assert result.downloaded == 1 and result.path(BIG).is_file()


def test_transient_503_on_metadata_is_retried(settings: RegistrySettings, pin: ArtifactPin, hub: FakeHub) -> None:
    hub.fault("manifest.json", "head-503")
    result = _store(settings).fetch(pin)
    assert result.downloaded == 3
    assert hub.count("HEAD") == 4  # one retried


def test_corrupted_body_is_refused_and_removed(settings: RegistrySettings, pin: ArtifactPin, hub: FakeHub) -> None:
    hub.fault(BIG, "get-corrupt")
    store = _store(settings)
    with pytest.raises(ChecksumMismatch, match="differs from the pinned") as err:
        store.fetch(pin)
    assert err.value.removed and err.value.expected == pin.file(BIG).sha256
    assert not (store.artifact_dir(pin) / BIG).exists()
    assert not (store.staging_dir(pin) / BIG).exists()
    assert store.fetch(pin).path(BIG).is_file()  # the server is healthy again


def test_interrupted_download_resumes_with_range(settings: RegistrySettings, pin: ArtifactPin,
                                                 hub: FakeHub) -> None:
    # huggingface_hub writes the body in 10 MiB chunks: a 24 MiB file cut at half leaves one chunk to resume from
    big = hashlib.sha256(b"seed").digest() * (24 * 1024 * 1024 // 32)
    hub.files["big.bin"] = big
    with_big = msgspec.structs.replace(pin, files=[*pin.files, PinnedFile("big.bin", hashlib.sha256(big).hexdigest())])
    hub.fault("big.bin", "get-cut")
    result = _store(settings).fetch(with_big)
    assert result.path("big.bin").read_bytes() == big
    ranges = [s.range for s in hub.seen if s.method == "GET" and s.path.endswith("big.bin")]
    assert len(ranges) == 2 and ranges[0] is None
    assert ranges[1] is not None and ranges[1].startswith("bytes=") and int(ranges[1][6:].rstrip("-")) > 0


def test_interrupted_download_that_cannot_resume_fails_cleanly(settings: RegistrySettings, pin: ArtifactPin,
                                                               hub: FakeHub) -> None:
    hub.fault(BIG, "get-cut", "get-500")
    store = _store(settings)
    with pytest.raises(FetchError):
        store.fetch(pin)
    assert not (store.artifact_dir(pin) / BIG).exists()
    assert store.fetch(pin).downloaded == 1


def test_offline_serves_only_verified_cached_files(settings: RegistrySettings, pin: ArtifactPin,
                                                   hub: FakeHub) -> None:
    offline = msgspec.structs.replace(settings, offline=True)
    with pytest.raises(OfflineMiss, match="3 pinned file"):
        _store(offline).fetch(pin)
    assert hub.seen == []
    _store(settings).fetch(pin)
    before = len(hub.seen)
    result = _store(offline).fetch(pin)
    assert result.downloaded == 0 and len(hub.seen) == before
    # tamper with a cached file: offline refuses it (and drops it from the cache) without any request
    target = result.path("router_head.safetensors")
    target.write_bytes(b"tampered")
    with pytest.raises(OfflineMiss, match=r"router_head\.safetensors"):
        _store(offline).fetch(pin)
    assert not target.exists() and len(hub.seen) == before


def test_rehash_catches_same_size_same_mtime_tampering(settings: RegistrySettings, pin: ArtifactPin) -> None:
    result = _store(settings).fetch(pin)
    target = result.path("manifest.json")
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[0] ^= 1
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _store(settings).fetch(pin).downloaded == 0  # the record trusts size + mtime
    assert _store(settings).fetch(pin, rehash=True).downloaded == 1  # a re-hash finds and replaces it


def test_pin_with_unknown_file_is_404(settings: RegistrySettings, pin: ArtifactPin) -> None:
    extra = msgspec.structs.replace(pin, files=[*pin.files, PinnedFile("nope.bin", "0" * 64)])
    with pytest.raises(RemoteNotFound):
        _store(settings).fetch(extra)
