"""The source registry: the seven image-text pre-training sources and a labelled ImageNet-style one.

A source is a folder of webdataset shards (``.png``, ``.txt``, ``.json`` and, for labelled
sources, ``.cls``) with a ``sizes.json`` mapping each shard's file name to its sample count,
as open_clip expects. In the embedded world every source lives under
``<data root>/sources/<name>/`` (``tbench world`` writes it); real shards can be placed at the
same path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.registry import Registry

SIZES_FILE = "sizes.json"


@dataclass(frozen=True)
class SourceEntry:
    """A registered pre-training source."""

    name: str
    kind: str  # "image-text" or "labelled"
    description: str

    @property
    def relative_dir(self) -> str:
        """Where the source's shards live, relative to a data root."""
        return f"sources/{self.name}"

    def directory(self, data_root: str | Path) -> Path:
        return Path(data_root) / self.relative_dir

    def sizes(self, data_root: str | Path) -> dict[str, int]:
        """Shard file name -> sample count, from ``sizes.json``."""
        d = self.directory(data_root)
        p = d / SIZES_FILE
        if not p.is_file():
            raise FileNotFoundError(
                f"source {self.name!r}: no {SIZES_FILE} in {d}; write the embedded world there with "
                f"`tbench world --out {Path(data_root)}` (or place real shards and their {SIZES_FILE} there)"
            )
        try:
            raw = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or not all(isinstance(v, int) and v >= 0 for v in raw.values()):
            raise ValueError(f"{p} must map shard file names to non-negative sample counts")
        return {str(k): int(v) for k, v in raw.items()}

    def shard_paths(self, data_root: str | Path) -> list[str]:
        """Absolute paths of the source's shards, in shard order; each must exist."""
        d = self.directory(data_root)
        paths = [d / name for name in sorted(self.sizes(data_root))]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"source {self.name!r}: {d / SIZES_FILE} lists shards missing from {d}: "
                                    f"{missing[:5]}{' ...' if len(missing) > 5 else ''}; rebuild with `tbench world`")
        return [str(p) for p in paths]

    def num_samples(self, data_root: str | Path) -> int:
        return sum(self.sizes(data_root).values())


SOURCES: Registry[SourceEntry] = Registry("source")


def _register(name: str, kind: str, description: str) -> None:
    SOURCES.register(name, SourceEntry(name, kind, description))


def _fill() -> None:
    # Descriptions come from the world's declarations so the two never drift apart.
    from curation.world import SOURCE_DECLS

    for d in SOURCE_DECLS:
        _register(d.name, d.kind, d.description)


_fill()
