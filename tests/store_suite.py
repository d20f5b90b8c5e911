"""What the coordinator's and the node's store test suites share: opening a backend and closing every handle opened."""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

import pytest


class StoreSuite(abc.ABC):
    """Behaviour suites over store backends subclass this; a backend's subclass says how to open one."""

    reopenable = True  # False where closing the store loses the database (SQLite in memory)

    @abc.abstractmethod
    def store_factory(self) -> Any:
        """A new handle on this test's database (the same database each call, where reopenable)."""

    @pytest.fixture(autouse=True)
    def _close_opened(self) -> Iterator[None]:
        self.opened: list[Any] = []
        yield
        for s in self.opened:
            s.close()

    def open(self) -> Any:
        store = self.store_factory()
        self.opened.append(store)
        return store
