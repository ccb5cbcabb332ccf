"""``ApplicationBuilder``: records the user's calls, and ``build()`` checks
them and returns an immutable ``AppSpec``."""

from __future__ import annotations

import pickle
from typing import Any

from . import _kafka_cli as kafka
from . import _normalize as norm
from ._configs import GenSourceConfig, TCPSinkConfig, TCPSourceConfig
from ._errors import WallarooParameterError
from ._spec import (AppSpec, DecoderSpec, PipelineSpec, SinkSpec, SourceSpec,
                    StateSpec, StepSpec)

_U64_MAX = 2 ** 64 - 1

# what a generator source's messages are logged as: each value pickled,
# behind a 4-byte big-endian length (connectors/gen_source.py)
GENERATED = DecoderSpec(name="generator source", header_length=4,
                        length_fmt=">I", payload_length=None, decode=pickle.loads)


class _Pipeline:
    def __init__(self, index: int, name: str, source_config: Any):
        self.index = index
        self.name = name
        self.source_config = source_config
        self.steps: list[tuple[str, tuple]] = []  # (method, args)
        self.sinks: list[Any] | None = None
        self.done = False


class ApplicationBuilder:
    """Describe an application: ``new_pipeline``, steps, a sink, ``build()``.

    Calls are recorded as they come; ``build()`` validates them all and
    raises ``WallarooParameterError`` naming the pipeline and step at fault.
    Every method returns the builder, so calls can be chained.
    """

    def __init__(self, name):
        self._name = name
        self._pipelines: list[_Pipeline] = []
        self._errors: list[str] = []
        self._current: _Pipeline | None = None

    # -- recording -------------------------------------------------------
    def _step(self, method: str, *args) -> "ApplicationBuilder":
        p = self._current
        if p is None:
            self._errors.append(
                f"{method}(): called before new_pipeline(); every step "
                f"belongs to a pipeline")
        elif p.sinks is not None or p.done:
            self._errors.append(
                f"pipeline {p.name!r}: {method}() after the pipeline was "
                f"closed by {'to_sink' if p.sinks is not None else 'done'}(); "
                f"start a new pipeline with new_pipeline()")
        else:
            p.steps.append((method, args))
        return self

    def new_pipeline(self, name, source_config):
        prev = self._current
        if prev is not None and prev.sinks is None and not prev.done:
            self._errors.append(
                f"pipeline {prev.name!r} is not closed: end it with to_sink(), "
                f"to_sinks() or done() before new_pipeline({name!r})")
        self._current = _Pipeline(len(self._pipelines), name, source_config)
        self._pipelines.append(self._current)
        return self

    def to(self, computation):
        return self._step("to", computation)

    def to_parallel(self, computation):
        return self._step("to_parallel", computation)

    def to_stateful(self, computation, state_class, state_name):
        return self._step("to_stateful", computation, state_class, state_name)

    def to_state_partition(self, computation, state, state_partition_name,
                           partition_function, partition_keys=None):
        return self._step("to_state_partition", computation, state,
                          state_partition_name, partition_function,
                          partition_keys)

    def to_state_partition_u64(self, computation, state_builder,
                               state_partition_name, partition_function,
                               partition_keys=None):
        return self._step("to_state_partition_u64", computation, state_builder,
                          state_partition_name, partition_function,
                          partition_keys)

    def to_sink(self, sink_config):
        return self._close_with_sinks("to_sink", [sink_config])

    def to_sinks(self, sink_configs):
        if not isinstance(sink_configs, (list, tuple)):
            p = self._current
            self._errors.append(
                f"pipeline {p.name if p else '?'!r}: to_sinks() takes a list "
                f"of sink configs, got {sink_configs!r}")
            return self
        return self._close_with_sinks("to_sinks", list(sink_configs))

    def _close_with_sinks(self, method, configs):
        p = self._current
        if p is None:
            self._errors.append(f"{method}(): called before new_pipeline()")
        elif p.sinks is not None or p.done:
            self._errors.append(
                f"pipeline {p.name!r}: {method}() on a pipeline that is already "
                f"closed")
        elif not configs:
            self._errors.append(f"pipeline {p.name!r}: {method}() with no sinks")
        else:
            p.sinks = configs
        return self

    def done(self):
        p = self._current
        if p is None:
            self._errors.append("done(): called before new_pipeline()")
        else:
            p.done = True
        return self

    # -- validation ------------------------------------------------------
    def build(self) -> AppSpec:
        errors = list(self._errors)
        if not isinstance(self._name, str) or not self._name:
            errors.append(f"ApplicationBuilder(name): name must be a non-empty "
                          f"string, got {self._name!r}")
        if not self._pipelines:
            errors.append("the application has no pipeline: call "
                          "new_pipeline(name, source_config)")
        states: dict[str, tuple[StateSpec, str]] = {}
        sinks: list[SinkSpec] = []
        pipelines: list[PipelineSpec] = []
        names: set[str] = set()
        for p in self._pipelines:
            try:
                pipelines.append(self._build_pipeline(p, states, sinks, names))
            except WallarooParameterError as e:
                errors.append(str(e))
        if errors:
            raise WallarooParameterError(
                f"application {self._name!r} is not valid:\n  - "
                + "\n  - ".join(errors))
        return AppSpec(name=self._name, pipelines=tuple(pipelines),
                       states=tuple(s for s, _ in states.values()),
                       sinks=tuple(sinks))

    def _build_pipeline(self, p: _Pipeline, states, sinks, names) -> PipelineSpec:
        where = f"pipeline {p.name!r}"
        if not isinstance(p.name, str) or not p.name:
            raise WallarooParameterError(
                f"new_pipeline(name): name must be a non-empty string, "
                f"got {p.name!r}")
        if p.name in names:
            raise WallarooParameterError(
                f"{where}: another pipeline already has this name")
        names.add(p.name)
        source = source_spec(p.source_config, p.name, where)
        steps = []
        for i, (method, args) in enumerate(p.steps, start=1):
            steps.append(self._build_step(p, i, method, args, states))
        sink_indices = []
        if p.sinks is None:
            if not p.done:
                raise WallarooParameterError(
                    f"{where} has no sink: end it with to_sink(config) or "
                    f"to_sinks([configs]), or with done() if its state is "
                    f"all it keeps")
            if not any(s.kind == "state" for s in steps):
                raise WallarooParameterError(
                    f"{where} has no sink and no state step, so everything it "
                    f"computes would be discarded: add to_sink(config)")
        else:
            for position, cfg in enumerate(p.sinks):
                sink_indices.append(len(sinks))
                sinks.append(sink_spec(cfg, len(sinks), p.name, where, position))
        return PipelineSpec(index=p.index, name=p.name, source=source,
                            steps=tuple(steps), sinks=tuple(sink_indices))

    def _build_step(self, p, i, method, args, states) -> StepSpec:
        where = f"pipeline {p.name!r}, step {i} {method}()"
        if method in ("to", "to_parallel"):
            (obj,) = args
            if isinstance(obj, norm.d.StateComputation) and obj.state is not None:
                # The partitioning document's form: the state class travels
                # with the decorator; the step's name names its state.
                name, fn, multi, save_flag, state_cls = norm.state_computation(obj, where)
                self._register_state(states, where, name, state_cls, "single",
                                     None, None)
                return StepSpec(name=name, kind="state", fn=fn, multi=multi,
                                state=name, save_flag=save_flag)
            name, fn, multi = norm.computation(obj, where)
            return StepSpec(name=name, kind="computation", fn=fn, multi=multi,
                            parallel=(method == "to_parallel"))
        if method == "to_stateful":
            comp, state_obj, state_name = args
            name, fn, multi, save_flag, _ = norm.state_computation(comp, where)
            self._register_state(states, where, state_name, state_obj, "single",
                                 None, None)
            return StepSpec(name=name, kind="state", fn=fn, multi=multi,
                            state=state_name, save_flag=save_flag)
        comp, state_obj, state_name, part_obj, keys = args
        kind = "u64" if method == "to_state_partition_u64" else "keyed"
        name, fn, multi, save_flag, _ = norm.state_computation(comp, where)
        self._register_state(states, where, state_name, state_obj, kind,
                             part_obj, keys)
        return StepSpec(name=name, kind="state", fn=fn, multi=multi,
                        state=state_name, save_flag=save_flag)

    def _register_state(self, states, where, state_name, state_obj, kind,
                        part_obj, keys) -> None:
        if not isinstance(state_name, str) or not state_name:
            raise WallarooParameterError(
                f"{where}: the state name must be a non-empty string, got "
                f"{state_name!r}")
        factory, class_name = norm.state_factory(state_obj, where)
        part_fn = part_name = None
        if kind != "single":
            part_fn, part_name = norm.partition_function(part_obj, where)
            keys = _check_keys(keys, kind, where)
        else:
            keys = (None,)
        spec = StateSpec(name=state_name, factory=factory, class_name=class_name,
                         partitioning=kind, partition_fn=part_fn,
                         partition_name=part_name, keys=keys)
        seen = states.get(state_name)
        if seen is None:
            states[state_name] = (spec, where)
            return
        other, other_where = seen
        if other.class_name != spec.class_name:
            raise WallarooParameterError(
                f"{where}: state {state_name!r} is already used with state "
                f"{other.class_name} at {other_where}, not {spec.class_name}; "
                f"one state name is one state: use another name")
        if (other.partitioning, other.partition_name, other.keys) != \
                (spec.partitioning, spec.partition_name, spec.keys):
            raise WallarooParameterError(
                f"{where}: state {state_name!r} is partitioned differently at "
                f"{other_where} ({_describe(other)}) than here "
                f"({_describe(spec)}); a shared state needs the same "
                f"partitioning everywhere")


def source_spec(cfg, pipeline: str, where: str,
                call: str = "new_pipeline()") -> SourceSpec:
    """The source of pipeline ``pipeline`` from its config (both APIs)."""
    if isinstance(cfg, TCPSourceConfig):
        dec = norm.decoder(cfg.decoder, f"{where} source")
        return SourceSpec(pipeline=pipeline, kind="tcp", host=cfg.host,
                          port=cfg.port, decoder=dec, config=cfg)
    if isinstance(cfg, GenSourceConfig):
        gen = cfg.generator
        return SourceSpec(pipeline=pipeline, kind="gen",
                          host=type(gen).__qualname__, port="",
                          decoder=GENERATED, config=cfg)
    if isinstance(cfg, kafka.SOURCE_FORMS):
        # A KafkaSourceConfig or a CLI parser: always a checked
        # KafkaSourceConfig, brokers as (host, port) str pairs.
        cfg = _named(kafka.source_config, cfg, f"{where} source")
        dec = norm.decoder(cfg.decoder, f"{where} source")
        return SourceSpec(pipeline=pipeline, kind="kafka", host=str(cfg.topic),
                          port="", decoder=dec, config=cfg)
    raise WallarooParameterError(
        f"{where}: {call} needs a source config such as "
        f"wallaroo.TCPSourceConfig(host, port, decoder), got {cfg!r}")


def sink_spec(cfg, index: int, pipeline: str, where: str,
              position: int) -> SinkSpec:
    """Sink ``position`` of pipeline ``pipeline`` (``index`` among all the
    application's sinks) from its config (both APIs)."""
    if isinstance(cfg, TCPSinkConfig):
        enc = norm.encoder(cfg.encoder, f"{where} sink {index}")
        return SinkSpec(index=index, pipeline=pipeline, kind="tcp",
                        host=cfg.host, port=cfg.port, encoder=enc,
                        config=cfg, position=position)
    if isinstance(cfg, kafka.SINK_FORMS):
        cfg = _named(kafka.sink_config, cfg, f"{where} sink {index}")
        enc = norm.encoder(cfg.encoder, f"{where} sink {index}")
        return SinkSpec(index=index, pipeline=pipeline, kind="kafka",
                        host=str(cfg.topic), port="", encoder=enc,
                        config=cfg, position=position)
    raise WallarooParameterError(
        f"{where}: to_sink() needs a sink config such as "
        f"wallaroo.TCPSinkConfig(host, port, encoder), got {cfg!r}")


def _named(resolve, cfg, where: str):
    """``resolve(cfg)``, its errors prefixed with ``where``."""
    try:
        return resolve(cfg)
    except WallarooParameterError as e:
        raise WallarooParameterError(f"{where}: {e}") from None


def _describe(s: StateSpec) -> str:
    if s.partitioning == "single":
        return "not partitioned"
    return f"{s.partitioning} by {s.partition_name}, {len(s.keys)} declared keys"


def _check_keys(keys, kind: str, where: str) -> tuple:
    if keys is None:
        return ()
    if isinstance(keys, (str, bytes)) or not hasattr(keys, "__iter__"):
        raise WallarooParameterError(
            f"{where}: partition_keys must be a list of keys, got {keys!r}")
    out = []
    for k in keys:
        try:
            hash(k)
        except TypeError:
            raise WallarooParameterError(
                f"{where}: partition key {k!r} is not hashable; keys must "
                f"support == and hash() (use a tuple instead of a list, a "
                f"frozenset instead of a set)") from None
        if kind == "u64" and (isinstance(k, bool) or not isinstance(k, int)
                              or not 0 <= k <= _U64_MAX):
            raise WallarooParameterError(
                f"{where}: to_state_partition_u64 keys must be ints in "
                f"0..2**64-1, got {k!r}")
        out.append(k)
    if len(set(out)) != len(out):
        dup = next(k for k in out if out.count(k) > 1)
        raise WallarooParameterError(
            f"{where}: partition key {dup!r} is declared more than once")
    return tuple(out)


ApplicationBuilder.__module__ = "wallaroo"
