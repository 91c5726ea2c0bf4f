"""mpo.runtime.unwrapped: the inner module of a wrapper, asked of accelerate once per wrapper."""

from __future__ import annotations

import gc
import weakref

import torch
from accelerate import Accelerator

from mpo.runtime import unwrapped


class CountingAccelerator:
    """An accelerator whose unwrap_model is accelerate's own, counted."""

    def __init__(self) -> None:
        self.inner, self.calls = Accelerator(cpu=True), 0

    def unwrap_model(self, model):
        self.calls += 1
        return self.inner.unwrap_model(model)


def test_unwrapped_is_the_wrapped_module_and_asks_accelerate_once_per_wrapper():
    acc = CountingAccelerator()
    module = torch.nn.Linear(2, 2)
    wrapper = torch.nn.DataParallel(module)  # CPU: no device ids, a plain container
    assert unwrapped(acc, wrapper) is module and unwrapped(acc, wrapper) is module
    assert unwrapped(acc, module) is module and unwrapped(acc, module) is module
    assert acc.calls == 2  # once for the wrapper, once for the bare module
    other = torch.nn.DataParallel(torch.nn.Linear(2, 2))
    assert unwrapped(acc, other) is other.module and acc.calls == 3  # a new wrapper is looked up


def test_unwrapped_keeps_nothing_alive():
    acc = CountingAccelerator()
    module = torch.nn.Linear(2, 2)
    wrapper = torch.nn.DataParallel(module)
    unwrapped(acc, wrapper)
    unwrapped(acc, module)
    gone = weakref.ref(module), weakref.ref(wrapper)
    del module, wrapper
    gc.collect()
    assert [r() for r in gone] == [None, None]
