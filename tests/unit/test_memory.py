"""One copy of each CPU matmul kernel, unless the operator chose otherwise."""

from __future__ import annotations

import os

from app.engine.models.memory import keep_one_copy_of_cpu_kernels


def test_ideep_kernel_cache_is_turned_off_by_default(monkeypatch):
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    keep_one_copy_of_cpu_kernels()
    assert os.environ["LRU_CACHE_CAPACITY"] == "1"


def test_an_operators_own_setting_wins(monkeypatch):
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "256")
    keep_one_copy_of_cpu_kernels()
    assert os.environ["LRU_CACHE_CAPACITY"] == "256"

