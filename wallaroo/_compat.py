"""Names that moved between the Python versions this package supports."""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # pragma: no cover - trio's dependency on 3.10
    from exceptiongroup import BaseExceptionGroup as BaseExceptionGroup
else:
    import builtins
    BaseExceptionGroup = builtins.BaseExceptionGroup
