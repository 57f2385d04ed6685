"""Pre-training: methods, the webdataset pipeline, the loop (checkpoints, resume) and the Ray edge.

The views here are built in the test, in the format the view builder writes: ``shards/*.tar``
with ``png``/``txt``/``json``/``cls`` per sample and ``sizes.json``. Their class is the image's
colour, so a few steps of supervised training must lower the loss.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from pretrain.data import make_train_loader, read_view, steps_per_epoch
from pretrain.loop import DistInfo, TrainConfig, state_path, train_loop
from pretrain.methods import METHODS, LossContext
from pretrain.models import load_encoder

COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 70, 230], [220, 210, 40]], dtype=np.float32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_view(root: Path, n: int = 256, shards: int = 2, seed: int = 0, corrupt: tuple[int, ...] = ()) -> Path:
    """A tiny labelled view: 32x32 noisy colour patches, class = colour; ``corrupt`` indices get broken PNG bytes."""
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True)
    sizes, per_shard = {}, -(-n // shards)
    for s in range(shards):
        name = f"shard-{s:06d}.tar"
        idx = range(s * per_shard, min(n, (s + 1) * per_shard))
        with wds.TarWriter(str(root / "shards" / name), mtime=0) as sink:  # integer mtime: no pax headers
            for i in idx:
                label = int(rng.integers(len(COLOURS)))
                img = np.clip(COLOURS[label] + rng.normal(0, 25, (32, 32, 3)), 0, 255).astype(np.uint8)
                png = b"\x89PNG-not-really" if i in corrupt else _png(img)
                meta = {"width": 32, "height": 32}
                sink.write(
                    {
                        "__key__": f"{i:08d}",
                        "png": png,
                        "txt": f"a colour {label}",
                        "json": json.dumps(meta),
                        "cls": str(label),
                    }
                )
        sizes[name] = len(idx)
    (root / "sizes.json").write_text(json.dumps(sizes))
    return root


@pytest.fixture(scope="module")
def view(tmp_path_factory) -> Path:
    return write_view(tmp_path_factory.mktemp("view"), n=256, shards=2)


def small_cfg(**kw) -> TrainConfig:
    base = dict(
        method="supervised",
        backbone="test_resnet",
        image_size=32,
        epochs=2,
        save_epochs=(),
        batch_size=32,
        lr=3e-3,
        weight_decay=0.05,
        warmup_epochs=0.5,
        label_smoothing=0.0,
        seed=0,
        num_classes=4,
    )
    return TrainConfig(**{**base, **kw})


# --------------------------------------------------------------------------- methods


@pytest.mark.parametrize("name", METHODS.names())
def test_method_builds_encoder_and_returns_loss_dict(name):
    method = METHODS.get(name)
    torch.manual_seed(0)
    model = method.build("test_resnet", 32, 4, label_smoothing=0.1, **method.resolve({}))
    assert hasattr(model, "encoder") and isinstance(model.encoder, torch.nn.Module)
    images = torch.randn(4, 3, 32, 32)
    fake = {
        "image_label": {"image": images, "label": torch.tensor([0, 1, 2, 3])},
        "image_text": {"image": images, "text": torch.randint(1, 400, (4, 32))},
        "two_views": {"view1": images, "view2": images.flip(-1)},
    }[method.pipeline]
    out = method.loss(model, fake, LossContext())
    assert out["loss"].ndim == 0 and out["loss"].requires_grad and torch.isfinite(out["loss"])
    out["loss"].backward()
    meta = method.meta(model, "test_resnet", 32)
    assert model.encoder(images).shape == (4, meta["feature_dim"])


def test_config_errors_name_the_field():
    with pytest.raises(KeyError, match="supervised"):
        small_cfg(method="supervized")
    with pytest.raises(ValueError, match="save_epochs"):
        small_cfg(save_epochs=(3,))
    with pytest.raises(ValueError, match="num_classes"):
        small_cfg(num_classes=0)


# --------------------------------------------------------------------------- data


def test_read_view_checks_sizes(view, tmp_path):
    info = read_view(view)
    assert info.num_samples == 256 and len(info.shards) == 2
    assert steps_per_epoch(info.num_samples, 100) == 2
    with pytest.raises(ValueError, match="fewer than one global batch"):
        steps_per_epoch(info.num_samples, 512)
    with pytest.raises(FileNotFoundError, match="sizes.json"):
        read_view(tmp_path)


@pytest.mark.parametrize("world_size", [1, 2, 3])  # 3 ranks > 2 shards: samples are split instead
def test_every_rank_yields_the_same_number_of_batches(view, world_size):
    batch = 48 // world_size
    steps = steps_per_epoch(256, 48)
    seen = []
    for rank in range(world_size):
        loader = make_train_loader(
            view,
            pipeline="image_label",
            batch_size=batch,
            num_batches=steps,
            image_size=32,
            seed=0,
            rank=rank,
            world_size=world_size,
        )
        loader.set_epoch(1)
        batches = list(loader)
        assert len(batches) == steps
        assert all(b["image"].shape == (batch, 3, 32, 32) and b["image"].dtype == torch.uint8 for b in batches)
        assert all(b["label"].dtype == torch.int64 for b in batches)
        seen.append(torch.cat([b["image"].flatten(1)[:, :8] for b in batches]))
    if world_size > 1:  # ranks read different samples
        assert not torch.equal(seen[0], seen[1])


def test_epochs_are_deterministic_and_differ(view):
    def first_batch(epoch: int, workers: int) -> torch.Tensor:
        loader = make_train_loader(
            view,
            pipeline="image_label",
            batch_size=16,
            num_batches=2,
            image_size=32,
            seed=0,
            num_workers=workers,
        )
        loader.set_epoch(epoch)
        return next(iter(loader))["image"]

    assert torch.equal(first_batch(1, 0), first_batch(1, 0))
    assert not torch.equal(first_batch(1, 0), first_batch(2, 0))


def test_loader_workers_split_shards(view):
    loader = make_train_loader(
        view,
        pipeline="image_label",
        batch_size=16,
        num_batches=5,
        image_size=32,
        seed=0,
        num_workers=2,
    )
    for epoch in (1, 2):  # persistent workers pick up the new epoch
        loader.set_epoch(epoch)
        assert len(list(loader)) == 5


def test_bad_sample_is_logged_skipped_and_counted(tmp_path, caplog):
    bad_view = write_view(tmp_path / "bad", n=64, shards=1, corrupt=(5,))
    loader = make_train_loader(
        bad_view,
        pipeline="image_label",
        batch_size=21,
        num_batches=3,
        image_size=32,
        seed=0,
        shuffle_buffer=4,  # so sample 5 is decoded early
    )
    loader.set_epoch(1)
    with caplog.at_level("WARNING", logger="pretrain.data"):
        batches = list(loader)
    assert len(batches) == 3 and all(len(b["label"]) == 21 for b in batches)  # 63 good samples
    assert loader.skipped == 1
    assert "00000005" in caplog.text


def test_a_reader_of_only_bad_samples_fails_naming_its_shards(tmp_path):
    from pretrain.data import MIN_BAD_RUN, ReaderStalled

    bad_view = write_view(tmp_path / "bad", n=40, shards=2, corrupt=tuple(range(40)))
    loader = make_train_loader(bad_view, pipeline="image_label", batch_size=4, num_batches=5, image_size=32, seed=0)
    loader.set_epoch(1)
    with pytest.raises(ReaderStalled, match="bad samples in a row") as info:
        next(iter(loader))
    assert "shard-000000.tar" in str(info.value) and "shard-000001.tar" in str(info.value)
    assert MIN_BAD_RUN <= loader.loader.dataset.pipeline[0].counter.run  # bounded: it stopped at its limit


def test_a_reader_with_no_readable_sample_fails_after_two_passes(tmp_path):
    from pretrain.data import ReaderStalled

    view = write_view(tmp_path / "v", n=8, shards=1)
    (view / "shards" / "shard-000000.tar").write_bytes(b"not a tar file at all")
    for workers in (0, 1):  # in the process and from a loader worker
        loader = make_train_loader(
            view, pipeline="image_label", batch_size=4, num_batches=2, image_size=32, seed=0, num_workers=workers
        )
        loader.set_epoch(1)
        with pytest.raises(ReaderStalled, match="read no sample in two passes over shard.*shard-000000.tar"):
            next(iter(loader))


def test_a_few_bad_samples_do_not_stop_a_reader(tmp_path):
    view = write_view(tmp_path / "v", n=60, shards=1, corrupt=tuple(range(0, 60, 2)))  # every other sample bad
    loader = make_train_loader(view, pipeline="image_label", batch_size=10, num_batches=3, image_size=32, seed=0)
    for epoch in (1, 2, 3):
        loader.set_epoch(epoch)
        assert len(list(loader)) == 3  # 30 good samples per pass; the stream starts over as needed


def _agree_worker(rank: int, world_size: int, port: int, out: str) -> None:
    import torch.distributed as dist
    import torch.distributed.nn  # noqa: F401  (before the group; see pretrain.parity._worker)

    from pretrain.data import ReaderStalled
    from pretrain.loop import RankFailed, agreed_batches

    def batches():
        for i in range(1000):
            if rank == 1 and i == 3:
                raise ReaderStalled("rank 1's shards are all bad")
            yield i

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    seen, error = [], None
    try:
        for b in agreed_batches(batches(), rank, world_size):
            seen.append(b)
    except (ReaderStalled, RankFailed) as exn:
        error = f"{type(exn).__name__}: {exn}"
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps({"seen": seen, "error": error}))


@pytest.mark.slow  # two spawned processes: ~15 s on 2 cores
def test_every_rank_stops_when_one_rank_cannot_produce_a_batch(tmp_path):
    import torch.multiprocessing as mp

    from pretrain.parity import _free_port

    mp.spawn(_agree_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["seen"] == r1["seen"] == [0, 1, 2]  # rank 0 stops before a step rank 1 cannot take
    assert r1["error"].startswith("ReaderStalled")
    assert r0["error"].startswith("RankFailed") and "rank(s) [1]" in r0["error"]


def test_training_on_a_view_of_bad_samples_fails_with_the_reader_error(tmp_path):
    from pretrain.data import ReaderStalled

    bad_view = write_view(tmp_path / "bad", n=64, shards=1, corrupt=tuple(range(64)))
    with pytest.raises(ReaderStalled, match="shard-000000.tar"):
        train_loop(small_cfg(epochs=1), bad_view, tmp_path / "out")


# --------------------------------------------------------------------------- the loop


def test_supervised_loss_falls_and_checkpoints_load(view, tmp_path):
    cfg = small_cfg(epochs=3, save_epochs=(0, 1, 3), extra={"pretrain_key": "abc123"})
    seen = []
    summary = train_loop(cfg, view, tmp_path, DistInfo(), seen.append)
    assert [r["epoch"] for r in seen] == [1, 2, 3]
    assert seen[-1]["loss"] < 0.6 * seen[0]["loss"], seen
    assert seen[-1]["acc"] > 0.5
    assert summary["epochs_trained"] == 3 and summary["resumed_from"] is None
    assert summary["samples_seen"] == 3 * 8 * 32

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3] and metrics["summary"]["epochs"] == 3
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "epoch_000.pt",
        "epoch_001.pt",
        "epoch_003.pt",
    ]
    encoder, meta = load_encoder(tmp_path / "checkpoints" / "epoch_003.pt")
    assert meta["method"] == "supervised" and meta["epoch"] == 3 and meta["pretrain_key"] == "abc123"
    assert meta["samples_seen"] == 3 * 8 * 32 and meta["train_loss"] == pytest.approx(seen[-1]["loss"])
    assert encoder(torch.zeros(2, 3, 32, 32)).shape == (2, meta["feature_dim"])
    _, meta0 = load_encoder(tmp_path / "checkpoints" / "epoch_000.pt")
    assert meta0["epoch"] == 0 and meta0["samples_seen"] == 0

    state = torch.load(state_path(tmp_path), weights_only=True)
    assert state["epoch"] == 3 and set(state) >= {"model", "optimizer", "scheduler", "rng"}


class Crash(RuntimeError):
    pass


def test_resume_trains_only_missing_epochs_and_matches_uninterrupted(view, tmp_path):
    cfg = small_cfg(epochs=3, save_epochs=(2, 3), batch_size=64)
    train_loop(cfg, view, tmp_path / "full")

    def crash_after_first_epoch(record):
        if record["epoch"] == 1:
            raise Crash("killed")

    with pytest.raises(Crash):
        train_loop(cfg, view, tmp_path / "cut", DistInfo(), crash_after_first_epoch)
    assert torch.load(state_path(tmp_path / "cut"), weights_only=True)["epoch"] == 1

    epochs = []
    summary = train_loop(cfg, view, tmp_path / "cut", DistInfo(), epochs.append)
    assert summary["resumed_from"] == 1 and summary["epochs_trained"] == 2
    assert [r["epoch"] for r in epochs] == [2, 3]
    for e in (2, 3):
        a = torch.load(tmp_path / "full" / "checkpoints" / f"epoch_{e:03d}.pt", weights_only=True)
        b = torch.load(tmp_path / "cut" / "checkpoints" / f"epoch_{e:03d}.pt", weights_only=True)
        assert a["meta"] == b["meta"]
        for k in a["state_dict"]:
            assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())["epochs"]
    cut = json.loads((tmp_path / "cut" / "metrics.json").read_text())["epochs"]
    assert [r["loss"] for r in full] == [r["loss"] for r in cut]

    # A finished run called again trains nothing; a different config refuses to resume.
    assert train_loop(cfg, view, tmp_path / "cut")["epochs_trained"] == 0
    with pytest.raises(ValueError, match="lr"):
        train_loop(small_cfg(epochs=3, save_epochs=(2, 3), batch_size=64, lr=1e-2), view, tmp_path / "cut")


def test_an_epoch_saved_but_not_logged_is_logged_when_the_run_resumes(view, tmp_path):
    """A process killed between saving an epoch's state and appending its log line: the resumed
    run logs that epoch (``recovered``) before its start, so the log's history stays whole."""
    from pretrain.loop import TRAIN_LOG, read_train_log

    cfg = small_cfg(epochs=2, batch_size=64)

    def crash_after_first_epoch(record):
        if record["epoch"] == 1:
            raise Crash("killed")

    with pytest.raises(Crash):
        train_loop(cfg, view, tmp_path, DistInfo(), crash_after_first_epoch)
    log = tmp_path / TRAIN_LOG
    lines = log.read_text().splitlines()
    assert json.loads(lines[-1])["event"] == "epoch"
    log.write_text("\n".join(lines[:-1]) + "\n")  # the epoch's line never written
    train_loop(cfg, view, tmp_path)
    events = [
        (e["event"], e.get("epoch", e.get("from_epoch")), e.get("recovered", False)) for e in read_train_log(tmp_path)
    ]
    assert events == [("start", 0, False), ("epoch", 1, True), ("start", 1, False), ("epoch", 2, False)]


def test_resume_refuses_a_rebuilt_view(view, tmp_path):
    a = small_cfg(epochs=1, batch_size=64, extra={"view_manifest_sha256": "a" * 64})
    train_loop(a, view, tmp_path)
    assert train_loop(a, view, tmp_path)["epochs_trained"] == 0
    with pytest.raises(ValueError, match="another build of its view"):
        train_loop(small_cfg(epochs=1, batch_size=64, extra={"view_manifest_sha256": "b" * 64}), view, tmp_path)


def test_grad_accum_keeps_the_global_batch(view, tmp_path):
    summary = train_loop(small_cfg(epochs=1, batch_size=64, grad_accum=2), view, tmp_path)
    assert summary["steps_per_epoch"] == 4 and summary["samples_seen"] == 256
    with pytest.raises(ValueError, match="divide"):
        train_loop(small_cfg(epochs=1, batch_size=63, grad_accum=2), view, tmp_path / "x")


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for this module's Ray Train tests (each start costs seconds on 2 cores)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _ray_train_worker_pids() -> list[int]:
    """Processes whose title Ray set to a Train worker actor (``ray::RayTrainWorker...``) and that
    descend from this test process (the raylet ``local_ray`` started is its child): another
    process's Ray cluster on the machine (``make test`` runs two pytest processes) is left alone."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"RayTrainWorker" in cmdline and _descends_from(int(proc.name), os.getpid()):
            pids.append(int(proc.name))
    return pids


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:  # the parent pid is the field after the parenthesised command name
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return False
    return False


def _ends_where_an_uninterrupted_run_ends(cfg, view, tmp_path, out, summary) -> None:
    """A resumed 4-epoch run's last checkpoint and loss equal those of a run never interrupted."""
    reference = train_loop(cfg, view, tmp_path / "reference")
    a = torch.load(tmp_path / "reference" / "checkpoints" / "epoch_004.pt", weights_only=True)
    b = torch.load(out / "checkpoints" / "epoch_004.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert reference["final_loss"] == summary["final_loss"]


@pytest.mark.slow
def test_ray_train_restores_a_killed_worker_from_the_last_epoch(view, tmp_path, local_ray):
    """SIGKILL the Train worker after its first epoch: Ray Train starts a new worker group, whose
    loop resumes from ``state/last.pt``; the run ends where an uninterrupted one ends."""
    import os
    import signal
    import time

    from harness.train_ray import run_pretrain

    cfg = small_cfg(epochs=4, save_epochs=(4,), batch_size=32)
    out = tmp_path / "run"

    @local_ray.remote(num_cpus=0)
    def job() -> dict:  # one worker goes to a Ray task unless Ray Train is asked for
        return run_pretrain(cfg, view, out, num_workers=1, cpus_per_worker=1.0, max_failures=2, launcher="ray_train")

    ref = job.remote()
    deadline, killed = time.monotonic() + 300, None
    while time.monotonic() < deadline and killed is None:
        if state_path(out).is_file():
            pids = _ray_train_worker_pids()
            if pids:
                killed = torch.load(state_path(out), weights_only=True)["epoch"]
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    assert killed is not None, "the run never reached its first epoch"
    summary = local_ray.get(ref, timeout=400)
    assert summary["launcher"] == "ray_train" and (out / "ray").is_dir()
    assert summary["resumed_from"] is not None and summary["resumed_from"] >= killed
    assert summary["epochs_trained"] == 4 - summary["resumed_from"] and summary["samples_seen"] == 4 * 256

    _ends_where_an_uninterrupted_run_ends(cfg, view, tmp_path, out, summary)


@pytest.mark.slow
def test_two_ray_train_workers_train_one_run_with_the_global_batch(view, tmp_path, local_ray):
    """DDP over two Ray Train workers (gloo on CPU): same steps and samples as one worker, one
    set of checkpoints written by rank 0, each rank reading its own shard."""
    from harness.train_ray import run_pretrain

    cfg = TrainConfig(
        method="simclr",
        backbone="test_resnet",
        image_size=32,
        epochs=2,
        save_epochs=(2,),
        batch_size=64,
        lr=2e-3,
        seed=0,
    )

    @local_ray.remote(num_cpus=0)
    def job() -> dict:
        return run_pretrain(cfg, view, tmp_path / "ddp", num_workers=2, cpus_per_worker=1.0)

    summary = local_ray.get(job.remote(), timeout=400)
    assert summary["num_workers"] == 2 and summary["epochs_trained"] == 2 and summary["launcher"] == "ray_train"
    assert summary["steps_per_epoch"] == 4 and summary["samples_seen"] == 2 * 4 * 64
    _, meta = load_encoder(tmp_path / "ddp" / "checkpoints" / "epoch_002.pt")
    assert meta["method"] == "simclr" and meta["epoch"] == 2
    history = json.loads((tmp_path / "ddp" / "metrics.json").read_text())["epochs"]
    assert history[-1]["loss"] < history[0]["loss"] + 0.5 and all(r["skipped"] == 0 for r in history)


@pytest.mark.slow
def test_one_worker_runs_in_a_ray_task_that_holds_its_cpu_and_resumes_when_killed(view, tmp_path, local_ray):
    """A one-worker run is the loop in one Ray task, not Ray Train (no controller, no ``ray``
    folder); the task holds the run's CPU. SIGKILL its process after the first epoch: Ray retries
    the task, whose loop resumes from ``state/last.pt`` and ends where an uninterrupted run ends."""
    import os
    import signal
    import threading
    import time

    from harness.train_ray import run_pretrain
    from pretrain.loop import read_train_log

    cfg = small_cfg(epochs=4, save_epochs=(4,), batch_size=32)
    out = tmp_path / "run"
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.update(run_pretrain(cfg, view, out, num_workers=1, cpus_per_worker=1.0, max_failures=2))
    )
    runner.start()
    deadline, killed, cpus_free = time.monotonic() + 300, None, set()
    while time.monotonic() < deadline and killed is None and runner.is_alive():
        cpus_free.add(local_ray.available_resources().get("CPU", 0.0))
        if state_path(out).is_file():
            starts = [e for e in read_train_log(out) if e["event"] == "start"]
            killed = torch.load(state_path(out), weights_only=True)["epoch"]
            os.kill(starts[0]["pid"], signal.SIGKILL)
        time.sleep(0.05)
    runner.join(timeout=400)
    assert killed is not None, "the run never reached its first epoch"
    assert 1.0 in cpus_free, cpus_free  # the task held one of the two CPUs while it trained
    assert result["launcher"] == "task" and result["num_workers"] == 1 and not (out / "ray").exists()
    assert result["resumed_from"] is not None and result["resumed_from"] >= killed
    assert result["epochs_trained"] == 4 - result["resumed_from"] and result["samples_seen"] == 4 * 256
    assert result["wall_seconds"] > 0
    starts = [e for e in read_train_log(out) if e["event"] == "start"]
    assert len(starts) == 2 and starts[0]["pid"] != starts[1]["pid"] and starts[1]["from_epoch"] >= killed

    _ends_where_an_uninterrupted_run_ends(cfg, view, tmp_path, out, result)


def test_one_worker_in_process_and_launcher_errors(view, tmp_path):
    """``in_process`` runs the loop in the caller (the runner's task holds the resources); a
    one-worker launcher refuses two workers, and an unknown launcher names the valid ones."""
    from harness.train_ray import run_pretrain

    summary = run_pretrain(small_cfg(epochs=1, batch_size=64), view, tmp_path / "run", launcher="in_process")
    assert summary["launcher"] == "in_process" and summary["num_workers"] == 1 and summary["epochs_trained"] == 1
    assert summary["wall_seconds"] >= summary["seconds"] > 0 and not (tmp_path / "run" / "ray").exists()
    with pytest.raises(ValueError, match="num_workers=2"):
        run_pretrain(small_cfg(), view, tmp_path / "x", num_workers=2, launcher="task")
    with pytest.raises(ValueError, match="ray_train"):
        run_pretrain(small_cfg(), view, tmp_path / "x", launcher="torchtrainer")


# --------------------------------------------------------------------------- budgets in samples seen


def _events(out: Path, kind: str) -> list[dict]:
    from pretrain.loop import read_train_log

    return [e for e in read_train_log(out) if e["event"] == kind]


def test_samples_seen_budget_stops_mid_epoch_with_the_schedule_sized_to_it(view, tmp_path):
    """200 samples at batch 32 are ceil(200 / 32) = 7 steps, whatever the view: one partial epoch
    of the 256-sample view (8 steps per epoch), three epochs of 3, 3 and 1 steps of a 96-sample
    view. The learning rate reaches the schedule's end (0) at the last step, the end is saved as
    checkpoints/last.pt, and a run resumed before its partial epoch ends where the uninterrupted one does."""
    small = write_view(tmp_path / "small", n=96, shards=1, seed=1)
    for name, v, steps in (("big", view, [7]), ("small", small, [3, 3, 1])):
        out = tmp_path / name
        cfg = small_cfg(epochs=None, samples_seen=200, save_epochs=(1,) if len(steps) > 1 else ())
        summary = train_loop(cfg, v, out)
        assert (summary["epochs"], summary["total_steps"], summary["samples_seen"]) == (len(steps), 7, 7 * 32)
        history = json.loads((out / "metrics.json").read_text())["epochs"]
        assert [r["steps"] for r in history] == steps
        assert [r["samples_seen"] for r in history] == [32 * sum(steps[: i + 1]) for i in range(len(steps))]
        # an epoch-sized schedule (8 steps on the big view, 9 on the small) would not be at 0 yet
        assert history[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and all(r["lr"] > 0 for r in history[:-1])
        assert torch.load(state_path(out), weights_only=True)["scheduler"]["last_epoch"] == 7
        names = sorted(p.name for p in (out / "checkpoints").iterdir())
        assert names == (["epoch_001.pt", "last.pt"] if len(steps) > 1 else ["last.pt"])
        _, meta = load_encoder(out / "checkpoints" / "last.pt")
        assert (meta["epoch"], meta["epochs"], meta["samples_seen"], meta["samples_budget"]) == (
            len(steps),
            len(steps),
            224,
            200,
        )
        (start,) = _events(out, "start")
        assert (start["epochs"], start["total_steps"], start["samples_budget"]) == (len(steps), 7, 200)
        assert [e["steps"] for e in _events(out, "epoch")] == steps

    def crash_after_second_epoch(record):
        if record["epoch"] == 2:
            raise Crash("killed")

    cfg = small_cfg(epochs=None, samples_seen=200, save_epochs=(1,))
    with pytest.raises(Crash):
        train_loop(cfg, small, tmp_path / "cut", DistInfo(), crash_after_second_epoch)
    assert not (tmp_path / "cut" / "checkpoints" / "last.pt").exists()
    summary = train_loop(cfg, small, tmp_path / "cut")
    assert summary["resumed_from"] == 2 and summary["epochs_trained"] == 1 and summary["samples_seen"] == 224
    a = torch.load(tmp_path / "small" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoints" / "last.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k


def test_samples_seen_config_errors_name_the_field(view, tmp_path):
    with pytest.raises(ValueError, match="exactly one budget"):
        small_cfg(samples_seen=200)  # small_cfg gives epochs too
    with pytest.raises(ValueError, match="exactly one budget"):
        small_cfg(epochs=None)
    with pytest.raises(ValueError, match="samples_seen must be >= 1"):
        small_cfg(epochs=None, samples_seen=0)
    # 200 samples on the 256-sample view are one (partial) epoch: no whole epoch 1 to keep before the end
    with pytest.raises(ValueError, match=r"save_epochs \(checkpoint_epochs\) \[1\].*below 1"):
        train_loop(small_cfg(epochs=None, samples_seen=200, save_epochs=(1,)), view, tmp_path)
    # a state written under another budget is not resumed
    train_loop(small_cfg(epochs=1, batch_size=64), view, tmp_path / "e")
    with pytest.raises(ValueError, match="samples_seen"):
        train_loop(small_cfg(epochs=None, samples_seen=256, batch_size=64), view, tmp_path / "e")


def test_a_samples_seen_run_through_the_executors_fills_its_rows(world, tmp_path, monkeypatch):
    """Plan, view, pre-training, features and a linear probe of a samples_seen block, run by the
    harness's executors (the loop in this process instead of Ray): 300 samples at batch 64 are 5
    steps, 3 epochs of a 150-sample view; the rows (runs and spectra) carry the budget and what was trained."""
    import harness.train_ray
    from harness.executors import RunContext, base_row, execute, failed_rows, spectra_rows
    from harness.plan import make_plan
    from harness.spec import parse_spec
    from results.schema import conform

    monkeypatch.setattr(
        harness.train_ray, "run_pretrain", lambda cfg, view_dir, out_dir, **_: train_loop(cfg, view_dir, out_dir)
    )
    spec = parse_spec(
        {
            "name": "budget",
            "world": {"seed": 0, "scale": 0.1},
            "pretrain": {"batch_size": 64, "grids": [{"sources": ["imagenet"], "sizes": [150], "samples_seen": 300}]},
            "downstream": {
                "sets": ["digits"],
                "eval_seeds": [0],
                "random_init_floor": False,
                "protocols": [{"name": "linear", "shots": ["full"]}],
            },
            "resources": {"view": {"engine": "local"}},
        }
    )
    plan = make_plan(spec)
    (run,) = plan.of_kind("pretrain")
    assert run.config["samples_seen"] == 300 and "epochs" not in run.config
    ctx = RunContext(spec_name="budget", workdir=tmp_path / "work", world_dir=world, code_version="test")
    rows = []
    for job in plan.jobs.values():
        if job.kind != "world":
            out = execute(job, ctx)
            rows += out["runs"] if job.kind == "eval" else []
    assert (
        json.loads((tmp_path / "work" / "pretrain" / run.key / "metrics.json").read_text())["summary"]["total_steps"]
        == 5
    )
    (row,) = rows
    assert (row["pretrain_size"], row["samples_budget"], row["samples_seen"]) == (150, 300, 5 * 64)
    assert (row["pretrain_epochs"], row["checkpoint_epoch"]) == (3, 3)
    (feats,) = plan.of_kind("features")
    assert {r["checkpoint_epoch"] for r in spectra_rows(feats, ctx)} == {3}
    (ev,) = plan.of_kind("eval")
    failed = failed_rows(ev, ctx, "boom")
    assert (
        failed[0]["samples_budget"] == 300 and failed[0]["checkpoint_epoch"] is None
    )  # the epoch is known once trained
    assert conform("runs", rows + failed).num_rows == 2
    assert base_row(ev, ctx)["pretrain_epochs"] is None


def test_warmup_fraction_is_the_same_share_of_a_budget_run_whatever_the_view_size():
    from pretrain.loop import run_schedule, warmup_steps_for

    by_epochs = small_cfg(epochs=None, samples_seen=640, batch_size=32)
    by_share = small_cfg(epochs=None, samples_seen=640, batch_size=32, warmup_fraction=0.25)
    got = {}
    for n in (64, 320):
        steps, total, _ = run_schedule(by_share, n)
        got[n] = (warmup_steps_for(by_epochs, steps, total), warmup_steps_for(by_share, steps, total), total)
    assert got[64][2] == got[320][2] == 20
    assert got[64][1] == got[320][1] == 5  # a quarter of the run on either view
    assert got[64][0] != got[320][0]  # warmup_epochs follows the passes over the view
    with pytest.raises(ValueError, match="warmup_fraction"):
        small_cfg(epochs=1, warmup_fraction=1.5)
