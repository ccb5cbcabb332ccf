"""The decorators of the Wallaroo Python API.

Each decorator returns a small object that remembers the user's function and
how it is to be called.  Calling the object calls the function, so users can
unit-test their steps directly; the builder recognises the objects and the
older class-based forms alike (see ``_normalize``).
"""

from __future__ import annotations

import functools
import inspect
import struct
from typing import Any, Callable

from ._errors import WallarooParameterError


def _check_arity(fn: Callable, arity: int, what: str) -> None:
    """Fail at decoration time if ``fn`` cannot be called with ``arity``
    positional arguments; the message names the function and decorator."""
    if not callable(fn):
        raise WallarooParameterError(
            f"{what} must decorate a function, got {fn!r}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature
        return
    try:
        sig.bind(*range(arity))
    except TypeError:
        name = getattr(fn, "__qualname__", repr(fn))
        plural = "argument" if arity == 1 else "arguments"
        raise WallarooParameterError(
            f"{what}: function {name}{sig} must take exactly {arity} "
            f"positional {plural}") from None


class _Wrapped:
    """Base of the decorated objects: callable like the function it wraps."""

    _kind = "function"

    def __init__(self, fn: Callable):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __call__(self, *args):
        return self.fn(*args)

    def __repr__(self) -> str:
        return f"<wallaroo {self._kind} {getattr(self.fn, '__qualname__', self.fn)!r}>"


class Computation(_Wrapped):
    """A stateless step made by ``@wallaroo.computation`` or
    ``@wallaroo.computation_multi``."""

    _kind = "computation"

    def __init__(self, fn: Callable, name: str, multi: bool):
        super().__init__(fn)
        self._name = name
        self.multi = multi

    def name(self) -> str:  # the class-based API's accessor
        return self._name


class StateComputation(_Wrapped):
    """A stateful step made by ``@wallaroo.state_computation`` or
    ``@wallaroo.state_computation_multi``.

    With ``state=StateClass`` (the partitioning document's form) the state
    class travels with the step and the function returns only its output.
    """

    _kind = "state computation"

    def __init__(self, fn: Callable, name: str, multi: bool, state: Any = None):
        super().__init__(fn)
        self._name = name
        self.multi = multi
        self.state = state

    def name(self) -> str:
        return self._name


class Partition(_Wrapped):
    """A partition function (``@wallaroo.partition`` or
    ``@wallaroo.key_extractor``): message -> partition key."""

    _kind = "partition function"

    def partition(self, data):
        return self.fn(data)


class Decoder(_Wrapped):
    """A source decoder made by ``@wallaroo.decoder``."""

    _kind = "decoder"

    def __init__(self, fn: Callable, header_length: int, length_fmt: str):
        super().__init__(fn)
        self._header_length = header_length
        self.length_fmt = length_fmt
        self._struct = struct.Struct(length_fmt)

    # The class-based decoder protocol, for code that calls it directly.
    def header_length(self) -> int:
        return self._header_length

    def payload_length(self, bs: bytes) -> int:
        return self._struct.unpack(bs)[0]

    def decode(self, bs: bytes):
        return self.fn(bs)


class Encoder(_Wrapped):
    """A sink encoder made by ``@wallaroo.encoder``."""

    _kind = "encoder"

    def encode(self, data):
        return self.fn(data)


def _named(decorator: str, name, make: Callable[[Callable, str], Any]):
    """Support ``@d("name")``, ``@d(name="name")`` and bare ``@d``."""
    if callable(name) and not isinstance(name, str):
        fn = name
        return make(fn, fn.__name__)
    if not isinstance(name, str) or not name:
        raise WallarooParameterError(
            f"@wallaroo.{decorator}(name): name must be a non-empty string, "
            f"got {name!r}")
    return lambda fn: make(fn, name)


def computation(name):
    """Decorate ``f(data) -> output`` (``None`` filters the message)."""
    def make(fn, step_name):
        _check_arity(fn, 1, f"@wallaroo.computation({step_name!r})")
        return Computation(fn, step_name, multi=False)
    return _named("computation", name, make)


def computation_multi(name):
    """Decorate ``f(data) -> [outputs] | None``; each item travels on alone."""
    def make(fn, step_name):
        _check_arity(fn, 1, f"@wallaroo.computation_multi({step_name!r})")
        return Computation(fn, step_name, multi=True)
    return _named("computation_multi", name, make)


def state_computation(name, state=None):
    """Decorate ``f(data, state) -> (output, save_state)``.

    With ``state=StateClass`` the function returns only its output."""
    def make(fn, step_name):
        _check_arity(fn, 2, f"@wallaroo.state_computation({step_name!r})")
        return StateComputation(fn, step_name, multi=False, state=state)
    return _named("state_computation", name, make)


def state_computation_multi(name, state=None):
    """Decorate ``f(data, state) -> ([outputs] | None, save_state)``."""
    def make(fn, step_name):
        _check_arity(fn, 2, f"@wallaroo.state_computation_multi({step_name!r})")
        return StateComputation(fn, step_name, multi=True, state=state)
    return _named("state_computation_multi", name, make)


def partition(fn):
    """Decorate ``f(data) -> key`` choosing the state partition of a message."""
    _check_arity(fn, 1, "@wallaroo.partition")
    return Partition(fn)


def key_extractor(fn):
    """Decorate ``f(data) -> key``; the partitioning document's name for
    ``@wallaroo.partition``."""
    _check_arity(fn, 1, "@wallaroo.key_extractor")
    return Partition(fn)


def decoder(header_length=4, length_fmt=">I"):
    """Decorate ``f(payload: bytes) -> data``.

    Each message on the wire is a header of ``header_length`` bytes, unpacked
    with the struct format ``length_fmt`` to the payload length, then the
    payload, which is what ``f`` receives."""
    if callable(header_length) and not isinstance(header_length, int):
        return decoder()(header_length)  # bare @wallaroo.decoder
    if isinstance(header_length, bool) or not isinstance(header_length, int) \
            or header_length <= 0:
        raise WallarooParameterError(
            f"@wallaroo.decoder: header_length must be a positive int, "
            f"got {header_length!r}")
    try:
        size = struct.calcsize(length_fmt)
    except (struct.error, TypeError) as e:
        raise WallarooParameterError(
            f"@wallaroo.decoder: length_fmt {length_fmt!r} is not a struct "
            f"format: {e}") from None
    if size != header_length:
        raise WallarooParameterError(
            f"@wallaroo.decoder: length_fmt {length_fmt!r} unpacks {size} "
            f"bytes but header_length is {header_length}")
    try:
        probe = struct.unpack(length_fmt, bytes(size))
    except struct.error as e:  # pragma: no cover - calcsize agreed
        raise WallarooParameterError(f"@wallaroo.decoder: {e}") from None
    if len(probe) != 1 or not isinstance(probe[0], int):
        raise WallarooParameterError(
            f"@wallaroo.decoder: length_fmt {length_fmt!r} must unpack to "
            f"one integer (the payload length)")

    def wrap(fn):
        _check_arity(fn, 1, "@wallaroo.decoder")
        return Decoder(fn, header_length, length_fmt)
    return wrap


def encoder(fn):
    """Decorate ``f(data) -> bytes`` (a ``str`` is sent as UTF-8)."""
    _check_arity(fn, 1, "@wallaroo.encoder")
    return Encoder(fn)


for _obj in (computation, computation_multi, state_computation,
             state_computation_multi, partition, key_extractor, decoder,
             encoder):
    _obj.__module__ = "wallaroo"
del _obj
