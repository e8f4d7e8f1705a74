"""The offline world's task suite: size, determinism, splits, graders and their edge cases."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from crucible.world.answers import contains_answer, final_number, normalize_text
from crucible.world.geo import country_table, find_longest
from crucible.world.tasks import FAMILIES, SPLITS, SuiteError, Task, build_suite, grade

SUITE = build_suite(seed=0)


def test_size_and_families() -> None:
    fams = SUITE.families()
    assert list(fams) == list(FAMILIES)
    assert len(SUITE.tasks) >= 500
    assert {f: len(ts) for f, ts in fams.items()} == {"arithmetic": 200, "geography": 200, "text": 200,
                                                       "general": 134}
    assert len({t.id for t in SUITE.tasks}) == len(SUITE.tasks)
    assert len({(t.family, t.question) for t in SUITE.tasks}) == len(SUITE.tasks)
    kinds = Counter((t.family, t.kind) for t in SUITE.tasks)
    assert {k for f, k in kinds if f == "geography"} == {"capital_of", "country_of_capital", "continent_of",
                                                         "currency_of"}
    assert {k for f, k in kinds if f == "text"} == {"reverse", "length", "count_letter", "sort"}


def test_same_seed_same_tasks_other_seed_other_tasks() -> None:
    again = build_suite(seed=0)
    assert again.tasks == SUITE.tasks and again.fingerprint == SUITE.fingerprint
    other = build_suite(seed=1)
    assert other.fingerprint != SUITE.fingerprint
    assert [t.question for t in other.tasks] != [t.question for t in SUITE.tasks]
    lines = SUITE.to_jsonl().splitlines()
    assert len(lines) == len(SUITE.tasks) and json.loads(lines[0])["id"] == SUITE.tasks[0].id


def test_splits_are_disjoint_stratified_and_cover_everything() -> None:
    parts = {s: SUITE.split(s) for s in SPLITS}
    ids = [t.id for s in SPLITS for t in parts[s]]
    assert len(ids) == len(set(ids)) == len(SUITE.tasks)
    for family, tasks in SUITE.families().items():
        per = Counter(t.split for t in tasks)
        assert per["train"] == round(0.6 * len(tasks)) and per["valid"] == round(0.2 * len(tasks)), family
        assert per["test"] == len(tasks) - per["train"] - per["valid"]
    test_questions = {t.question for t in parts["test"]}
    assert not test_questions & {t.question for t in parts["train"]}
    with pytest.raises(SuiteError, match="split"):
        SUITE.split("dev")


def test_every_answer_grades_right_and_no_question_answers_itself() -> None:
    for t in SUITE.tasks:
        assert grade(t, t.answer), t
        assert grade(t, f"The answer is {t.answer}."), t
        assert not grade(t, t.question), t
        assert not grade(t, ""), t


def test_small_sizes_and_errors() -> None:
    small = build_suite(seed=3, sizes={"arithmetic": 10, "text": 5})
    assert Counter(t.family for t in small.tasks) == {"arithmetic": 10, "text": 5}
    with pytest.raises(SuiteError, match="unknown families"):
        build_suite(sizes={"poetry": 3})
    with pytest.raises(SuiteError, match="geography"):
        build_suite(sizes={"geography": 100_000})


NUM = Task(id="n", family="arithmetic", kind="k", question="q", answer="-1234", grading="number")
TXT = Task(id="t", family="geography", kind="k", question="q", answer="São Tomé", grading="text",
           accept=("Sao Tome City",))


@pytest.mark.parametrize(("reply", "ok"), [
    ("-1234", True), ("-1,234", True), ("The result is -1234.", True), ("1000 - 2234 = -1234", True),
    ("-1234.0", True), ("1234", False), ("-1234 or maybe 5", False), ("minus 1234", False), ("", False),
    ("-12345", False), ("x-1234", True),
])
def test_number_grading(reply: str, ok: bool) -> None:
    assert grade(NUM, reply) is ok


@pytest.mark.parametrize(("reply", "ok"), [
    ("sao tome", True), ("SÃO TOMÉ!", True), ("It's São-Tomé.", True), ("The capital is Sao Tome City", True),
    ("Sao", False), ("saotome", False), ("Sao Tomeans", False), ("", False),
])
def test_text_grading(reply: str, ok: bool) -> None:
    assert grade(TXT, reply) is ok


def test_answer_helpers() -> None:
    assert normalize_text("  Ciudad   de MÉXICO!! ") == "ciudad de mexico"
    assert final_number("eight legs, not 6") == 6 and final_number("It has eight legs.") == 8
    assert final_number("12*-3 = -36") == -36 and final_number("(-4)") == -4 and final_number("5-3") == 3
    assert not contains_answer("anything", "!!!")
    table = country_table()
    assert find_longest("the capital of Nigeria", table.by_name).name == "Nigeria"
    assert find_longest("Papua New Guinea", table.by_name).name == "Papua New Guinea"
    assert find_longest("nowhere", table.by_name) is None
    assert "Serbia and Montenegro" not in {c.name for c in table.countries}
