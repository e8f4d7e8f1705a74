"""Installed names do not collide: a wheel built from this tree installs only ``trinity_nats`` (the design
card's folders under it), and works from a directory holding a user's own ``config.py`` and ``bus.py``."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".git", ".venv", "tests", "build", "dist", "*.egg-info", "__pycache__", ".*cache",
                              ".hypothesis", "*.safetensors", "*.gguf")


def _run(*cmd: str | Path, cwd: Path) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)})
    assert out.returncode == 0, f"{cmd}: {out.stdout}\n{out.stderr}"
    return out.stdout


def test_wheel_installs_one_top_level_name_and_leaves_user_modules_alone(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=SKIP)
    _run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "whl",
         cwd=src)
    wheel = next((tmp_path / "whl").glob("trinity_nats-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"trinity_nats", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}

    # a fresh venv with the wheel; its dependencies come from this interpreter's site-packages as a plain path
    # entry (its .pth files, among them this checkout's editable install, are not processed there)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel, cwd=tmp_path)
    venv_site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (venv_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    user = tmp_path / "user_project"
    user.mkdir()
    (user / "config.py").write_text("MARKER = 'the user config'\n")
    (user / "bus.py").write_text("MARKER = 'the user bus'\n")
    check = textwrap.dedent("""
        import config, bus
        import trinity_nats.client as client
        from trinity_nats.client import TrinityClient, build_request
        from trinity_nats.config.settings import load_settings
        from trinity_nats.ops.node import ACTOR_MODULES
        import importlib
        importlib.import_module(ACTOR_MODULES["coordinator"])
        assert config.MARKER == "the user config" and bus.MARKER == "the user bus"
        assert "site-packages/trinity_nats/" in client.__file__, client.__file__
        assert all(m.startswith("trinity_nats.actors.") for m in ACTOR_MODULES.values()), ACTOR_MODULES
        assert load_settings(environ={}).node.node_id == "node-1"
        print(build_request("q", request_id="pkg-1").request_id)
    """)
    assert _run(py, "-c", check, cwd=user).split() == ["pkg-1"]
    assert "submit" in _run(venv / "bin" / "trinity-nats", "--help", cwd=user)
