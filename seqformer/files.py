"""Safe output files: never overwrite unless asked, never leave a half-written file."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, BinaryIO

from .errors import WRITE_FAILURES, InputError, write_failed


def check_output(path: str | Path, force: bool = False) -> Path:
    """Refuse an existing output unless force; make sure its folder exists."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path}: already exists (use --force to overwrite)")
    if path.exists() and path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def _reporting_write_failures(path: Path) -> Iterator[None]:
    """A write that fails for want of space, a file-size limit or permission becomes one
    OutputError naming `path` and saying what is left there."""
    try:
        yield
    except OSError as e:
        if e.errno in WRITE_FAILURES:
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            raise write_failed(path, e, kept) from None
        raise


def _move_into_place(tmp: Path, path: Path, keep_previous: Path | None) -> None:
    if keep_previous is not None and path.exists():
        _keep(path, keep_previous)
    os.replace(tmp, path)


def _hidden_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")


@contextmanager
def atomic_path(path: str | Path, keep_previous: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block
    finishes, so an interrupted or failed write leaves the old file (or nothing) behind and
    no temporary file (a SIGKILL mid-write leaves a hidden `.NAME.*.tmp`, which a resumed
    run removes; writers that take a file object use atomic_file, which leaves nothing). A
    write that fails for want of space, a file-size limit or permission becomes one
    OutputError naming `path`. keep_previous: where the old file goes (hard-linked there
    first, so `path` exists at every moment)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_failed(path, e) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _reporting_write_failures(path):
            yield tmp
            # mkstemp makes the file private (0600); give it the mode a plain open() would
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            _move_into_place(tmp, path, keep_previous)
    finally:
        if tmp.exists():
            tmp.unlink()


def _open_unnamed(folder: Path) -> int | None:
    """A new file in `folder` that has no name (Linux O_TMPFILE), so a process killed while
    writing it leaves nothing behind; None where the OS or file system has none."""
    if not hasattr(os, "O_TMPFILE"):
        return None
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR, 0o666)  # the umask applies
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None
        raise


@contextmanager
def atomic_file(path: str | Path, mode: str = "wb", keep_previous: Path | None = None
                ) -> Iterator[IO]:
    """atomic_path for writers that take a file object: yield a file open for writing
    (`mode` "wb" or "w"), fsynced and moved onto `path` only if the block finishes. The
    file has no name while it is written (where the OS allows), so even SIGKILL mid-write
    leaves no temporary file; its name exists only between two syscalls at the end."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _open_unnamed(path.parent)
    except OSError as e:
        raise write_failed(path, e) from None
    if fd is None:
        with atomic_path(path, keep_previous) as tmp:
            with open(tmp, mode) as f:
                yield f
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        return
    tmp = None
    try:
        with _reporting_write_failures(path):
            # the writer's own descriptor: it may close its file (a `with` over it) while
            # this one still has to fsync the file and give it its name
            with open(os.dup(fd), mode) as f:
                yield f
            os.fsync(fd)
            if keep_previous is not None and path.exists():
                _keep(path, keep_previous)  # first: the named moment below stays two calls
            tmp = _hidden_name(path)
            folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:  # a dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW), not link()
                os.link(f"/proc/self/fd/{fd}", tmp.name, dst_dir_fd=folder,
                        follow_symlinks=True)
            finally:
                os.close(folder)
            os.replace(tmp, path)
    finally:
        os.close(fd)
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _keep(path: Path, previous: Path) -> None:
    link = previous.with_name(f".{previous.name}.link")
    link.unlink(missing_ok=True)
    try:
        os.link(path, link)
    except OSError:  # a file system without hard links: copy
        shutil.copyfile(path, link)
    os.replace(link, previous)


def check_room(path: Path, nbytes: int) -> None:
    """Raise the OSError that writing nbytes more to `path` would meet (a full disk, a
    file-size limit), for writers that cannot survive a failed write: HDF5 leaves a file
    it cannot close and crashes the process at exit."""
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    size = path.stat().st_size if path.exists() else 0
    if limit != resource.RLIM_INFINITY and size + nbytes > limit:
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    if shutil.disk_usage(path.parent).free < nbytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _RecordingWriter:
    """A binary file that remembers the OSError its write raised: torch.save reports a
    failed write as a RuntimeError ("unexpected pos"), losing the cause."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.file.flush()


def save_torch(obj: object, path: str | Path, keep_previous: Path | None = None) -> None:
    """torch.save to `path` atomically and durably (fsynced before the rename)."""
    import torch  # here, not above: the domains write files too and never need torch

    with atomic_file(path, "wb", keep_previous) as f:
        writer = _RecordingWriter(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise
