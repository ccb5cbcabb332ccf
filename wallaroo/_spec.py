"""The immutable description of an application that ``build()`` returns.

Everything the runtime needs is normalised here: whatever form the user wrote
a step in (decorated function, class, instance), it arrives as plain callables
with a name.  The runtime imports these types; this module imports nothing
from the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class DecoderSpec:
    name: str
    header_length: int
    # A struct format for the header when it is known (decorated decoders);
    # then framing never calls back into Python per frame.
    length_fmt: str | None
    # For class-based decoders: payload_length(header_bytes) -> int.
    payload_length: Callable[[bytes], int] | None
    decode: Callable[[bytes], Any]


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    encode: Callable[[Any], Any]


@dataclass(frozen=True)
class SourceSpec:
    pipeline: str
    kind: str  # "tcp" | "kafka" | "gen"
    host: str
    port: str
    decoder: DecoderSpec
    config: Any = field(compare=False, repr=False)

    @property
    def address(self) -> str:
        if self.kind == "kafka":  # host holds the topic
            return f"kafka:{self.host}"
        if self.kind == "gen":  # host holds the generator's class
            return f"gen:{self.host}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SinkSpec:
    index: int  # in AppSpec.sinks (the application's order: not an identity)
    pipeline: str
    kind: str  # "tcp" | "kafka"
    host: str
    port: str
    encoder: EncoderSpec
    config: Any = field(compare=False, repr=False)
    position: int = 0  # in its pipeline's to_sink / to_sinks

    @property
    def identity(self) -> tuple[str, int]:
        """What the sink is, whatever else the application holds: its
        pipeline and its place among that pipeline's sinks.  Outputs,
        delivery positions and output streams are tied to it."""
        return (self.pipeline, self.position)

    @property
    def address(self) -> str:
        if self.kind == "kafka":  # host holds the topic
            return f"kafka:{self.host}"
        return f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        return (f"sink {self.position} of pipeline {self.pipeline!r} "
                f"({self.address})")


@dataclass(frozen=True)
class StateSpec:
    name: str
    factory: Callable[[], Any]
    class_name: str  # for messages and the recovery fingerprint
    partitioning: str  # "single" | "keyed" | "u64"
    partition_fn: Callable[[Any], Any] | None
    partition_name: str | None
    keys: tuple
    # a window step's state (the 0.6 API): state -> when it next fires (ns;
    # None: nothing open).  Its partitions are loaded at start and
    # scheduled to fire as the watermark passes them (runtime/timers.py).
    next_fire: Callable[[Any], int | None] | None = field(default=None,
                                                          compare=False)

    def fingerprint(self) -> dict:
        """What a resilience directory remembers about this state, so a restart
        with a different class or partitioning is refused instead of mixing."""
        return {
            "class": self.class_name,
            "partitioning": self.partitioning,
            "partition_function": self.partition_name,
            "declared_keys": [repr(k) for k in self.keys],
        }


@dataclass(frozen=True)
class StepSpec:
    name: str
    kind: str  # "computation" | "state"
    fn: Callable
    multi: bool
    parallel: bool = False
    state: str | None = None
    # False for the partitioning document's form, where the function returns
    # only its output and the state class travels with the decorator.
    save_flag: bool = True


@dataclass(frozen=True)
class PipelineSpec:
    index: int
    name: str
    source: SourceSpec
    steps: tuple[StepSpec, ...]
    sinks: tuple[int, ...]  # indices into AppSpec.sinks


@dataclass(frozen=True)
class AppSpec:
    name: str
    pipelines: tuple[PipelineSpec, ...]
    states: tuple[StateSpec, ...]
    sinks: tuple[SinkSpec, ...]
    # the application module's (serialize, deserialize), when it defines
    # both: used for messages between workers and for state snapshots
    serializer: tuple[Callable, Callable] | None = field(default=None, compare=False)

    def state(self, name: str) -> StateSpec:
        for s in self.states:
            if s.name == name:
                return s
        raise KeyError(name)

    def pipeline(self, name_or_index: str | int) -> PipelineSpec:
        if isinstance(name_or_index, int):
            return self.pipelines[name_or_index]
        for p in self.pipelines:
            if p.name == name_or_index:
                return p
        raise KeyError(f"no pipeline named {name_or_index!r}; "
                       f"pipelines are {[p.name for p in self.pipelines]}")

    def fingerprint(self) -> dict:
        return {
            "application": self.name,
            "states": {s.name: s.fingerprint() for s in self.states},
            "pipelines": [p.name for p in self.pipelines],
            "sinks": len(self.sinks),
            "sink_identities": [list(s.identity) for s in self.sinks],
        }

    def downstream_states(self) -> dict[str, frozenset[str]]:
        """For each state, every state that can receive (transitively) what a
        step on it emits.  When a partition of S is snapshotted, the dirty
        partitions of these states are snapshotted in the same commit, so
        replay never needs an output it cannot rebuild (DESIGN.md §4).  A state
        that a pipeline visits twice is downstream of itself."""
        direct: dict[str, set[str]] = {s.name: set() for s in self.states}
        for p in self.pipelines:
            names = [st.state for st in p.steps if st.kind == "state"]
            for i, s in enumerate(names):
                direct[s].update(names[i + 1:])
        closed: dict[str, frozenset[str]] = {}
        for s in direct:
            seen: set[str] = set()
            todo = list(direct[s])
            while todo:
                t = todo.pop()
                if t not in seen:
                    seen.add(t)
                    todo.extend(direct[t])
            closed[s] = frozenset(seen)
        return closed
