"""The interpreter pool: one interpreter serves sequential callers on any thread; more only under concurrency."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from moodlens.engine.runtime import InterpreterPool


def borrowed_on_a_new_thread(pool: InterpreterPool) -> object:
    seen = []

    def use():
        with pool.borrow() as item:
            seen.append(item)

    t = threading.Thread(target=use)
    t.start()
    t.join()
    return seen[0]


def test_sequential_callers_on_other_threads_reuse_the_first_interpreter():
    pool = InterpreterPool(object)
    first = pool.peek()
    assert [borrowed_on_a_new_thread(pool) for _ in range(3)] == [first] * 3
    assert pool.built == 1


def test_concurrent_callers_each_get_their_own_and_the_extras_are_kept():
    pool = InterpreterPool(object)
    barrier = threading.Barrier(3)

    def use(_):
        with pool.borrow() as item:
            barrier.wait(timeout=5)  # all three hold one at the same time
            return id(item)

    with ThreadPoolExecutor(3) as ex:
        assert len(set(ex.map(use, range(3)))) == 3
    assert pool.built == 3
    with ThreadPoolExecutor(3) as ex:  # the next busy moment reuses them
        assert len(set(ex.map(use, range(3)))) == 3
    assert pool.built == 3


def test_a_broken_model_fails_when_the_pool_is_made():
    def broken():
        raise RuntimeError("no model")

    with pytest.raises(RuntimeError, match="no model"):
        InterpreterPool(broken)


def test_analyzer_threads_share_interpreters(astronaut_jpeg_bytes):
    from moodlens import Analyzer

    analyzer = Analyzer()
    for _ in range(3):
        t = threading.Thread(target=analyzer.analyze, args=(astronaut_jpeg_bytes,))
        t.start()
        t.join()
    assert analyzer.classifier._pool.built == 1
    assert all(m._pool.built == 1 for m in analyzer.detector._models.values())


def test_a_pool_that_is_not_fork_safe_builds_afresh_in_a_child_process():
    import os

    pool = InterpreterPool(object, fork_safe=False, eager=False)
    assert pool.built == 0  # nothing built up front: a forked child must not inherit a half-used net
    with pool.borrow() as parents:
        pass
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: is what it borrows its own?
        with pool.borrow() as item:
            os.write(write, b"own" if item is not parents and pool.built == 2 else b"inherited")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"own"
