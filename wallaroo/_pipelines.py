"""The Wallaroo 0.6 API: partial pipelines (``wallaroo.source(...)``,
``.to``, ``.key_by``, ``.collect``, ``.merge``, ``.to_sink(s)``) and
``wallaroo.build_application``.

A pipeline object is immutable: each method returns a new one that points
at the one it was called on, so a program can keep and reuse any of them.
``build_application`` walks the graph back from the sinks and writes every
path from a source to the sinks as one linear pipeline of the engine's
``AppSpec`` (the same one ``ApplicationBuilder.build()`` returns), so 0.6
applications run on one worker and on a cluster like any other:

- after ``key_by(f)`` messages travel as ``Keyed(f(value), value)``
  (``_keyed.py``); stateless steps see the value and keep the key; state
  computations and windows have one partition per key, on the worker that
  owns the key's group;
- a state computation or window with no ``key_by`` before it (or after
  ``collect()``) has one partition (``_keyed.COLLECT_KEY``);
- a step after ``merge`` is shared by the merged paths: one state.
"""

from __future__ import annotations

from typing import Any

from . import _decorators as d
from . import _normalize as norm
from ._builder import sink_spec, source_spec
from ._errors import WallarooParameterError
from ._keyed import Keyed, partition_key, unkeyed_key
from ._spec import (AppSpec, EncoderSpec, PipelineSpec, SinkSpec, StateSpec,
                    StepSpec)
from ._windows import Windows


class _Node:
    __slots__ = ("kind", "parents", "arg", "label")

    def __init__(self, kind: str, parents: tuple, arg: Any, label: str):
        self.kind = kind  # source | to | key_by | collect | merge | sinks
        # arg: (name, config) of a source, the step of a "to", the key
        # extractor of a "key_by", the sink configs of "sinks"
        self.parents = parents
        self.arg = arg
        self.label = label


class Pipeline:
    """A partial pipeline, or (after ``to_sink``/``to_sinks``) a complete one."""

    __slots__ = ("_node",)

    def __init__(self, node: _Node):
        self._node = node

    @property
    def complete(self) -> bool:
        return self._node.kind == "sinks"

    def _then(self, kind: str, arg: Any, label: str) -> "Pipeline":
        if self.complete:
            raise WallarooParameterError(
                f"{label}: the pipeline already ends in its sinks "
                f"({self._node.label}); add steps before to_sink()")
        return Pipeline(_Node(kind, (self._node,), arg, label))

    def to(self, computation) -> "Pipeline":
        return self._then("to", computation, f"to({_name_of(computation)})")

    def key_by(self, key_extractor) -> "Pipeline":
        if not isinstance(key_extractor, d.Partition):
            raise WallarooParameterError(
                f"key_by({key_extractor!r}): key_by takes a function "
                f"decorated with @wallaroo.key_extractor")
        return self._then("key_by", key_extractor.fn,
                          f"key_by({norm.qualified_name(key_extractor.fn)})")

    def collect(self) -> "Pipeline":
        return self._then("collect", None, "collect()")

    def merge(self, other) -> "Pipeline":
        if not isinstance(other, Pipeline):
            raise WallarooParameterError(
                f"merge({other!r}): merge takes another partial pipeline "
                f"(from wallaroo.source(...))")
        if self.complete or other.complete:
            raise WallarooParameterError(
                "merge(): both pipelines must be partial (without sinks)")
        return Pipeline(_Node("merge", (self._node, other._node), None, "merge()"))

    def to_sink(self, sink_config) -> "Pipeline":
        return self._then("sinks", [sink_config], "to_sink()")

    def to_sinks(self, sink_configs) -> "Pipeline":
        if not isinstance(sink_configs, (list, tuple)) or not sink_configs:
            raise WallarooParameterError(
                f"to_sinks({sink_configs!r}): to_sinks takes a non-empty list "
                f"of sink configs")
        return self._then("sinks", list(sink_configs), "to_sinks()")

    def __repr__(self) -> str:
        return f"<wallaroo pipeline ending in {self._node.label}>"


def _name_of(obj) -> str:
    if isinstance(obj, (d.Computation, d.StateComputation)):
        return repr(obj.name())
    if isinstance(obj, Windows):
        return obj.describe()
    return repr(obj)


def source(name, source_config) -> Pipeline:
    """A partial pipeline that starts at a source."""
    if not isinstance(name, str) or not name:
        raise WallarooParameterError(
            f"wallaroo.source(name, source_config): name must be a non-empty "
            f"string, got {name!r}")
    # checked now, so the error points at this call
    source_spec(source_config, name, f"wallaroo.source({name!r})",
                call="wallaroo.source()")
    return Pipeline(_Node("source", (), (name, source_config), f"source {name!r}"))


def build_application(application_name, pipeline) -> AppSpec:
    """The application ``application_setup`` returns, from a complete
    pipeline (one that ends in ``to_sink`` or ``to_sinks``)."""
    if not isinstance(application_name, str) or not application_name:
        raise WallarooParameterError(
            f"build_application(application_name, pipeline): the name must "
            f"be a non-empty string, got {application_name!r}")
    if not isinstance(pipeline, Pipeline):
        raise WallarooParameterError(
            f"build_application({application_name!r}, ...): the pipeline must "
            f"come from wallaroo.source(...)...to_sink(config), got "
            f"{pipeline!r:.80}")
    if not pipeline.complete:
        raise WallarooParameterError(
            f"build_application({application_name!r}, ...): the pipeline has "
            f"no sink (it ends in {pipeline._node.label}); end it with "
            f".to_sink(config) or .to_sinks([configs])")
    return _Translation(application_name).run(pipeline._node)


class _Translation:
    def __init__(self, app: str):
        self.app = app
        self.states: dict[str, tuple[StateSpec, _Node]] = {}
        self.state_names: dict[int, str] = {}  # id(node) -> its state's name
        self.sinks: list[SinkSpec] = []

    def run(self, end: _Node) -> AppSpec:
        paths = _paths(end)
        seen: dict[int, str] = {}
        pipelines = []
        for path in paths:
            src = path[0]
            name = src.arg[0]
            if id(src) in seen:
                raise WallarooParameterError(
                    f"application {self.app!r}: source {name!r} reaches the "
                    f"sinks by two paths (one pipeline used twice, e.g. "
                    f"merged with itself or with a pipeline built from it); "
                    f"a source feeds one path")
            if name in seen.values():
                raise WallarooParameterError(
                    f"application {self.app!r}: two sources are named "
                    f"{name!r}; source names must be unique")
            seen[id(src)] = name
            pipelines.append(self._pipeline(len(pipelines), name, path))
        return AppSpec(name=self.app, pipelines=tuple(pipelines),
                       states=tuple(s for s, _ in self.states.values()),
                       sinks=tuple(self.sinks))

    def _pipeline(self, index: int, name: str, path: list[_Node]) -> PipelineSpec:
        where = f"pipeline {name!r}"
        src = source_spec(path[0].arg[1], name, where, call="wallaroo.source()")
        keyed = False
        steps: list[StepSpec] = []
        for node in path[1:-1]:
            at = f"{where}, {node.label}"
            if node.kind == "key_by":
                steps.append(StepSpec(name=node.label, kind="computation",
                                      fn=_key_by(node.arg, keyed), multi=False))
                keyed = True
            elif node.kind == "collect":
                if keyed:
                    steps.append(StepSpec(name="collect()", kind="computation",
                                          fn=_drop_key, multi=False))
                keyed = False
            elif node.kind == "to":
                steps.append(self._step(node, at, keyed))
        sink_indices = []
        for position, cfg in enumerate(path[-1].arg):
            spec = sink_spec(cfg, len(self.sinks), name, where, position)
            if keyed:
                enc = spec.encoder
                spec = SinkSpec(index=spec.index, pipeline=spec.pipeline,
                                kind=spec.kind, host=spec.host, port=spec.port,
                                encoder=EncoderSpec(enc.name, _unkeyed(enc.encode)),
                                config=spec.config, position=spec.position)
            sink_indices.append(len(self.sinks))
            self.sinks.append(spec)
        return PipelineSpec(index=index, name=name, source=src,
                            steps=tuple(steps), sinks=tuple(sink_indices))

    def _step(self, node: _Node, at: str, keyed: bool) -> StepSpec:
        obj = node.arg
        if isinstance(obj, Windows):
            state = self._state(node, at, obj.name() + " windows", obj.new_state,
                                f"wallaroo.windows: {obj.describe()}", keyed)
            return StepSpec(name=state, kind="state",
                            fn=obj.step_function(state, keyed), multi=True,
                            state=state, save_flag=False)
        if isinstance(obj, d.StateComputation):
            if obj.state is None:
                raise WallarooParameterError(
                    f"{at}: state computation {obj.name()!r} has no state "
                    f"class; in a 0.6 pipeline declare it with "
                    f"@wallaroo.state_computation(name=..., state=StateClass)")
            factory, class_name = norm.state_factory(obj.state, at)
            state = self._state(node, at, obj.name(), factory, class_name, keyed)
            return StepSpec(name=obj.name(), kind="state",
                            fn=_keep_key_state(obj.fn, obj.multi, keyed),
                            multi=obj.multi, state=state, save_flag=False)
        if isinstance(obj, d.Computation):
            return StepSpec(name=obj.name(), kind="computation",
                            fn=_keep_key(obj.fn, obj.multi) if keyed
                            else obj.fn, multi=obj.multi)
        raise WallarooParameterError(
            f"{at}: to() takes a function decorated with "
            f"@wallaroo.computation, @wallaroo.computation_multi, "
            f"@wallaroo.state_computation(name, state), "
            f"@wallaroo.state_computation_multi(name, state), or windows "
            f"(wallaroo.count_windows(n).over(Agg), "
            f"wallaroo.range_windows(r).over(Agg)); got {obj!r:.80}")

    def _state(self, node: _Node, at: str, name: str, factory, class_name: str,
               keyed: bool) -> str:
        """The state of a step node (one per node, shared by the paths a
        merge joins), named after the step; another node with the same
        name is refused (0.6: "the name ... must be unique")."""
        known = self.state_names.get(id(node))
        if known is not None:
            return known
        other = self.states.get(name)
        if other is not None:
            raise WallarooParameterError(
                f"{at}: another step is already named {name!r} "
                f"({other[1].label}); step names must be unique (give the "
                f"aggregation a name() or the computation another name)")
        fn = partition_key if keyed else unkeyed_key
        spec = StateSpec(name=name, factory=factory, class_name=class_name,
                         partitioning="keyed", partition_fn=fn,
                         partition_name=norm.qualified_name(fn), keys=(),
                         next_fire=node.arg.next_fire
                         if isinstance(node.arg, Windows) else None)
        self.states[name] = (spec, node)
        self.state_names[id(node)] = name
        return name


def _paths(node: _Node) -> list[list[_Node]]:
    """Every path from a source to ``node``, in the order the merges name
    them."""
    if node.kind == "source":
        return [[node]]
    if node.kind == "merge":
        return _paths(node.parents[0]) + _paths(node.parents[1])
    return [p + [node] for p in _paths(node.parents[0])]


def key_of(key):
    """A key extractor's result as a partition key: ``str`` and ``bytes``
    as they are; an ``int`` becomes ``chr(int)`` (as Wallaroo did)."""
    if type(key) is str or type(key) is bytes:
        return key
    if isinstance(key, int) and not isinstance(key, bool) and 0 <= key < 0x110000:
        return chr(key)
    raise TypeError(f"a key extractor must return a str or bytes key (or an "
                    f"int, which becomes chr(int)), got {type(key).__name__} "
                    f"{key!r:.60}")


def _key_by(extract, keyed: bool):
    if keyed:
        def rekey(m):
            v = m.value
            return Keyed(key_of(extract(v)), v)
        return rekey

    def key(v):
        return Keyed(key_of(extract(v)), v)
    return key


def _drop_key(m):
    return m.value


def _keep_key(fn, multi: bool):
    if not multi:
        def one(m):
            r = fn(m.value)
            return None if r is None else Keyed(m.key, r)
        return one

    def many(m):
        return _keyed_outputs(m.key, fn(m.value))
    return many


def _keep_key_state(fn, multi: bool, keyed: bool):
    if not keyed:
        return fn
    if not multi:
        def one(m, st):
            r = fn(m.value, st)
            return None if r is None else Keyed(m.key, r)
        return one

    def many(m, st):
        return _keyed_outputs(m.key, fn(m.value, st))
    return many


def _keyed_outputs(key, r):
    """A multi step's outputs for a keyed message, each with the key."""
    if r is None or isinstance(r, (str, bytes, dict)) or not hasattr(r, "__iter__"):
        return r  # None: nothing; not a list: the engine refuses it, naming the step
    return [Keyed(key, x) for x in r if x is not None]


def _unkeyed(encode):
    def enc(m):
        return encode(m.value if type(m) is Keyed else m)
    return enc


source.__module__ = "wallaroo"
build_application.__module__ = "wallaroo"
