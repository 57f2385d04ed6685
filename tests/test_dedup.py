"""Near-duplicate detection: the hash, the banded search against brute force, the keep rule, and
planted duplicates in the embedded world (recall >= 95% with < 1% false removals)."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from curation import dedup as D

SOURCES = ("cc12m", "cc3m", "imagenet", "laion", "redcaps", "shutterstock", "wit", "yfcc")


@pytest.fixture(scope="module")
def originals(world) -> list[bytes]:
    out = []
    for name in SOURCES:
        for shard in sorted((world / "sources" / name).glob("*.tar")):
            with tarfile.open(shard) as tf:
                out += [tf.extractfile(m).read() for m in tf if m.name.endswith(".png")]
    return out


@pytest.fixture(scope="module")
def planted(originals):
    items, twin, kind = D.plant_duplicates(originals, 0.15, D.TRANSFORMS, seed=0)
    return D.hash_images(items), twin, kind


def dist(a: int, b: int) -> int:
    return bin(int(a) ^ int(b)).count("1")


def brute_clusters(hashes: np.ndarray, threshold: int, order: np.ndarray | None = None) -> np.ndarray:
    """All-pairs reference: connected components of min(d(h,h'), d(h,m'), d(m,h')) <= t, kept by (order, index)."""
    h, m = hashes[:, 0], hashes[:, 1]
    n = len(h)
    d = np.minimum(
        np.minimum(D.popcount(h[:, None] ^ h[None]), D.popcount(h[:, None] ^ m[None])), D.popcount(m[:, None] ^ h[None])
    )
    r, c = np.nonzero(d <= threshold)
    comp = connected_components(coo_matrix((np.ones(len(r)), (r, c)), shape=(n, n)), directed=False)[1]
    order = np.arange(n) if order is None else order
    keep = {}
    for i in sorted(range(n), key=lambda i: (order[i], i)):
        keep.setdefault(comp[i], i)
    return np.array([keep[comp[i]] for i in range(n)])


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the hash


def test_same_pixels_same_hash_whatever_the_input(originals):
    raw = originals[7]
    arr = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    h = D.phash(raw)
    assert 0 <= h < 2**64 and isinstance(h, int)
    assert D.phash(arr) == D.phash(png(arr)) == D.phash(Image.fromarray(arr)) == h
    assert D.hash_image(raw) == (h, h ^ D.MIRROR_MASK)
    assert D.hash_images([raw, arr]).tolist() == [[h, h ^ D.MIRROR_MASK]] * 2
    assert D.hash_images([]).shape == (0, 2) and D.hash_images([]).dtype == np.uint64
    gray = D.decode_gray(raw)
    assert gray.dtype == np.float32 and gray.shape == (32, 32)
    assert D.phash(gray.round().astype(np.uint8)) == D.phash(gray.round().astype(np.uint8)[..., None])
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert D.phash(rgba) == h
    big = np.asarray(Image.fromarray(arr).resize((256, 256), Image.BICUBIC))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="JPEG", quality=90)
    assert dist(D.phash(buf.getvalue()), h) <= D.DEFAULT_THRESHOLD  # larger JPEG of the same picture


def test_flip_is_found_through_the_mirror_hash(originals):
    for raw in originals[:200]:
        arr = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
        h, m = D.hash_image(raw)
        flipped = D.phash(arr[:, ::-1])
        assert dist(flipped, m) <= 1  # exact up to coefficients that are ~0 either way
    h = D.hash_images([originals[0], png(np.asarray(Image.open(io.BytesIO(originals[0])).convert("RGB"))[:, ::-1])])
    assert D.near_duplicates(h, threshold=1).remove.tolist() == [False, True]


def test_undecodable_images_raise_value_error():
    with pytest.raises(ValueError, match="could not decode image"):
        D.phash(b"not an image at all")
    with pytest.raises(ValueError, match="could not decode image"):
        D.hash_images([png(np.zeros((8, 8, 3), np.uint8))[:40]])  # truncated PNG
    with pytest.raises(ValueError, match="uint8"):
        D.phash(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        D.phash(np.zeros((8, 8, 2), np.uint8))
    with pytest.raises(ValueError, match="expected encoded image bytes"):
        D.phash("image.png")


# --------------------------------------------------------------------------- the search


def random_hashes(rng: np.random.Generator, n: int, threshold: int) -> np.ndarray:
    """Random hashes plus planted neighbours at distances around ``threshold``, direct and mirrored."""
    h = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64) << np.uint64(1)
    for i in rng.choice(n, n // 2, replace=False):
        j = rng.integers(n)
        flips = rng.choice(64, int(rng.integers(0, threshold + 3)), replace=False)
        h[i] = h[j] ^ np.uint64(sum(1 << int(b) for b in flips))
        if rng.random() < 0.3:
            h[i] ^= np.uint64(D.MIRROR_MASK)  # a flipped copy
    pairs = np.stack([h, h ^ np.uint64(D.MIRROR_MASK)], axis=1)
    odd = rng.random(n) < 0.1  # rows whose mirror column is not hash ^ MIRROR_MASK: the search must not assume it
    pairs[odd, 1] = rng.integers(0, 2**63, int(odd.sum()), dtype=np.int64).astype(np.uint64)
    return pairs


@pytest.mark.parametrize("threshold", [0, 1, 3, 5, 8])
def test_banded_search_equals_brute_force_under_every_plan(threshold, monkeypatch):
    rng = np.random.default_rng(threshold)
    hashes = random_hashes(rng, 1500, threshold)
    expected = brute_clusters(hashes, threshold)
    assert (expected != np.arange(len(hashes))).sum() > 100  # plenty of duplicates to find
    plans = {D._plan(len(hashes), len(hashes), threshold)} | {
        (m, threshold // m) for m in range(1, threshold + 2) if threshold // m <= 2 and 64 // m <= 32
    }
    for plan in sorted(plans):
        monkeypatch.setattr(D, "_plan", lambda *_, p=plan: p)
        res = D.near_duplicates(hashes, threshold)
        assert np.array_equal(res.cluster, expected), plan
        assert np.array_equal(res.remove, expected != np.arange(len(hashes)))
        assert res.num_clusters == sum(np.bincount(expected) >= 2)
        assert 0 < res.pairs_checked < len(hashes) ** 2


def test_planted_world_hashes_equal_brute_force(planted):
    hashes = planted[0]
    res = D.near_duplicates(hashes)
    assert np.array_equal(res.cluster, brute_clusters(hashes, D.DEFAULT_THRESHOLD))
    assert res.pairs_checked < len(hashes) ** 2 / 20


def test_keep_rule_is_smallest_order_then_index_and_deterministic():
    a, b = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    hashes = np.array([a, b, a ^ 1, a ^ 3, b, 77], np.uint64)  # clusters {0, 2, 3}, {1, 4}, {5}
    res = D.near_duplicates(hashes, threshold=2)
    assert res.cluster.tolist() == [0, 1, 0, 0, 1, 5]
    assert res.remove.tolist() == [False, False, True, True, True, False]
    assert res.num_clusters == 2
    res = D.near_duplicates(hashes, threshold=2, order=np.array([9, 5, 1, 1, 5, 0]))
    assert res.cluster.tolist() == [2, 1, 2, 2, 1, 5]  # order 1 twice: the smaller index wins; b's tie too
    rng = np.random.default_rng(0)
    hashes = random_hashes(rng, 800, 4)
    order = rng.permutation(len(hashes))
    res = D.near_duplicates(hashes, 4, order)
    assert np.array_equal(res.cluster, brute_clusters(hashes, 4, order))
    assert np.array_equal(D.near_duplicates(hashes, 4, order).cluster, res.cluster)
    perm = rng.permutation(len(hashes))  # the same samples in another order keep the same members
    again = D.near_duplicates(hashes[perm], 4, order[perm])
    assert set(np.nonzero(~res.remove)[0].tolist()) == set(perm[~again.remove].tolist())
    empty = D.near_duplicates(np.zeros((0, 2), np.uint64))
    assert empty.remove.shape == (0,) and empty.num_clusters == 0
    with pytest.raises(ValueError, match="order"):
        D.near_duplicates(hashes, 4, order[:3])
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        D.near_duplicates(np.zeros((3, 3), np.uint64))


def test_matches_reference_finds_copies_of_test_images(originals):
    rng = np.random.default_rng(1)
    ref_imgs, view_imgs = originals[:150], originals[150:600]
    copies = [
        D.transform_image(ref_imgs[i], k, rng) for i, k in zip(range(0, 150, 3), ["flip", "jpeg", "flip+jpeg"] * 50)
    ]
    view = D.hash_images(view_imgs + copies)
    ref = D.hash_images(ref_imgs)
    hit = D.matches_reference(view, ref)
    assert hit.shape == (len(view),) and hit.dtype == bool
    assert hit[len(view_imgs) :].mean() >= 0.95
    assert hit[: len(view_imgs)].mean() < 0.01
    assert np.array_equal(D.matches_reference(view[:, 0], ref[:, 0]), hit)  # plain hashes: mirrors derived
    exact = D.matches_reference(view, ref, threshold=0)
    assert exact[len(view_imgs) :: 3].all()  # plain flips are exact mirrors
    brute = np.array(
        [min(min(dist(v, r) for v in row for r in rr) for rr in ref) <= D.DEFAULT_THRESHOLD for row in view[:80]]
    )
    assert np.array_equal(hit[:80], brute)
    assert not D.matches_reference(view, np.zeros((0, 2), np.uint64)).any()
    assert D.matches_reference(np.zeros((0, 2), np.uint64), ref).shape == (0,)


# --------------------------------------------------------------------------- the requirement


def test_planted_flips_and_reencodes_found_with_few_false_removals(planted):
    """>= 95% of planted near-duplicates found, < 1% false removals (flips, JPEG re-encodes, both)."""
    hashes, twin, kind = planted
    res = D.near_duplicates(hashes)
    s = D.score_planted(res, twin, kind)
    per = s["recall_per_transform"]
    print(
        f"\nplanted {s['planted']} pairs in {s['originals']} originals: {per}, false removal "
        f"{s['false_removal']:.4f}, excess removal {s['excess_removal']:.4f}"
    )
    supported = [D.TRANSFORMS.index(k) for k in D.TRANSFORMS if "crop" not in k]
    first = np.nonzero((np.arange(len(twin)) < twin) & np.isin(kind, supported))[0]  # one index per planted pair
    assert (res.cluster[first] == res.cluster[twin[first]]).mean() >= 0.95
    assert min(per[D.TRANSFORMS[k]] for k in supported) >= 0.9
    assert s["false_removal"] < 0.01 and s["excess_removal"] < 0.01


@pytest.mark.xfail(
    strict=True,
    reason="5-10% crops of 32 px world images move the object by 2-3 px: a global 64-bit "
    "hash cannot tell them from other images of the same concept (bench/dedup_quality.py crop sweep)",
)
def test_planted_crops_found(planted):
    hashes, twin, kind = planted
    s = D.score_planted(D.near_duplicates(hashes), twin, kind)
    assert s["recall"] >= 0.95 and s["false_removal"] < 0.01
