"""The Japanese wording keeps to docs/glossary-ja.md: none of the variants the glossary rules out, and no space
between full-width text and half-width words except around what the reader types (options, commands, files)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ftopt.report.text import METRIC_NAMES, TEXT
from ftopt.serve.text import PAGE

GLOSSARY = Path(__file__).resolve().parents[2] / "docs" / "glossary-ja.md"
WIDE = r"[\u3000-\u30ff\u4e00-\u9fff\uff00-\uffef〜…]"  # kana, kanji, full-width punctuation and forms
STRINGS = {
    **{f"report.{k}": v for k, v in TEXT["ja"].items()},
    **{f"page.{k}": v for k, v in PAGE["ja"].items()},
    **{f"metric.{k}": v for k, v in METRIC_NAMES["ja"].items()},
}


def _ruled_out() -> list[str]:
    """The 'not' column of the glossary's term table; an entry with a parenthesised note is prose, not a word."""
    words = []
    for line in GLOSSARY.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2] not in ("not", "---", ""):
            words += [w.strip() for w in cells[2].split(",") if "(" not in w]
    return [w for w in words if w]


def test_glossary_lists_ruled_out_variants():
    assert {"系列長", "計測", "活性化", "解析式"} <= set(_ruled_out())


@pytest.mark.parametrize("word", _ruled_out())
def test_no_ruled_out_variant(word):
    assert [k for k, v in STRINGS.items() if word in v] == []


def _bad_spaces(s: str) -> list[str]:
    """Half-width runs that touch full-width text through a space, unless the run holds something typed."""
    runs = re.split(f"{WIDE}+", s)
    bad = []
    for i, run in enumerate(runs):
        typed = "--" in run or "ftopt" in run or ".json" in run
        # a space after a colon or a tag is punctuation's own ("注意: ", "</b> "), not a word boundary
        spaced = (i > 0 and re.match(r" [\w{]", run)) or (i < len(runs) - 1 and re.search(r"[\w}%] $", run))
        if spaced and run.strip(" ") and not typed:
            bad.append(run)
    return bad


def test_bad_spaces_finds_a_spaced_word():
    assert _bad_spaces("PoC では GPU を") == ["PoC ", " GPU "] and _bad_spaces("PoCではGPU 1台を") == []
    assert _bad_spaces("--seq-len のトークン数") == [] and _bad_spaces("注意: {what}は") == []


def test_no_space_between_full_and_half_width():
    found = {k: _bad_spaces(v) for k, v in STRINGS.items()}
    assert {k: v for k, v in found.items() if v} == {}


def test_no_full_width_parentheses_or_colons():
    assert [k for k, v in STRINGS.items() if re.search("[\uff08\uff09\uff1a]", v)] == []
