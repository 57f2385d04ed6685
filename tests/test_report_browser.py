"""The HTML report in a real headless browser (the system's Chromium, through playwright).

Reports are rendered with :func:`results.report.write_report` and checked by
:func:`report_browser.check_report`: every section visible with a heading and content (or a note
that there is no data yet), every figure's image loaded and, screenshot as drawn, not blank; no
console error and no failed request. The last tests break a report on purpose to show that the
check fails, naming what is wrong. One Chromium serves the whole module (each check gets a fresh
browser context); Chromium missing is an error that says to run ``make browser``.

The tests on the synthetic store are marked slow: rendering that report (every section, a dozen
figures) is most of their time; the empty-store and negative page tests stay in the fast set.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import report_browser
from PIL import Image
from report_browser import MIN_NONBLANK_FRACTION, check_report, image_stats, open_chromium

from results.report import write_report
from results.store import Store


@pytest.fixture(scope="module")
def browser():
    with open_chromium() as b:
        yield b


@pytest.fixture
def synthetic_report(synthetic_report_dir) -> Path:
    return synthetic_report_dir


@pytest.fixture(scope="module")
def empty_report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser-empty-store")
    Store(root)  # nothing written
    out = tmp_path_factory.mktemp("browser-empty-report")
    write_report(root, out)
    return out


def _page(report: Path) -> str:
    return (report / "index.html").read_text(encoding="utf-8")


def _image_srcs(report: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', _page(report))


def _section_ids(report: Path) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', _page(report))


def _copy(report: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(report, tmp_path / "report"))


# --------------------------------------------------------------------------- rendered reports


@pytest.mark.slow
def test_synthetic_report_renders_every_section_and_figure(synthetic_report, browser, tmp_path):
    shots = tmp_path / "shots"
    summary = check_report(synthetic_report, shots, browser=browser)

    assert summary["errors"] == []
    assert summary["title"] == "Synthetic <study>"
    assert Path(summary["page_screenshot"]).stat().st_size > 0
    # every section of the page was seen, and the synthetic store fills each one with data
    assert list(summary["sections"]) == _section_ids(synthetic_report)
    for sid, sec in summary["sections"].items():
        assert sec["h2"], sid
        assert sec["figures"] + sec["tables"] > 0, f"section {sid} has no figure or table: {sec['empty_notes']}"
    # every figure of the page was checked: loaded, screenshot, not blank
    srcs = _image_srcs(synthetic_report)
    assert srcs and [f["src"] for f in summary["figures"]] == srcs
    assert sum(s["figures"] for s in summary["sections"].values()) == len(srcs)
    for fig in summary["figures"]:
        assert fig["ok"] and fig["loaded"], fig
        assert fig["nonblank_fraction"] >= MIN_NONBLANK_FRACTION, fig
        assert Path(fig["screenshot"]).parent == shots and Path(fig["screenshot"]).stat().st_size > 0
        assert fig["rendered_size"][0] > 100 and fig["rendered_size"][1] > 100, fig


def test_empty_store_report_says_which_sections_have_no_data(empty_report, browser, tmp_path):
    assert not list(empty_report.glob("*.png"))
    summary = check_report(empty_report, tmp_path / "shots", browser=browser)

    assert summary["figures"] == []
    assert list(summary["sections"]) == _section_ids(empty_report) and summary["sections"]
    for sid, sec in summary["sections"].items():
        assert sec["figures"] == 0, sid
        assert sec["empty_notes"] and all(sec["empty_notes"]), f"section {sid} has no p.empty note"


# --------------------------------------------------------------------------- the check can fail


@pytest.mark.slow
def test_check_fails_on_a_blank_and_on_a_missing_figure(synthetic_report, browser, tmp_path):
    report = _copy(synthetic_report, tmp_path)
    srcs = _image_srcs(report)
    blank, gone = srcs[0], srcs[-1]
    with Image.open(report / blank) as im:
        size = im.size
    Image.new("RGB", size, "white").save(report / blank)  # same size: the layout does not change
    (report / gone).unlink()  # the broken-image icon is what the browser draws instead

    with pytest.raises(AssertionError) as info:
        check_report(report, tmp_path / "shots", browser=browser)
    message = str(info.value)
    failing = [line for line in message.splitlines() if line.lstrip().startswith("- ")]
    blank_lines = [line for line in failing if f" {blank} in section" in line]
    assert len(blank_lines) == 1 and "screenshot is blank" in blank_lines[0], message
    assert "0.00% of its pixels" in blank_lines[0]
    assert f"HTTP 404 for {gone}" in message
    assert re.search(rf"figure #{len(srcs) - 1} {re.escape(gone)} in section \S+: image did not load", message), message
    for other in srcs[1:-1]:  # the figures left alone pass
        assert f" {other} in section" not in message, message


def test_check_fails_on_a_section_without_content_and_on_page_errors(empty_report, browser, tmp_path):
    report = _copy(empty_report, tmp_path)
    page = _page(report)
    first = _section_ids(report)[0]
    # drop the first section's "no data yet" note, add a script error and a request outside the folder
    page, n = re.subn(rf'(<section id="{first}"><h2>[^<]*</h2>)(.*?)(</section>)', r"\1\3", page, count=1, flags=re.S)
    assert n == 1
    page = page.replace(
        "</body>",
        '<script>throw new Error("boom")</script><img src="http://example.invalid/x.png" alt="x"></body>',
    )
    (report / "index.html").write_text(page, encoding="utf-8")

    with pytest.raises(AssertionError) as info:
        check_report(report, tmp_path / "shots", browser=browser)
    message = str(info.value)
    assert f"section {first}: no content" in message
    assert "uncaught JS error" in message and "boom" in message
    assert "request outside the report folder: http://example.invalid/x.png" in message


# --------------------------------------------------------------------------- pieces


def test_image_stats_thresholds(tmp_path):
    def stats(array: np.ndarray) -> dict:
        path = tmp_path / "x.png"
        Image.fromarray(array.astype(np.uint8)).save(path)
        return image_stats(path)

    white = np.full((400, 600, 3), 255)
    assert not stats(white)["nonblank"]
    assert not stats(np.full((400, 600, 3), 90))["nonblank"]  # uniform, not white
    bordered = white.copy()
    bordered[[0, -1], :] = bordered[:, [0, -1]] = (0xEA, 0xEE, 0xF2)  # the page's <img> border
    assert stats(bordered)["nonblank_fraction"] == 0
    few = white.copy()
    few[:3, :] = 0  # 0.75% of the pixels dark: below the threshold
    assert not stats(few)["nonblank"]
    noise = np.random.default_rng(0).integers(0, 256, (400, 600, 3))
    assert stats(noise)["nonblank"]
    # a sparse but real plot (two thin lines, axes, a few labels) is well above the threshold
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [0.2, 0.25, 0.3], marker="o")
    ax.axhline(0.1, ls=":", color="k")
    ax.set_xlabel("pre-training samples")
    fig.savefig(tmp_path / "plot.png")
    plot = image_stats(tmp_path / "plot.png")
    assert plot["nonblank"] and plot["nonblank_fraction"] > 2 * MIN_NONBLANK_FRACTION, plot


def test_missing_chromium_says_make_browser(monkeypatch):
    monkeypatch.setattr(report_browser.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="make browser"):
        report_browser.find_chromium()
