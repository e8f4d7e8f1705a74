"""Role packs and the message builder (pure; the bus actor is tested in test_actors_bus.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from actors.role_injector.builder import build, build_messages, prompt_sha256, strip_echoed_header
from actors.role_injector.errors import RolePackFileError, RolePackInvalid, UnknownRolePack
from actors.role_injector.packs import (
    DEFAULT_PACK,
    DEFAULT_PACK_V1,
    Example,
    PackRegistry,
    RolePack,
    RolePrompt,
    load_pack,
    parse_pack,
)
from schemas import Role
from schemas.common import Message
from schemas.errors import SchemaError
from schemas.roles import RoleInjectReply, RoleInjectRequest, TranscriptEntry

HISTORY = [TranscriptEntry(turn=0, agent_id=3, role=Role.THINKER, content="plan it"),
           TranscriptEntry(turn=1, agent_id=1, role=Role.WORKER, content="42")]

TOML_PACK = """
name = "custom"
version = 2
history_style = "inline"
reply_header = "## {role} (turn {turn})"

[roles.worker]
system = "You write answers."
instruction = "Answer."

[roles.thinker]
system = "You plan. End with <suggested_role>Worker</suggested_role>."
instruction = "Plan."

[roles.verifier]
system = "Start with ACCEPT or REVISE."
instruction = "Check."
"""


def request(role: Role, history: list[TranscriptEntry] | None = None, pack: str | None = None) -> RoleInjectRequest:
    return RoleInjectRequest(request_id="q1", turn=2, agent_id=5, role=role, query="What is 6 x 7?",
                             history=history or [], role_pack=pack)


def test_default_pack_prompts_follow_the_protocol() -> None:
    assert DEFAULT_PACK.pack_id == "trinity-default/2"
    thinker = DEFAULT_PACK.prompt(Role.THINKER)
    assert "<suggested_role>Worker</suggested_role>" in thinker.system
    assert all("<suggested_role>" in ex.assistant for ex in thinker.examples)
    verifier = DEFAULT_PACK.prompt(Role.VERIFIER)
    assert "Start with ACCEPT if the answer is correct or REVISE if it is wrong" in verifier.system
    # the worked examples start with the verdict word, one of each
    assert sorted(ex.assistant.split(".")[0] for ex in verifier.examples) == ["ACCEPT", "REVISE"]
    v1 = DEFAULT_PACK_V1.prompt(Role.VERIFIER)
    assert DEFAULT_PACK_V1.pack_id == "trinity-default/1"
    assert "ACCEPT or REVISE" in v1.system and "Start your reply with ACCEPT or REVISE" in v1.instruction
    assert "Your role: Worker" in DEFAULT_PACK_V1.prompt(Role.WORKER).system


HISTORY3 = [TranscriptEntry(turn=0, agent_id=3, role=Role.THINKER, content="plan it"),
            TranscriptEntry(turn=1, agent_id=1, role=Role.WORKER, content="[turn 1 | Worker | agent 1]\n42"),
            TranscriptEntry(turn=2, agent_id=2, role=Role.VERIFIER, content="REVISE. Show the product.")]


def request3(role: Role, history: list[TranscriptEntry]) -> RoleInjectRequest:
    return RoleInjectRequest(request_id="q1", turn=len(history), agent_id=5, role=role, query="What is 6 x 7?",
                             history=history)


@pytest.mark.parametrize(("role", "last"), [
    (Role.WORKER, "Question: What is 6 x 7?\nNotes: REVISE. Show the product."),
    (Role.THINKER, "Question: What is 6 x 7?\nLatest answer: 42"),
    (Role.VERIFIER, "Question: What is 6 x 7?\nAnswer: 42\nIs the answer correct?"),
])
def test_small_model_layout_keeps_bookkeeping_out(role: Role, last: str) -> None:
    msgs = build_messages(DEFAULT_PACK, request3(role, HISTORY3))
    prompt = DEFAULT_PACK.prompt(role)
    assert msgs[0] == Message(role="system", content=prompt.system)
    pairs = [(m.role, m.content) for m in msgs[1:-1]]
    assert pairs == [x for ex in prompt.examples for x in (("user", ex.user), ("assistant", ex.assistant))]
    assert msgs[-1] == Message(role="user", content=last)
    # no turn numbers or agent ids anywhere the model reads, not even a header a model copied earlier
    assert not any(re.search(r"\bturn\b|\bagent\b|\[", m.content) for m in msgs)


def test_small_model_layout_answer_and_notes() -> None:
    worker = build_messages(DEFAULT_PACK, request3(Role.WORKER, []))
    assert worker[-1].content == "Question: What is 6 x 7?\nNotes: none"
    verifier = build_messages(DEFAULT_PACK, request3(Role.VERIFIER, HISTORY3[:1]))
    assert verifier[-1].content == "Question: What is 6 x 7?\nAnswer: none yet\nIs the answer correct?"
    # notes are the latest Thinker/Verifier reply after the latest Worker answer
    worker = build_messages(DEFAULT_PACK, request3(Role.WORKER, HISTORY3[:2]))
    assert worker[-1].content.endswith("Notes: none")
    worker = build_messages(DEFAULT_PACK, request3(Role.WORKER, HISTORY3[:1]))
    assert worker[-1].content.endswith("Notes: plan it")


def test_template_may_use_history_and_instruction() -> None:
    prompt = RolePrompt(system="s", instruction="Do it.", template="{history}\n---\n{instruction}")
    pack = _with_role("worker", prompt, DEFAULT_PACK_V1)
    msgs = build_messages(pack, request3(Role.WORKER, HISTORY3))
    assert msgs[-1].content == ("[turn 0 | Thinker | agent 3]\nplan it\n\n[turn 1 | Worker | agent 1]\n42\n\n"
                                "[turn 2 | Verifier | agent 2]\nREVISE. Show the product.\n---\nDo it.")


def test_echoed_header_is_stripped() -> None:
    assert strip_echoed_header("[turn 2 | Verifier | agent 2] 17 + 25 = 32.") == "17 + 25 = 32."
    assert strip_echoed_header("[turn 0 | Worker | agent 4]\n[turn 2 | Verifier | agent 5]\nok") == "ok"
    assert strip_echoed_header("[1, 2] is a list") == "[1, 2] is a list"


@pytest.mark.parametrize("role", list(Role))
def test_build_messages_layout(role: Role) -> None:
    msgs = build_messages(DEFAULT_PACK_V1, request(role, HISTORY))
    assert [m.role for m in msgs] == ["system", "user", "assistant", "assistant", "user"]
    assert msgs[0].content == DEFAULT_PACK_V1.prompt(role).system
    assert msgs[1].content == "What is 6 x 7?"
    assert msgs[2].content == "[turn 0 | Thinker | agent 3]\nplan it"
    assert msgs[3].content == "[turn 1 | Worker | agent 1]\n42"
    assert msgs[4].content == DEFAULT_PACK_V1.prompt(role).instruction


def test_build_without_history() -> None:
    msgs = build_messages(DEFAULT_PACK_V1, request(Role.WORKER))
    assert [m.role for m in msgs] == ["system", "user", "user"]


def test_build_reply_records_pack_and_hash() -> None:
    reply = build(DEFAULT_PACK, request(Role.VERIFIER, HISTORY))
    assert (reply.request_id, reply.turn, reply.role, reply.role_pack) == ("q1", 2, Role.VERIFIER,
                                                                           "trinity-default/2")
    assert reply.prompt_sha256 == prompt_sha256(reply.messages)
    assert len(reply.prompt_sha256) == 64
    # round-trips as a bus contract
    assert msgspec.json.decode(msgspec.json.encode(reply), type=RoleInjectReply) == reply


def test_inline_style_from_toml(tmp_path: Path) -> None:
    p = tmp_path / "custom.toml"
    p.write_text(TOML_PACK)
    pack = load_pack(p)
    assert pack.pack_id == "custom/2"
    msgs = build_messages(pack, request(Role.WORKER, HISTORY))
    assert [m.role for m in msgs] == ["system", "user"]
    assert msgs[1].content == ("User request:\nWhat is 6 x 7?\n\nReplies so far:\n\n## Thinker (turn 0)\nplan it"
                               "\n\n## Worker (turn 1)\n42\n\nAnswer.")


def test_json_pack_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "pack.json"
    p.write_bytes(msgspec.json.encode(msgspec.structs.replace(DEFAULT_PACK, name="copy", version=3)))
    pack = load_pack(p)
    assert pack.pack_id == "copy/3" and pack.roles == DEFAULT_PACK.roles


def _with_role(role: str, prompt: RolePrompt, pack: RolePack = DEFAULT_PACK) -> RolePack:
    roles = dict(pack.roles)
    roles[role] = prompt
    return msgspec.structs.replace(pack, roles=roles)


@pytest.mark.parametrize(("pack", "problem"), [
    (_with_role("verifier", RolePrompt(system="Check it.", instruction="Say yes or no.")), "ACCEPT or REVISE"),
    (_with_role("thinker", RolePrompt(system="Think.", instruction="Plan.")), "<suggested_role>"),
    (_with_role("worker", RolePrompt(system=" ", instruction="x")), "non-empty"),
    (msgspec.structs.replace(DEFAULT_PACK, roles={"worker": DEFAULT_PACK.roles["worker"]}), "roles must be exactly"),
    (msgspec.structs.replace(DEFAULT_PACK, reply_header="{speaker}"), "reply_header"),
    (msgspec.structs.replace(DEFAULT_PACK, name="has space"), "name"),
    (msgspec.structs.replace(DEFAULT_PACK, version=0), "version"),
    (_with_role("worker", RolePrompt(system="s", instruction="i", template="{query} {turn}")), "template may only"),
    (_with_role("worker", RolePrompt(system="s", instruction="i", template="{query}",
                                     examples=[Example(user="q", assistant=" ")])), "examples need"),
])
def test_invalid_packs_are_rejected(pack: RolePack, problem: str) -> None:
    with pytest.raises(RolePackInvalid, match="role pack") as e:
        pack.validate()
    assert problem in str(e.value)


def test_pack_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RolePackFileError, match="unknown extension"):
        load_pack(tmp_path / "pack.yaml")
    with pytest.raises(RolePackFileError, match="No such file"):
        load_pack(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = ")
    with pytest.raises(RolePackInvalid, match="not valid TOML"):
        load_pack(bad)
    with pytest.raises(RolePackInvalid, match="Object missing required field `roles`"):
        parse_pack(json.dumps({"name": "x", "version": 1}).encode(), fmt="json")


def test_registry(tmp_path: Path) -> None:
    p = tmp_path / "custom.toml"
    p.write_text(TOML_PACK)
    reg = PackRegistry.from_files([str(p)])
    assert reg.known() == ["custom/2", "sakana-fugu/1", "trinity-default/1", "trinity-default/2"]
    assert reg.resolve(None).pack_id == "trinity-default/2"
    assert reg.resolve("custom/2").pack_id == "custom/2"
    with pytest.raises(UnknownRolePack,
                       match="unknown role pack 'nope/1'; this injector holds custom/2, sakana-fugu/1, trinity"):
        reg.resolve("nope/1")
    assert PackRegistry.from_files([str(p)], default="custom/2").resolve("").pack_id == "custom/2"
    with pytest.raises(RolePackInvalid, match="loaded twice"):
        PackRegistry([DEFAULT_PACK, DEFAULT_PACK])
    with pytest.raises(UnknownRolePack):
        PackRegistry([DEFAULT_PACK], default="other/1")


def test_inject_request_invariants() -> None:
    with pytest.raises(SchemaError, match="history"):
        RoleInjectRequest(request_id="q", turn=1, agent_id=0, role=Role.WORKER, query="x",
                          history=[TranscriptEntry(turn=1, agent_id=0, role=Role.WORKER, content="y")])
    with pytest.raises(SchemaError, match="query"):
        RoleInjectRequest(request_id="q", turn=0, agent_id=0, role=Role.WORKER, query="  ")


def test_registry_from_settings(tmp_path: Path) -> None:
    from actors.role_injector.actor import registry_from_settings
    from config.coordinator import RoleInjectorSettings

    p = tmp_path / "custom.toml"
    p.write_text(TOML_PACK)
    assert registry_from_settings(RoleInjectorSettings()).default_id == "trinity-default/2"
    reg = registry_from_settings(RoleInjectorSettings(pack_files=[str(p)]))
    assert (reg.default_id, reg.known()) == ("custom/2", ["custom/2", "sakana-fugu/1", "trinity-default/1",
                                                          "trinity-default/2"])
    reg = registry_from_settings(RoleInjectorSettings(pack_files=[str(p)], default_pack="trinity-default/1"))
    assert reg.default_id == "trinity-default/1"
    reg = registry_from_settings(RoleInjectorSettings(pack_files=[str(p)], include_builtin=False))
    assert reg.known() == ["custom/2"]
    with pytest.raises(ValueError, match="pack_files"):
        RoleInjectorSettings(include_builtin=False)


def test_fugu_pack_rules() -> None:
    """The ``sakana-fugu/1`` pack: Sakana's verdict words, the suggestion's lifetime, its own validation."""
    from actors.role_injector.fugu import suggestion_in_effect
    from actors.role_injector.packs import FUGU_PACK

    assert "REJECT" in FUGU_PACK.prompt(Role.VERIFIER).template and FUGU_PACK.pack_id == "sakana-fugu/1"
    good = "<suggestion>check</suggestion><suggested_role>verifier</suggested_role>"

    def entry(turn: int, role: Role, content: str) -> TranscriptEntry:
        return TranscriptEntry(turn=turn, agent_id=0, role=role, content=content)

    assert suggestion_in_effect([entry(0, Role.THINKER, good)]) == "check"
    assert suggestion_in_effect([entry(0, Role.THINKER, good), entry(1, Role.WORKER, "42")]) is None
    assert suggestion_in_effect([entry(0, Role.THINKER, good), entry(1, Role.THINKER, "no tags")]) is None
    assert suggestion_in_effect([entry(0, Role.THINKER, "<suggestion>x</suggestion>")]) is None  # needs a role
    # braces in the query or replies are text, not template fields
    braces = RoleInjectRequest(request_id="q1", turn=1, agent_id=0, role=Role.THINKER, query="Is {x} = {0}?",
                               history=[entry(0, Role.WORKER, "{y}")])
    assert "Is {x} = {0}?" in build_messages(FUGU_PACK, braces)[1].content
    # the verifier before any Worker reply sees Python's None, as fugu formats it
    msgs = build_messages(FUGU_PACK, request(Role.VERIFIER, [], pack="sakana-fugu/1"))
    assert "<response>\nNone\n</response>" in msgs[1].content
    verifier = FUGU_PACK.prompt(Role.VERIFIER)
    for bad, problem in [
        (msgspec.structs.replace(verifier, template=verifier.template.replace("REJECT", "REVISE")), "ACCEPT or REJECT"),
        (msgspec.structs.replace(verifier, template="{query} {answer} ACCEPT REJECT"), "may only use"),
        (msgspec.structs.replace(verifier, suggestion="{notes}"), "may only use"),
        (msgspec.structs.replace(verifier, template=""), "non-empty system prompt and template"),
    ]:
        with pytest.raises(RolePackInvalid, match=problem):
            msgspec.structs.replace(FUGU_PACK, roles={**FUGU_PACK.roles, "verifier": bad}).validate()
    thinker = FUGU_PACK.prompt(Role.THINKER)
    no_tag = msgspec.structs.replace(thinker, template=thinker.template.replace("<suggestion>", "<advice>"))
    with pytest.raises(RolePackInvalid, match="<suggestion> and <suggested_role>"):
        msgspec.structs.replace(FUGU_PACK, roles={**FUGU_PACK.roles, "thinker": no_tag}).validate()
    # a fugu pack round-trips through JSON like any other
    again = parse_pack(msgspec.json.encode(msgspec.structs.replace(FUGU_PACK, name="mine")), fmt="json")
    assert build_messages(again, request(Role.WORKER, HISTORY)) == build_messages(FUGU_PACK, request(Role.WORKER,
                                                                                                        HISTORY))
