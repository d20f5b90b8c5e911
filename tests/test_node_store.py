"""NodeStore: one suite, run against SQLite in memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import node_agent.store as node_store
from node_agent.store import NodeStore, open_store, pack_array, unpack_array
from tests.store_suite import StoreSuite

SHA_A, SHA_B = "a" * 64, "b" * 64


def frame(t: int = 50, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(t, c)).astype(np.float32)


def add_stream(store: NodeStore, seqs: range | list[int], t: int = 50, sensor: str = "s1", rate: float = 50.0) -> None:
    for seq in seqs:
        store.add_frame(sensor, "acc", seq, 1_000_000_000 + seq * 1_000_000_000, frame(t, seed=seq), rate_hz=rate)


def snapshot(store: NodeStore, modality: str = "acc") -> tuple[list[str], np.ndarray, np.ndarray]:
    w = store.windows(modality)
    return w.ids, w.data, w.labels


class NodeStoreSuite(StoreSuite):
    """Behaviour every NodeStore backend must show. Subclasses say how to open one."""

    @pytest.fixture
    def store(self) -> NodeStore:
        return self.open()

    def reopen(self, store: NodeStore) -> NodeStore:
        if not self.reopenable:
            pytest.skip("an in-memory store does not outlive its handle")
        store.close()
        return self.open()

    # --- frames -------------------------------------------------------------------

    def test_a_repeated_frame_is_stored_once_and_keeps_its_data(self, store: NodeStore) -> None:
        x = frame(seed=1)
        assert store.add_frame("s1", "acc", 7, 123, x, rate_hz=50.0) is True
        assert store.add_frame("s1", "acc", 7, 999, x + 1) is False
        assert store.add_frame("s2", "acc", 7, 123, x) is True  # another sensor: another frame
        assert store.count_frames("acc") == 2
        got = [f for f in store.frames("acc") if f.sensor_id == "s1"]
        assert len(got) == 1 and got[0].timestamp_ns == 123 and got[0].rate_hz == 50.0
        np.testing.assert_array_equal(got[0].samples, x)
        assert got[0].samples.dtype == np.float32

    def test_frames_come_back_by_seq_and_since_seq(self, store: NodeStore) -> None:
        add_stream(store, [3, 1, 2, 0])
        assert [f.seq for f in store.frames("acc")] == [0, 1, 2, 3]
        assert [f.seq for f in store.frames("acc", since_seq=1)] == [2, 3]
        assert store.frames("gyro") == [] and store.count_frames("gyro") == 0

    def test_float32_samples_round_trip_bit_for_bit(self, store: NodeStore) -> None:
        f32 = np.finfo(np.float32)
        x = np.array([[0.0, -0.0, f32.tiny / 4], [f32.max, f32.min, 1 / 3]], dtype=np.float32)
        store.add_frame("s1", "acc", 0, 1, x)
        assert store.frames("acc")[0].samples.tobytes() == x.tobytes()

    def test_bad_frames_are_refused_by_name_and_change_nothing(self, store: NodeStore) -> None:
        add_stream(store, [0])
        good = {"sensor_id": "s1", "modality": "acc", "seq": 1, "timestamp_ns": 5, "samples": frame()}
        cases = [
            ({"samples": np.zeros(10, np.float32)}, "2 dimensions"),
            ({"samples": np.zeros((2, 5, 3), np.float32)}, "2 dimensions"),
            ({"samples": np.zeros((0, 3), np.float32)}, "non-empty"),
            ({"samples": np.array([[1.0, np.nan, 0.0]], np.float32)}, "NaN"),
            ({"samples": np.array([[1.0, np.inf, 0.0]], np.float32)}, "Inf"),
            ({"samples": np.array([["a", "b", "c"]])}, "numeric"),
            ({"samples": np.zeros((4, 2), np.float32)}, "channels"),
            ({"sensor_id": ""}, "sensor_id"),
            ({"modality": ""}, "modality"),
            ({"seq": -1}, "seq"),
            ({"seq": True}, "seq"),
            ({"seq": 1.5}, "seq"),
            ({"timestamp_ns": -5}, "timestamp_ns"),
            ({"rate_hz": float("nan")}, "rate_hz"),
        ]
        for bad, match in cases:
            with pytest.raises(ValueError, match=match):
                store.add_frame(**(good | bad))
        (only,) = store.frames("acc")
        assert only.seq == 0
        np.testing.assert_array_equal(only.samples, frame(seed=0))

    # --- windows ------------------------------------------------------------------

    def test_add_windows_inserts_only_new_ids(self, store: NodeStore) -> None:
        data = np.random.default_rng(0).normal(size=(3, 8, 2)).astype(np.float32)
        assert store.add_windows("gyro", ["a", "b", "c"], [1, 2, 3], data, labels=[0, -1, 4], subjects=[7, 7, 8]) == 3
        assert store.add_windows("gyro", ["c", "d"], [3, 4], data[:2] + 100, labels=[9, 9]) == 1
        assert store.count_windows("gyro") == 4
        ids, got, labels = store.windows("gyro")
        assert ids == ["a", "b", "c", "d"]
        np.testing.assert_array_equal(got[:3], data)  # "c" kept its first data and label
        np.testing.assert_array_equal(got[3], data[1] + 100)
        np.testing.assert_array_equal(labels, [0, -1, 4, 9])
        np.testing.assert_array_equal(store.window_subjects("gyro", ["c", "a", "d"]), [8, 7, -1])
        np.testing.assert_array_equal(store.window_starts("gyro", ["c", "a", "d"]), [3, 1, 4])
        with pytest.raises(ValueError, match="not stored"):
            store.window_subjects("gyro", ["a", "zzz"])

    def test_windows_by_ids_keep_the_order_asked_and_limit_takes_the_first(self, store: NodeStore) -> None:
        data = np.arange(4 * 2 * 1, dtype=np.float32).reshape(4, 2, 1)
        store.add_windows("gyro", ["w0", "w1", "w2", "w3"], [0, 1, 2, 3], data)
        ids, got, labels = store.windows("gyro", ids=["w2", "w0"])
        assert ids == ["w2", "w0"]
        np.testing.assert_array_equal(got, data[[2, 0]])
        np.testing.assert_array_equal(labels, [-1, -1])
        assert store.windows("gyro", limit=2).ids == ["w0", "w1"]
        empty = store.windows("gyro", ids=[])
        assert empty.ids == [] and len(empty.data) == 0
        assert store.windows("nothing").ids == []
        with pytest.raises(ValueError, match="not stored"):
            store.windows("gyro", ids=["w1", "nope"])
        with pytest.raises(ValueError, match="limit"):
            store.windows("gyro", limit=-1)

    def test_bad_windows_are_refused_by_name_and_change_nothing(self, store: NodeStore) -> None:
        store.add_windows("gyro", ["x"], [0], np.ones((1, 8, 2), np.float32), labels=[3])
        before = snapshot(store, "gyro")
        z = np.zeros((2, 8, 2), np.float32)
        cases = [
            ((["a", "b"], [0, 1], np.zeros((3, 8, 2), np.float32)), {}, "2 window ids for 3"),
            ((["a", "b"], [0], z), {}, "start_ns"),
            ((["a", "b"], [0, 1], z), {"labels": [1]}, "labels"),
            ((["a", "b"], [0, 1], z), {"labels": [0.5, 1.0]}, "labels must be integers"),
            ((["a", "b"], [0, 1], z), {"subjects": [1, 2, 3]}, "subjects"),
            ((["a", "b"], [0, 1], np.zeros((2, 8), np.float32)), {}, "3 dimensions"),
            ((["a", "b"], [0, 1], np.full((2, 8, 2), np.nan, np.float32)), {}, "NaN"),
            ((["a", "a"], [0, 1], z), {}, "duplicate"),
            ((["a", ""], [0, 1], z), {}, "window id"),
            ((["a", "b"], [0, 1], np.zeros((2, 9, 2), np.float32)), {}, r"\(T, C\)"),
            ((["x", "b"], [0, 1], np.zeros((2, 9, 2), np.float32)), {}, r"\(T, C\)"),
        ]
        for args, kwargs, match in cases:
            with pytest.raises(ValueError, match=match):
                store.add_windows("gyro", *args, **kwargs)
        after = snapshot(store, "gyro")
        assert after[0] == before[0] == ["x"]
        np.testing.assert_array_equal(after[1], before[1])
        np.testing.assert_array_equal(after[2], before[2])

    def test_modalities_lists_frames_and_windows(self, store: NodeStore) -> None:
        assert store.modalities() == []
        add_stream(store, [0])
        store.add_windows("gyro", ["g"], [0], np.zeros((1, 4, 3), np.float32))
        assert store.modalities() == ["acc", "gyro"]

    # --- cutting frames into windows -------------------------------------------------

    def test_cut_windows_slices_the_stream(self, store: NodeStore) -> None:
        add_stream(store, range(6))  # 300 samples
        assert store.cut_windows("acc", window=128, step=64) == 3
        ids, data, labels = store.windows("acc")
        stream = np.concatenate([frame(seed=s) for s in range(6)])
        assert ids == ["acc:s1:0:0", "acc:s1:0:64", "acc:s1:0:128"]
        for i, start in enumerate((0, 64, 128)):
            np.testing.assert_array_equal(data[i], stream[start : start + 128])
        np.testing.assert_array_equal(labels, [-1, -1, -1])

    @pytest.mark.parametrize(("rate", "offsets_ns"), [(50.0, [0, 280_000_000, 560_000_000]), (0.0, [0, 0, 0])])
    def test_cut_windows_dates_a_window_from_its_frame_and_rate(
        self, store: NodeStore, rate: float, offsets_ns: list[int]
    ) -> None:
        add_stream(store, range(6), rate=rate)  # frame k starts at (k + 1) s and holds 50 samples
        store.cut_windows("acc", window=128, step=64)
        ids = store.windows("acc").ids
        starts = store.window_starts("acc", ids)
        # windows start at samples 0, 64, 128: frame 0 + 0, frame 1 + 14, frame 2 + 28 samples
        np.testing.assert_array_equal(starts, np.array([1, 2, 3]) * 1_000_000_000 + np.array(offsets_ns))

    def test_cutting_again_adds_nothing(self, store: NodeStore) -> None:
        add_stream(store, range(6))
        first = store.cut_windows("acc")
        assert first > 0
        assert store.cut_windows("acc") == 0
        assert store.count_windows("acc") == first

    def test_cutting_frame_by_frame_equals_cutting_once(self, store: NodeStore) -> None:
        for seq in range(12):
            add_stream(store, [seq], t=37)
            store.cut_windows("acc", window=100, step=30)
        fresh = open_store("sqlite://")
        try:
            add_stream(fresh, range(12), t=37)
            fresh.cut_windows("acc", window=100, step=30)
            ids, data, _ = store.windows("acc")
            want_ids, want_data, _ = fresh.windows("acc")
            assert ids == want_ids and len(ids) == (12 * 37 - 100) // 30 + 1
            np.testing.assert_array_equal(data, want_data)
        finally:
            fresh.close()

    def test_a_gap_in_seq_starts_a_new_run(self, store: NodeStore) -> None:
        add_stream(store, [0, 1, 2, 5, 6, 7])  # 150 samples, a gap, 150 samples
        assert store.cut_windows("acc", window=100, step=50) == 4
        assert store.windows("acc").ids == ["acc:s1:0:0", "acc:s1:0:50", "acc:s1:5:0", "acc:s1:5:50"]
        add_stream(store, [3, 4])  # late frames behind the cut are not used
        add_stream(store, [8])
        assert store.cut_windows("acc", window=100, step=50) == 1
        assert store.windows("acc").ids[-1] == "acc:s1:5:100"

    def test_cutting_and_reading_in_small_blocks_gives_every_window_exactly(self, store: NodeStore, monkeypatch) -> None:
        """A backlog is cut, and read back, a block at a time: blocks of 2 frames give the same windows as one pass."""
        monkeypatch.setattr(node_store, "CUT_BLOCK", 2)
        seqs = [*range(0, 9), *range(12, 20)]  # a gap: two runs
        add_stream(store, seqs, t=30)
        assert store.cut_windows("acc", window=64, step=16) == 2 * ((9 * 30 - 64) // 16 + 1) - 1  # run 2: 8 frames
        ids, data, _ = store.windows("acc")
        runs = {0: np.concatenate([frame(30, seed=s) for s in range(0, 9)]), 12: np.concatenate([frame(30, seed=s) for s in range(12, 20)])}
        want = [(r, o) for r, x in runs.items() for o in range(0, len(x) - 64 + 1, 16)]
        assert ids == [f"acc:s1:{r}:{o}" for r, o in want]
        for i, (r, o) in enumerate(want):
            np.testing.assert_array_equal(data[i], runs[r][o : o + 64])
        asked = [ids[3], ids[0], ids[3]]  # any order, repeats allowed
        got = store.windows("acc", ids=asked)
        assert got.ids == asked
        np.testing.assert_array_equal(got.data, data[[3, 0, 3]])
        assert store.windows("acc", limit=3).ids == ids[:3]
        with pytest.raises(ValueError, match="not stored"):
            store.windows("acc", ids=[ids[0], "acc:s1:99:0"])

    def test_each_sensor_is_its_own_stream(self, store: NodeStore) -> None:
        add_stream(store, range(3), sensor="left")
        add_stream(store, range(3), sensor="right")
        assert store.cut_windows("acc", window=100, step=50) == 4
        assert sorted(store.windows("acc").ids) == [
            "acc:left:0:0", "acc:left:0:50", "acc:right:0:0", "acc:right:0:50"
        ]  # fmt: skip

    def test_cut_windows_resumes_after_a_restart(self, store: NodeStore) -> None:
        add_stream(store, range(5), t=40)
        store.cut_windows("acc", window=64, step=32)
        store = self.reopen(store)
        assert store.cut_windows("acc", window=64, step=32) == 0
        add_stream(store, range(5, 11), t=40)
        store.cut_windows("acc", window=64, step=32)
        ids, data, _ = store.windows("acc")
        stream = np.concatenate([frame(40, seed=s) for s in range(11)])
        starts = list(range(0, 11 * 40 - 64 + 1, 32))
        assert ids == [f"acc:s1:0:{o}" for o in starts]
        for i, o in enumerate(starts):
            np.testing.assert_array_equal(data[i], stream[o : o + 64])

    def test_cut_windows_refuses_a_changed_window_or_step(self, store: NodeStore) -> None:
        add_stream(store, range(4))
        n = store.cut_windows("acc", window=64, step=32)
        with pytest.raises(ValueError, match="window=64, step=32"):
            store.cut_windows("acc", window=128, step=64)
        with pytest.raises(ValueError, match="step"):
            store.cut_windows("acc", window=64, step=0)
        assert store.count_windows("acc") == n

    # --- upload ledger ------------------------------------------------------------------

    def test_upload_ledger_is_idempotent(self, store: NodeStore) -> None:
        assert store.uploaded("c1") == set()
        assert store.record_upload("c1", "b1", "acc", 10) is True
        assert store.record_upload("c1", "b1", "acc", 99) is False
        assert store.record_upload("c1", "b2", "gyro", 5) is True
        assert store.record_upload("c2", "b1", "acc", 1) is True
        assert store.uploaded("c1") == {"b1", "b2"}
        assert store.stats()["uploaded_windows"] == 16
        with pytest.raises(ValueError, match="n_windows"):
            store.record_upload("c1", "b3", "acc", -1)
        assert store.uploaded("c1") == {"b1", "b2"}

    # --- adapter versions ------------------------------------------------------------------

    def test_adapter_versions_only_move_forward(self, store: NodeStore) -> None:
        assert store.current_adapter("acc") is None
        store.record_adapter("acc", 1, "/adapters/acc-1.pb", SHA_A)
        store.record_adapter("acc", 3, Path("/adapters/acc-3.pb"), SHA_B)
        assert store.current_adapter("acc") == (3, "/adapters/acc-3.pb", SHA_B)
        for stale in (3, 2):
            with pytest.raises(ValueError, match="replayed or stale adapter"):
                store.record_adapter("acc", stale, "/evil", SHA_A)
        assert store.current_adapter("acc") == (3, "/adapters/acc-3.pb", SHA_B)
        store.record_adapter("gyro", 1, "/adapters/gyro-1.pb", SHA_A)  # per modality
        assert store.stats()["adapters"] == {"acc": 3, "gyro": 1}

    def test_bad_adapter_records_are_refused(self, store: NodeStore) -> None:
        cases = [(0, "/p", SHA_A, "version"), (1, "", SHA_A, "path"), (1, "/p", "abc", "sha256"),
                 (1, "/p", "A" * 64, "sha256")]  # fmt: skip
        for version, path, sha, match in cases:
            with pytest.raises(ValueError, match=match):
                store.record_adapter("acc", version, path, sha)
        assert store.current_adapter("acc") is None

    # --- the rest ---------------------------------------------------------------------------

    def test_stats_counts_what_is_stored(self, store: NodeStore) -> None:
        add_stream(store, range(3))
        store.add_windows("gyro", ["a", "b"], [0, 1], np.zeros((2, 4, 3), np.float32), labels=[1, -1])
        stats = store.stats()
        assert stats["frames"] == {"acc": 3}
        assert stats["windows"] == {"gyro": 2}
        assert stats["labelled_windows"] == {"gyro": 1}
        assert stats["uploads"] == 0 and stats["adapters"] == {}

    def test_data_outlives_the_handle(self, store: NodeStore) -> None:
        add_stream(store, range(3))
        store.record_upload("c1", "b1", "acc", 3)
        store = self.reopen(store)
        assert store.count_frames("acc") == 3 and store.uploaded("c1") == {"b1"}

    def test_concurrent_writers_all_land(self, store: NodeStore) -> None:
        stores = [store, self.open() if self.reopenable else store]
        errors: list[BaseException] = []

        def write(s: NodeStore, sensor: str) -> None:
            try:
                for seq in range(25):
                    s.add_frame(sensor, "acc", seq, seq + 1, frame(8, seed=seq))
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=write, args=(s, f"s{i}")) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert store.count_frames("acc") == 50


class TestSqliteMemory(NodeStoreSuite):
    reopenable = False

    def store_factory(self) -> NodeStore:
        return open_store("sqlite://")


class TestSqliteFile(NodeStoreSuite):
    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.path = tmp_path / "node" / "store.db"

    def store_factory(self) -> NodeStore:
        return open_store(self.path)


@pytest.mark.postgres
class TestPostgres(NodeStoreSuite):
    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> None:
        self.url = pg_url

    def store_factory(self) -> NodeStore:
        return open_store(self.url)


@pytest.mark.parametrize("dtype", ["float16", "float32", "int8", "int64", ">f4"])
def test_pack_array_round_trips_exactly(dtype: str) -> None:
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    b = unpack_array(*pack_array(a))
    assert b.dtype == a.dtype.newbyteorder("=") and b.shape == a.shape
    np.testing.assert_array_equal(b, a)
    b[0, 0, 0] = 1  # writable


def test_pack_array_refuses_other_dtypes() -> None:
    with pytest.raises(ValueError, match="dtype"):
        pack_array(np.zeros(3, dtype=complex))


def test_a_path_means_a_sqlite_file(tmp_path: Path) -> None:
    with open_store(str(tmp_path / "a.db")) as s:
        s.record_upload("c", "b", "acc", 1)
    with open_store(f"sqlite:///{tmp_path / 'a.db'}") as s:
        assert s.uploaded("c") == {"b"}


def test_store_files_and_state_directories_are_the_owners_alone(tmp_path):
    import os
    import stat

    from coordinator.store import open_store as open_coordinator_store
    from node_agent.state_dir import StateDir

    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    with open_store(tmp_path / "node" / "data" / "n1.db") as st:
        st.add_frame("s1", "acc", 0, 1, np.zeros((4, 3), np.float32), rate_hz=50.0)
    assert mode(tmp_path / "node") == mode(tmp_path / "node" / "data") == 0o700
    db_files = sorted((tmp_path / "node" / "data").iterdir())
    assert db_files and all(mode(p) == 0o600 for p in db_files), [(p.name, oct(mode(p))) for p in db_files]
    open_coordinator_store(str(tmp_path / "coord" / "c.db")).close()
    assert mode(tmp_path / "coord") == 0o700 and mode(tmp_path / "coord" / "c.db") == 0o600
    sd = StateDir(tmp_path / "state" / "n1")
    sd.remember_key("k", "ab" * 16)
    assert mode(tmp_path / "state") == mode(tmp_path / "state" / "n1") == 0o700 and mode(tmp_path / "state" / "n1" / "state.json") == 0o600
