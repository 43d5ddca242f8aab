"""The dashboard in a real browser: Debian's Chromium, headless, driven by Playwright.

One browser for the module, against one `autoresearch serve` of a recorded run
(tests/helpers.py's `make_research`) with a few more records: calibration repeats
(so there is a noise band), and a tag of hostile records whose description, reason,
log and reply carry markup. A dialog, a page error or a console error (a
Content-Security-Policy violation is one) fails the test that caused it.

Screenshots go to a temporary folder; with AUTORESEARCH_SCREENSHOTS=docs they are
written into docs/ (docs/serve-*.png, shown by the README).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import live_run, make_research, serving

from autoresearch.ledger import Record

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
DOCS = Path(__file__).resolve().parents[1] / "docs"
VIEWPORT = {"width": 1400, "height": 1000}
XSS = "<script>alert(1)</script>"
IMG = '<img src=x onerror="alert(2); window.__pwned = 1">'

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the `test` extra installs it
    sync_playwright = None

if sync_playwright is None:
    pytest.skip("playwright is not installed (pip install -e '.[test]')", allow_module_level=True)
if not CHROMIUM.is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does, as root)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    research = make_research(tmp_path_factory.mktemp("browser"))
    for n, bpb in enumerate((1.508, 1.493)):  # the baseline's calibration repeats: the noise
        research.ledger.append(
            Record(id=f"c001{n}", status="discard", val_bpb=bpb, parent="c0001", tag="mar5",
                   proposer="calibrate", commit=research.commits["c0001"],
                   description="baseline again", fingerprints={"source": "src-c0001"},
                   created=5000.0 + n)
        )  # fmt: skip
    run = research.state / "runs" / "x0001"
    run.mkdir()
    (run / "run.log").write_text(f"step 1\n{IMG}\n{XSS}\n")
    (run / "proposal").mkdir()
    (run / "proposal" / "reply_1.md").write_text(f"reply {XSS} {IMG}")
    for n, (cid, parent, bpb) in enumerate((("x0001", None, 1.5), ("x0002", "x0001", 1.45))):
        research.ledger.append(
            Record(id=cid, status="keep", val_bpb=bpb, parent=parent, tag="xss", promoted=True,
                   proposer="baseline" if parent is None else "llm:evil", reason=IMG,
                   description=f"{XSS} {IMG}", commit=research.commits["c0002"],
                   fingerprints={"source": f"x{n}"}, created=6000.0 + n)
        )  # fmt: skip
    return research


@pytest.fixture(scope="module")
def served(research):
    with serving(research.repo) as served:
        yield served


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            headless=True, args=ARGS, viewport=VIEWPORT,
        )  # fmt: skip
        yield context
        context.close()


@pytest.fixture
def page(browser):
    """A fresh tab whose dialogs, page errors and console errors fail the test."""
    page = browser.new_page()
    trouble: list[str] = []
    page.on("dialog", lambda d: (trouble.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("pageerror", lambda e: trouble.append(f"page error: {e}"))
    page.on("console", lambda m: m.type == "error" and trouble.append(f"console: {m.text}"))
    yield page
    page.close()
    assert trouble == []


def open_page(page, served, path: str) -> None:
    page.goto(served.base + path)
    page.wait_for_selector("body[data-drawn]")


def screenshot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000  # a real picture, not a blank page
    if os.environ.get("AUTORESEARCH_SCREENSHOTS") == "docs":
        shutil.copyfile(path, DOCS / name)
    return path


def test_overview_shows_the_leaderboard_and_the_plot(page, served, tmp_path):
    open_page(page, served, "/?tag=mar5")
    rows = page.locator("table.board tbody tr")
    assert rows.count() == 2  # the population (2) of mar5
    assert rows.nth(0).locator("td").nth(1).inner_text() == "c0005 ★"
    assert "WARMDOWN_RATIO = 0.6" in rows.nth(0).inner_text()
    assert page.locator("svg.plot [data-i]").count() == 9  # every experiment of the tag
    assert page.locator("svg.plot rect.fail").count() == 1  # c0004 crashed
    assert page.locator("svg.plot polygon.champion").count() == 1
    assert page.locator("svg.plot rect.band").count() == 1  # the calibration repeats' noise
    assert page.locator("svg.plot path.best").count() == 1
    page.locator("svg.plot polygon.champion").hover()
    tip = page.locator("#tip")
    assert tip.is_visible()
    assert "mar5/c0005" in tip.inner_text() and "WARMDOWN_RATIO = 0.6" in tip.inner_text()
    assert "val_bpb 1.400000" in tip.inner_text() and "delta -0.1" in tip.inner_text()
    assert "population of 'mar5'" in page.locator("main").inner_text()
    screenshot(page, "serve-overview.png", tmp_path)


def test_a_click_on_the_plot_opens_the_experiment_with_its_diff(page, served, tmp_path):
    open_page(page, served, "/?tag=mar5")
    page.locator("svg.plot polygon.champion").click()
    page.wait_for_url("**/experiment?id=mar5%2Fc0005")
    page.wait_for_selector("table.diff")
    assert page.locator("h1").inner_text() == "mar5/c0005 ★"
    removed = page.locator("table.diff td.code.del").all_inner_texts()
    added = page.locator("table.diff td.code.add").all_inner_texts()
    assert [t.split("#")[0].strip() for t in removed] == ["WARMDOWN_RATIO = 0.5"]
    assert [t.split("#")[0].strip() for t in added] == ["WARMDOWN_RATIO = 0.6"]
    assert page.locator("table.diff.split td.add .tok-constant").first.inner_text() == (
        "WARMDOWN_RATIO"
    )  # highlighted
    assert "c0005 log line 29" in page.locator("pre.log").first.inner_text()
    screenshot(page, "serve-experiment.png", tmp_path)
    page.get_by_role("button", name="unified").click()
    assert page.locator("table.diff.unified td.sign.add").all_inner_texts() == ["+"]
    page.get_by_role("button", name="side by side").click()  # the choice is remembered
    assert page.locator("table.diff.split").count() == 1


def test_the_overview_follows_new_records_without_a_reload(page, served, research):
    open_page(page, served, "/?tag=mar5")
    points = page.locator("svg.plot [data-i]")
    assert points.count() == 9
    page.evaluate("window.__same_page = true")
    research.ledger.records()
    research.ledger.append(
        Record(id="c0020", status="keep", val_bpb=1.35, parent="c0005", tag="mar5",
               promoted=True, proposer="optuna", description="appended while watching",
               commit=research.commits["c0005"], fingerprints={"source": "src-c0020"})
    )  # fmt: skip
    expect(points).to_have_count(10, timeout=15_000)  # polls with selectors: the CSP bans eval
    assert page.evaluate("window.__same_page") is True  # drawn again, not reloaded
    first = page.locator("table.board tbody tr").first
    assert first.locator("td").nth(1).inner_text() == "c0020 ★"
    assert "appended while watching" in first.inner_text()


def test_markup_in_records_logs_and_replies_is_only_text(page, served, tmp_path):
    open_page(page, served, "/?tag=xss")
    assert XSS in page.locator("table.board").inner_text()
    open_page(page, served, "/experiment?id=xss/x0001")
    assert page.locator("p.description").inner_text() == f"{XSS} {IMG}"
    assert IMG in page.locator("p.reason").inner_text()
    log = page.locator("pre.log").first.inner_text()
    assert IMG in log and XSS in log
    page.locator("details summary", has_text="reply_1.md").click()
    assert f"reply {XSS} {IMG}" in page.locator("pre.log").nth(1).inner_text()
    open_page(page, served, "/lineage?tag=xss")
    assert XSS in page.locator("div.tree").inner_text()
    open_page(page, served, "/compare?a=xss/x0001&b=xss/x0002")
    assert page.locator("div.side").count() == 2
    # Nothing became markup: no image, no script but ours, nothing ran.
    assert page.locator("main img").count() == 0
    assert page.evaluate("[...document.scripts].map(s => s.src)") == [
        served.base + "/static/app.js"
    ]
    assert page.evaluate("window.__pwned") is None


def test_the_lineage_highlights_the_champions_path_and_collapses(page, served, tmp_path):
    open_page(page, served, "/lineage?tag=mar5")
    on_path = page.locator(".node.on-path a").all_inner_texts()
    # c0005 is the champion, or (after the live test's records) its parent's path goes on.
    assert [t.rstrip(" ★") for t in on_path[:3]] == ["c0001", "c0002", "c0005"]
    assert on_path[-1].endswith("★")
    assert page.locator("a", has_text="c0007").count() == 0  # under a collapsed c0003
    repeat = page.locator(".node", has=page.locator("a", has_text="c0011"))
    assert "1.493000 (mean " in repeat.inner_text()  # its own run, then its source's mean
    page.get_by_role("button", name="open c0003").click()  # c0003: WEIGHT_DECAY
    expect(page.locator("a", has_text="c0007")).to_have_count(1)  # drawn when opened
    screenshot(page, "serve-lineage.png", tmp_path)
    page.get_by_role("button", name="Collapse to the champion's path").click()
    expect(page.locator("a", has_text="c0007")).to_have_count(0)


def test_the_status_panel_shows_a_live_run_as_it_changes(page, served, research):
    open_page(page, served, "/?tag=mar5")
    assert "no evolve run is going" in page.locator("div.status").inner_text()
    now = time.time()
    running = {
        "tag": "mar5", "started": now - 600, "phase": "training",
        "training": {"c0021": now - 30, "c0022": now - 5}, "slots": 4,
        "budget_seconds": 300.0, "experiments_done": 10, "spend_usd": 0.14,
    }  # fmt: skip
    with live_run(research.state, running):
        panel = page.locator("div.status")
        expect(panel).to_contain_text("evolve is running: tag mar5", timeout=15_000)
        assert "for 10 min" in panel.inner_text()
        assert "phase: training; slots busy: 2 of 4" in panel.inner_text()
        assert page.locator("div.training progress").count() == 2
        assert re.search(r"c0021\s+3\d of 300 s \(1[01]%\)", panel.inner_text())  # 30 s in
    (research.state / "status.json").unlink()
