"""Run one pure function over many tasks: inline, on a local process pool, or on a Ray cluster.

``mmit convert`` builds each output shard with one call of a pure function (task → shard files +
stats). A *distributor* maps that function over the task stream:

* ``local`` (:class:`LocalDistributor`): ``workers=1`` runs inline in this process; ``workers>1``
  uses a :class:`concurrent.futures.ProcessPoolExecutor`.
* ``ray`` (:class:`RayDistributor`): one Ray task per call (``ray.remote(num_cpus=1)``), on the
  cluster at ``address`` (or ``$RAY_ADDRESS``), else a local Ray instance started here and shut
  down by :meth:`~RayDistributor.close`. Ray is an optional extra (``pip install 'mmit[ray]'``) and
  is imported only when this distributor is built. Every node must see the paths in the tasks
  (shared file system) and have ``mmit`` importable.

Both yield results in task order and keep at most ``2 * workers`` tasks in flight, so the task
stream is consumed lazily and memory stays bounded. An exception raised by the function is
re-raised here (Ray's wrapper is removed).

:class:`OutputLock` keeps one driving process per output folder: ``mmit convert`` holds it
(``_convert.lock``) for the whole run, so two conversions never write into one folder.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Deque, Dict, Iterable, Iterator, Optional, Tuple

#: Names accepted by :func:`get_distributor` (and ``mmit convert --distributor``).
DISTRIBUTORS = ("local", "ray")


class LocalDistributor:
    """Inline (``workers == 1``) or process-pool (``workers > 1``) ordered map.

    Raises ``ValueError`` when ``workers < 1``.
    """

    name = "local"

    def __init__(self, workers: int = 1):
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = int(workers)
        self._pool: Optional[ProcessPoolExecutor] = None

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """``fn(task)`` for each task, results in task order (``fn`` must be picklable by
        reference, i.e. a module-level function, when ``workers > 1``)."""
        if self.workers == 1:
            for task in tasks:
                yield fn(task)
            return
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.workers)
        pending: Deque[Any] = collections.deque()
        for task in tasks:
            while len(pending) >= 2 * self.workers:
                yield pending.popleft().result()
            pending.append(self._pool.submit(fn, task))
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        """Stop the pool (pending work is cancelled). Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def import_ray() -> Any:
    """``import ray`` with an actionable error: raises ``ImportError`` naming the ``[ray]`` extra."""
    try:
        import ray  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError as e:
        raise ImportError("the ray distributor needs Ray, an optional extra: "
                          "pip install 'mmit[ray]' (or pip install 'ray>=2.9'); "
                          f"import failed: {e}") from None
    return ray


class RayDistributor:
    """Ordered map over Ray tasks (one CPU each).

    Args:
        workers: tasks in flight at once; None = the cluster's CPU count.
        address: Ray cluster address (``auto``, ``ray://host:10001``, ...). None: use the running
            Ray session if this process already called ``ray.init``, else ``$RAY_ADDRESS``, else
            start a local instance (stopped again by :meth:`close`).

    Raises ``ImportError`` (Ray not installed, message names ``pip install 'mmit[ray]'``).
    """

    name = "ray"

    def __init__(self, workers: Optional[int] = None, address: Optional[str] = None):
        self._ray = import_ray()
        self._started = False
        if not self._ray.is_initialized():
            self._ray.init(address=address, include_dashboard=False, log_to_driver=False)
            self._started = True
        if workers is None:
            workers = int(self._ray.cluster_resources().get("CPU", 1))
        if int(workers) < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = int(workers)
        self._remote = {}

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[Any]:
        """``fn(task)`` as Ray tasks, results in task order; a failed task's exception is
        re-raised as its original type (Ray retries tasks whose worker process died)."""
        ray = self._ray
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = ray.remote(num_cpus=1)(fn)
        pending: Deque[Any] = collections.deque()
        for task in tasks:
            while len(pending) >= 2 * self.workers:
                yield self._get(pending.popleft())
            pending.append(remote.remote(task))
        while pending:
            yield self._get(pending.popleft())

    def _get(self, ref: Any) -> Any:
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def close(self) -> None:
        """Shut Ray down if this distributor started it. Idempotent."""
        if self._started:
            self._ray.shutdown()
            self._started = False


def get_distributor(name: str, workers: Optional[int] = 1, address: Optional[str] = None) -> Any:
    """A distributor by name: ``local`` (``workers`` default 1) or ``ray`` (``workers`` None =
    cluster CPUs). Raises ``ValueError`` for another name, ``ImportError`` if Ray is missing."""
    if name == "local":
        return LocalDistributor(1 if workers is None else workers)
    if name == "ray":
        return RayDistributor(workers, address)
    raise ValueError(f"unknown distributor {name!r} (expected one of {', '.join(DISTRIBUTORS)})")


# -- output folder lock (held by the driving process of ``mmit convert``) -------------------------

#: Lock file in a conversion's output folder; exists exactly while a conversion runs there.
LOCK_FILE = "_convert.lock"
log = logging.getLogger("mmit.data.convert")


class OutputLockedError(FileExistsError):
    """Another conversion holds the output folder's lock, or its lock file cannot be read."""


def _proc_stat(pid: int) -> Optional[Tuple[str, str]]:
    """``(state, start time in clock ticks)`` of ``pid`` from ``/proc`` (Linux), else None."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            rest = f.read().decode("ascii", "replace").rsplit(")", 1)[1].split()
        return rest[0], rest[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, proc_start: Optional[str] = None) -> bool:
    """Whether process ``pid`` on this host is running: it exists, is not a zombie and, when
    ``proc_start`` (its ``/proc`` start time when the lock was taken) is given, is the same
    process and not a later one that got the same pid. A pid below 1 counts as running."""
    if int(pid) < 1:  # os.kill(0 or -1, 0) would signal a group, not one process
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists, owned by another user
        pass
    st = _proc_stat(pid)
    if st is not None and (st[0] in ("Z", "X") or (proc_start and st[1] != proc_start)):
        return False
    return True


class OutputLock:
    """Exclusive lock on a conversion's output folder: the file ``<folder>/_convert.lock``,
    created atomically (``O_CREAT | O_EXCL``) and holding the owner's ``pid``, ``host``, start
    time (``since``, UTC) and a random ``token``.

    * A held lock makes :meth:`acquire` raise :class:`OutputLockedError` at once, naming the
      holder (pid, host, since when); so does a lock file that cannot be parsed.
    * A lock left by a dead process on THIS host (pid gone, a zombie, or reused by a later
      process) is stale: it is taken over with a warning (logger ``mmit.data.convert``).
      Concurrent take-overs are serialised by a second file, ``_convert.lock.takeover``.
    * A lock from ANOTHER host is never taken over; the message says which file to delete once
      no conversion runs there.
    * :meth:`release` deletes the file only if it still holds this lock's token. As a context
      manager the lock is released on return and on any exception (``KeyboardInterrupt``
      included); in the main thread, SIGTERM is turned into ``SystemExit(143)`` while it is held
      (unless a SIGTERM handler is already installed), so ``kill`` releases it too. ``kill -9``
      leaves a stale lock, which the next run takes over.
    """

    def __init__(self, folder: str):
        self.path = os.path.join(os.fspath(folder), LOCK_FILE)
        self.host = socket.gethostname()
        self.token = uuid.uuid4().hex
        self._held = False
        self._pid = os.getpid()
        self._old_sigterm: Any = None

    def holder(self) -> Optional[Dict[str, Any]]:
        """The lock file's content (a dict), None if there is none or it is not a JSON object
        (re-read for up to 0.5 s, as a lock being created is empty for a moment)."""
        for attempt in range(6):
            try:
                with open(self.path, "rb") as f:
                    d = json.loads(f.read())
                if isinstance(d, dict):
                    return d
            except FileNotFoundError:
                return None
            except (OSError, ValueError):
                pass
            time.sleep(0.1 * (attempt < 5))
        return None

    def _describe(self, h: Dict[str, Any]) -> str:
        return f"another conversion holds {self.path} (pid {h.get('pid')} on host " \
            f"{h.get('host')!r} since {h.get('since')})"

    def acquire(self) -> "OutputLock":
        """Take the lock or raise :class:`OutputLockedError` (one-line message naming the holder
        and, for a lock this process may not take over, how to remove it). Other ``OSError``
        (folder missing, not writable) propagates."""
        info = {"pid": os.getpid(), "host": self.host, "token": self.token,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "proc_start": (_proc_stat(os.getpid()) or (None, None))[1]}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(json.dumps(info, sort_keys=True).encode())
            self._held, self._pid = True, os.getpid()
            return self
        raise OutputLockedError(f"could not take the lock {self.path}: other processes keep "
                                "taking it; retry")

    def _take_over_if_stale(self) -> None:
        """Delete a stale lock of a dead process on this host, else raise OutputLockedError."""
        h = self.holder()
        if h is None:
            if not os.path.lexists(self.path):
                return  # released meanwhile: try again
            raise OutputLockedError(f"{self.path} exists but cannot be read; if no conversion "
                                    "is running into this folder, delete that file")
        if h.get("host") != self.host:
            raise OutputLockedError(f"{self._describe(h)}; a lock from another host is never "
                                    "taken over: if no conversion is running there, delete "
                                    f"{self.path}")
        if not isinstance(h.get("pid"), int) or pid_alive(h["pid"], h.get("proc_start")):
            raise OutputLockedError(f"{self._describe(h)}; wait for it to finish or stop it")
        mutex = self.path + ".takeover"
        try:
            os.close(os.open(mutex, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - os.path.getmtime(mutex) > 30:  # left by a killed take-over
                    os.remove(mutex)
            raise OutputLockedError(f"another process is taking over the stale lock "
                                    f"{self.path}; retry") from None
        try:
            if self.holder() == h:  # still the same stale lock, not a new one
                log.warning("taking over the stale lock %s of pid %s (host %s, since %s): that "
                            "process is gone", self.path, h.get("pid"), h.get("host"),
                            h.get("since"))
                os.remove(self.path)
        finally:
            os.remove(mutex)

    def release(self) -> None:
        """Delete the lock file if it is still ours (idempotent; a no-op in forked children)."""
        if not self._held or os.getpid() != self._pid:
            return
        self._held = False
        h = self.holder()
        if h is not None and h.get("token") == self.token:
            os.remove(self.path)
        else:
            log.warning("lock %s was removed or replaced by another process while this "
                        "conversion held it", self.path)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a forked worker: die as it would have
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise SystemExit(128 + signum)

    def __enter__(self) -> "OutputLock":
        self.acquire()
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            self._old_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self.release()
        finally:
            if self._old_sigterm is not None:
                signal.signal(signal.SIGTERM, self._old_sigterm)
                self._old_sigterm = None
