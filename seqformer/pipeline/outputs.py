"""Writers of the files score, embed and predict produce, each atomic (seqformer.files)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..files import atomic_path, check_room


def _write_bigwig(path: str, tracks: list[tuple[str, np.ndarray]]) -> None:
    import pyBigWig

    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # libBigWig's dying words are no message
    bw = pyBigWig.open(path, "w")
    bw.addHeader([(rid, len(values)) for rid, values in tracks if len(values)])
    for rid, values in tracks:
        for i in range(0, len(values), 1 << 16):  # fixed-step entries, a block at a time
            bw.addEntries(rid, i, values=values[i:i + (1 << 16)].astype(np.float64),
                          span=1, step=1)
    bw.close()


def _why_the_writer_died(tmp: Path) -> OSError | None:
    try:  # would a little more have fitted?
        check_room(tmp, 1 << 16)
    except OSError as e:
        return e
    return None


def write_bigwig(path: Path, tracks: list[tuple[str, np.ndarray]]) -> None:
    """A bigWig track of per-position values, one chromosome per record. libBigWig aborts
    the whole process when a write fails (a full disk), so it writes in a child process."""
    with atomic_path(path) as tmp:
        if "fork" not in multiprocessing.get_all_start_methods():
            _write_bigwig(str(tmp), tracks)
            return
        child = multiprocessing.get_context("fork").Process(target=_write_bigwig,
                                                            args=(str(tmp), tracks))
        child.start()
        child.join()
        if child.exitcode != 0:
            cause = _why_the_writer_died(tmp)
            if cause is not None:
                raise cause
            raise OutputError(f"{path}: the bigWig writer failed (exit code "
                              f"{child.exitcode}); nothing was written there")
