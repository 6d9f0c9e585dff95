"""The report in a real browser: both languages rendered by headless Chromium; every chart must decode, and
Japanese text must be drawn with real glyphs, not missing-glyph boxes. In CI (.ci/run sets
FTOPT_REQUIRE_CHROMIUM) a missing browser fails the test; on a user's machine it skips with a message."""

import os
import re
import shutil
import subprocess

import pytest

from ftopt.report.render import CSS, build_report
from ftopt.report.text import TEXT
from ftopt.results.quality import QualityTarget
from tests.report.test_report import ROWS

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
PROBE = (
    "<script>addEventListener('load',()=>{document.body.setAttribute('data-images',"
    "[...document.images].filter(i=>i.complete&&i.naturalWidth>0).length)})</script>"
)


@pytest.fixture
def chromium():
    if CHROMIUM is None:
        msg = "Chromium is not installed, so the report was not checked in a browser (apt-get install chromium fonts-noto-cjk)"
        if os.environ.get("FTOPT_REQUIRE_CHROMIUM"):
            pytest.fail(msg)
        pytest.skip(msg)
    return CHROMIUM


# headless, offline, no first-run work; tests/serve/cdp.py starts Chromium with these too
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--hide-scrollbars",
]


def _run(chromium, tmp_path, *args) -> str:
    base = [chromium, *CHROMIUM_ARGS, f"--user-data-dir={tmp_path / 'prof'}"]
    return subprocess.run(base + list(args), check=True, timeout=120, capture_output=True, text=True).stdout


def _shot(chromium, tmp_path, name: str, body: str, size="600,120") -> bytes:
    page = tmp_path / f"{name}.html"
    page.write_text(
        f"<!DOCTYPE html><html lang='ja'><head><meta charset='utf-8'><style>{CSS}"
        "body{margin:0;font-size:40px}</style></head><body>" + body + "</body></html>",
        encoding="utf-8",
    )
    shot = tmp_path / f"{name}.png"
    _run(chromium, tmp_path, f"--screenshot={shot}", f"--window-size={size}", page.as_uri())
    import matplotlib.image as mpimg

    return mpimg.imread(shot).tobytes()


@pytest.mark.parametrize("lang", ["en", "ja"])
def test_report_renders_every_chart_in_chromium(tmp_path, chromium, lang):
    paths = build_report(ROWS, tmp_path, lang=lang, quality_target=QualityTarget.parse("exact_match>=0.5"))
    probe = tmp_path / f"probe.{lang}.html"
    probe.write_text(paths["html"].read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _run(chromium, tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert re.search(r'data-images="4"', dom), "a chart did not decode in Chromium"
    assert TEXT[lang]["summary"] in dom
    shot = tmp_path / f"shot.{lang}.png"
    _run(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1100,2400", paths["html"].as_uri())
    assert shot.stat().st_size > 10_000


def test_japanese_text_draws_real_glyphs(tmp_path, chromium):
    """Missing glyphs all draw the same box: two different Japanese strings of equal length would then render
    identically, and like characters no font has (private-use code points)."""
    fc = shutil.which("fc-list")
    if fc:
        assert subprocess.run([fc, ":lang=ja", "family"], capture_output=True, text=True).stdout.strip(), (
            "no font on this machine covers Japanese (install fonts-noto-cjk)"
        )
    a = _shot(chromium, tmp_path, "a", "評価損失と品質目標")
    b = _shot(chromium, tmp_path, "b", "年間費用と時間予算")
    tofu = _shot(chromium, tmp_path, "tofu", "".join(chr(0xF0000 + i) for i in range(9)))
    assert a != b, "two different Japanese strings rendered identically: missing-glyph boxes"
    assert a != tofu and b != tofu
