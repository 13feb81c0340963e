"""Measuring helpers shared by the benchmarks: peak memory of a call and its time."""

from __future__ import annotations

import threading
import time

import torch
from torch.profiler import ProfilerActivity, profile


def peak_bytes(fn) -> int:
    """Peak bytes allocated by ``fn`` above what existed before: the GPU allocator's peak on CUDA, else the
    running sum of the CPU profiler's allocation events."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for event in prof.profiler.kineto_results.events():
        if event.name() == "[memory]":
            live += event.nbytes()
            peak = max(peak, live)
    return peak


def now() -> float:
    """``time.perf_counter()`` once the GPU's queued work is done."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def seconds(fn, repeats: int = 2, warm_up=None) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up call (of ``warm_up`` if given: a shorter run
    of the same work)."""
    (warm_up or fn)()
    best = float("inf")
    for _ in range(repeats):
        start = now()
        fn()
        best = min(best, now() - start)
    return best


def peak_rss_during(fn) -> tuple[object, int]:
    """``fn()``'s result and the peak resident bytes above those before it, sampled every millisecond."""
    import psutil

    process = psutil.Process()
    before = peak = process.memory_info().rss
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, max(peak, process.memory_info().rss) - before


def peak_memory_during(fn) -> tuple[object, int]:
    """``fn()``'s result and its peak memory: the GPU allocator's peak above what was allocated before on CUDA,
    else the peak resident bytes above those before (``peak_rss_during``; cheap enough for a whole edit)."""
    if not torch.cuda.is_available():
        return peak_rss_during(fn)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    return result, torch.cuda.max_memory_allocated() - before
