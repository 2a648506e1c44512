"""OUT, the sweep's output folder: one driver at a time, what a fresh sweep or a resume accepts,
and failed writes as one line.

* A driver holds `OUT/.lock` (`apd.sweep.lock`) from before it reads or writes anything in OUT.
* A fresh sweep refuses an OUT that holds any sweep file (`SWEEP_FILES`): nothing already written
  is ever overwritten. A resume needs one, and a spec that matches the stored one.
* A write that fails for want of room or rights (disk full, read-only, permissions) becomes an
  `OutputError` naming the file and the cause: exit 2, one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apd.config import read_yaml
from apd.errors import ApdError, ConfigError
from apd.sweep.lock import LOCK_FILE, SweepLock
from apd.sweep.spec import ValidatedSweep, load_spec

SPEC_FILE = "sweep.yaml"
SWEEP_FILES = (SPEC_FILE, "optuna.db", "trials.parquet", "history.parquet", "trials", "mlflow.db", "mlartifacts", "ray")
"""What a sweep writes in OUT: a fresh sweep refuses a folder holding any of them."""


class OutputError(ApdError):
    """OUT cannot be written (disk full, read-only, permissions)."""


def output_error(path: Path | str, e: BaseException | str, *, started: bool = True) -> OutputError:
    """`path: cannot write (cause); ...`: what failed, why, and how to go on."""
    reason = e if isinstance(e, str) else e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
    reason = reason.split("Detail: ")[-1]  # pyarrow: "Error writing bytes to file. Detail: [errno 28] ..."
    then = "then continue with --resume" if started else "then run it again"
    return OutputError(f"{path}: cannot write ({reason}); make room or fix it, {then}")


RESUMABLE = ("search.n_trials", "output", "pack")
"""Spec fields a resume may change (a pack size changes speed, not results: `apd.pack`)."""


WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.EIO}


def write_error(e: OSError, out: Path, *, started: bool = True) -> Exception:
    """A failed write in OUT as one line naming the file and the cause; other OS errors as they are."""
    if e.errno in WRITE_ERRNOS or (e.filename and str(e.filename).startswith(str(out))):
        return output_error(e.filename or out, e, started=started)
    return e


@contextlib.contextmanager
def claim(out: Path) -> Iterator[None]:
    """Create OUT if needed and hold its lock; a folder this call created and left empty goes again."""
    existed = out.exists()
    if existed and not out.is_dir():
        raise ConfigError(f"{out}: not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = SweepLock(out)
        lock.acquire()
    except OSError as e:
        raise OutputError(f"{e.filename or out}: cannot write ({e.strerror or _one_line(e)})") from None
    try:
        yield
    finally:
        if not existed and [p.name for p in out.iterdir()] == [LOCK_FILE]:
            (out / LOCK_FILE).unlink()  # while still holding it: a waiting driver sees the file change
            out.rmdir()
        lock.release()


def check_out(given: ValidatedSweep | None, out: Path, resume: bool) -> ValidatedSweep:
    """The sweep to run in OUT: a fresh one needs an OUT without sweep files (nothing written is ever
    overwritten); a resume needs one, and a spec that matches the stored one."""
    found = [name for name in SWEEP_FILES if (out / name).exists()]
    stored = out / SPEC_FILE
    if not resume:
        assert given is not None
        if found:
            raise ConfigError(
                f"{out}: already holds a sweep ({', '.join(found)}); pass --resume to continue it, "
                "or choose another --out"
            )
        return given
    if not found:
        raise ConfigError(f"{out}: holds no sweep; nothing to resume (run without --resume)")
    if stored.is_file():
        if given is None:
            return load_spec(stored)
        _check_same(given, stored)
        return given
    if given is None:
        raise ConfigError(
            f"{out}: no {SPEC_FILE} (deleted?); resume with the sweep file: apd sweep SPEC --resume --out {out}"
        )
    return given


def _check_same(sweep: ValidatedSweep, stored: Path) -> None:
    old = _flat(read_yaml(stored))
    new = _flat(sweep.resolved_dict())
    for key in sorted(old.keys() | new.keys()):
        if key in RESUMABLE or old.get(key) == new.get(key):
            continue
        raise ConfigError(
            f"{sweep.source}: {key}: differs from the sweep being resumed ({stored}: {old.get(key)!r}, "
            f"now {new.get(key)!r}); only search.n_trials and pack may change"
        )


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out |= _flat(v, f"{prefix}{k}.")
    return out


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
