"""Every file the product writes goes through :func:`write_atomic`: a temporary file in the target folder,
then one rename. A crash or an error leaves the old file (or none), never a partial one.

Also the one place that says how a timestamp becomes UTC (:func:`utc`) and how run content is hashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from embeddings.errors import InputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: the product's files follow the umask, as open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str))


def write_parquet(df: pd.DataFrame | Iterable[pd.DataFrame], path: str | os.PathLike) -> Path:
    """One Parquet file from a frame, or from frames of one schema streamed one at a time (a row group or more
    each, so a table larger than memory can be written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(df, pd.DataFrame):
        return write_atomic(path, lambda tmp: pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp))

    def write(tmp: str) -> None:
        writer = None
        try:
            for part in df:
                table = pa.Table.from_pandas(part, preserve_index=False, schema=writer and writer.schema)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{path}: nothing to write")

    return write_atomic(path, write)


def write_parquet_partitioned(df: pd.DataFrame | Iterable[pd.DataFrame], path: str | os.PathLike, by: str) -> Path:
    """``df`` as a folder of hive partitions (``path/by=value/part-N.parquet``, N = which frame of ``df`` when it is
    several), as Spark writes one. Written into a temporary folder beside ``path`` and renamed onto it, so a reader
    never sees half of it."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        for i, frame in enumerate([df] if isinstance(df, pd.DataFrame) else df):
            for value, part in frame.groupby(by, sort=True):
                write_parquet(part.drop(columns=by), tmp / f"{by}={value}" / f"part-{i}.parquet")
        old = path.with_name(f".{path.name}.old") if path.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_torch(obj: dict, path: str | os.PathLike) -> Path:
    import errno

    import torch

    def save(tmp: str) -> None:
        try:
            torch.save(obj, tmp)
        except RuntimeError as exc:  # torch's writer reports a full disk as "unexpected pos ..."
            reason = f"could not write a checkpoint (disk full?): {str(exc).splitlines()[0]}"
            raise OSError(errno.EIO, reason, str(path)) from exc

    return write_atomic(path, save)


def save_figure(fig, path: str | os.PathLike) -> Path:
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def utc(value) -> pd.Timestamp:
    """A timestamp in UTC; a naive one is read as UTC."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def kill_point(name: str) -> None:
    """Fault injection for crash tests: ``LST_EMBEDDINGS_KILL_AT=name`` ends the process here with SIGKILL;
    ``LST_EMBEDDINGS_STOP_AT=name`` pauses it here (SIGSTOP) until a SIGCONT."""
    if os.environ.get("LST_EMBEDDINGS_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get("LST_EMBEDDINGS_STOP_AT") == name:
        os.kill(os.getpid(), signal.SIGSTOP)


def file_digest(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """sha256 of a file, or of a folder's files (their relative paths and contents, in path order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with open(file, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def _calls_code(path: Path) -> bool:
    """Whether the pickle in ``path`` (a bare pickle or torch's zip) names functions or classes to call: read
    opcode by opcode, nothing executed. Random bytes are not a pickle at all."""
    import pickletools
    import zipfile

    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith(".pkl")]
            data = archive.read(pickles[0]) if pickles else b""
    try:
        ops = [op.name for op, _, _ in pickletools.genops(data)]  # the whole stream: random bytes fail somewhere
    except Exception:  # not a pickle
        return False
    return any(name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ") for name in ops)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint without executing anything it contains."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or _calls_code(path):  # weights_only refused it: never retried without it
            raise InputError(f"{path}: refused, the file holds objects that would run code when loaded") from exc
        raise InputError(f"{path}: not a readable checkpoint (not a file torch.save wrote)") from exc
    except Exception as exc:  # torch meets random bytes with any of a dozen errors
        raise InputError(f"{path}: not a readable checkpoint ({str(exc).splitlines()[0]})") from exc
    if not isinstance(state, dict) or "model" not in state:
        kind = type(state).__name__
        raise InputError(f"{path}: not an lst-embeddings checkpoint (a {kind}, not a saved model's dictionary)")
    return state
