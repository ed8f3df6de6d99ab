"""compiled: numba's cache where a directory allows it, a plain compile where none does."""

import numba
import numpy as np
import pytest
from numba.core import config as numba_config

from sylm_data.compiled import compiled


class NowhereLocator:
    """A cache locator that finds no writable place, as on a read-only image with no home."""

    @classmethod
    def from_function(cls, py_func, py_file):
        return None


def total(values):
    result = 0
    for value in values:
        result += value
    return result


def test_a_loop_compiles_uncached_where_no_cache_directory_is_writable(monkeypatch):
    monkeypatch.setattr(numba_config, "CACHE_LOCATOR_CLASSES", f"{__name__}.NowhereLocator")
    with pytest.raises(RuntimeError, match="cannot cache"):  # what numba alone does there
        numba.njit(cache=True)(total)
    assert compiled(total)(np.arange(5)) == 10
