"""Thread settings shared by BLAS and numba, and a thread-safe numba threading layer.

numba's default ``workqueue`` layer aborts the whole process when parallel code
is entered from several Python threads at once ("Concurrent access has been
detected", numba#9288). Unless the user chose a layer (``NUMBA_THREADING_LAYER``),
sparseprune asks numba for a thread-safe one (``tbb`` or ``omp``). If numba ends
up on ``workqueue`` anyway, :func:`parallel_guard` serialises our parallel
kernel launches with a lock instead of letting the process die.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import numba
from numba.np.ufunc import parallel as _npp
from threadpoolctl import ThreadpoolController, threadpool_limits


def _preload_tbb() -> bool:
    """Make the pip-installed TBB loadable by numba's ``tbb`` layer; True if it was loaded.

    The ``tbb`` wheel puts ``libtbb.so.12`` in ``<prefix>/lib``, which is not on
    the dynamic loader's path, so numba cannot load its TBB layer and falls
    back to OpenMP. Loading the library once by its full path (``RTLD_GLOBAL``)
    lets numba's layer resolve it. Why TBB: libgomp's workers, once asleep
    after a pause, take milliseconds to wake for the next parallel region;
    TBB's wake in well under a millisecond, at a slightly dearer launch
    (measurements: benchmarks/README.md, "Design record").
    """
    import ctypes
    import sys

    for prefix in dict.fromkeys((sys.prefix, sys.base_prefix)):
        for name in ("libtbb.so.12", "libtbb.12.dylib"):
            path = os.path.join(prefix, "lib", name)
            if os.path.isfile(path):
                try:
                    ctypes.CDLL(path, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
                    return True
                except OSError:
                    return False
    return False


if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
    _preload_tbb()
    numba.config.THREADING_LAYER = "threadsafe"

_launch_lock = threading.Lock()
_SAFE_LAYERS = ("tbb", "omp")


def threading_layer() -> str:
    """The numba threading layer in use, or ``"unset"`` before the first parallel launch."""
    try:
        return numba.threading_layer()
    except ValueError:
        return "unset"


_layer_safe = False


def _layer_is_safe() -> bool:
    """Whether numba's threading layer is known to be thread-safe (cached once it is)."""
    global _layer_safe
    if not _layer_safe and threading_layer() in _SAFE_LAYERS:
        _layer_safe = True
    return _layer_safe


@contextlib.contextmanager
def parallel_guard() -> Iterator[None]:
    """Serialise a parallel kernel launch unless the threading layer is known to be thread-safe."""
    if _layer_is_safe():
        yield
        return
    with _launch_lock:
        yield


def run_parallel(fn, *args):
    """``fn(*args)`` for a parallel kernel, serialised only if the threading layer is not thread-safe.

    The same rule as :func:`parallel_guard` without a context manager: on
    the per-call path of a 0.4 ms kernel, the guard's generator measured a
    few microseconds.
    """
    if _layer_is_safe():
        return fn(*args)
    with _launch_lock:
        return fn(*args)


def get_num_threads() -> int:
    """Number of threads numba's parallel kernels use."""
    return numba.get_num_threads()


def _num_threads_now() -> int:
    """``numba.get_num_threads()`` without its per-call lock once numba's threads are up.

    ``numba.get_num_threads`` takes a multiprocessing lock on every call;
    on the dispatcher's per-call path, right before a BLAS call, that
    measured +10 us on a 60 us matrix-vector product (1024 x 1024, 2
    threads). numba's own C getter (the one ``get_num_threads`` ends with)
    is used directly once the threads are launched; numba internals that
    have moved in some version fall back to the public call.
    """
    global _getter
    if _getter is not None:
        n = _getter()
        if n > 0:
            return n
    elif getattr(_npp, "_is_initialized", False):
        # Kept once found: two getattr lookups per call cost as much as the call itself (~0.1 us).
        _getter = getattr(_npp, "_get_num_threads", None)
        if _getter is not None:
            n = _getter()
            if n > 0:
                return n
    return numba.get_num_threads()


_getter = None


#: When a kernel with a parallel variant runs it: from this much work per call, in the
#: unit of each kernel family, and with at least two numba threads. Below it, a
#: parallel launch (and waking a sleeping worker) costs more than the split saves.
#: The spmm and spmv values sit above break-evens measured on the 2-core machine
#: (benchmarks/README.md, "Design record").
SERIAL_WORK = {
    "spmm": 1_000_000,        # multiply-adds (nnz x batch) of a batched sparse product
    "spmv": 32_000,           # nonzeros of a matrix-vector product, with a margin for a worker's wake-up
    "fused": 400_000,         # multiply-adds per call of the fused whole-model kernel (rows split)
    "masking": 1 << 15,       # matrix entries read by a masking kernel
    "activation_stats": 1 << 18,  # activations scored for neuron elimination
    "forest": 2,              # full row blocks (trees.compile._BLOCK rows each) of a forest traversal
}


def parallel_pays(kind: str, work: int, n_threads: int | None = None) -> bool:
    """Whether ``work`` of kernel family ``kind`` (a key of ``SERIAL_WORK``) runs its parallel variant."""
    n = _num_threads_now() if n_threads is None else n_threads
    return n >= 2 and work >= SERIAL_WORK[kind]


def _check_threads(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int,)) and not hasattr(n, "__index__"):
        raise TypeError(f"The 'n_threads' parameter must be a positive int. Got {n!r} instead.")
    n = int(n)
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"The 'n_threads' parameter must be an int in [1, {numba.config.NUMBA_NUM_THREADS}] "
            f"(the cores numba was started with). Got {n} instead."
        )
    return n


@contextlib.contextmanager
def thread_limit(n_threads: int | None) -> Iterator[int]:
    """Run the block with ``n_threads`` threads for BLAS (threadpoolctl) and numba alike.

    ``None`` leaves both as they are. Yields the numba thread count in force.
    """
    if n_threads is None:
        yield numba.get_num_threads()
        return
    n = _check_threads(n_threads)
    old = numba.get_num_threads()
    numba.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield n
    finally:
        numba.set_num_threads(old)


def set_num_threads(n_threads: int) -> None:
    """Set the thread count for numba kernels and every BLAS/OpenMP pool (threadpoolctl), globally."""
    n = _check_threads(n_threads)
    numba.set_num_threads(n)
    threadpool_limits(limits=n)


_blas_lock = threading.Lock()
_blas_single_users = 0
_blas_saved: list[tuple[object, int]] = []
_blas_libs: list | None = None


def _blas_controllers() -> list:
    global _blas_libs
    if _blas_libs is None:
        _blas_libs = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    return _blas_libs


@contextlib.contextmanager
def single_thread_blas() -> Iterator[None]:
    """Run the block with BLAS on one thread (process-wide, restored on exit).

    For small products: a multi-threaded BLAS call wakes worker threads that
    then spin-wait for more work and compete for the cores with the sparse
    kernels that run next (measured: a pruned MLP's forward pass on 2 threads
    went from 10 to 18 ms when its small dense output layer used 2 BLAS
    threads). A small product gains little from a second thread anyway.
    Nested and concurrent users are counted, so the count in force before the
    first one entered is restored when the last one leaves. Setting the count
    directly costs about 2 us; ``threadpool_limits`` costs about 100 us.
    """
    global _blas_single_users
    with _blas_lock:
        if _blas_single_users == 0:
            _blas_saved[:] = [(lib, lib.get_num_threads()) for lib in _blas_controllers()]
            for lib, n in _blas_saved:
                if n != 1:
                    lib.set_num_threads(1)
        _blas_single_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_single_users -= 1
            if _blas_single_users == 0:
                for lib, n in _blas_saved:
                    if n != 1:
                        lib.set_num_threads(n)
