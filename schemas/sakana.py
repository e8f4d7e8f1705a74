"""Sakana TRINITY contracts: artifact pin, adapter manifest, routing head spec, runtime profile, adapter ref.

These decode the public anchor files unchanged (``artifact_pin.json``,
``sakana_python_reference_manifest.json``) and reject broken variants with a :class:`SchemaError` naming
the field.

Example:
    >>> import msgspec
    >>> spec = HeadSpec()
    >>> (spec.rows, spec.cols, spec.num_agents, spec.num_roles)
    (10, 1024, 7, 3)
"""

from __future__ import annotations

import hashlib
import posixpath

import msgspec

from schemas.common import HIDDEN_SIZE, NUM_AGENTS, NUM_ROLES, check_sha256, check_token
from schemas.errors import require

#: The nine matrices TRINITY's SVF adapter scales, in the trained vector's order.
TRINITY_SVF_TENSORS: tuple[str, ...] = (
    "model.embed_tokens.weight",
    "model.layers.26.self_attn.q_proj.weight",
    "model.layers.26.self_attn.k_proj.weight",
    "model.layers.26.self_attn.v_proj.weight",
    "model.layers.26.self_attn.o_proj.weight",
    "model.layers.26.mlp.gate_proj.weight",
    "model.layers.26.mlp.up_proj.weight",
    "model.layers.26.mlp.down_proj.weight",
    "lm_head.weight",
)
#: Identifier of the SVF reconstruction with energy rescale: W' = U diag(S(1+d)) V^T * sum(S)/sum(S(1+d)).
SVF_FORMULA = "svf-energy-v1"


class PinnedFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One file of a pinned artifact: a relative POSIX path and its sha256."""

    path: str
    sha256: str

    def __post_init__(self) -> None:
        require(bool(self.path), "path", "must not be empty")
        require(not self.path.startswith("/") and "\\" not in self.path, "path",
                f"must be a relative POSIX path, got {self.path!r}")
        norm = posixpath.normpath(self.path)
        require(norm == self.path and not norm.startswith(".."), "path",
                f"must be normalised and stay inside the artifact (no '..', '.', '//'), got {self.path!r}")
        check_sha256(self.sha256, "sha256")


class ArtifactPin(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A pinned artifact: repository, revision and the sha256 of every file (``artifact_pin.json``)."""

    version: int
    repo_id: str
    revision: str
    manifest_sha256: str
    files: list[PinnedFile]

    def __post_init__(self) -> None:
        require(self.version == 1, "version", f"only pin version 1 is understood, got {self.version}")
        parts = self.repo_id.split("/")
        require(len(parts) == 2 and all(parts) and " " not in self.repo_id, "repo_id",
                f"must look like 'owner/name', got {self.repo_id!r}")
        require(bool(self.revision.strip()), "revision", "must name a branch, tag or commit")
        check_sha256(self.manifest_sha256, "manifest_sha256")
        require(len(self.files) > 0, "files", "must list at least one file")
        seen: set[str] = set()
        for i, f in enumerate(self.files):
            require(f.path not in seen, f"files[{i}].path", f"duplicate path {f.path!r}")
            seen.add(f.path)
            if f.path == "manifest.json":
                require(f.sha256 == self.manifest_sha256, f"files[{i}].sha256",
                        "manifest.json's sha256 must equal manifest_sha256")

    def file(self, path: str) -> PinnedFile:
        """The pinned entry for ``path``; ``KeyError`` when the pin does not list it."""
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(f"{path!r} is not pinned by {self.repo_id}@{self.revision}")


class SelectedTensor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One matrix the adapter scales: its HF name, shape and the range of its offsets in the vector."""

    source_name: str
    shape: list[int]
    singular_values: int
    offset_start: int
    offset_end: int
    elixir_name: str | None = None

    def __post_init__(self) -> None:
        require(bool(self.source_name), "source_name", "must not be empty")
        require(len(self.shape) == 2 and all(d > 0 for d in self.shape), "shape",
                f"must be two positive dimensions, got {self.shape}")
        require(0 < self.singular_values <= min(self.shape), "singular_values",
                f"must be in 1..min(shape)={min(self.shape)}, got {self.singular_values}")
        require(self.offset_start >= 0, "offset_start", f"must be >= 0, got {self.offset_start}")
        require(self.offset_end - self.offset_start == self.singular_values, "offset_end",
                f"offset_end - offset_start must equal singular_values ({self.singular_values}), "
                f"got {self.offset_start}..{self.offset_end}")


class SampleAdaptedTensor(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A reconstruction sample recorded by the reference exporter (informational)."""

    source_name: str
    offset_start: int
    offset_end: int
    source_shape: list[int]
    reconstructed_shape: list[int]
    sample_max_abs_error_zero_offsets: float
    sample_reconstructed_shape: list[int]
    sample_reconstructed_bf16_sha256: str
    sample_reconstructed_bf16_max: float
    sample_reconstructed_bf16_min: float
    elixir_name: str | None = None

    def __post_init__(self) -> None:
        check_sha256(self.sample_reconstructed_bf16_sha256, "sample_reconstructed_bf16_sha256")
        require(self.offset_end > self.offset_start >= 0, "offset_end", "must exceed offset_start >= 0")


class SakanaManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The adapter manifest: which tensors the trained vector's offsets scale, and where they lie.

    Invariants: ``selected_tensor_count`` tensors with unique names, offset ranges contiguous from 0 in
    list order, ``selected_singular_value_count`` equal to their total.
    """

    source_vector_sha256: str
    selected_tensor_count: int
    selected_singular_value_count: int
    selected_tensors: list[SelectedTensor]
    sample_adapted_tensor: SampleAdaptedTensor | None = None

    def __post_init__(self) -> None:
        check_sha256(self.source_vector_sha256, "source_vector_sha256")
        require(self.selected_tensor_count == len(self.selected_tensors), "selected_tensor_count",
                f"says {self.selected_tensor_count} but selected_tensors lists {len(self.selected_tensors)}")
        names: set[str] = set()
        cursor = 0
        for i, t in enumerate(self.selected_tensors):
            require(t.source_name not in names, f"selected_tensors[{i}].source_name",
                    f"duplicate tensor {t.source_name!r}")
            names.add(t.source_name)
            require(t.offset_start == cursor, f"selected_tensors[{i}].offset_start",
                    f"offset ranges must be contiguous in list order: expected {cursor}, got {t.offset_start}")
            cursor = t.offset_end
        require(self.selected_singular_value_count == cursor, "selected_singular_value_count",
                f"says {self.selected_singular_value_count} but the offset ranges cover {cursor}")

    @property
    def offsets_length(self) -> int:
        """Number of SVF offsets at the start of the trained vector."""
        return self.selected_singular_value_count

    def is_trinity_layout(self) -> bool:
        """True when the tensors are exactly TRINITY's nine, in the trained vector's order."""
        return tuple(t.source_name for t in self.selected_tensors) == TRINITY_SVF_TENSORS


class HeadSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The routing head: bias-free linear ``{rows, cols}``; ``logits[:num_agents]`` agents, then roles.

    Roles come in the raw order Worker, Thinker, Verifier (``role_order``).
    """

    rows: int = NUM_AGENTS + NUM_ROLES
    cols: int = HIDDEN_SIZE
    num_agents: int = NUM_AGENTS
    num_roles: int = NUM_ROLES
    role_order: tuple[str, ...] = ("worker", "thinker", "verifier")
    bias: bool = False

    def __post_init__(self) -> None:
        require(self.num_agents >= 2, "num_agents", f"must be >= 2, got {self.num_agents}")
        require(self.num_roles == NUM_ROLES, "num_roles", f"TRINITY has exactly 3 roles, got {self.num_roles}")
        require(self.rows == self.num_agents + self.num_roles, "rows",
                f"must equal num_agents + num_roles = {self.num_agents + self.num_roles}, got {self.rows}")
        require(self.cols > 0, "cols", f"must be positive, got {self.cols}")
        require(self.role_order == ("worker", "thinker", "verifier"), "role_order",
                f"the head's raw role order is worker, thinker, verifier; got {list(self.role_order)}")
        require(not self.bias, "bias", "TRINITY's head is bias-free")

    @property
    def size(self) -> int:
        """Number of head weights (``rows * cols``)."""
        return self.rows * self.cols


class RuntimeProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A runtime lane (backend + device + dtype) and the margin floors its decisions must clear.

    The floors are the smallest acceptable winning-minus-runner-up logit gaps; the CUDA reference lane
    of the known port used agent 0.24 and role 1.06.
    """

    name: str = "cpu-f32"
    backend: str = "torch"
    device: str = "cpu"
    dtype: str = "float32"
    agent_margin_floor: float = 0.24
    role_margin_floor: float = 1.06

    def __post_init__(self) -> None:
        check_token(self.name, "name")
        check_token(self.backend, "backend")
        require(self.dtype in ("float32", "float16", "bfloat16", "float64"), "dtype",
                f"must be float32, float16, bfloat16 or float64, got {self.dtype!r}")
        require(self.agent_margin_floor >= 0.0, "agent_margin_floor",
                f"must be >= 0, got {self.agent_margin_floor}")
        require(self.role_margin_floor >= 0.0, "role_margin_floor", f"must be >= 0, got {self.role_margin_floor}")


class AdapterRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Content address of an adapter: base weights identity + offsets + head + formula version.

    ``digest`` is the sha256 over those four identities; ``token`` (its first 16 hex characters) names the
    adapter in subjects. Build one with :meth:`AdapterRef.build`.

    Example:
        >>> ref = AdapterRef.build("a" * 64, "b" * 64, "c" * 64)
        >>> ref.token == ref.digest[:16]
        True
    """

    digest: str
    base_sha256: str
    offsets_sha256: str
    head_sha256: str
    formula: str = SVF_FORMULA

    def __post_init__(self) -> None:
        check_sha256(self.digest, "digest")
        check_sha256(self.base_sha256, "base_sha256")
        check_sha256(self.offsets_sha256, "offsets_sha256")
        check_sha256(self.head_sha256, "head_sha256")
        check_token(self.formula, "formula")
        expected = self.compute_digest(self.base_sha256, self.offsets_sha256, self.head_sha256, self.formula)
        require(self.digest == expected, "digest",
                "does not match sha256(base, offsets, head, formula); build refs with AdapterRef.build")

    @staticmethod
    def compute_digest(base_sha256: str, offsets_sha256: str, head_sha256: str, formula: str) -> str:
        """The content address of the four identities."""
        text = (f"trinity-adapter/1\nbase={base_sha256}\noffsets={offsets_sha256}\n"
                f"head={head_sha256}\nformula={formula}\n")
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def build(cls, base_sha256: str, offsets_sha256: str, head_sha256: str,
              formula: str = SVF_FORMULA) -> AdapterRef:
        """Make the ref for these identities (digest computed)."""
        return cls(cls.compute_digest(base_sha256, offsets_sha256, head_sha256, formula),
                   base_sha256, offsets_sha256, head_sha256, formula)

    @property
    def token(self) -> str:
        """Short subject-safe name of the adapter."""
        return self.digest[:16]


#: Subject token used for routes served by the unadapted base model.
BASE_ADAPTER_TOKEN = "base"
