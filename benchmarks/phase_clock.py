"""Wall-clock seconds by phase, summed over a run (the CPU runs synchronously, so wall time is compute
time): forward hooks time modules, wrappers time methods, and each interval is booked under the clock's
current ``label`` (the part of the run being measured) and a phase name."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class PhaseClock:
    """Seconds per (label, phase)."""

    def __init__(self, label: str = "run") -> None:
        self.label = label
        self.seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self._starts: dict[int, float] = {}

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[self.label][phase] += seconds

    def _timed_forward(self, phase: Callable[[object, dict], str | None]):
        """(pre, post) forward hooks with kwargs: the module's forward time under ``phase(module, kwargs)``;
        a module whose phase is None is not timed."""

        def pre(module, args, kwargs):
            if phase(module, kwargs) is not None:
                self._starts[id(module)] = time.perf_counter()

        def post(module, args, kwargs, output):
            name = phase(module, kwargs)
            if name is not None:
                self.add(name, time.perf_counter() - self._starts.pop(id(module)))

        return pre, post

    def time_every_module(self, phase: Callable[[object, dict], str | None]) -> None:
        """Time the forward of every module of every model from now on (global hooks: models built later,
        such as inside a trainer's constructor, are timed too)."""
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        pre, post = self._timed_forward(phase)
        register_module_forward_pre_hook(lambda m, a: pre(m, a, {}))
        register_module_forward_hook(lambda m, a, o: post(m, a, {}, o))

    @contextmanager
    def time_modules(self, modules: list, phase: Callable[[object, dict], str | None]) -> Iterator[None]:
        """Time the forward of ``modules`` inside the block."""
        pre, post = self._timed_forward(phase)
        handles = [
            h
            for module in modules
            for h in (
                module.register_forward_pre_hook(pre, with_kwargs=True),
                module.register_forward_hook(post, with_kwargs=True),
            )
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def wrap(self, obj, method: str, phase: str) -> None:
        """Time every call of ``obj.method`` under ``phase``."""
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.add(phase, time.perf_counter() - start)

        setattr(obj, method, timed)
