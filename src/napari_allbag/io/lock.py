"""One writer per run folder or output file: an exclusive lock file beside it.

`RunLock(target)` guards a run folder (`run/`) or an output file (`results.csv`) with the lock
file `run.lock` / `results.csv.lock` beside it, created atomically (`O_CREAT | O_EXCL`: of two
processes starting at once exactly one creates it). The file holds JSON saying who holds it
(pid, host, start time, command), so a second process is told who is writing and what to do.

A lock whose holder is gone (same host, process no longer running, or its pid now belongs to
another process) is stale: it is taken over, with a note. A lock from another host cannot be
checked from here: it is refused, and the message says how to remove it. The lock is released
when the `with` block ends, also on exceptions and Ctrl+C.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOCK_SUFFIX = ".lock"
#: How long an unreadable lock (being written, or its writer died) is waited for.
SETTLE_S = 2.0
#: A `.break` file older than this was left by a process that died while taking over.
BREAK_STALE_S = 30.0


class LockHeld(RuntimeError):
    """Another process holds the lock; the message names it and the fix."""

    def __init__(self, message: str, lock_path: Path, holder: dict[str, Any] | None):
        super().__init__(message)
        self.lock_path = lock_path
        self.holder = holder


def lock_path_for(target: str | os.PathLike) -> Path:
    """The lock file guarding `target` (a folder or a file): `<target>.lock` beside it."""
    target = Path(target).expanduser()
    return target.parent.resolve() / (target.name + LOCK_SUFFIX)


class RunLock:
    """Exclusive lock on a run folder or output file, as a context manager.

    `with RunLock(out_dir, "napari-allbag train ..."):` raises `LockHeld` when another live
    process holds it; `note` says when a stale lock was taken over ("" otherwise).
    """

    def __init__(self, target: str | os.PathLike, command: str | None = None):
        self.target = Path(target)
        self.path = lock_path_for(target)
        self.command = (command if command is not None else " ".join(sys.argv))[:500]
        self.note = ""
        self._token: str | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._token is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise `LockHeld`; a stale lock of this host is taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + SETTLE_S
        while True:
            if self._create():
                return self
            text, holder = self._read()
            if text is None:  # released meanwhile: try again
                continue
            if holder is None and time.monotonic() < deadline:
                time.sleep(0.05)  # being written right now: look again
                continue
            reason = _stale_reason(holder)
            if reason is None:
                raise LockHeld(_held_message(self, holder), self.path, holder)
            if self._take_over(text):
                self.note = (
                    f"A stale lock {self.path} was taken over ({reason}; "
                    f"{_describe_holder(holder)})."
                )
            elif time.monotonic() < deadline:
                time.sleep(0.05)  # another process is taking it over: look again
            else:
                raise LockHeld(_held_message(self, holder), self.path, holder)

    def release(self) -> None:
        """Remove the lock file if it is still this lock's (never another process's)."""
        if self._token is None:
            return
        _, holder = self._read()
        if holder is not None and holder.get("token") == self._token:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self._token = None

    def _create(self) -> bool:
        token = uuid.uuid4().hex
        document = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
            "process_start": _process_start(os.getpid()),
            "token": token,
        }
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(document, indent=2).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self._token = token
        return True

    def _read(self) -> tuple[str | None, dict[str, Any] | None]:
        """(raw text, parsed holder): (None, None) when the lock is gone."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None, None
        except OSError:
            return "", None
        try:
            holder = json.loads(text)
        except ValueError:
            return text, None
        return text, holder if isinstance(holder, dict) else None

    def _take_over(self, stale_text: str) -> bool:
        """Remove the stale lock if it is still the one judged stale; one process at a time."""
        breaker = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _remove_if_older(breaker, BREAK_STALE_S)
            return False
        try:
            text, _ = self._read()
            if text == stale_text:
                os.unlink(self.path)
        finally:
            os.close(fd)
            os.unlink(breaker)
        return True


def _stale_reason(holder: dict[str, Any] | None) -> str | None:
    """Why the holder is gone, or None while it may still be running (or cannot be checked)."""
    if holder is None:
        return "the lock file is damaged"
    if holder.get("host") != socket.gethostname():
        return None
    pid = holder.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return "the lock file names no valid process"
    if not _pid_alive(pid):
        return f"process {pid} is no longer running"
    started = holder.get("process_start")
    if started and _process_start(pid) not in (None, started):
        return f"process {pid} ended and its number was reused"
    return None


def _held_message(lock: RunLock, holder: dict[str, Any] | None) -> str:
    who = _describe_holder(holder)
    if holder is not None and holder.get("host") != socket.gethostname():
        return (
            f"{lock.target} is in use by a napari-allbag run on another computer ({who}). "
            f"It cannot be checked from here: wait for it, or write somewhere else. If no run on "
            f"{holder.get('host')} is still writing there, delete {lock.path} and start again."
        )
    return (
        f"{lock.target} is in use by another napari-allbag run ({who}). Wait for it to finish, "
        f"or write somewhere else (another --out). If that run is no longer running, delete "
        f"{lock.path} and start again."
    )


def _describe_holder(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "holder unknown"
    command = str(holder.get("command") or "")[:120]
    text = f"pid {holder.get('pid')} on host {holder.get('host')}, since {holder.get('started')}"
    return text + (f": {command}" if command else "")


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # pragma: no cover - Windows
        try:
            import psutil
        except ImportError:
            return True  # cannot tell: treat as running (the message says how to remove it)
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return _process_state(pid) != "Z"  # a zombie has finished


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[-1].split()


def _process_state(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[0] if fields else None


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to detect a reused pid."""
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def _remove_if_older(path: Path, seconds: float) -> None:
    try:
        if time.time() - path.stat().st_mtime > seconds:
            path.unlink()
    except OSError:
        pass
