"""Atomic writes of files and folders: what is on disk is always either the old version or the new one, whole.

Used by `save_pretrained`, the trainer's checkpoints, memory files and the benchmarks' result files.

- `write_atomic(path, data)`: the data goes to a temporary file next to `path`, is flushed to disk, then renamed
  over `path` (a rename within one folder is atomic). Folders are flushed to disk whole before their swap.
- `atomic_directory(path, owned=...)`: a context manager that yields an empty temporary folder next to `path`; when
  the block finishes without an exception the folder replaces `path`, with the files of `path` that the writer
  neither wrote again nor owns carried over, at any depth (a tokenizer saved into a checkpoint's backbone folder
  survives the next save). A `path` that is a symbolic link is written where it points. On Linux the two
  folders are exchanged in one `renameat2(RENAME_EXCHANGE)` call, so there is no moment at which `path` does not
  exist; elsewhere the old folder is first renamed aside, and `recover_directory` puts it back if the process died
  between the two renames.
- `recover_directory(path)`: run before replacing a folder (and by `write_atomic` before a file): restores a folder
  left aside by a crash and removes the temporary files and folders of processes that no longer run; with
  `remove=False`, before reading one, it only restores. A process id says whether its writer still runs only in the
  writer's own process namespace: a reader in another container or on another node would take a save in progress
  there for a crashed one, so readers delete nothing.
- `temporary_directory(path)` + `replace_directory(tmp, path)`: the two halves of `atomic_directory`, for a folder
  that several processes fill (the trainer's checkpoints under multi-process training).
- `set_aside_exists(path)`: whether `recover_directory` would restore a previous version (read-only).
- `check_output_folder(path)`: refuse, before any work, an output folder that could not be written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from rmt.errors import InputError

_TMP_TAG = "tmp"
_OLD_TAG = "old"


def check_output_folder(path: str | os.PathLike, flag: str = "--output") -> None:
    """Refuse an output folder that is empty text (an unset shell variable would write into the working folder),
    a file, under a file, or in a folder this process cannot write to, before anything runs (the first write would
    fail with a traceback, maybe hours in). `flag` names the folder in the message: the command's flag, or words."""
    if not str(path).strip():
        raise InputError(f"{flag} is empty: give a folder")
    path = Path(path)
    for folder in (path, *path.parents):
        if folder.exists():
            if folder == path and not folder.is_dir():
                raise InputError(f"{flag} {path} exists and is not a folder")
            if not folder.is_dir():
                raise InputError(f"{flag} {path}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"{flag} {path}: {folder} is not writable")
            return


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (hex), read in blocks: what a record of a file compares to tell it changed."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the previous file or the complete new one. A `path` that
    is a symbolic link is written where it points (as `atomic_directory` does), the link kept."""
    path = _resolved(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)  # the temporary file of an earlier write to `path` that was killed (SIGKILL, SIGTERM)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_TMP_TAG}-{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as f:  # owns the descriptor from here: closed whatever fails below
            os.fchmod(f.fileno(), _permissions(0o666))
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`write_atomic` of `obj` as indented JSON with a final newline."""
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, owned: Collection[str] | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it becomes `path`, on an exception it is removed and `path` is
    left as it was. `owned`: glob patterns of paths relative to `path` ("memory.safetensors", "backbone/*.json")
    that the block's version replaces even where it writes no file of that name (old weight shards must not come
    back). Every other file of an existing `path` that the block did not write again is carried into the new folder
    before the swap (hard links where the file system allows, else copies), so the swap loses nothing it did not
    replace. None: `path` is replaced whole. A `path` that is a file raises NotADirectoryError."""
    path = _resolved(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    tmp = _new_temporary_directory(path)
    try:
        yield tmp
        _share_like_open(tmp)  # before the carry-over: the files kept from `path` keep their own permissions
        if owned is not None and path.is_dir():
            _carry_over(path, tmp, set(owned))
        _swap_in(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _carry_over(old: Path, new: Path, owned: set[str], prefix: str = "") -> None:
    """Link (or copy) every file under `old` into the same place under `new`, unless `new` has it already or its
    path relative to the top (`prefix` + name) matches an `owned` pattern; folders are merged the same way. `old`
    itself is not changed, so a crash before the swap loses nothing."""
    for entry in old.iterdir():
        relative = prefix + entry.name
        target = new / entry.name
        if any(fnmatch.fnmatchcase(relative, pattern) for pattern in owned):
            continue
        if entry.is_dir() and not entry.is_symlink():
            if not target.exists() and not target.is_symlink():
                target.mkdir()
                shutil.copystat(entry, target)
            if target.is_dir() and not target.is_symlink():
                _carry_over(entry, target, owned, relative + "/")
        elif not target.exists() and not target.is_symlink():
            _link_or_copy(entry, target)


def _resolved(path: str | os.PathLike) -> Path:
    """`path` as the file system resolves it: absolute ("." or ".." name no folder to swap beside them), symbolic
    links followed (swapping a link itself would replace the link with a folder and leave the folder it pointed to
    unchanged; ".." after a link is taken from where the link points, as the OS takes it)."""
    return Path(os.path.realpath(path))


def _link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    if os.path.islink(source):
        os.symlink(os.readlink(source), target)
        return
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


def temporary_directory(path: str | os.PathLike) -> Path:
    """A new empty folder next to `path`, named so that `recover_directory(path)` removes it if this process dies
    before it is swapped in (for writers that cannot use `atomic_directory`, e.g. several processes filling one
    folder). Pair it with `replace_directory`."""
    path = _resolved(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    return _new_temporary_directory(path)


def _new_temporary_directory(path: Path) -> Path:
    """An empty folder next to `path` with a name `recover_directory` recognises and the permissions of a folder made
    by `mkdir` (mkdtemp's are owner-only). Refuses a `path` that holds the working folder: the swap would leave this
    process (and a shell there) in a deleted folder."""
    here, target = Path(os.path.realpath(os.getcwd())), Path(os.path.realpath(path))
    if target == here or target in here.parents:
        raise InputError(
            f"cannot write the folder {path} whole: it holds the working folder {here}, which replacing it would "
            "delete; write to a folder beside it or below it"
        )
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_TMP_TAG}-{os.getpid()}-", dir=path.parent))
    tmp.chmod(_permissions(0o777))
    return tmp


def _share_like_open(folder: Path) -> None:
    """Give every file written under `folder` the permissions `open` gives (0666 less the umask, 0777 for an
    executable one): safetensors writes its files owner-only (0600) whatever the umask, so a checkpoint saved for a
    team could be read by its writer alone."""
    for root, _, names in os.walk(folder):
        for name in names:
            file = Path(root) / name
            if not file.is_symlink():
                file.chmod(_permissions(0o777 if file.stat().st_mode & 0o111 else 0o666))


def _permissions(requested: int) -> int:
    """`requested` limited by the process's umask, as `open` and `mkdir` do (mkstemp and mkdtemp ignore the umask and
    make owner-only files, which a shared results folder or checkpoint should not get)."""
    mask = os.umask(0)
    os.umask(mask)
    return requested & ~mask


def recover_directory(path: str | os.PathLike, remove: bool = True) -> None:
    """Undo what a crash inside `atomic_directory` or `write_atomic` may have left next to `path`.

    If `path` is missing but a previous version was set aside (the crash fell between the two renames of the portable
    swap), that version is restored. Temporary files and temporary and set-aside folders of processes that have ended
    are removed; those of running processes (a save in progress elsewhere) are left alone.
    `remove=False` (before reading `path`): only the restore, and a folder that cannot be listed or changed (a parent
    others may not list, a read-only disk) is read as it is."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    try:
        leftovers = [
            (parsed[0], entry)
            for entry in path.parent.iterdir()
            if (parsed := _parse_leftover(entry.name, path.name)) is not None and not _process_alive(parsed[1])
        ]
        set_aside = sorted((entry for tag, entry in leftovers if tag == _OLD_TAG), key=lambda e: e.stat().st_mtime)
        if not path.exists() and set_aside:
            os.replace(set_aside.pop(), path)
    except OSError:
        if remove:
            raise
        return
    if not remove:
        return
    for _, entry in leftovers:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


def replace_directory(new: Path, target: Path) -> None:
    """Make the complete folder `new` the folder `target`, atomically where the system allows (see the module
    docstring); the previous `target`, if any, is removed. `new`'s files get the permissions `open` gives (some
    writers make theirs owner-only) and reach the disk before the swap, and the swap before this returns."""
    new = Path(new)
    _share_like_open(new)
    _swap_in(new, target)


def _swap_in(new: Path, target: str | os.PathLike) -> None:
    """`replace_directory` with `new`'s permissions as they are."""
    target = _resolved(target)
    _sync_tree(new)
    if not target.exists():
        os.replace(new, target)
    elif _exchange(new, target):  # `new` now holds the previous version
        shutil.rmtree(new, ignore_errors=True)
    else:
        old = target.with_name(f".{target.name}.{_OLD_TAG}-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    _sync(target.parent)


def _sync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder`: a rename reaches the disk in the file system's journal, the
    files' data may not, so after a power loss the new folder could hold empty or partial files under the old name."""
    for root, _, names in os.walk(folder):
        for name in names:
            if not os.path.islink(os.path.join(root, name)):
                _sync(Path(root) / name)
        _sync(Path(root))


def _sync(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system or file system cannot. Any other
    failure (a path gone) raises OSError: the portable swap would first move `b` aside and then fail too."""
    renameat2 = getattr(_libc(), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(error, f"cannot swap {a} and {b}: {os.strerror(error)}")


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def set_aside_exists(path: str | os.PathLike) -> bool:
    """Whether a previous version of folder `path` lies set aside by a crash in the portable swap, for
    `recover_directory` to restore. Only reads the folder next to `path`."""
    path = Path(path)
    if not path.parent.is_dir():
        return False
    return any(
        (parsed := _parse_leftover(entry.name, path.name)) is not None and parsed[0] == _OLD_TAG
        for entry in path.parent.iterdir()
    )


def _parse_leftover(name: str, target: str) -> tuple[str, int] | None:
    """('tmp' or 'old', pid) for names written by this module next to `target`, else None."""
    for tag in (_TMP_TAG, _OLD_TAG):
        prefix = f".{target}.{tag}-"
        if name.startswith(prefix):
            pid = name[len(prefix) :].split("-", 1)[0]
            return (tag, int(pid)) if pid.isdigit() else None
    return None


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process has no save in progress while it recovers
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
