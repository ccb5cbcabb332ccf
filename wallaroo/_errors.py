"""Errors raised while an application describes itself."""


class WallarooParameterError(ValueError):
    """An application was described wrongly: a bad decorator argument, a step
    out of place, a missing sink, a function of the wrong shape.

    The message always names the pipeline and step (or the decorated function)
    so the user can find the line to fix.  The name is the one the original
    Wallaroo Python API used, so applications that catch it keep working.
    """


WallarooParameterError.__module__ = "wallaroo"
