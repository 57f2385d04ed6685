"""``tbench data inspect``: what a source holds, in figures and in a contact sheet.

:func:`inspect_source` scans an :class:`~curation.sources.OpenedSource` (all of it, or its
first ``max_samples`` valid samples) and reports sample and shard counts, field coverage,
the distributions of caption length, image size, original (pre-resize) image size and the
precomputed image-text similarity, languages and a label histogram where the samples carry
them, and what was skipped. It writes ``inspect.json`` and ``contact_sheet.png`` (a grid of
``sample`` seeded-random images with their captions) to ``out_dir``.
"""

from __future__ import annotations

import io
import json
import math
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curation.sources import OpenedSource

INSPECT_FILE = "inspect.json"
CONTACT_SHEET = "contact_sheet.png"
# Contact sheet geometry: each cell is CELL_PX wide and tall (image on top, caption below), under
# a header of HEADER_PX; at most MAX_COLUMNS cells per row. The PNG is exactly
# (columns * CELL_PX[0]) x (rows * CELL_PX[1] + HEADER_PX) pixels.
DPI = 100
CELL_PX = (160, 200)
HEADER_PX = 30
MAX_COLUMNS = 8
CAPTION_WIDTH = 26  # characters per caption line
CAPTION_LINES = 4
JSON_KEYS = ("width", "height", "original_width", "original_height", "similarity", "lang")


def distribution(values: list[float] | np.ndarray) -> dict[str, float] | None:
    """n, min, quartiles, max and mean of ``values`` (None when empty)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        return None
    q = np.percentile(a, [0, 25, 50, 75, 100])
    return {
        "n": int(a.size),
        "min": float(q[0]),
        "q1": float(q[1]),
        "median": float(q[2]),
        "q3": float(q[3]),
        "max": float(q[4]),
        "mean": float(a.mean()),
    }


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _header_size(image: bytes) -> tuple[int, int] | None:
    """(width, height) from the image header; the pixels are not decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any unreadable image counts as such
        return None


def inspect_source(
    opened: OpenedSource,
    out_dir: str | Path,
    *,
    sample: int = 64,
    seed: int = 0,
    max_samples: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Scan ``opened`` and write ``inspect.json`` and ``contact_sheet.png`` to ``out_dir``; returns the figures.

    ``sample`` images are drawn uniformly at random (reservoir sampling, seeded) from the scanned
    samples for the contact sheet; ``max_samples`` stops the scan after that many valid samples.
    Member coverage (image, txt, json, cls) is over every sample read, bad ones included; the
    json keys' coverage is over the valid samples.
    """
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
        raise ValueError(f"sample must be a non-negative integer (images on the contact sheet), got {sample!r}")
    if max_samples is not None and (
        isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1
    ):
        raise ValueError(f"max_samples must be a positive integer or None (scan everything), got {max_samples!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    seen0, skipped0 = Counter(opened.seen), Counter(opened.skipped)
    tally = _Tally(sample=sample, rng=np.random.default_rng(seed))
    complete = _scan(opened, tally, max_samples, progress, seen0)
    result = _figures(opened, tally, seen0, skipped0, complete, max_samples)
    n, reservoir = tally.n, tally.reservoir
    sheet = write_contact_sheet(
        [x for _, x in sorted(reservoir, key=lambda t: t[0])],
        out / CONTACT_SHEET,
        title=f"{opened.name}: {len(reservoir)} of {n} samples (seed {seed})",
    )
    result["contact_sheet"] = sheet
    result["seconds"] = round(time.perf_counter() - t0, 3)
    (out / INSPECT_FILE).write_text(json.dumps(result, indent=1, sort_keys=True))
    result["inspect_json"] = str(out / INSPECT_FILE)
    return result


@dataclass
class _Tally:
    """What a scan collects per valid sample, and the contact sheet's reservoir."""

    sample: int
    rng: np.random.Generator
    reservoir: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    words: list[int] = field(default_factory=list)
    width: list[float] = field(default_factory=list)
    height: list[float] = field(default_factory=list)
    size_from: Counter = field(default_factory=Counter)
    orig_w: list[float] = field(default_factory=list)
    orig_h: list[float] = field(default_factory=list)
    sims: list[float] = field(default_factory=list)
    labels: Counter = field(default_factory=Counter)
    langs: Counter = field(default_factory=Counter)
    json_cov: Counter = field(default_factory=Counter)
    shards_seen: set[str] = field(default_factory=set)
    n: int = 0

    def add(self, s: dict[str, Any]) -> None:
        """Count one valid sample and offer it to the reservoir."""
        self.shards_seen.add(s["url"])
        meta = s["json"]
        for k in JSON_KEYS:
            self.json_cov[k] += k in meta
        if s["txt"] is not None:
            self.words.append(len(s["txt"].split()))
        self._add_size(s, meta)
        ow, oh = _number(meta.get("original_width")), _number(meta.get("original_height"))
        if ow is not None and oh is not None:
            self.orig_w.append(ow)
            self.orig_h.append(oh)
        sim = _number(meta.get("similarity"))
        if sim is not None:
            self.sims.append(sim)
        if s["cls"] is not None:
            self.labels[s["cls"]] += 1
        if isinstance(meta.get("lang"), str):
            self.langs[meta["lang"]] += 1
        self._offer({"key": s["key"], "image": s["image"], "txt": s["txt"], "cls": s["cls"]})
        self.n += 1

    def _add_size(self, s: dict[str, Any], meta: dict[str, Any]) -> None:
        """The image size from the json, else from the image's header."""
        w, h = _number(meta.get("width")), _number(meta.get("height"))
        if w is not None and h is not None:
            self.size_from["json"] += 1
        else:
            wh = _header_size(s["image"])
            if wh is None:
                self.size_from["unreadable"] += 1
            else:
                self.size_from["header"] += 1
                w, h = wh
        if w is not None and h is not None:
            self.width.append(w)
            self.height.append(h)

    def _offer(self, keep: dict[str, Any]) -> None:
        """Reservoir sampling (seeded) of the contact sheet's samples."""
        sample, n = self.sample, self.n
        if len(self.reservoir) < sample:
            self.reservoir.append((n, keep))
        elif sample:
            j = int(self.rng.integers(0, n + 1))
            if j < sample:
                self.reservoir[j] = (n, keep)


def _scan(opened: OpenedSource, tally: _Tally, max_samples: int | None, progress: bool, seen0: Counter) -> bool:
    """Read the source's samples into ``tally``, with a progress bar if asked; whether it read them all."""
    complete = True
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        task = bar.add_task(f"scanning {opened.name}", total=max_samples or opened.num_samples or None)
        bar.start()
    try:
        for s in opened.iter_samples():
            tally.add(s)
            if bar is not None:
                bar.update(task, advance=1)
            if max_samples is not None and tally.n >= max_samples:
                complete = opened.seen["samples"] - seen0["samples"] >= opened.num_samples
                break
    finally:
        if bar is not None:
            bar.stop()
    return complete


def _figures(
    opened: OpenedSource, t: _Tally, seen0: Counter, skipped0: Counter, complete: bool, max_samples: int | None
) -> dict[str, Any]:
    """The inspection's figures (``inspect.json`` but for the contact sheet, timing and path)."""
    n = t.n
    seen = opened.seen - seen0
    raw = seen["samples"]
    coverage = {f: (seen[f] / raw if raw else 0.0) for f in ("image", "txt", "json", "cls")}
    coverage.update({f"json.{k}": (t.json_cov[k] / n if n else 0.0) for k in JSON_KEYS})
    shorter = np.minimum(t.width, t.height) if t.width else []
    orig_w, orig_h = t.orig_w, t.orig_h
    orig_short = np.minimum(orig_w, orig_h) if orig_w else []
    orig_aspect = (np.maximum(orig_w, orig_h) / np.maximum(1, np.minimum(orig_w, orig_h))) if orig_w else []
    return {
        "source": opened.name,
        "kind": opened.kind,
        "location": opened.location,
        "shards": opened.num_shards,
        "shards_scanned": len(t.shards_seen),
        "num_samples": opened.num_samples,
        "counted_by": opened.counted_by,
        "samples_read": raw,
        "valid_samples": n,
        "complete": complete,
        "max_samples": max_samples,
        "coverage": coverage,
        "caption_words": distribution(t.words),
        "image_size": {
            "width": distribution(t.width),
            "height": distribution(t.height),
            "shorter_side": distribution(shorter),
            "from": dict(t.size_from),
        },
        "original_size": (
            {
                "width": distribution(orig_w),
                "height": distribution(orig_h),
                "shorter_side": distribution(orig_short),
                "aspect_ratio": distribution(orig_aspect),
                "aspect_over_3": float(np.mean(np.asarray(orig_aspect) > 3.0)),
            }
            if orig_w
            else None
        ),
        "similarity": distribution(t.sims),
        "languages": dict(sorted(t.langs.items(), key=lambda kv: -kv[1])) or None,
        "labels": (
            {"classes": len(t.labels), "histogram": {str(k): v for k, v in sorted(t.labels.items())}}
            if t.labels
            else None
        ),
        "skipped": dict(opened.skipped - skipped0),
        "notes": list(opened.notes),
    }


def _caption(s: dict[str, Any]) -> str:
    text = s.get("txt") or ""
    if s.get("cls") is not None:
        text = f"[{s['cls']}] {text}".strip()
    lines = textwrap.wrap(text, CAPTION_WIDTH) or [""]
    if len(lines) > CAPTION_LINES:
        lines = lines[:CAPTION_LINES]
        lines[-1] = lines[-1][: CAPTION_WIDTH - 1].rstrip() + "\u2026"
    return "\n".join(lines)


def write_contact_sheet(samples: list[dict[str, Any]], path: str | Path, title: str = "") -> dict[str, Any]:
    """A grid of the samples' images with their (wrapped, truncated) captions underneath; returns
    the path, the grid and the PNG's size in pixels."""
    from matplotlib.figure import Figure
    from PIL import Image

    k = len(samples)
    cols = max(1, min(MAX_COLUMNS, k))
    rows = max(1, math.ceil(k / cols))
    wpx, hpx = cols * CELL_PX[0], rows * CELL_PX[1] + HEADER_PX
    fig = Figure(figsize=(wpx / DPI, hpx / DPI), dpi=DPI, facecolor="white")
    fig.text(0.5, 1 - (HEADER_PX / 2) / hpx, title or "contact sheet", ha="center", va="center", fontsize=9)
    if not samples:
        fig.text(0.5, 0.5 * (1 - HEADER_PX / hpx), "no samples", ha="center", va="center", fontsize=10, color="gray")
    pad = 6
    img_h = CELL_PX[1] * 0.62
    for i, s in enumerate(samples):
        r, c = divmod(i, cols)
        x0 = c * CELL_PX[0]
        y_top = hpx - HEADER_PX - r * CELL_PX[1]  # in pixels from the bottom
        ax = fig.add_axes(((x0 + pad) / wpx, (y_top - pad - img_h) / hpx, (CELL_PX[0] - 2 * pad) / wpx, img_h / hpx))
        ax.set_axis_off()
        try:
            with Image.open(io.BytesIO(s["image"])) as im:
                arr = np.asarray(im.convert("RGB"))
            small = max(arr.shape[:2]) < CELL_PX[0] // 2
            ax.imshow(arr, interpolation="nearest" if small else "antialiased")
        except Exception:  # noqa: BLE001 - show what cannot be decoded instead of failing
            ax.text(0.5, 0.5, "undecodable", ha="center", va="center", fontsize=7, color="red")
        fig.text(
            (x0 + CELL_PX[0] / 2) / wpx,
            (y_top - 2 * pad - img_h) / hpx,
            _caption(s),
            ha="center",
            va="top",
            fontsize=6.5,
            linespacing=1.1,
        )
    path = Path(path)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return {"path": str(path), "images": k, "columns": cols, "rows": rows, "width_px": wpx, "height_px": hpx}


# ------------------------------------------------------------------------------------ printing


def _fmt(v: float | None) -> str:
    if v is None:
        return ""
    return f"{v:.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.3g}"


def report_tables(result: dict[str, Any]) -> list[Any]:
    """The figures as rich tables: overview, distributions, labels/languages, skipped."""
    from rich.table import Table

    t = Table(title=f"source {result['source']!r} ({result['kind']})")
    t.add_column("figure")
    t.add_column("value", overflow="fold")
    t.add_row("location", str(result["location"]))
    t.add_row("shards", f"{result['shards']} ({result['shards_scanned']} scanned)")
    t.add_row("samples", f"{result['num_samples']} (counted by {result['counted_by']})")
    t.add_row(
        "scanned",
        f"{result['samples_read']} read, {result['valid_samples']} valid"
        + ("" if result["complete"] else f" (stopped at --max-samples {result['max_samples']})"),
    )
    cov = result["coverage"]
    t.add_row("coverage", ", ".join(f"{k} {v:.0%}" for k, v in cov.items() if not k.startswith("json.")))
    t.add_row("json keys", ", ".join(f"{k[5:]} {v:.0%}" for k, v in cov.items() if k.startswith("json.")))
    if result.get("languages"):
        total = sum(result["languages"].values())
        t.add_row("languages", ", ".join(f"{k} {v / total:.1%}" for k, v in result["languages"].items()))
    t.add_row("skipped", ", ".join(f"{k} {v}" for k, v in sorted(result["skipped"].items())) or "none")
    sheet = result.get("contact_sheet") or {}
    if sheet:
        t.add_row(
            "contact sheet", f"{sheet['path']} ({sheet['images']} images, {sheet['width_px']}x{sheet['height_px']} px)"
        )
    if result.get("inspect_json"):
        t.add_row("figures", result["inspect_json"])
    d = Table(title="distributions")
    for col in ("quantity", "n", "min", "q1", "median", "q3", "max", "mean"):
        d.add_column(col, justify="left" if col == "quantity" else "right")
    rows = [
        ("caption words", result["caption_words"]),
        ("image width", result["image_size"]["width"]),
        ("image height", result["image_size"]["height"]),
    ]
    if result.get("original_size"):
        o = result["original_size"]
        rows += [("original shorter side", o["shorter_side"]), ("original aspect ratio", o["aspect_ratio"])]
    rows.append(("similarity", result["similarity"]))
    for name, dist in rows:
        if dist:
            d.add_row(name, str(dist["n"]), *(_fmt(dist[k]) for k in ("min", "q1", "median", "q3", "max", "mean")))
    tables = [t, d]
    if result.get("labels"):
        lab = result["labels"]
        h = Table(title=f"labels: {lab['classes']} classes (most frequent 10)")
        h.add_column("class", justify="right")
        h.add_column("samples", justify="right")
        for k, v in sorted(lab["histogram"].items(), key=lambda kv: -kv[1])[:10]:
            h.add_row(k, str(v))
        tables.append(h)
    return tables
