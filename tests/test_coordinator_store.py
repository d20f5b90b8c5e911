"""CoordinatorStore: one suite, run against SQLite in memory, a SQLite file and PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.store import CoordinatorStore, EmbeddingBatchRecord, open_store
from tests.store_suite import StoreSuite

CONFIG = {"plan": "acc>gyro", "bind": {"k": 5, "temperature": 0.07}, "modalities": ["acc", "gyro"]}


def sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def emb(n: int, d: int = 8, dtype: str = "float32", seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    return (x * 40).clip(-127, 127).astype(dtype) if dtype == "int8" else x.astype(dtype)


def wids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}:{i}" for i in range(n)]


def same_batch(a: EmbeddingBatchRecord | None, b: EmbeddingBatchRecord | None) -> bool:
    assert a is not None and b is not None
    return (
        a.window_ids == b.window_ids
        and a.embeddings.dtype == b.embeddings.dtype
        and np.array_equal(a.embeddings, b.embeddings)
        and np.array_equal(a.labels, b.labels)
        and a.encoder_version == b.encoder_version
    )


def in_threads(*jobs: Callable[[], Any]) -> list[Any]:
    """Run ``jobs`` at once; return their results, re-raising the first error."""
    results: list[Any] = [None] * len(jobs)
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = jobs[i]()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class CoordinatorStoreSuite(StoreSuite):
    """Behaviour every CoordinatorStore backend must show. Subclasses say how to open one."""

    def another_handle(self, store: CoordinatorStore) -> CoordinatorStore:
        """A second handle on the same database (its own connections where the backend allows)."""
        return self.open() if self.reopenable else store

    @pytest.fixture
    def store(self) -> CoordinatorStore:
        s = self.open()
        s.create_campaign("c1", CONFIG)
        return s

    # --- nodes --------------------------------------------------------------------

    def test_nodes_are_upserted_and_touched(self, store: CoordinatorStore) -> None:
        store.upsert_node("pi-2", {"acc": {"channels": 3, "rate_hz": 50.0}}, "rpi4", last_seen_ns=100)
        store.upsert_node("pi-1", {"gyro": {"channels": 3}}, last_seen_ns=50)
        store.upsert_node("pi-2", {"acc": {"channels": 3}, "gyro": {"channels": 3}}, "rpi5", last_seen_ns=200)
        nodes = store.nodes()
        assert [n.node_id for n in nodes] == ["pi-1", "pi-2"]
        assert nodes[1].modalities == {"acc": {"channels": 3}, "gyro": {"channels": 3}}
        assert (nodes[1].hardware, nodes[1].first_seen_ns, nodes[1].last_seen_ns) == ("rpi5", 100, 200)
        store.touch_node("pi-1", last_seen_ns=70)
        store.touch_node("pi-1", last_seen_ns=60)  # never backwards
        nodes = store.nodes()
        assert nodes[0].last_seen_ns == 70
        with pytest.raises(ValueError, match="unknown node"):
            store.touch_node("pi-9")
        for modalities, match in [([], "dict"), ({"acc": 3}, "spec must be a dict"), ({"": {}}, "modality name"),
                                  ({"acc": {"x": float("nan")}}, "JSON")]:  # fmt: skip
            with pytest.raises(ValueError, match=match):
                store.upsert_node("pi-1", modalities)
        assert store.nodes() == nodes

    def test_node_status_reports_what_the_registry_needs(self, store: CoordinatorStore) -> None:
        assert store.node_status("pi-1") is None
        store.upsert_node("pi-1", {"acc": {}, "gyro": {}}, "jetson", last_seen_ns=10)
        store.add_embedding_batch("pi-1", "c1", "b0", "acc", wids("a", 3), emb(3))
        store.add_embedding_batch("pi-1", "c1", "b1", "gyro", wids("g", 2), emb(2))
        store.report_node_status("pi-1", "serving", {"acc": 4}, last_seen_ns=20)
        status = store.node_status("pi-1")
        assert status is not None
        assert (status.state, status.adapter_versions, status.windows_uploaded) == ("serving", {"acc": 4}, 5)
        assert (status.last_seen_ns, status.modalities, status.hardware) == (20, ["acc", "gyro"], "jetson")
        with pytest.raises(ValueError, match="unknown node"):
            store.report_node_status("pi-9", "serving", {})
        with pytest.raises(ValueError, match="adapter version"):
            store.report_node_status("pi-1", "broken", {"acc": -1})
        assert store.node_status("pi-1") == status

    # --- campaigns ------------------------------------------------------------------

    def test_creating_a_campaign_again_is_a_no_op_unless_the_config_differs(self, store: CoordinatorStore) -> None:
        store.set_campaign_state("c1", "collect", "3 of 5 nodes")
        store.create_campaign("c1", dict(reversed(list(CONFIG.items()))))  # same config, other key order
        with pytest.raises(ValueError, match="different config"):
            store.create_campaign("c1", CONFIG | {"plan": "gyro>acc"})
        c = store.campaign("c1")
        assert c is not None and c.config == CONFIG and (c.state, c.detail) == ("collect", "3 of 5 nodes")
        assert store.campaign("c2") is None

    def test_campaign_state_needs_a_known_campaign_and_a_state(self, store: CoordinatorStore) -> None:
        with pytest.raises(ValueError, match="unknown campaign"):
            store.set_campaign_state("nope", "bind")
        with pytest.raises(ValueError, match="state"):
            store.set_campaign_state("c1", "")
        for config, match in [([1, 2], "dict"), ({"lr": float("nan")}, "JSON"), ({"f": object()}, "JSON")]:
            with pytest.raises(ValueError, match=match):
                store.create_campaign("c2", config)
        assert store.campaign("c1").state == "created" and store.campaign("c2") is None  # type: ignore[union-attr]

    # --- embeddings ---------------------------------------------------------------------

    @pytest.mark.parametrize("dtype", ["float16", "float32", "int8"])
    def test_embedding_batches_round_trip_exactly(self, store: CoordinatorStore, dtype: str) -> None:
        x = emb(5, 16, dtype)
        scales = np.linspace(0.01, 0.2, 16, dtype=np.float32) if dtype == "int8" else None
        assert store.add_embedding_batch(
            "n1", "c1", "b1", "acc", wids("w", 5), x, labels=[0, -1, 2, 2, 1], subjects=[4, 4, 5, 5, 6],
            encoder_version="enc-3", scales=scales, timestamps_ns=[10, 20, 30, 40, 50],
        )  # fmt: skip
        got = store.embedding_batch("n1", "c1", "b1")
        assert got is not None and got.embeddings.dtype == np.dtype(dtype)
        assert got.embeddings.tobytes() == x.tobytes()
        want = x.astype(np.float32) * scales if scales is not None else x.astype(np.float32)
        if scales is not None:
            assert got.scales is not None and got.scales.tobytes() == scales.tobytes()
        e = store.embeddings("c1", "acc")
        assert e.x.dtype == np.float32 and e.x.tobytes() == want.tobytes()
        np.testing.assert_array_equal(e.labels, [0, -1, 2, 2, 1])
        np.testing.assert_array_equal(e.subjects, [4, 4, 5, 5, 6])
        np.testing.assert_array_equal(e.timestamps_ns, [10, 20, 30, 40, 50])
        assert got.encoder_version == "enc-3"

    def test_a_repeated_batch_is_stored_once_and_keeps_its_data(self, store: CoordinatorStore) -> None:
        assert store.add_embedding_batch("n1", "c1", "b1", "acc", wids("w", 4), emb(4), labels=[1, 1, 1, 1]) is True
        first = store.embedding_batch("n1", "c1", "b1")
        again = store.add_embedding_batch("n1", "c1", "b1", "acc", wids("w", 4), emb(4, seed=9), encoder_version="x")
        assert again is False
        assert store.add_embedding_batch("n1", "c1", "b1", "gyro", wids("v", 2), emb(2)) is False  # same key
        assert same_batch(store.embedding_batch("n1", "c1", "b1"), first)
        assert len(store.embeddings("c1", "acc")) == 4 and len(store.embeddings("c1", "gyro")) == 0
        # the key is (node, campaign, batch id): other nodes may reuse the batch id
        assert store.add_embedding_batch("n2", "c1", "b1", "acc", wids("w", 4), emb(4)) is True
        # what a node stored, counted by group and modality (its upload quota reads it): the repeat counts once
        store.add_embedding_batch("n1", "c1", "b2", "acc", wids("u", 3), emb(3), group="lab")
        store.add_embedding_batch("n1", "c1", "b3", "gyro", wids("u", 2), emb(2), group="lab")
        assert store.stored_rows("c1", "n1") == {("", "acc"): 4, ("lab", "acc"): 3, ("lab", "gyro"): 2}
        assert store.stored_rows("c1", "n9") == {}

    def test_embeddings_concatenate_in_a_fixed_order(self, store: CoordinatorStore) -> None:
        for node, batch, n in [("n2", "b1", 2), ("n1", "b2", 3), ("n2", "b0", 1), ("n1", "b1", 2)]:
            store.add_embedding_batch(node, "c1", batch, "acc", wids(f"{node}{batch}", n), emb(n, seed=n),
                                      labels=None if node == "n1" else [3] * n)  # fmt: skip
        e = store.embeddings("c1", "acc")
        assert list(e.node_ids) == ["n1"] * 5 + ["n2"] * 3
        assert list(e.window_ids) == wids("n1b1", 2) + wids("n1b2", 3) + wids("n2b0", 1) + wids("n2b1", 2)
        np.testing.assert_array_equal(e.x[:2], emb(2, seed=2))
        np.testing.assert_array_equal(e.labels, [-1] * 5 + [3] * 3)
        np.testing.assert_array_equal(e.subjects, [-1] * 8)
        only = store.embeddings("c1", "acc", node_ids=["n2"])
        assert list(only.window_ids) == wids("n2b0", 1) + wids("n2b1", 2)
        none = store.embeddings("c1", "gyro")
        assert len(none) == 0 and none.x.shape == (0, 0)

    def test_bad_batches_are_refused_by_name_and_change_nothing(self, store: CoordinatorStore) -> None:
        store.add_embedding_batch("n1", "c1", "b1", "acc", wids("w", 3), emb(3))
        before = store.embeddings("c1", "acc")
        nan, inf = emb(3), emb(3)
        nan[1, 2], inf[0, 0] = np.nan, np.inf
        good: dict[str, Any] = {"node_id": "n2", "campaign_id": "c1", "batch_id": "b9", "modality": "acc",
                                "window_ids": wids("v", 3), "embeddings": emb(3)}  # fmt: skip
        cases = [
            ({"embeddings": nan}, "NaN"),
            ({"embeddings": inf}, "Inf"),
            ({"embeddings": emb(3, dtype="float16") * np.float16(np.inf)}, "Inf"),
            ({"embeddings": emb(3).reshape(3, 2, 4)}, r"\(rows, dim\)"),
            ({"embeddings": emb(3)[0]}, r"\(rows, dim\)"),
            ({"embeddings": emb(3, dtype="float64")}, "dtype"),
            ({"embeddings": emb(3, dtype="int8")}, "scales"),
            ({"embeddings": emb(3, dtype="int8"), "scales": np.ones(3, np.float32)}, "8 scales"),
            ({"embeddings": emb(3, dtype="int8"), "scales": -np.ones(8, np.float32)}, "non-negative"),
            ({"scales": np.ones(8, np.float32)}, "take none"),
            ({"embeddings": emb(3, d=4)}, "dim 4"),
            ({"window_ids": wids("v", 2)}, "2 window ids for 3 rows"),
            ({"window_ids": ["v", "v", "u"]}, "duplicate"),
            ({"window_ids": "vvv"}, "not one string"),
            ({"labels": [0, 1]}, "labels"),
            ({"labels": [0, 1, -2]}, "labels"),
            ({"subjects": [1, 2, 3, 4]}, "subjects"),
            ({"timestamps_ns": [1, 2, -3]}, "timestamps_ns"),
            ({"node_id": ""}, "node_id"),
            ({"campaign_id": "nope"}, "unknown campaign"),
        ]
        for bad, match in cases:
            with pytest.raises(ValueError, match=match):
                store.add_embedding_batch(**(good | bad))
        after = store.embeddings("c1", "acc")
        assert list(after.window_ids) == list(before.window_ids) and after.x.tobytes() == before.x.tobytes()
        assert store.embedding_batch("n2", "c1", "b9") is None

    def test_concurrent_writers_store_every_batch(self, store: CoordinatorStore) -> None:
        other = self.another_handle(store)

        def upload(s: CoordinatorStore, node: str) -> None:
            for b in range(20):
                assert s.add_embedding_batch(node, "c1", f"b{b}", "acc", wids(f"{node}-{b}", 4), emb(4, seed=b))

        in_threads(lambda: upload(store, "n1"), lambda: upload(other, "n2"))
        e = store.embeddings("c1", "acc")
        assert len(e) == 2 * 20 * 4 and len(set(e.window_ids)) == len(e)
        assert store.node_status("n1") is None  # uploads do not register nodes

    # --- pairs -------------------------------------------------------------------------

    def test_pairs_are_stored_once_in_the_order_added(self, store: CoordinatorStore) -> None:
        src = (["n1", "n1", "n2"], ["a", "b", "c"])
        dst = (["n3", "n3", "n3"], ["x", "y", "z"])
        assert store.add_pairs("c1", "acc>gyro", *src, *dst, [0.9, 0.8, 0.7], [1.0, 0.5, 0.25]) == 3
        assert store.add_pairs("c1", "acc>gyro", ["n2", "n9"], ["c", "d"], ["n3", "n3"], ["z", "w"],
                               np.array([0.1, 0.6], np.float32), np.array([9.0, 0.5])) == 1  # fmt: skip
        p = store.pairs("c1", "acc>gyro")
        assert list(p.src_window_ids) == ["a", "b", "c", "d"] and list(p.dst_node_ids) == ["n3"] * 4
        np.testing.assert_array_equal(p.similarity[:3], [0.9, 0.8, 0.7])  # "c" kept its first values
        np.testing.assert_array_equal(p.weight, [1.0, 0.5, 0.25, 0.5])
        assert len(store.pairs("c1", "other stage")) == 0
        assert store.add_pairs("c1", "other stage", *src, *dst, [0.0] * 3, [1.0] * 3) == 3  # stages are separate

    def test_bad_pairs_are_refused_by_name_and_change_nothing(self, store: CoordinatorStore) -> None:
        store.add_pairs("c1", "s", ["n1"], ["a"], ["n2"], ["b"], [0.5], [1.0])
        good: dict[str, Any] = {
            "campaign_id": "c1", "stage_name": "s", "src_node_ids": ["n1", "n1"], "src_window_ids": ["c", "d"],
            "dst_node_ids": ["n2", "n2"], "dst_window_ids": ["e", "f"], "similarity": [0.1, 0.2], "weight": [1.0, 1.0],
        }  # fmt: skip
        cases = [
            ({"src_window_ids": ["c"]}, "src_window_ids"),
            ({"dst_node_ids": ["n2", "n2", "n2"]}, "dst_node_ids"),
            ({"similarity": [0.1]}, "similarity"),
            ({"similarity": [0.1, float("nan")]}, "similarity"),
            ({"weight": [1.0, -0.5]}, "non-negative"),
            ({"weight": [[1.0, 1.0]]}, "weight"),
            ({"dst_window_ids": ["e", ""]}, "dst_window_ids"),
            ({"src_window_ids": ["c", "c"], "dst_window_ids": ["e", "e"]}, "twice"),
            ({"stage_name": ""}, "stage_name"),
            ({"campaign_id": "nope"}, "unknown campaign"),
        ]
        for bad, match in cases:
            with pytest.raises(ValueError, match=match):
                store.add_pairs(**(good | bad))
        assert list(store.pairs("c1", "s").src_window_ids) == ["a"]

    # --- stages --------------------------------------------------------------------------

    def test_stages_are_recorded_and_updated_by_index(self, store: CoordinatorStore) -> None:
        store.record_stage("c1", 1, "gyro", "running", {"loss": 2.0})
        store.record_stage("c1", 0, "acc", "done", {"loss": 0.5, "weights": {"acc": 1.0}}, Path("/ck/0.pt"))
        store.record_stage("c1", 1, "gyro", "done", {"loss": 0.7}, "/ck/1.pt")
        stages = store.stages("c1")
        assert [(s.index, s.name, s.status, s.checkpoint_path) for s in stages] == [
            (0, "acc", "done", "/ck/0.pt"), (1, "gyro", "done", "/ck/1.pt")
        ]  # fmt: skip
        assert stages[0].metrics == {"loss": 0.5, "weights": {"acc": 1.0}}
        for args, match in [((1, "acc", "done"), "is 'gyro'"), ((-1, "x", "done"), "index"), ((2, "x", ""), "status")]:
            with pytest.raises(ValueError, match=match):
                store.record_stage("c1", *args)
        with pytest.raises(ValueError, match="JSON"):
            store.record_stage("c1", 1, "gyro", "failed", {"loss": float("nan")})
        with pytest.raises(ValueError, match="unknown campaign"):
            store.record_stage("nope", 0, "acc", "done")
        assert store.stages("c1") == stages

    # --- adapter versions ---------------------------------------------------------------------

    def test_adapter_versions_are_monotone_and_replays_are_refused(self, store: CoordinatorStore) -> None:
        assert store.latest_adapter("acc") is None
        assert [store.next_adapter_version("acc") for _ in range(3)] == [1, 2, 3]
        assert store.next_adapter_version("gyro") == 1  # per modality
        store.record_adapter_version("acc", 3, "c1", b"bundle-3", sha(b"bundle-3"))
        for stale in (3, 2):
            with pytest.raises(ValueError, match="replayed or stale adapter"):
                store.record_adapter_version("acc", stale, "c1", b"evil", sha(b"evil"))
        store.record_adapter_version("acc", 7, "c1", b"bundle-7", sha(b"bundle-7"))  # recorded without asking
        assert store.next_adapter_version("acc") == 8  # above everything recorded
        assert store.latest_adapter("acc") == (7, b"bundle-7")
        store = self.another_handle(store)
        assert store.next_adapter_version("acc") == 9

    def test_bad_adapter_versions_are_refused_and_change_nothing(self, store: CoordinatorStore) -> None:
        store.record_adapter_version("acc", 1, "c1", b"one", sha(b"one"))
        cases = [
            ((2, "c1", b"two", sha(b"other")), "does not match"),
            ((2, "c1", b"two", "xyz"), "sha256"),
            ((2, "c1", b"", sha(b"")), "non-empty bytes"),
            ((2, "c1", "two", sha(b"two")), "bytes"),
            ((0, "c1", b"two", sha(b"two")), "version"),
            ((2, "nope", b"two", sha(b"two")), "unknown campaign"),
        ]
        for args, match in cases:
            with pytest.raises(ValueError, match=match):
                store.record_adapter_version("acc", *args)
        assert store.latest_adapter("acc") == (1, b"one")

    def test_concurrent_version_requests_never_share_a_number(self, store: CoordinatorStore) -> None:
        other = self.another_handle(store)
        got = in_threads(*[lambda s=s: [s.next_adapter_version("acc") for _ in range(10)] for s in (store, other)])
        assert sorted(got[0] + got[1]) == list(range(1, 21))

    # --- metrics ---------------------------------------------------------------------------------

    def test_metrics_are_recorded_and_a_repeat_replaces(self, store: CoordinatorStore) -> None:
        store.record_metric("c1", "n2", "accuracy", 0.8, subset="acc+gyro")
        store.record_metric("c1", "n1", "accuracy", 0.7, subset="acc")
        store.record_metric("c1", "n1", "accuracy", 0.75, subset="acc")
        store.record_metric("c1", "", "bind_pairs", 1200)
        got = [(m.node_id, m.name, m.subset, m.value) for m in store.metrics("c1")]
        assert got == [
            ("", "bind_pairs", "", 1200.0), ("n1", "accuracy", "acc", 0.75), ("n2", "accuracy", "acc+gyro", 0.8)
        ]  # fmt: skip
        for value, match in [(float("nan"), "finite"), (float("inf"), "finite"), ("0.9", "number"), (True, "number")]:
            with pytest.raises(ValueError, match=match):
                store.record_metric("c1", "n1", "accuracy", value, subset="acc")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="unknown campaign"):
            store.record_metric("nope", "n1", "accuracy", 0.5)
        assert [(m.node_id, m.name, m.subset, m.value) for m in store.metrics("c1")] == got

    # --- persistence ------------------------------------------------------------------------------

    def test_everything_outlives_the_handle(self, store: CoordinatorStore) -> None:
        if not self.reopenable:
            pytest.skip("an in-memory store does not outlive its handle")
        store.add_embedding_batch("n1", "c1", "b1", "acc", wids("w", 2), emb(2, dtype="float16"))
        store.record_adapter_version("acc", store.next_adapter_version("acc"), "c1", b"b", sha(b"b"))
        store.close()
        again = self.open()
        assert again.campaign("c1").config == CONFIG  # type: ignore[union-attr]
        assert again.embedding_batch("n1", "c1", "b1").embeddings.dtype == np.float16  # type: ignore[union-attr]
        assert again.latest_adapter("acc") == (1, b"b")
        assert again.add_embedding_batch("n1", "c1", "b1", "acc", wids("w", 2), emb(2)) is False


class TestSqliteMemory(CoordinatorStoreSuite):
    reopenable = False

    def store_factory(self) -> CoordinatorStore:
        return open_store("sqlite://")


class TestSqliteFile(CoordinatorStoreSuite):
    @pytest.fixture(autouse=True)
    def _database(self, tmp_path: Path) -> None:
        self.path = tmp_path / "coordinator.db"

    def store_factory(self) -> CoordinatorStore:
        return open_store(self.path)


@pytest.mark.postgres
class TestPostgres(CoordinatorStoreSuite):
    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> None:
        self.url = pg_url

    def store_factory(self) -> CoordinatorStore:
        return open_store(self.url)


def test_postgresql_urls_mean_psycopg_3() -> None:
    from coordinator.store import _engine_for

    engine, memory = _engine_for("postgresql://u@127.0.0.1:1/db")
    assert engine.dialect.driver == "psycopg" and not memory
    engine.dispose()
