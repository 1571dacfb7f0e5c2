"""Writers of the files score, embed and predict produce, each atomic (seqformer.files)."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..files import atomic_file, atomic_path, check_room


def write_tsv(path: Path, header: list[str], rows: list[list]) -> None:
    """A table with a header line, tab-separated."""
    with atomic_file(path, "w") as f:
        f.write("\t".join(header) + "\n"
                + "".join("\t".join(map(str, row)) + "\n" for row in rows))


def write_bedgraph(path: Path, name: str, description: str,
                   tracks: list[tuple[str, np.ndarray]]) -> None:
    """A bedGraph track of per-position values, one chromosome per record."""
    with atomic_file(path, "w") as f:
        f.write(f'track type=bedGraph name="{name}" description="{description}"\n')
        for rid, values in tracks:
            for i in range(0, len(values), 1 << 16):  # a block at a time
                part = values[i:i + (1 << 16)]
                f.writelines(f"{rid}\t{s}\t{s + 1}\t{v:.5f}\n"
                             for s, v in zip(range(i, i + len(part)), part))


def is_bigwig(path: Path) -> bool:
    return path.suffix.lower() in (".bw", ".bigwig")


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
    the whole process when a write fails (a full disk), after minutes of work: room is
    checked first, and it writes in a child process, so even a disk filled by someone else
    meanwhile ends in one error."""
    with atomic_path(path) as tmp:
        # about 5 bytes a value with its zoom levels (measured: 4.8 for a genome's scores,
        # 5.2 for random values): no room for 6 is a full disk before libBigWig meets it
        check_room(tmp, 6 * sum(len(values) for _, values in tracks) + (1 << 20))
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
