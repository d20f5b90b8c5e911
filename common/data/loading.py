"""Loading a data set by name or path: the bundled HAPT recordings or a generic ``.npz``.

Kept apart from ``dataset.py`` (the format) so that the readers it calls
(``hapt.py``, ``transforms.py``), which build on the format, form no import
cycle with it; they are imported when a data set is loaded, since they need
``edgebind[sim]`` (scipy) and a node agent never loads one.
"""

from __future__ import annotations

from pathlib import Path

from common.data.dataset import WindowDataset


def load_dataset(name_or_path: str | Path, *, virtual: bool = True, **kwargs) -> WindowDataset:
    """``hapt`` for the bundled UCI HAPT recordings, else a path to a generic ``.npz``.

    With ``virtual`` the derived streams ``gravity`` and ``lin_acc`` are added
    wherever the dataset has ``acc`` at a known rate.
    """
    from common.data.transforms import add_virtual_streams

    if str(name_or_path).lower() == "hapt":
        from common.data.hapt import load_hapt

        ds = load_hapt(**kwargs)
    else:
        path = Path(name_or_path)
        if path.suffix != ".npz":
            raise ValueError(f"--dataset takes 'hapt' or a path to a .npz file, got {str(name_or_path)!r}")
        ds = WindowDataset.load(path)
    return add_virtual_streams(ds) if virtual else ds
