"""crucible.tensor_patch: parameter paths, in-place patches, receipts, dtype policy, tied weights."""

from __future__ import annotations

import json

import pytest
import torch

from crucible import errors
from crucible.dtype_policy import DTypePolicy, cast_correctly_rounded
from crucible.hashing import tensor_sha256
from crucible.tensor_patch import (
    ParamPath,
    aliases_of,
    apply_patch,
    resolve_module_tensor,
    resolve_state_dict_tensor,
    untie_parameter,
)


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 3, bias=False)
        self.register_buffer("scale", torch.ones(3))


class Tiny(torch.nn.Module):
    def __init__(self, tied: bool = False) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.layers = torch.nn.ModuleList([Block(), Block()])
        self.head = torch.nn.Linear(4, 10, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def block(self, index: int) -> Block:
        block = self.layers[index]
        assert isinstance(block, Block)
        return block


@pytest.mark.parametrize(
    "text", ["model.layers.26.self_attn.q_proj.weight", "lm_head.weight", "w", "_x.0.y_1"]
)
def test_valid_paths(text: str) -> None:
    path = ParamPath.parse(text)
    assert path.dotted == str(path) == text
    assert path.leaf == text.split(".")[-1]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "non-empty"),
        ("a..b", "segment 1"),
        (".a", "segment 0"),
        ("a.", "segment 1"),
        ("a b", "segment 0"),
        ("a.-1", "segment 1"),
        ("a.1x", "segment 1"),
        ("a/b", "segment 0"),
        ("x" * 513, "limit is 512"),
    ],
)
def test_invalid_paths(text: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidParamPath, match=fragment):
        ParamPath.parse(text)


def test_resolution_in_modules_and_state_dicts() -> None:
    model = Tiny()
    assert resolve_module_tensor(model, "layers.1.proj.weight") is model.block(1).proj.weight
    assert resolve_module_tensor(model, "layers.0.scale") is model.block(0).scale
    with pytest.raises(errors.ParameterNotFound, match=r"no submodule '5' under layers"):
        resolve_module_tensor(model, "layers.5.proj.weight")
    with pytest.raises(errors.ParameterNotFound, match="no parameter or buffer 'bias'"):
        resolve_module_tensor(model, "layers.0.proj.bias")
    state = model.state_dict()
    assert torch.equal(resolve_state_dict_tensor(state, "head.weight"), model.head.weight)
    with pytest.raises(errors.ParameterNotFound, match="not a key"):
        resolve_state_dict_tensor(state, "head.bias")


def test_apply_patch_in_place_with_receipt() -> None:
    model = Tiny()
    param = model.block(0).proj.weight
    pointer, before = param.data_ptr(), param.detach().clone()
    receipt = apply_patch(
        model,
        "layers.0.proj.weight",
        lambda w: w.double() * 2.0,
        formula_id="scale-v1",
        adapter_ref="test/adapter@1",
    )
    assert model.block(0).proj.weight is param and param.data_ptr() == pointer and param.requires_grad
    assert torch.equal(param.detach(), before * 2.0)
    assert receipt.path == "layers.0.proj.weight" and receipt.shape == (3, 4) and receipt.dtype == "float32"
    assert receipt.sha256_before == tensor_sha256(before)
    assert receipt.sha256_after == tensor_sha256(param)
    assert receipt.formula_id == "scale-v1" and receipt.adapter_ref == "test/adapter@1"
    assert receipt.policy_id == DTypePolicy().policy_id
    assert receipt.max_abs_change == pytest.approx(float(before.abs().max()))
    assert receipt.aliases == ()
    assert json.loads(json.dumps(receipt.to_dict()))["shape"] == [3, 4]


def test_bf16_target_gets_single_rounding_of_compute_value() -> None:
    model = Tiny().to(torch.bfloat16)
    base = model.head.weight.detach().clone()
    value = base.double() * (1 + 2**-9) + 1e-6
    apply_patch(model, "head.weight", lambda _: value, formula_id="f", adapter_ref="a")
    assert torch.equal(model.head.weight.detach(), cast_correctly_rounded(value, torch.bfloat16))


def test_failed_patches_leave_the_tensor_untouched() -> None:
    model = Tiny()
    before = model.head.weight.detach().clone()
    with pytest.raises(errors.PatchShapeMismatch, match=r"\(10, 4\)"):
        apply_patch(model, "head.weight", lambda w: w.T, formula_id="f", adapter_ref="a")
    with pytest.raises(errors.NonFiniteResult, match=r"head\.weight"):
        apply_patch(model, "head.weight", lambda w: w * float("inf"), formula_id="f", adapter_ref="a")
    with pytest.raises(errors.InvalidPatchLabel, match="formula_id"):
        apply_patch(model, "head.weight", lambda w: w, formula_id="Bad Id", adapter_ref="a")
    with pytest.raises(errors.InvalidPatchLabel, match="adapter_ref"):
        apply_patch(model, "head.weight", lambda w: w, formula_id="f", adapter_ref="has space")
    assert torch.equal(model.head.weight.detach(), before)
    ints = {"ids": torch.arange(4)}
    with pytest.raises(errors.UnsupportedDtype, match="int64"):
        apply_patch(ints, "ids", lambda w: w.double(), formula_id="f", adapter_ref="a")


def test_tied_weights_are_refused_then_patched_together_or_untied() -> None:
    model = Tiny(tied=True)
    assert aliases_of(model, "embed.weight") == ("head.weight",)
    with pytest.raises(errors.AliasedParameter, match=r"head\.weight"):
        apply_patch(model, "embed.weight", lambda w: w + 1, formula_id="f", adapter_ref="a")
    receipt = apply_patch(
        model, "embed.weight", lambda w: w + 1, formula_id="f", adapter_ref="a", allow_aliased=True
    )
    assert receipt.aliases == ("head.weight",) and model.head.weight is model.embed.weight

    fresh = untie_parameter(model, "head.weight")
    assert model.head.weight is fresh and aliases_of(model, "embed.weight") == ()
    assert torch.equal(fresh.detach(), model.embed.weight.detach())
    apply_patch(model, "head.weight", lambda w: w * 0, formula_id="f", adapter_ref="a")
    assert float(model.embed.weight.detach().abs().sum()) > 0  # the embedding kept its values


def test_state_dict_patch_and_aliases() -> None:
    shared = torch.randn(3, 3)
    state = {"a": shared, "b": shared, "c": torch.randn(2)}
    with pytest.raises(errors.AliasedParameter):
        apply_patch(state, "a", lambda w: w + 1, formula_id="f", adapter_ref="x")
    untie_parameter(state, "a")
    receipt = apply_patch(state, "a", lambda w: w + 1, formula_id="f", adapter_ref="x")
    assert receipt.aliases == () and torch.equal(state["a"], state["b"] + 1)
    with pytest.raises(errors.ParameterNotFound):
        untie_parameter(Tiny(), "layers.0.scale")  # buffers cannot be untied
