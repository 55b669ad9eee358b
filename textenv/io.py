"""Atomic writes and checkpoint directories: the one place every writer in ``textenv`` and ``agents`` uses.

A reader never sees a half-written file or directory, a killed writer leaves the previous version in
place, and only names this module made are ever removed:

- :func:`atomic_dir` yields a fresh temporary directory beside the target and renames it into place when
  the ``with`` block succeeds (the previous directory is moved aside first and removed after);
- :func:`atomic_file` does the same for one file (opened for writing), :func:`write_text` and
  :func:`write_json` are its one-liners;
- :func:`list_checkpoints` / :func:`prune_checkpoints` find and thin ``checkpoint-<N>`` directories.

Temporary names are ``.<name>.tmp-<pid>-<hex>`` and ``.<name>.old-<pid>-<hex>``. A temporary whose writer
process is gone is stale and removed by the next write of the same target; an ``.old-`` directory is removed
once the target it was replaced by exists (:func:`previous_dir` recovers it when a kill fell between the two
renames).

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_dir(d / "model") as tmp:
    ...     _ = (tmp / "weights.txt").write_text("1 2 3")
    >>> sorted(p.name for p in d.iterdir())
    ['model']
    >>> write_json(d / "state.json", {"step": 3}); (d / "state.json").read_text()
    '{\\n  "step": 3\\n}'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

#: checkpoints a run keeps (the newest); older ones are pruned after each save
KEEP_CHECKPOINTS = 2
CHECKPOINT_PREFIX = "checkpoint-"
_CHECKPOINT_RE = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _temp_name(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _ours(path: Path, kind: str) -> list[tuple[Path, int]]:
    """Temporaries of ``kind`` ("tmp" or "old") that this module made for ``path``, with their writer's pid."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.{kind}-(\d+)-[0-9a-f]{{8}}$")
    if not path.parent.is_dir():
        return []
    found = []
    for child in path.parent.iterdir():
        m = pattern.match(child.name)
        if m:
            found.append((child, int(m.group(1))))
    return found


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed writers; returns what was removed.

    A ``.tmp-`` whose writer pid is no longer alive is removed; an ``.old-`` only once ``path`` itself exists
    (until then it is the last complete version, see :func:`previous_dir`). Nothing else is touched: only
    names of the exact form this module writes (``.<name>.tmp-<pid>-<8 hex>``) count as its temporaries.
    """
    path = Path(path)
    removed = []
    for p, pid in _ours(path, "tmp"):
        if not _pid_alive(pid):
            _remove(p)
            removed.append(p)
    if path.exists():
        for p, _ in _ours(path, "old"):
            _remove(p)
            removed.append(p)
    return removed


def previous_dir(path: str | os.PathLike[str]) -> Path:
    """``path``, or, when a write was killed between its two renames, the previous version it moved aside."""
    path = Path(path)
    if path.exists():
        return path
    olds = sorted((p for p, _ in _ours(path, "old")), key=lambda p: p.stat().st_mtime)
    return olds[-1] if olds else path


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``, moving a previous ``path`` aside first and removing it after."""
    old = None
    if path.exists() and path.is_dir() and not path.is_symlink():
        old = _temp_name(path, "old")
        os.replace(path, old)
    # a kill between the two renames leaves the previous version at `old`: see previous_dir
    os.replace(tmp, path)
    if old is not None:
        _remove(old)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a directory atomically: yields an empty temporary directory beside ``path``; when the block
    succeeds it replaces ``path``, when it raises (or is interrupted) it is removed and ``path`` is untouched.

    ``path`` must not be an existing file. Stale temporaries of ``path`` from killed writers are removed first.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} exists and is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temp_name(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _swap_in(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    remove_stale_temporaries(path)  # versions a killed writer left aside are superseded now


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Write one file atomically: yields a file object on a temporary name, flushed, fsynced and renamed
    over ``path`` when the block succeeds; removed when it raises. ``mode`` is ``"w"`` or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temp_name(path, "tmp")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """``path.write_text(text)``, atomically."""
    with atomic_file(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """``obj`` as JSON at ``path``, atomically (non-finite floats are refused: JSON has none)."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    write_text(path, text)


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Parse the JSON file ``path``; a missing, unreadable or corrupt file is a ``ValueError`` naming it."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{what} {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} {str(p)!r}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} {str(p)!r} is not valid JSON: {exc}") from None


# --------------------------------------------------------------------------------------------- run dirs
#: the lock file :func:`run_lock` holds inside a run directory
LOCK_NAME = ".textenv.lock"


def refuse_foreign_dir(out: str | os.PathLike[str], ours: bool, flag: str = "--out") -> None:
    """Raise ``ValueError`` when ``out`` is a file, or a non-empty directory that is not one of our runs
    (``ours``: the caller found its own marker in it), naming a file found there; nothing is written."""
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {str(out)!r} is a file, not a directory")
    if not p.is_dir() or ours:
        return
    entries = sorted(c.name for c in p.iterdir() if c.name != LOCK_NAME)
    if entries:
        more = f" and {len(entries) - 1} more" if len(entries) > 1 else ""
        raise ValueError(f"{flag} {str(out)!r} is a non-empty directory that is not a textenv run (it holds "
                         f"{entries[0]!r}{more}); refusing to write into it: choose a new or empty directory")


def _host() -> str:
    import socket

    return socket.gethostname()


@contextlib.contextmanager
def run_lock(out: str | os.PathLike[str], what: str = "run") -> Iterator[Path]:
    """Hold an exclusive lock on the run directory ``out`` (created if missing) for the ``with`` block.

    The lock is the file ``out/.textenv.lock`` holding the writer's pid and host, created atomically (a
    complete file is hard-linked into place, which fails when one exists). A lock held by a live process,
    or by a process on another host (whose liveness cannot be checked), is a ``ValueError`` naming its
    pid and host; a lock of a dead process on this host is stale: it is taken over, and a warning says so.
    The lock is removed when the block ends (only while it is still this process's), and so are the
    directories it made when nothing else was written into them."""
    import warnings

    d = Path(out)
    made = [q for q in [d, *d.parents] if not q.exists()]  # removed again when left empty
    d.mkdir(parents=True, exist_ok=True)
    lock = d / LOCK_NAME
    mine = {"pid": os.getpid(), "host": _host(), "what": what}
    tmp = _temp_name(lock, "tmp")
    tmp.write_text(json.dumps(mine))
    try:
        for _ in range(3):
            try:
                os.link(tmp, lock)
                break
            except FileExistsError:
                pass
            try:
                held = json.loads(lock.read_text(encoding="utf-8"))
                pid, host = int(held["pid"]), str(held["host"])
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError, KeyError, TypeError):
                raise ValueError(f"{str(d)!r} has a lock file {str(lock)!r} that is not a textenv lock; if no "
                                 "textenv command is writing there, remove it") from None
            if host != mine["host"]:
                raise ValueError(f"{str(d)!r} is locked by pid {pid} on host {host!r} (lock {str(lock)!r}); "
                                 "another textenv command may be writing there; remove the lock if it is not")
            if _pid_alive(pid):
                raise ValueError(f"{str(d)!r} is in use: pid {pid} holds its lock {str(lock)!r} (another "
                                 f"textenv command is writing there); wait for it or choose another directory")
            warnings.warn(f"{str(lock)!r}: taking over the stale lock of pid {pid}, which is no longer running",
                          stacklevel=3)
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
        else:
            raise ValueError(f"could not take the lock {str(lock)!r}: other processes keep taking it")
    except BaseException:
        _remove(tmp)
        _remove_empty(made)
        raise
    _remove(tmp)
    try:
        yield lock
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(lock.read_text(encoding="utf-8"))["pid"] == mine["pid"]:
                lock.unlink()
        _remove_empty(made)


def _remove_empty(dirs: list[Path]) -> None:
    """Remove the directories ``dirs`` (deepest first) that a command made and left empty."""
    for q in dirs:
        try:
            q.rmdir()
        except OSError:
            return


# --------------------------------------------------------------------------------------------- file hashes
def sha256_file(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of the file ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(directory: str | os.PathLike[str], names: Iterable[str] | None = None) -> dict[str, str]:
    """``{name: sha256}`` of the files ``names`` (paths relative to ``directory``, ``/``-separated); every
    file under ``directory`` (recursively, sorted) when ``names`` is None."""
    d = Path(directory)
    if names is None:
        names = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    return {name: sha256_file(d / name) for name in names}


def check_digests(directory: str | os.PathLike[str], recorded: Any, where: str = "") -> None:
    """Raise ``ValueError`` naming the file when a file of ``directory`` is missing or its sha256 is not the
    one ``recorded`` (``{name: sha256}``, as :func:`file_digests` returns; ``where``: the record's file)."""
    d = Path(directory)
    src = f" (recorded in {where!r})" if where else ""
    if not isinstance(recorded, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in recorded.items()):
        raise ValueError(f"the file hashes{src} must be an object of name: sha256 strings, got {recorded!r:.80}")
    for name, digest in recorded.items():
        p = d / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"file hash entry {name!r}{src} is not a name inside {str(d)!r}")
        if not p.is_file():
            raise ValueError(f"{str(p)!r} is missing (its hash is recorded{src})")
        if sha256_file(p) != digest:
            raise ValueError(f"{str(p)!r} is damaged or was changed: its sha256 is not the one recorded{src}")


# --------------------------------------------------------------------------------------------- checkpoints
def checkpoint_name(step: int) -> str:
    """``checkpoint-<step>``, zero-padded to 8 digits so names sort like steps."""
    return f"{CHECKPOINT_PREFIX}{int(step):08d}"


def list_checkpoints(run_dir: str | os.PathLike[str], marker: str) -> list[Path]:
    """Complete checkpoints of ``run_dir``, oldest first: ``checkpoint-<N>`` directories holding ``marker``
    (the file a checkpoint writes; its presence says the checkpoint is one of ours and complete)."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir()
             if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir() and (p / marker).is_file()]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: str | os.PathLike[str], marker: str, keep: int = KEEP_CHECKPOINTS) -> None:
    """Remove all but the newest ``keep`` complete checkpoints of ``run_dir``."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    for old in list_checkpoints(run_dir, marker)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
