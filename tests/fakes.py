"""Stand-ins shared by tests of measured decisions (floatcheck.py, allocation/guard.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


def fixed_errors(real: Callable, errors: dict[str, float]) -> Callable:
    """verify.measure with each named variant's relative output errors fixed (every output
    at errors[name]); other variants as `real` measures them."""
    def fake(models, *args, **kw):
        out = real(models, *args, **kw)
        for fid in out.values():
            for k, e in errors.items():
                if k in fid:
                    fid[k] = dataclasses.replace(fid[k],
                                                 rel_error={n: e for n in fid[k].rel_error})
        return out
    return fake
