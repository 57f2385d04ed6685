import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WORLD_SCALE = 0.1  # the session's embedded world: every test file shares it


@pytest.fixture(scope="session")
def world_info(tmp_path_factory) -> tuple[Path, dict]:
    """The session's world folder and its description (build_world is idempotent)."""
    from curation import world as W

    d = tmp_path_factory.getbasetemp() / f"tbench-world-{WORLD_SCALE}"
    return d, W.build_world(d, seed=0, scale=WORLD_SCALE)


@pytest.fixture(scope="session")
def world(world_info) -> Path:
    return world_info[0]


def tbench(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real command line in a fresh process (Ray stays out of the test process)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def run_tbench():
    return tbench


@pytest.fixture
def one_torch_thread():
    """Run a test with one torch thread (as the harness's jobs do), then restore the setting."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic_store_root(tmp_path_factory) -> Path:
    """A store filling every report section (tests/synthetic_store.py), written once per session."""
    from synthetic_store import build_synthetic_store

    root = tmp_path_factory.mktemp("synthetic-store")
    build_synthetic_store(root)
    return root


@pytest.fixture(scope="session")
def synthetic_report_dir(synthetic_store_root, tmp_path_factory) -> Path:
    """The report of the synthetic store (rendered once; the report and browser tests share it)."""
    from results.report import write_report

    out = tmp_path_factory.mktemp("synthetic-report")
    write_report(synthetic_store_root, out, title="Synthetic <study>", n_boot=50)
    return out


@pytest.fixture(scope="session")
def ray_head(request):
    """A Ray head on the loopback address (tests/ray_head.py), shared by the tests that need a
    real cluster: `tbench submit` and the driver-kill trials."""
    from ray_head import start_head

    yield from start_head(request)
