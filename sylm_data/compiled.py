"""Plain loops compiled with numba, for the per-word and per-byte rules that numpy can only do in
several passes. Their machine code is cached between processes where a directory allows it
(`NUMBA_CACHE_DIR`, else beside the module, else the user's cache directory); where none does,
each process compiles them again on first use (about 6 s for all on 2 cores, against 0.35 s to
load them cached) instead of failing."""

import numba


def compiled(function):
    """`function` compiled by numba (nopython), cached if it can be."""
    try:
        return numba.njit(cache=True)(function)
    except RuntimeError as error:  # numba's "cannot cache function ...: no locator available"
        if "cannot cache" not in str(error):
            raise
        return numba.njit(function)
