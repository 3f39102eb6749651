"""Progress bars for long work; quiet when LST_EMBEDDINGS_QUIET=1 (tests) or not on a terminal log."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def quiet() -> bool:
    return os.environ.get("LST_EMBEDDINGS_QUIET") == "1"


def note(line: str) -> None:
    """A one-line summary of finished work on stderr (beside the bars); nothing when quiet."""
    if not quiet():
        tqdm.write(line, file=sys.stderr)


def progress(iterable: Iterable, **kwargs) -> tqdm:
    disable = quiet()
    interval = 0.5 if sys.stderr.isatty() else 15.0  # keep logs short when not on a terminal
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, mininterval=interval, **kwargs)
