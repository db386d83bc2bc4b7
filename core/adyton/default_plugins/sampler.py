"""The default sampler: used unless another plugin's ``sampler`` hook answers."""

from __future__ import annotations

from ..hookspecs import hookimpl
from ..sampling import DefaultSampler


@hookimpl(trylast=True)
def sampler(request, kernel):
    return DefaultSampler(request)
