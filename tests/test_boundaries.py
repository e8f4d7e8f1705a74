"""The five boundary rules of DESIGN.md, checked on the source tree by parsing imports (no code is run).

1. The environment is read only under ``config/``.
2. ``schemas/`` imports nothing but msgspec and the standard library.
3. Only the model runtime (and ``crucible/``) imports torch, transformers or safetensors.
4. Actors never import one another.
5. The hidden vector never leaves the model runtime: no contract carries it, and ``RouteLogits`` (what
   crosses the bus) holds only bounded logit lists.

``test_checker_catches_each_violation`` builds a small tree breaking each rule and asserts it is caught.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "bus", "config", "crucible", "ops", "schemas", "supervisors", "scripts", "trinity_nats")
ML_MODULES = {"torch", "transformers", "safetensors"}
# The model runtime and crucible own tensor work. Two explicit exceptions: benchmark scripts measure that work
# (operator tooling, never imported by an actor), and the provider agents' local model
# (``actors/provider_agents/local_model.py``) runs a small instruct LLM in-process as an offline agent; it is
# imported lazily, only when an agent is configured with the ``local`` provider.
ML_ALLOWED = ("actors/model_runtime/", "crucible/", "scripts/bench_", "actors/provider_agents/local_model.py")
ENV_NAMES = {"environ", "getenv", "putenv", "unsetenv", "environb", "getenvb"}


@dataclass(frozen=True)
class Violation:
    rule: int
    path: str
    line: int
    detail: str


def _files(root: Path) -> list[Path]:
    out = [p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")] if root.exists() else []
    if (root / "run.py").exists():
        out.append(root / "run.py")
    return sorted(out)


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
    return found


def _env_reads(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ENV_NAMES:
            found.append((ast.unparse(node), node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [(f"from os import {a.name}", node.lineno) for a in node.names if a.name in ENV_NAMES]
    return found


def check_tree(root: Path) -> list[Violation]:
    """Every boundary violation in the source tree at ``root``."""
    violations: list[Violation] = []
    stdlib = set(sys.stdlib_module_names)
    for path in _files(root):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        imports = _imports(tree)
        if not rel.startswith("config/"):
            violations += [Violation(1, rel, ln, f"reads the environment: {what}") for what, ln in _env_reads(tree)]
        if rel.startswith("schemas/"):
            for mod, ln in imports:
                top = mod.split(".")[0]
                if top not in stdlib and top not in ("msgspec", "schemas", "__future__"):
                    violations.append(Violation(2, rel, ln, f"schemas imports {mod}"))
        if not rel.startswith(ML_ALLOWED):
            for mod, ln in imports:
                if mod.split(".")[0] in ML_MODULES:
                    violations.append(Violation(3, rel, ln, f"imports {mod} outside the model runtime"))
        if rel.startswith("actors/") and rel.count("/") >= 2:
            own = rel.split("/")[1]
            for mod, ln in imports:
                parts = mod.split(".")
                if parts[0] == "actors" and len(parts) > 1 and parts[1] != own:
                    violations.append(Violation(4, rel, ln, f"actor {own} imports actor module {mod}"))
        if rel.startswith("schemas/"):
            for node in ast.walk(tree):
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                        "hidden" in node.target.id.lower():
                    violations.append(Violation(5, rel, node.lineno, f"contract field {node.target.id} carries a "
                                                                     "hidden state across the bus"))
    return violations


def test_source_tree_obeys_the_boundary_rules() -> None:
    violations = check_tree(ROOT)
    assert violations == [], "\n".join(f"rule {v.rule}: {v.path}:{v.line}: {v.detail}" for v in violations)


def test_route_logits_cannot_smuggle_a_hidden_vector() -> None:
    from schemas import RouteLogits

    fields = set(RouteLogits.__struct_fields__)
    assert not any("hidden" in f for f in fields)
    too_long = {"request_id": "r", "turn": 0, "agent_logits": [0.0] * 1024, "role_logits": [0.0] * 3,
                "token_count": 2, "transcript_hash": "0" * 64}
    with pytest.raises(msgspec.ValidationError, match="agent_logits"):
        msgspec.json.decode(msgspec.json.encode(too_long), type=RouteLogits)


VIOLATING_TREE = {
    "actors/coordinator/leaky.py": "import os\nKEY = os.environ['OPENAI_API_KEY']\n",
    "actors/coordinator/peek.py": "from os import getenv\n",
    "actors/coordinator/calls_runtime.py": "from actors.model_runtime import engine\n",
    "actors/trace_sink/heavy.py": "import torch\n",
    "bus/fast.py": "from safetensors.torch import load_file\n",
    "schemas/io.py": "import nats\nimport numpy as np\n",
    "schemas/leak.py": "import msgspec\nclass X(msgspec.Struct):\n    hidden_state: list[float]\n",
    "config/settings.py": "import os\nX = os.environ.get('A')\n",  # allowed
    "actors/model_runtime/engine.py": "import torch\nimport transformers\n",  # allowed
    "crucible/svd.py": "import torch\n",  # allowed
    "schemas/ok.py": "import msgspec\nimport enum\nfrom schemas.common import Role\n",  # allowed
}


def test_checker_catches_each_violation(tmp_path: Path) -> None:
    for rel, text in VIOLATING_TREE.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    found = {(v.rule, v.path) for v in check_tree(tmp_path)}
    assert found == {
        (1, "actors/coordinator/leaky.py"),
        (1, "actors/coordinator/peek.py"),
        (4, "actors/coordinator/calls_runtime.py"),
        (3, "actors/trace_sink/heavy.py"),
        (3, "bus/fast.py"),
        (2, "schemas/io.py"),
        (5, "schemas/leak.py"),
    }
