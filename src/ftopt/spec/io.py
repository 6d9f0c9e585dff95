"""File I/O: atomic writes (a crash, Ctrl-C or full disk never leaves a half-written file behind) and JSON reads
that fail in one sentence."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path

from ftopt.spec.errors import FtoptError


def read_text(path: str | os.PathLike, what: str, newline: str | None = None) -> str:
    """A text file's contents, or one FtoptError sentence naming `what` it was meant to be: missing, a folder,
    unreadable, or not UTF-8 (a binary file given by mistake; JSON, JSONL, CSV and YAML are UTF-8). `newline` as
    open()'s: "" keeps line endings as they are (csv reads quoted line breaks itself)."""
    try:
        with open(path, encoding="utf-8", newline=newline) as f:
            return f.read()
    except OSError as e:
        raise FtoptError(f"Cannot read the {what} {path}: {e.strerror}.") from None
    except UnicodeDecodeError as e:
        raise FtoptError(f"The {what} {path} is not a UTF-8 text file (byte {e.start} cannot be decoded).") from None


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from `path`, or one FtoptError sentence naming `what` the file was meant to be."""
    try:
        data = json.loads(read_text(path, what))
    except json.JSONDecodeError as e:
        raise FtoptError(f"The {what} {path} is not valid JSON (line {e.lineno}: {e.msg}).") from None
    if not isinstance(data, dict):
        raise FtoptError(f"The {what} {path} must be a JSON object, not {type(data).__name__}.")
    return data


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _new_file(path: Path) -> tuple[int, str]:
    """A new temporary file beside `path`, opened for writing, with the mode any new file gets (0666 less the
    umask, applied by the kernel to os.open's mode). mkstemp would make it 0600, and reading the umask to widen
    that means setting it, which no thread of a threaded server may do (the umask is process-wide)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"No unused temporary name beside {path}.")


def append_line_atomic(path: str | os.PathLike, line: str) -> None:
    """Append one line so that the file never holds a partial line, even if the disk fills up mid-write.

    A single os.write of the whole line with O_APPEND; if it is short (disk full), the file is truncated back to
    its previous length and the error is raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # umask applies
    try:
        before = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(28, "No space left on device (short write)")
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)


def check_out_folder(path: Path, flag: str = "--out") -> None:
    """An output folder must be creatable: checked before any expensive work."""
    for p in [path, *path.parents]:
        if p.exists():
            if not p.is_dir():
                raise FtoptError(f"{flag} {path}: {p} is a file, not a folder.")
            _check_writable(p, path, flag)
            return


def _check_writable(p: Path, path: Path, flag: str) -> None:
    """Make and remove a folder in `p`: os.access says yes to root everywhere, even where mkdir fails (/proc, a
    read-only mount seen through a writable-looking mode)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ftopt-write-check-", dir=p))
    except OSError as e:
        raise FtoptError(f"{flag} {path}: {p} is not writable ({e.strerror}).") from None
