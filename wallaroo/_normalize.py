"""Turn whatever form a user wrote a step in into the plain callables of
``_spec``: decorated functions, the older classes, or instances of them.

Every error names where the object was used (``where``), e.g.
``pipeline 'alphabet', step 1 to_state_partition``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from . import _decorators as d
from ._errors import WallarooParameterError
from ._spec import DecoderSpec, EncoderSpec


def qualified_name(obj: Any) -> str:
    target = obj if (inspect.isclass(obj) or inspect.isfunction(obj)
                     or inspect.ismethod(obj)) else type(obj)
    if inspect.ismethod(target):
        target = target.__func__
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


def _instantiate(obj: Any, where: str, what: str) -> Any:
    """The class-based API passes classes or instances; make an instance."""
    if not inspect.isclass(obj):
        return obj
    try:
        return obj()
    except Exception as e:
        raise WallarooParameterError(
            f"{where}: could not create the {what} {obj.__qualname__}() "
            f"(it must be constructible without arguments): {e!r}") from None


def _method(obj: Any, names: tuple[str, ...]) -> tuple[str, Callable] | None:
    for n in names:
        m = getattr(obj, n, None)
        if callable(m):
            return n, m
    return None


def _check_callable(fn: Callable, arity: int, where: str, label: str) -> None:
    try:
        d._check_arity(fn, arity, f"{where}: {label}")
    except WallarooParameterError as e:
        raise WallarooParameterError(str(e)) from None


def _display_name(obj: Any, default: str) -> str:
    n = getattr(obj, "name", None)
    if callable(n):
        try:
            v = n()
        except TypeError:
            v = None
        if isinstance(v, str) and v:
            return v
    return default


def computation(obj: Any, where: str) -> tuple[str, Callable, bool]:
    """-> (name, fn(data), multi) for a stateless step."""
    if isinstance(obj, d.Computation):
        return obj.name(), obj.fn, obj.multi
    if isinstance(obj, d.StateComputation):
        raise WallarooParameterError(
            f"{where}: {obj.name()!r} is a state computation; add it with "
            f"to_stateful(...) or to_state_partition(...)")
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        raise WallarooParameterError(
            f"{where}: {obj.__qualname__} is a plain function; decorate it "
            f"with @wallaroo.computation('name') (one output) or "
            f"@wallaroo.computation_multi('name') (a list of outputs)")
    inst = _instantiate(obj, where, "computation")
    found = _method(inst, ("compute", "compute_multi"))
    if found is None:
        raise WallarooParameterError(
            f"{where}: {inst!r} is not a computation: expected a function "
            f"decorated with @wallaroo.computation or an object with "
            f"name() and compute(data) / compute_multi(data)")
    meth, fn = found
    name = _display_name(inst, type(inst).__name__)
    _check_callable(fn, 1, where, f"{name}.{meth}")
    return name, fn, meth == "compute_multi"


def state_computation(obj: Any, where: str) -> tuple[str, Callable, bool, bool, Any]:
    """-> (name, fn(data, state), multi, save_flag, state_class_from_decorator)."""
    if isinstance(obj, d.StateComputation):
        return obj.name(), obj.fn, obj.multi, obj.state is None, obj.state
    if isinstance(obj, d.Computation):
        raise WallarooParameterError(
            f"{where}: {obj.name()!r} is a stateless computation; decorate it "
            f"with @wallaroo.state_computation to use it with state")
    if inspect.isfunction(obj):
        raise WallarooParameterError(
            f"{where}: {obj.__qualname__} is a plain function; decorate it "
            f"with @wallaroo.state_computation('name')")
    inst = _instantiate(obj, where, "state computation")
    found = _method(inst, ("compute", "compute_multi"))
    if found is None:
        raise WallarooParameterError(
            f"{where}: {inst!r} is not a state computation: expected a "
            f"function decorated with @wallaroo.state_computation or an "
            f"object with name() and compute(data, state)")
    meth, fn = found
    name = _display_name(inst, type(inst).__name__)
    _check_callable(fn, 2, where, f"{name}.{meth}")
    return name, fn, meth == "compute_multi", True, None


def state_factory(obj: Any, where: str) -> tuple[Callable[[], Any], str]:
    """-> (factory(), class name) from a state class or a builder instance."""
    if inspect.isclass(obj):
        try:
            inspect.signature(obj).bind()
        except TypeError:
            raise WallarooParameterError(
                f"{where}: state class {obj.__qualname__} must be "
                f"constructible without arguments (Wallaroo builds each "
                f"state partition with {obj.__qualname__}())") from None
        except ValueError:
            pass
        return obj, qualified_name(obj)
    build = getattr(obj, "build", None)
    if callable(build):
        _check_callable(build, 0, where, f"{type(obj).__qualname__}.build")
        return build, qualified_name(obj)
    if callable(obj):
        _check_callable(obj, 0, where, "state factory")
        return obj, qualified_name(obj)
    raise WallarooParameterError(
        f"{where}: {obj!r} is not a state: pass a state class or a builder "
        f"object with build()")


def partition_function(obj: Any, where: str) -> tuple[Callable, str]:
    """-> (fn(data) -> key, name)."""
    if isinstance(obj, d.Partition):
        return obj.fn, qualified_name(obj.fn)
    if inspect.isfunction(obj):
        _check_callable(obj, 1, where, "partition function")
        return obj, qualified_name(obj)
    inst = _instantiate(obj, where, "partition function")
    fn = getattr(inst, "partition", None)
    # str and bytes have a .partition() of their own: not what is meant
    if not callable(fn) or type(inst).__module__ == "builtins":
        raise WallarooParameterError(
            f"{where}: {inst!r} is not a partition function: expected a "
            f"function decorated with @wallaroo.partition or an object with "
            f"partition(data)")
    _check_callable(fn, 1, where, f"{type(inst).__qualname__}.partition")
    return fn, qualified_name(inst)


def decoder(obj: Any, where: str) -> DecoderSpec:
    if isinstance(obj, d.Decoder):
        return DecoderSpec(name=obj.__qualname__, header_length=obj.header_length(),
                           length_fmt=obj.length_fmt, payload_length=None,
                           decode=obj.fn)
    inst = _instantiate(obj, where, "decoder")
    missing = [m for m in ("header_length", "payload_length", "decode")
               if not callable(getattr(inst, m, None))]
    if missing:
        raise WallarooParameterError(
            f"{where}: {inst!r} is not a decoder (missing {', '.join(missing)}): "
            f"expected a function decorated with @wallaroo.decoder or an object "
            f"with header_length(), payload_length(bs) and decode(bs)")
    name = type(inst).__qualname__
    try:
        hl = inst.header_length()
    except Exception as e:
        raise WallarooParameterError(
            f"{where}: decoder {name}.header_length() raised {e!r}") from None
    if isinstance(hl, bool) or not isinstance(hl, int) or hl <= 0:
        raise WallarooParameterError(
            f"{where}: decoder {name}.header_length() must return a positive "
            f"int, got {hl!r}")
    _check_callable(inst.payload_length, 1, where, f"{name}.payload_length")
    _check_callable(inst.decode, 1, where, f"{name}.decode")
    return DecoderSpec(name=name, header_length=hl, length_fmt=None,
                       payload_length=inst.payload_length, decode=inst.decode)


def encoder(obj: Any, where: str) -> EncoderSpec:
    if isinstance(obj, d.Encoder):
        return EncoderSpec(name=obj.__qualname__, encode=obj.fn)
    inst = _instantiate(obj, where, "encoder")
    fn = getattr(inst, "encode", None)
    if not callable(fn):
        raise WallarooParameterError(
            f"{where}: {inst!r} is not an encoder: expected a function "
            f"decorated with @wallaroo.encoder or an object with encode(data)")
    name = type(inst).__qualname__
    _check_callable(fn, 1, where, f"{name}.encode")
    return EncoderSpec(name=name, encode=fn)
