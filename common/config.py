"""TOML settings shipped with edgebind (scenarios, growth plans) or given by path."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path


def shipped(folder: str) -> list[str]:
    """Names of the ``.toml`` files shipped in ``simulations/<folder>``."""
    root = resources.files("simulations") / folder
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_toml(folder: str, what: str, name_or_path: str | Path) -> tuple[dict, str]:
    """A shipped ``<what>`` by name (from ``simulations/<folder>``) or a ``.toml`` file by path; returns (table, name)."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.exists():
            raise FileNotFoundError(f"{what} file {path} does not exist")
        return tomllib.loads(path.read_text()), path.stem
    name = str(name_or_path)
    res = resources.files("simulations") / folder / f"{name}.toml"
    if not res.is_file():
        raise ValueError(f"no shipped {what} {name!r}; shipped: {', '.join(shipped(folder)) or 'none'}")
    return tomllib.loads(res.read_text()), name
