"""In-place tensor patches with receipts: validated parameter paths, dtype policy, provenance.

* :class:`ParamPath` validates dotted names (``model.layers.26.mlp.up_proj.weight``) and resolves them in
  a ``torch.nn.Module`` (parameters and buffers) or a state dict.
* :func:`apply_patch` computes a new value from the current one, casts it back with a
  :class:`~crucible.dtype_policy.DTypePolicy`, writes it **in place** (``copy_`` under ``no_grad``, so
  the parameter object, its storage and any optimizer/hook references stay valid) and returns a
  :class:`PatchReceipt` with the sha256 of the bytes before and after.
* Tied weights: a tensor that shares storage with another path of the module or state dict
  (Qwen3's ``embed_tokens`` and ``lm_head``) is refused unless ``allow_aliased=True`` (then the
  receipt lists every alias that changed with it), or unless :func:`untie_parameter` first gives it
  its own storage.

Example::

    receipt = apply_patch(
        model, "model.layers.26.mlp.up_proj.weight", lambda w: w * 1.01,
        formula_id="scale-v1", adapter_ref="sakana/trinity@iter60",
    )
    receipt.sha256_before != receipt.sha256_after
"""

from __future__ import annotations

import re
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Final

import torch

from crucible.dtype_policy import DTypePolicy, dtype_name
from crucible.errors import (
    AliasedParameter,
    InvalidParamPath,
    InvalidPatchLabel,
    ParameterNotFound,
    PatchShapeMismatch,
    UnsupportedDtype,
)
from crucible.hashing import tensor_sha256

MAX_PATH_LENGTH: Final = 512
_SEGMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")
_FORMULA_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_ADAPTER_REF = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII, no spaces

StateDict = MutableMapping[str, torch.Tensor]
PatchTarget = torch.nn.Module | StateDict
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True, slots=True)
class ParamPath:
    """A validated dotted parameter path.

    Segments are Python identifiers or decimal indices (``layers.26``); no empty segments, no
    whitespace, at most :data:`MAX_PATH_LENGTH` characters.
    """

    segments: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> ParamPath:
        """Validate ``text``.

        Raises:
            InvalidParamPath: naming the offending segment.
        """
        if not isinstance(text, str) or not text:
            raise InvalidParamPath(f"parameter path must be a non-empty string, got {text!r}")
        if len(text) > MAX_PATH_LENGTH:
            raise InvalidParamPath(f"parameter path is {len(text)} characters; the limit is {MAX_PATH_LENGTH}")
        segments = tuple(text.split("."))
        for index, segment in enumerate(segments):
            if not _SEGMENT.fullmatch(segment):
                raise InvalidParamPath(
                    f"parameter path {text!r}: segment {index} ({segment!r}) must be an identifier or an index"
                )
        return cls(segments)

    @property
    def dotted(self) -> str:
        """The path as a dotted string."""
        return ".".join(self.segments)

    @property
    def owner(self) -> str:
        """The dotted path of the module that holds the tensor (``""`` for the root)."""
        return ".".join(self.segments[:-1])

    @property
    def leaf(self) -> str:
        """The attribute name of the tensor in its owner."""
        return self.segments[-1]

    def __str__(self) -> str:
        return self.dotted


def _as_path(path: str | ParamPath) -> ParamPath:
    return path if isinstance(path, ParamPath) else ParamPath.parse(path)


def resolve_module_tensor(module: torch.nn.Module, path: str | ParamPath) -> torch.Tensor:
    """The parameter or buffer at ``path`` in ``module``.

    Raises:
        InvalidParamPath: malformed path.
        ParameterNotFound: naming the deepest prefix that did resolve.
    """
    parsed = _as_path(path)
    try:
        owner = module.get_submodule(parsed.owner)
    except AttributeError:
        resolved: list[str] = []
        current = module
        for segment in parsed.segments[:-1]:
            child = current._modules.get(segment)
            if child is None:
                break
            resolved.append(segment)
            current = child
        prefix = ".".join(resolved) or "<root>"
        raise ParameterNotFound(
            f"{parsed}: no submodule {parsed.segments[len(resolved)]!r} under {prefix} "
            f"({type(current).__name__})"
        ) from None
    tensor: torch.Tensor | None = owner._parameters.get(parsed.leaf)
    if tensor is None:
        tensor = owner._buffers.get(parsed.leaf)
    if tensor is None:
        raise ParameterNotFound(
            f"{parsed}: {type(owner).__name__} at {parsed.owner or '<root>'} has no parameter or buffer "
            f"{parsed.leaf!r}"
        )
    return tensor


def resolve_state_dict_tensor(state: StateDict, path: str | ParamPath) -> torch.Tensor:
    """The tensor at ``path`` in a state dict.

    Raises:
        InvalidParamPath: malformed path.
        ParameterNotFound: the key is absent.
    """
    parsed = _as_path(path)
    try:
        return state[parsed.dotted]
    except KeyError:
        raise ParameterNotFound(f"{parsed}: not a key of the state dict ({len(state)} keys)") from None


def resolve_tensor(target: PatchTarget, path: str | ParamPath) -> torch.Tensor:
    """Resolve ``path`` in a module or a state dict."""
    if isinstance(target, torch.nn.Module):
        return resolve_module_tensor(target, path)
    return resolve_state_dict_tensor(target, path)


def _named_tensors(target: PatchTarget) -> list[tuple[str, torch.Tensor]]:
    if isinstance(target, torch.nn.Module):
        return [
            *target.named_parameters(remove_duplicate=False),
            *target.named_buffers(remove_duplicate=False),
        ]
    return list(target.items())


def aliases_of(target: PatchTarget, path: str | ParamPath) -> tuple[str, ...]:
    """Other paths of a module or state dict whose tensors share storage with ``path`` (tied weights)."""
    parsed = _as_path(path)
    tensor = resolve_tensor(target, parsed)
    if tensor.numel() == 0:
        return ()
    storage = tensor.untyped_storage().data_ptr()
    found: list[str] = []
    for name, other in _named_tensors(target):
        if name == parsed.dotted or name in found:
            continue
        if other.numel() > 0 and other.untyped_storage().data_ptr() == storage:
            found.append(name)
    return tuple(found)


def untie_parameter(target: PatchTarget, path: str | ParamPath) -> torch.Tensor:
    """Give the tensor at ``path`` its own storage (a copy), leaving its former aliases untouched.

    In a module the parameter object is replaced by a new ``nn.Parameter`` (same ``requires_grad``);
    in a state dict the entry is replaced by a clone. Returns the new tensor.

    Raises:
        ParameterNotFound: ``path`` does not resolve (in a module, buffers cannot be untied this way).
    """
    parsed = _as_path(path)
    if not isinstance(target, torch.nn.Module):
        fresh_value = resolve_state_dict_tensor(target, parsed).detach().clone()
        target[parsed.dotted] = fresh_value
        return fresh_value
    resolve_module_tensor(target, parsed)  # typed error for a bad path
    owner = target.get_submodule(parsed.owner)
    current = owner._parameters.get(parsed.leaf)
    if current is None:
        raise ParameterNotFound(f"{parsed}: not a parameter; only parameters can be untied")
    fresh = torch.nn.Parameter(current.detach().clone(), requires_grad=current.requires_grad)
    setattr(owner, parsed.leaf, fresh)
    return fresh


@dataclass(frozen=True, slots=True)
class PatchReceipt:
    """Provenance of one in-place patch.

    Attributes:
        path: the dotted parameter path.
        shape: the tensor's shape.
        dtype: the tensor's dtype name (``"bfloat16"``).
        sha256_before: digest of the tensor's bytes before the patch (:func:`crucible.hashing.tensor_sha256`).
        sha256_after: digest after the patch.
        formula_id: the transform's id (e.g. ``"svf-energy-v1"``).
        adapter_ref: which adapter produced the values (e.g. ``"sakana/trinity@iter60"``).
        policy_id: the dtype policy used (:attr:`DTypePolicy.policy_id`).
        max_abs_change: ``max |after - before|`` in float64.
        aliases: other paths that share the storage and therefore changed too.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    sha256_before: str
    sha256_after: str
    formula_id: str
    adapter_ref: str
    policy_id: str
    max_abs_change: float
    aliases: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (lists for tuples)."""
        return {
            "path": self.path,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "sha256_before": self.sha256_before,
            "sha256_after": self.sha256_after,
            "formula_id": self.formula_id,
            "adapter_ref": self.adapter_ref,
            "policy_id": self.policy_id,
            "max_abs_change": self.max_abs_change,
            "aliases": list(self.aliases),
        }


def validate_labels(formula_id: str, adapter_ref: str) -> None:
    """Check receipt labels.

    Raises:
        InvalidPatchLabel: ``formula_id`` is not ``[a-z0-9][a-z0-9._-]{0,63}`` or ``adapter_ref`` is not
            1-256 printable non-space ASCII characters.
    """
    if not isinstance(formula_id, str) or not _FORMULA_ID.fullmatch(formula_id):
        raise InvalidPatchLabel(f"formula_id {formula_id!r} must match [a-z0-9][a-z0-9._-]{{0,63}}")
    if not isinstance(adapter_ref, str) or not _ADAPTER_REF.fullmatch(adapter_ref):
        raise InvalidPatchLabel(
            f"adapter_ref {adapter_ref!r:.80} must be 1-256 printable ASCII characters without spaces"
        )


def apply_patch(
    target: PatchTarget,
    path: str | ParamPath,
    transform: Transform,
    *,
    formula_id: str,
    adapter_ref: str,
    policy: DTypePolicy | None = None,
    allow_aliased: bool = False,
) -> PatchReceipt:
    """Replace the tensor at ``path`` in place with ``transform(current)`` and return a receipt.

    ``transform`` receives the current tensor (read-only; do not modify it) in its own dtype and returns
    the new value with the same shape in any floating dtype (typically the policy's compute dtype);
    it is cast to the target's dtype with the policy's single rounding before it is written.

    Args:
        target: a module (parameters and buffers) or a state dict.
        path: dotted parameter path.
        transform: computes the new value.
        formula_id: recorded in the receipt (e.g. ``"svf-energy-v1"``).
        adapter_ref: recorded in the receipt.
        policy: dtype transfer policy (default float64 compute).
        allow_aliased: patch a tensor even if it shares storage with other paths (they change too).

    Raises:
        InvalidParamPath, ParameterNotFound: bad path.
        InvalidPatchLabel: bad ``formula_id``/``adapter_ref``.
        AliasedParameter: tied weights and ``allow_aliased`` is False.
        UnsupportedDtype: the target is not float64/float32/float16/bfloat16.
        PatchShapeMismatch: the new value's shape differs.
        NonFiniteResult: the new value is NaN/inf in the target dtype; nothing is written.
    """
    policy = policy or DTypePolicy()
    parsed = _as_path(path)
    validate_labels(formula_id, adapter_ref)
    tensor = resolve_tensor(target, parsed)
    aliases = aliases_of(target, parsed)
    if aliases and not allow_aliased:
        raise AliasedParameter(
            f"{parsed} shares storage with {', '.join(aliases)} (tied weights); patching it would change "
            "them too. Call untie_parameter() first, or pass allow_aliased=True to patch them together"
        )
    if tensor.dtype not in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        raise UnsupportedDtype(f"{parsed}: cannot patch a {dtype_name(tensor.dtype)} tensor")
    before_digest = tensor_sha256(tensor)
    with torch.no_grad():
        new_value = transform(tensor.detach())
        if tuple(new_value.shape) != tuple(tensor.shape):
            raise PatchShapeMismatch(
                f"{parsed}: transform returned shape {tuple(new_value.shape)}, "
                f"the tensor is {tuple(tensor.shape)}"
            )
        cast = policy.cast_back(new_value, tensor.dtype, what=parsed.dotted)
        change = _max_abs_difference(cast, tensor)
        tensor.copy_(cast)
    return PatchReceipt(
        path=parsed.dotted,
        shape=tuple(int(n) for n in tensor.shape),
        dtype=dtype_name(tensor.dtype),
        sha256_before=before_digest,
        sha256_after=tensor_sha256(tensor),
        formula_id=formula_id,
        adapter_ref=adapter_ref,
        policy_id=policy.policy_id,
        max_abs_change=change,
        aliases=aliases,
    )


def _max_abs_difference(a: torch.Tensor, b: torch.Tensor, rows: int = 8192) -> float:
    """``max |a - b|`` in float64, computed in row slices to bound memory."""
    if a.numel() == 0:
        return 0.0
    if a.dim() < 2:
        return float((a.to(torch.float64) - b.to(torch.float64)).abs().max())
    best = 0.0
    for start in range(0, a.shape[0], rows):
        part = a[start : start + rows].to(torch.float64) - b[start : start + rows].to(torch.float64)
        best = max(best, float(part.abs().max()))
    return best
