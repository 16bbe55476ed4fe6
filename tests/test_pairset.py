"""The pair format: manifest, streaming gather, and detection of corrupt or mismatched files."""
import json

import numpy as np
import pytest

from kdm.pairset import PairSetError, gather, open_pairset, write_pairset


def make(path, start, n, meta=None, dim=2):
    rng = np.random.default_rng(start)
    arrays = {"x0": rng.standard_normal((n, dim)).astype(np.float32),
              "xT": rng.standard_normal((n, dim)).astype(np.float32),
              "seeds": np.arange(start, start + n, dtype=np.int64)}
    write_pairset(path, arrays, meta or {"teacher": {"sha256": "abc"}, "sampler": {"steps": 18}})
    return arrays


def test_roundtrip_and_manifest(tmp_path):
    arrays = make(tmp_path / "a", 10, 7)
    ps = open_pairset(tmp_path / "a")
    assert len(ps) == 7 and ps.manifest["seed_range"] == [10, 17]
    assert ps.manifest["arrays"]["x0"]["shape"] == [7, 2] and ps.manifest["arrays"]["seeds"]["dtype"] == "int64"
    assert isinstance(ps["x0"], np.memmap)
    np.testing.assert_array_equal(ps["xT"], arrays["xT"])
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_gather_concatenates_in_order_and_is_deterministic(tmp_path):
    a, b = make(tmp_path / "s0", 0, 5), make(tmp_path / "s1", 5, 3)
    store = gather([tmp_path / "s0", tmp_path / "s1"], tmp_path / "store")
    np.testing.assert_array_equal(store["x0"], np.concatenate([a["x0"], b["x0"]]))
    assert store.manifest["seed_range"] == [0, 8]
    gather([tmp_path / "s0", tmp_path / "s1"], tmp_path / "again")
    for f in ("x0.npy", "xT.npy", "seeds.npy", "manifest.json"):
        assert (tmp_path / "store" / f).read_bytes() == (tmp_path / "again" / f).read_bytes()


def test_gather_refuses_mismatched_or_gapped_shards(tmp_path):
    make(tmp_path / "s0", 0, 5)
    make(tmp_path / "other", 5, 5, meta={"teacher": {"sha256": "zzz"}, "sampler": {"steps": 18}})
    with pytest.raises(PairSetError, match=r"other.*meta differs.*teacher"):
        gather([tmp_path / "s0", tmp_path / "other"], tmp_path / "store")
    make(tmp_path / "gap", 6, 5)
    with pytest.raises(PairSetError, match="seeds start at 6, expected 5"):
        gather([tmp_path / "s0", tmp_path / "gap"], tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_corruption_is_detected_and_named(tmp_path):
    make(tmp_path / "a", 0, 400_000)                  # 3.2 MB arrays: larger than the fast check's two ends
    x0 = tmp_path / "a" / "x0.npy"
    raw = bytearray(x0.read_bytes())
    raw[len(raw) // 2] ^= 0xFF                        # flip bits in the middle, size unchanged
    x0.write_bytes(bytes(raw))
    open_pairset(tmp_path / "a", check="fast")        # the fast check does not read the middle ...
    with pytest.raises(PairSetError, match=r"x0.npy: sha256 differs"):
        open_pairset(tmp_path / "a", check="full")    # ... the full one does
    raw[-3] ^= 0xFF                                   # near the end: the fast check sees it
    x0.write_bytes(bytes(raw))
    with pytest.raises(PairSetError, match=r"x0.npy: the hash of its first/last MiB differs"):
        open_pairset(tmp_path / "a", check="fast")
    x0.write_bytes(bytes(raw[:-16]))                  # truncated
    with pytest.raises(PairSetError, match=r"x0.npy: \d+ bytes, manifest says"):
        open_pairset(tmp_path / "a", check="fast")


def test_full_check_on_demand_from_the_environment(tmp_path, monkeypatch):
    make(tmp_path / "a", 0, 400_000)
    raw = bytearray((tmp_path / "a" / "xT.npy").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / "a" / "xT.npy").write_bytes(bytes(raw))
    open_pairset(tmp_path / "a")
    monkeypatch.setenv("KDM_VERIFY", "full")
    with pytest.raises(PairSetError, match="xT.npy: sha256 differs"):
        open_pairset(tmp_path / "a")
    monkeypatch.setenv("KDM_VERIFY", "everything")
    with pytest.raises(ValueError, match="KDM_VERIFY='everything'"):
        open_pairset(tmp_path / "a")


def test_missing_or_corrupt_manifest(tmp_path):
    with pytest.raises(PairSetError, match="manifest.json: missing"):
        open_pairset(tmp_path / "nothing")
    make(tmp_path / "a", 0, 4)
    (tmp_path / "a" / "manifest.json").write_text("{not json")
    with pytest.raises(PairSetError, match="corrupt manifest"):
        open_pairset(tmp_path / "a")


def test_expected_meta_mismatch_names_the_key(tmp_path):
    make(tmp_path / "a", 0, 4)
    with pytest.raises(PairSetError, match=r"meta.sampler is \{'steps': 18\}, expected \{'steps': 40\}"):
        open_pairset(tmp_path / "a", expect_meta={"sampler": {"steps": 40}})


def test_wrong_shape_against_manifest(tmp_path):
    make(tmp_path / "a", 0, 4)
    np.save(tmp_path / "a" / "xT.npy", np.zeros((4, 3), np.float32))   # 3-D points where 2-D were written
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest["arrays"]["xT"]["bytes"] = (tmp_path / "a" / "xT.npy").stat().st_size
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PairSetError, match=r"xT.npy: .*shape.*\[4, 3\].*manifest says shape \[4, 2\]"):
        open_pairset(tmp_path / "a", check="fast")


def test_manifest_missing_entry_keys_is_a_clear_error(tmp_path):
    make(tmp_path / "a", 0, 4)
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    del m["arrays"]["x0"]["bytes"]
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PairSetError, match=r"corrupt manifest .*arrays.x0 lacks \['bytes'\]"):
        open_pairset(tmp_path / "a")


def test_stale_temporaries_of_killed_writers_are_removed(tmp_path):
    import subprocess
    import sys
    from kdm.io import write_json
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.json.tmp-{int(dead.stdout)}"
    stale.mkdir()
    (stale / "x0.npy").write_bytes(b"half written")
    write_json(tmp_path / "out.json", {"a": 1})
    assert not stale.exists() and json.loads((tmp_path / "out.json").read_text()) == {"a": 1}
