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
"""

from __future__ import annotations

import collections
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Deque, Iterable, Iterator, Optional

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

