"""Progress bars for long work; quiet when LST_EMBEDDINGS_QUIET=1 (tests) or not on a terminal log."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def progress(iterable: Iterable, **kwargs) -> tqdm:
    disable = os.environ.get("LST_EMBEDDINGS_QUIET") == "1"
    return tqdm(iterable, disable=disable, file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **kwargs)
