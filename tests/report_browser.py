"""Check a rendered HTML report in a real headless browser (Chromium from the system packages).

:func:`check_report` serves a report folder (``index.html`` with PNGs beside it) over HTTP on
127.0.0.1 (an ephemeral port, a thread of this process), opens it in headless Chromium through
playwright's sync API and checks that

* the page loads with no console error, no uncaught JS error, no failed request (an HTTP status
  >= 400, a network failure) and no request leaving the report's own origin (the folder must be
  self-contained);
* every ``<section>`` is visible, has an id, a non-empty visible ``<h2>`` and content: at least
  one figure or table, or a ``p.empty`` note saying that there is no data yet; no table is
  without rows;
* every ``<figure>`` holds an ``<img>`` with alt text, wrapped in a link to the same PNG beside
  ``index.html``, that actually loaded (``complete`` and ``naturalWidth > 0``) and is laid out at
  a real size, and an element screenshot of that image *as the browser draws it* is not blank
  (see :func:`image_stats` and the thresholds below). The ``<img>`` is what is screenshot, not
  the whole ``<figure>``: the caption's text would make a blank image look non-blank.

A full-page screenshot (``page.jpg``: for people to look at, JPEG because a tall page encodes
twice as fast) and one PNG screenshot per figure (``figure-NN-<name>.png``: lossless, they are
measured) are written to ``shots_dir``. A failure raises :class:`AssertionError` listing every problem
found (not only the first); otherwise a summary dict is returned.

Chromium is the system one (``make browser`` installs it), found by :func:`find_chromium`;
playwright's own browser downloads are never used. Each check runs in a fresh browser context
(no cache or storage from an earlier check); starting playwright and Chromium is most of the
time a check takes, so several checks can share one browser from :func:`open_chromium`::

    with open_chromium() as browser:
        check_report(report_a, shots_a, browser=browser)
        check_report(report_b, shots_b, browser=browser)

Plain functions, no pytest fixtures; also usable as a script::

    python tests/report_browser.py REPORT_DIR [SHOTS_DIR]
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

# --------------------------------------------------------------------------- thresholds

CLEAR_DIFFERENCE = 40
"""A pixel "clearly differs" from the background when one of its RGB channels is more than this
(0-255) away from the dominant colour. 40 is above what is decoration rather than content: the
image's 1px CSS border (#eaeef2, at most 21 from white), the page's light greys (#f6f8fa,
#fbfcfd) and resampling fringes of a scaled image; the text, axes, ticks and plotted lines of a
matplotlib figure are dark or saturated (differences of 100-255)."""

MIN_NONBLANK_FRACTION = 0.01
"""At least 1% of the screenshot's pixels must clearly differ from its dominant colour. The
report's figures measure 2.4-23% (the sparsest, a one-column figure of single points in mostly
white panels, 2.4%), so 1% leaves a 2x margin for sparse but real plots; a blank image measures 0%
(uniform), and its 1px border, even if it were dark, is ~0.7% of a 600x600 image."""

MIN_DISTINCT_COLOURS = 16
"""More than a handful of distinct colours: an anti-aliased matplotlib figure has hundreds to
thousands (250-8,500 in the report's figures); a blank image, with its border, has 2 or 3; a
uniform fill has 1."""

MIN_RENDERED_SIDE = 32
"""The image as laid out must be at least this many CSS pixels wide and tall; a collapsed image
or a broken-image icon is smaller (and fails the load check anyway)."""

VIEWPORT = {"width": 1440, "height": 900}
"""Wider than the report's max-width (1400px), so figures render at their desktop size."""

LAUNCH_TIMEOUT_MS = 60_000
NAV_TIMEOUT_MS = 30_000
ACTION_TIMEOUT_MS = 10_000

CHROMIUM_ARGS = [
    "--no-sandbox",  # tests may run as root (containers, CI)
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # without these Chromium tries to reach Google hosts (updates, sync, safe browsing) and
    # fails many connections on machines without network
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# --------------------------------------------------------------------------- browser


def find_chromium() -> str:
    """The system Chromium executable; a clear error naming ``make browser`` when there is none."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    raise RuntimeError(
        "Chromium was not found on PATH (looked for 'chromium' and 'chromium-browser'). The report's "
        "browser test drives the system package: run `make browser` (it installs Debian's chromium). "
        "Playwright's own browser downloads are not used."
    )


@contextlib.contextmanager
def open_chromium() -> Iterator[Any]:
    """Headless system Chromium as a playwright ``Browser``; closed (and its profile removed) on exit.

    ``launch`` gives Chromium a fresh temporary ``--user-data-dir`` (playwright creates it and
    deletes it on close), so nothing persists between runs.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("playwright is not installed: pip install -e '.[test]'") from exc
    executable = find_chromium()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS, timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            yield browser
        finally:
            browser.close()


# --------------------------------------------------------------------------- pixels


def image_stats(png: Path) -> dict[str, Any]:
    """Pixel statistics of a screenshot: dominant colour, fraction clearly different from it, colours.

    ``nonblank`` is True when at least :data:`MIN_NONBLANK_FRACTION` of the pixels differ from the
    dominant colour by more than :data:`CLEAR_DIFFERENCE` in some channel and there are at least
    :data:`MIN_DISTINCT_COLOURS` distinct colours.
    """
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"))
    if rgb.size == 0:
        return {
            "width": 0,
            "height": 0,
            "dominant": None,
            "nonblank_fraction": 0.0,
            "distinct_colours": 0,
            "nonblank": False,
        }
    # one int per colour (0xRRGGBB): a 1-D unique is much faster than np.unique(axis=0)
    packed = (rgb[..., 0].astype(np.uint32) << 16) | (rgb[..., 1].astype(np.uint32) << 8) | rgb[..., 2]
    colours, counts = np.unique(packed.ravel(), return_counts=True)
    top = int(colours[int(counts.argmax())])
    dominant = ((top >> 16) & 255, (top >> 8) & 255, top & 255)
    # per-channel lookup tables on the uint8 planes: no int16 copy of the whole image
    levels = np.arange(256)
    differs = np.zeros(rgb.shape[:2], dtype=bool)
    for channel, value in enumerate(dominant):
        differs |= (np.abs(levels - value) > CLEAR_DIFFERENCE)[rgb[..., channel]]
    fraction = float(differs.mean())
    return {
        "width": int(rgb.shape[1]),
        "height": int(rgb.shape[0]),
        "dominant": "#{:02x}{:02x}{:02x}".format(*dominant),
        "nonblank_fraction": round(fraction, 5),
        "distinct_colours": int(len(colours)),
        "nonblank": fraction >= MIN_NONBLANK_FRACTION and len(colours) >= MIN_DISTINCT_COLOURS,
    }


# --------------------------------------------------------------------------- HTTP


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the report folder without logging; answers a missing /favicon.ico with 204.

    Chromium asks for /favicon.ico on its own (the report does not reference one); a 404 for it
    would show up as a console error that says nothing about the report.
    """

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if urlsplit(self.path).path == "/favicon.ico" and not (Path(self.directory) / "favicon.ico").exists():
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()


@contextlib.contextmanager
def _serve(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on 127.0.0.1 (ephemeral port) in a thread; yield the origin URL."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="report-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- page JS

# One record per <section>, with its own figures, tables and empty notes.
_SECTIONS_JS = """
() => [...document.querySelectorAll('section')].map((s, i) => {
  const h2 = s.querySelector('h2');
  const r = s.getBoundingClientRect();
  const st = getComputedStyle(s);
  return {
    index: i,
    id: s.id || null,
    h2: h2 ? h2.textContent.trim() : null,
    h2_visible: !!h2 && h2.getBoundingClientRect().height > 0,
    width: r.width, height: r.height,
    hidden: st.display === 'none' || st.visibility === 'hidden' || Number(st.opacity) === 0,
    figures: s.querySelectorAll('figure').length,
    tables: s.querySelectorAll('table').length,
    empty_tables: [...s.querySelectorAll('table')].filter(t => t.querySelectorAll('tr').length === 0).length,
    empty_notes: [...s.querySelectorAll('p.empty')].map(p => p.textContent.trim()),
  };
})
"""

# Run on one <figure> element handle.
_FIGURE_JS = """
(f) => {
  const imgs = f.querySelectorAll('img');
  const img = imgs[0] || null;
  const a = img ? img.closest('a') : null;
  const cap = f.querySelector('figcaption');
  const sec = f.closest('section');
  const r = img ? img.getBoundingClientRect() : null;
  return {
    images: imgs.length,
    src: img ? img.getAttribute('src') : null,
    src_url: img ? img.src : null,
    alt: img ? (img.getAttribute('alt') || '').trim() : null,
    href_url: a ? a.href : null,
    caption: cap ? cap.textContent.trim() : null,
    section: sec ? sec.id : null,
    complete: img ? img.complete : false,
    natural_width: img ? img.naturalWidth : 0,
    natural_height: img ? img.naturalHeight : 0,
    rendered_width: r ? r.width : 0,
    rendered_height: r ? r.height : 0,
  };
}
"""


# --------------------------------------------------------------------------- the check


def check_report(report_dir: Path, shots_dir: Path, browser: Any = None) -> dict[str, Any]:
    """Open ``report_dir/index.html`` in headless Chromium and check every section and figure.

    ``browser``: a playwright ``Browser`` from :func:`open_chromium` to share between checks;
    by default one is started and closed for this check.

    Returns ``{"url", "title", "sections": {id: {"h2", "figures", "tables", "empty_notes"}},
    "figures": [{"src", "screenshot", "nonblank_fraction", "distinct_colours", "loaded", ...}],
    "page_screenshot", "errors": [], "timings": {step: s}, "seconds"}``; raises
    :class:`AssertionError` listing every problem when anything fails.
    """
    from playwright.sync_api import Error as PlaywrightError

    started = time.monotonic()
    report_dir = Path(report_dir).resolve()
    shots_dir = Path(shots_dir)
    index = report_dir / "index.html"
    if not index.is_file():
        raise AssertionError(f"no index.html in {report_dir}")
    shots_dir.mkdir(parents=True, exist_ok=True)

    timings: dict[str, float] = {}
    summary: dict[str, Any] = {
        "url": None,
        "title": None,
        "sections": {},
        "figures": [],
        "page_screenshot": None,
        "errors": [],
        "timings": timings,
    }

    def mark(step: str, since: float) -> float:
        now = time.monotonic()
        timings[step] = round(timings.get(step, 0.0) + now - since, 3)
        return now

    with contextlib.ExitStack() as stack:
        if browser is None:
            browser = stack.enter_context(open_chromium())
            mark("launch", started)
        origin = stack.enter_context(_serve(report_dir))
        summary["url"] = f"{origin}/index.html"
        # a fresh context per check: its own cache, so an earlier check cannot hide a missing file
        context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, service_workers="block")
        stack.callback(context.close)
        context.set_default_timeout(ACTION_TIMEOUT_MS)
        context.set_default_navigation_timeout(NAV_TIMEOUT_MS)
        _check_page(context, origin, shots_dir, summary, PlaywrightError, mark)

    summary["seconds"] = round(time.monotonic() - started, 2)
    errors = summary["errors"]
    if errors:
        raise AssertionError(
            f"report {index} failed the browser check ({len(errors)} problem(s)):\n  - "
            + "\n  - ".join(errors)
            + f"\nscreenshots in {shots_dir}"
        )
    return summary


def _check_page(context: Any, origin: str, shots_dir: Path, summary: dict, PlaywrightError: type, mark) -> None:
    t = time.monotonic()
    errors: list[str] = summary["errors"]
    sections: dict[str, dict[str, Any]] = summary["sections"]
    figures: list[dict[str, Any]] = summary["figures"]

    def short(u: str) -> str:
        return unquote(u[len(origin) + 1 :]) if u.startswith(origin + "/") else u

    def on_route(route: Any) -> None:
        # The report must be self-contained: anything outside the served folder is refused and
        # reported, so the check never waits on a network that is not there.
        req_url = route.request.url
        if req_url.startswith(origin + "/"):
            route.continue_()
        else:
            errors.append(f"request outside the report folder: {req_url}")
            route.abort("blockedbyclient")

    def on_console(msg: Any) -> None:
        if msg.type == "error":
            loc = msg.location or {}
            where = f" ({short(loc['url'])}:{loc.get('lineNumber', '?')})" if loc.get("url") else ""
            errors.append(f"console error: {msg.text}{where}")

    def on_response(resp: Any) -> None:
        if resp.status >= 400:
            errors.append(f"HTTP {resp.status} for {short(resp.url)}")

    def on_failed(req: Any) -> None:
        if req.url.startswith(origin + "/"):  # outside ones are already reported by on_route
            errors.append(f"request failed: {short(req.url)} ({req.failure})")

    context.route("**/*", on_route)
    page = context.new_page()
    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught JS error: {exc}"))
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    t = mark("new_page", t)

    # "load" waits for the images (none is lazy today; the figure loop waits for any that are)
    resp = page.goto(summary["url"], wait_until="load")
    if resp is None or not resp.ok:
        errors.append(f"index.html did not load: HTTP {resp.status if resp else 'no response'}")
        return
    summary["title"] = page.title()
    t = mark("load", t)

    page_shot = shots_dir / "page.jpg"
    page.screenshot(path=str(page_shot), full_page=True, type="jpeg", quality=85)
    summary["page_screenshot"] = str(page_shot)
    t = mark("page_screenshot", t)

    # ---- sections
    records = page.evaluate(_SECTIONS_JS)
    if not records:
        errors.append("the page has no <section>")
    for rec in records:
        sid = rec["id"] or f"section[{rec['index']}]"
        if rec["id"] is None:
            errors.append(f"{sid}: <section> without an id")
        elif sid in sections:
            errors.append(f"section {sid}: duplicate id")
        sections[sid] = {
            "h2": rec["h2"],
            "figures": rec["figures"],
            "tables": rec["tables"],
            "empty_notes": rec["empty_notes"],
        }
        if rec["hidden"] or rec["width"] <= 0 or rec["height"] <= 0:
            errors.append(f"section {sid}: not visible ({rec['width']:.0f}x{rec['height']:.0f} px)")
        if not rec["h2"]:
            errors.append(f"section {sid}: no <h2> heading (or an empty one)")
        elif not rec["h2_visible"]:
            errors.append(f"section {sid}: its <h2> is not visible")
        notes = [n for n in rec["empty_notes"] if n]
        if len(notes) != len(rec["empty_notes"]):
            errors.append(f"section {sid}: a p.empty note without text")
        if rec["figures"] == 0 and rec["tables"] == 0 and not notes:
            errors.append(
                f"section {sid}: no content (no figure, no table and no p.empty note saying there is no data yet)"
            )
        if rec["empty_tables"]:
            errors.append(f"section {sid}: {rec['empty_tables']} table(s) without a row")

    # nav links point at something on the page
    for href in page.eval_on_selector_all("nav a[href^='#']", "els => els.map(e => e.getAttribute('href'))"):
        if href != "#" and page.locator(f"[id={json.dumps(href[1:])}]").count() == 0:
            errors.append(f"nav link {href} has no target")
    t = mark("sections", t)

    # ---- figures
    used_names: set[str] = set()
    for i, fig in enumerate(page.query_selector_all("figure")):
        fig.scroll_into_view_if_needed()
        img = fig.query_selector("img")
        if img is not None:
            # a lazy or slow image: let the one now in view finish (judged below, never fatal here)
            try:
                page.wait_for_function("(i) => i.complete", arg=img, timeout=ACTION_TIMEOUT_MS)
            except PlaywrightError:
                pass
        info = fig.evaluate(_FIGURE_JS)
        label = f"figure #{i} {info['src'] or '(no img)'} in section {info['section']}"
        if img is None:
            errors.append(f"{label}: no <img>")
            figures.append({"index": i, "src": None, "section": info["section"], "ok": False})
            continue
        problems: list[str] = []
        if not info["alt"]:
            problems.append("<img> without alt text")
        if info["href_url"] is None:
            problems.append("<img> not wrapped in a link")
        elif info["href_url"] != info["src_url"]:
            problems.append(f"link {short(info['href_url'])} is not the image {info['src']}")
        if not info["src"] or "/" in info["src"] or ":" in info["src"]:
            problems.append(f"src {info['src']!r} is not a file beside index.html")
        loaded = bool(info["complete"] and info["natural_width"] > 0 and info["natural_height"] > 0)
        if not loaded:
            problems.append(f"image did not load (complete={info['complete']}, naturalWidth={info['natural_width']})")
        if info["rendered_width"] < MIN_RENDERED_SIDE or info["rendered_height"] < MIN_RENDERED_SIDE:
            problems.append(f"image laid out at {info['rendered_width']:.0f}x{info['rendered_height']:.0f} px")
        t = mark("figures", t)

        name = f"figure-{i:02d}-{_slug(Path(info['src'] or 'figure').stem)}.png"
        while name in used_names:
            name = name[:-4] + "-b.png"
        used_names.add(name)
        shot = shots_dir / name
        stats: dict[str, Any] = {}
        try:
            img.screenshot(path=str(shot), animations="disabled")
            t = mark("figure_screenshots", t)
            stats = image_stats(shot)
            t = mark("pixel_stats", t)
            if not stats["nonblank"]:
                problems.append(
                    f"screenshot is blank: {stats['nonblank_fraction']:.2%} of its pixels differ clearly from "
                    f"{stats['dominant']} (need >= {MIN_NONBLANK_FRACTION:.0%}), "
                    f"{stats['distinct_colours']} colour(s) (need >= {MIN_DISTINCT_COLOURS})"
                )
        except PlaywrightError as exc:
            problems.append(f"screenshot failed: {str(exc).splitlines()[0]}")
        figures.append(
            {
                "index": i,
                "src": info["src"],
                "section": info["section"],
                "alt": info["alt"],
                "caption": info["caption"],
                "screenshot": str(shot) if shot.exists() else None,
                "natural_size": [info["natural_width"], info["natural_height"]],
                "rendered_size": [round(info["rendered_width"]), round(info["rendered_height"])],
                "loaded": loaded,
                "nonblank_fraction": stats.get("nonblank_fraction"),
                "distinct_colours": stats.get("distinct_colours"),
                "dominant": stats.get("dominant"),
                "ok": not problems,
            }
        )
        errors.extend(f"{label}: {p}" for p in problems)


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return keep.strip("-.")[:60] or "figure"


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: python tests/report_browser.py REPORT_DIR [SHOTS_DIR]", file=sys.stderr)
        return 2
    shots = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="report-shots-"))
    try:
        summary = check_report(Path(argv[0]), shots)
    except AssertionError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
