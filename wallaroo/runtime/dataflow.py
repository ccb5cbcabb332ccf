"""Pipelines compiled into chains of plain Python closures.

Each step becomes one closure that calls the user's function and hands the
result to the next closure; the source loop calls the first one per frame.
No ``await``, no per-message allocation beyond what the user's functions
make, and ``try`` blocks (free in CPython 3.11+ unless something raises)
around each user call, so a failing step costs that message only
(DESIGN.md contract 6).

Two compilations of every pipeline exist:
- ``live``: outputs go to the per-sink lists of the current batch;
- ``rebuild`` (recovery replay): a state step applies a message only to a
  partition whose snapshot is older than the message's lsn, and outputs are
  dropped, since the outbox already holds them.
"""

from __future__ import annotations

import logging
import struct
from time import perf_counter
from typing import Any, Callable

from .._spec import AppSpec, PipelineSpec, StepSpec
from ..recovery.errors import StoreError
from .channels import HandOver
from .states import PartitionKeyError, StateSpace


class StepError(Exception):
    """A user function returned something the engine cannot use."""


class Context:
    """Per-message position shared by a pipeline's closures.

    ``cell[0]`` is the index of the frame being processed in its chunk; the
    source loop sets it.  ``base`` is the chunk's first lsn (used in rebuild
    mode).  ``fail(step, exc)`` records a failure of the current frame.
    ``created[0]`` counts the partitions the batch created (the state
    spaces add to it); a batch with a deadline stops taking messages once
    it reaches ``max_created``, or once the partitions it touched (the sets
    in ``touched``) reach ``max_touched`` (None: no bound).
    """

    __slots__ = ("cell", "base", "fail", "created", "max_created", "touched",
                 "max_touched")

    def __init__(self, fail: Callable[[str, BaseException], None]):
        self.cell = [0]
        self.base = 0
        self.fail = fail
        self.created = [0]
        self.max_created: int | None = None
        self.touched: list[set] = []
        self.max_touched: int | None = None


Push = Callable[[Any], None]


def _sink_stage(sinks: list[tuple[str, Callable, list, bool]], ctx: Context) -> Push:
    """Encode for each sink and append to its list of the batch.  A framed
    sink (one speaking the resumable protocol) gets each output behind its
    4-byte big-endian length, made here once: the outbox keeps the frames
    and a resend never re-frames them."""
    fail = ctx.fail
    if len(sinks) == 1 and not sinks[0][3]:
        ((name, encode, out, _),) = sinks
        append = out.append

        def push(item):
            try:
                b = encode(item)
            except Exception as e:
                fail(name, e)
                return
            if type(b) is not bytes:
                b = _coerce_bytes(name, b, fail)
                if b is None:
                    return
            append(b)
        push.fused = (name, encode, append)  # for _state_stage to inline
        return push

    pairs = [(name, encode, out.append, framed) for name, encode, out, framed in sinks]
    headers = _HEADERS

    def push_many(item):
        for name, encode, append, framed in pairs:
            try:
                b = encode(item)
            except Exception as e:
                fail(name, e)
                continue
            if type(b) is not bytes:
                b = _coerce_bytes(name, b, fail)
                if b is None:
                    continue
            if framed:
                n = len(b)
                h = headers.get(n)
                if h is None:
                    h = _FRAME.pack(n)
                    if n < 65536:
                        headers[n] = h
                append(h)
            append(b)
    return push_many


_FRAME = struct.Struct(">I")
_HEADERS: dict[int, bytes] = {}  # frame headers of the lengths seen so far


def _coerce_bytes(name: str, b: Any, fail) -> bytes | None:
    if isinstance(b, str):
        return b.encode("utf-8")
    if isinstance(b, (bytes, bytearray, memoryview)):
        return bytes(b)
    fail(name, StepError(f"encoder returned {type(b).__name__} {b!r:.80}, "
                         f"not bytes"))
    return None


def _drop(item) -> None:
    pass


def _computation_stage(step: StepSpec, nxt: Push, ctx: Context,
                       seen: list[int] | None) -> Push:
    """``seen[0]`` counts the messages the step takes (None: the source
    loop counts them for the first step, per slice)."""
    fn, name, fail = step.fn, step.name, ctx.fail
    if not step.multi:
        def push(item):
            try:
                r = fn(item)
            except Exception as e:
                fail(name, e)
                return
            if r is not None:
                nxt(r)
        if seen is None:
            return push

        def push_counted(item):
            seen[0] += 1
            push(item)
        return push_counted

    def push_multi(item):
        if seen is not None:
            seen[0] += 1
        try:
            r = fn(item)
        except Exception as e:
            fail(name, e)
            return
        if r is None:
            return
        if isinstance(r, (str, bytes, dict)) or not hasattr(r, "__iter__"):
            fail(name, StepError(f"compute_multi must return a list or None, "
                                 f"got {type(r).__name__}"))
            return
        for x in r:
            if x is not None:
                nxt(x)
    return push_multi


def _emit(step: StepSpec, nxt: Push, fail) -> Callable[[Any], None]:
    """What a state step does with its output."""
    if not step.multi:
        return nxt
    name = step.name

    def emit_multi(out):
        if isinstance(out, (str, bytes, dict)) or not hasattr(out, "__iter__"):
            fail(name, StepError(f"state_computation_multi must return "
                                 f"(list or None, save_state); got output "
                                 f"{type(out).__name__}"))
            return
        for x in out:
            if x is not None:
                nxt(x)
    return emit_multi


class Route:
    """Where the key groups of a cluster's states live: ``owners[group]``
    is a member index.  A message for another member is set aside by the
    state step that found it, with its key (so the owner does not compute
    it again), in that step's per-member lists; ``collect(member)`` takes
    them as (pipeline, step, keys, messages) groups, in each step's order.

    Live moves (live_moves.py): ``owners[group]`` is ``deferred`` (the
    index after the last member) while this worker waits for a group's
    hand-over; its messages are set aside in that slot (the batch's
    commit keeps them; replay drops them, like those for other workers).
    ``since[group]``: the lsn from which this worker owns a group it took
    live; replay applies none of the group's messages before it."""

    __slots__ = ("owners", "me", "members", "steps", "since", "deferred")

    def __init__(self, owners: list[int], me: int, members: int,
                 since: dict[int, int] | None = None):
        self.owners = owners
        self.me = me
        self.members = members
        self.deferred = members
        self.since = {} if since is None else since
        self.steps: list[tuple[int, int, list[list], list[list]]] = []

    def lists_for(self, pipeline: int, step: int) -> tuple[list[list], list[list]]:
        keys = [[] for _ in range(self.members + 1)]
        items = [[] for _ in range(self.members + 1)]
        self.steps.append((pipeline, step, keys, items))
        return keys, items

    def collect(self, member: int) -> list[tuple[int, int, list, list]]:
        out = []
        for p, s, keys, items in self.steps:
            if items[member]:
                out.append((p, s, keys[member], items[member]))
                keys[member], items[member] = [], []
        return out


def _warn_habit(step: StepSpec, r) -> bool:
    """A ``state_computation(name, state=Cls)`` function returns only its
    output; one that returned ``(output, True/False)`` out of habit gets
    one warning (the pair may be the output it means, so it is kept).
    Returns False: warned, stop looking."""
    logging.getLogger("wallaroo").warning(
        "step %r returned %.60r, a pair ending in a bool: a state computation "
        "declared with state=... returns only its output, so the whole pair is "
        "sent on as the output (and save_state is not read); return the output "
        "alone, or drop state=... to return (output, save_state).  Said once "
        "per step.", step.name, r)
    return False


def _state_stage(step: StepSpec, space: StateSpace, nxt: Push, ctx: Context,
                 rebuild: bool, seen: list[int], route: Route | None = None,
                 at: tuple[int, int] = (0, 0),
                 counted_by_source: bool = False) -> tuple[Push, Callable]:
    """-> (push(message), apply(key, message)).  ``route``: in a cluster, a
    message whose key group another worker owns goes there with its key, to
    continue from this step (``at``: pipeline, step) through ``apply``; in
    rebuild mode it is dropped (the original run sent it).  ``seen[0]``
    counts the messages the step takes here (not those sent on); with
    ``counted_by_source`` the one-worker ``push`` leaves that to the source
    loop (it is the first step)."""
    compute, name, fail = step.fn, step.name, ctx.fail
    parts = space.parts
    touched_add = space.touched.add
    save_add = space.to_save.add
    save_flag = step.save_flag
    emit = _emit(step, nxt, fail)
    part_fn = space.spec.partition_fn
    part_name = f"partition function {space.spec.partition_name}"
    create = space.create
    snap_lsn = space.snap_lsn
    cell = ctx.cell
    habit = [not save_flag]  # look for a habitual (output, bool) until warned

    # The body below is written three times: in apply(), inline in the
    # one-worker push(), and inline in the source loop of fused_slices(): a
    # function call per message is a few percent of the engine's time.
    # tests/test_api_errors.py runs each failure through push() and
    # through the fused loop.
    def apply(key, item):
        seen[0] += 1
        try:
            st = parts[key]
        except KeyError:
            try:
                st = create(key)
            except StoreError:
                raise  # the store's fault, not the message's: the worker stops
            except Exception as e:
                fail(part_name if isinstance(e, PartitionKeyError)
                     else f"state {space.name!r} constructor", e)
                return
        except TypeError:
            fail(part_name, PartitionKeyError(
                f"returned unhashable key {key!r:.80} "
                f"({type(key).__name__}); keys must support == and hash()"))
            return
        if rebuild and ctx.base + cell[0] <= snap_lsn.get(key, -1):
            return  # the snapshot already absorbed this message
        try:
            r = compute(item, st)
        except Exception as e:
            touched_add(key)
            fail(name, e)
            return
        touched_add(key)
        if save_flag:
            try:
                out, save = r
            except (TypeError, ValueError):
                fail(name, StepError(f"a state computation must return "
                                     f"(output, save_state), got {r!r:.80}"))
                return
            if save:
                save_add(key)
        else:
            out = r
            if habit[0] and type(r) is tuple and len(r) == 2 and type(r[1]) is bool:
                habit[0] = _warn_habit(step, r)
        if out is not None:
            emit(out)

    if route is not None:
        owners, me, since = route.owners, route.me, route.since
        peer_keys, peer_items = route.lists_for(*at)
        groups_get = space.groups.get
        group_of = space.group_of

        def route_key(key, item):
            try:
                g = groups_get(key)
                if g is None:
                    g = group_of(key)
            except TypeError:
                g = None  # unhashable: refused by apply
            if g is not None:
                o = owners[g]
                if o != me:
                    # another worker's, or waiting for its hand-over (the
                    # original run kept it: a rebuild drops it)
                    if not rebuild:
                        peer_keys[o].append(key)
                        peer_items[o].append(item)
                    return
                if since and rebuild and ctx.base + cell[0] < since.get(g, -1):
                    return  # before this worker took the group: in its snapshot
            apply(key, item)

        def push_routed(item):
            if part_fn is None:
                key = None
            else:
                try:
                    key = part_fn(item)
                except Exception as e:
                    fail(part_name, e)
                    return
            route_key(key, item)
        return push_routed, route_key

    # The step's outputs go to one plain sink (the usual shape): push() runs
    # the sink stage's body itself (~5% of the engine's time); else emit().
    fused = None if step.multi else getattr(nxt, "fused", None)
    sink_name, encode, append = fused or (None, None, None)

    def push(item):
        if part_fn is None:
            key = None
        else:
            try:
                key = part_fn(item)
            except Exception as e:
                fail(part_name, e)
                return
        try:
            st = parts[key]
        except KeyError:
            try:
                st = create(key)
            except StoreError:
                raise  # the store's fault, not the message's: the worker stops
            except Exception as e:
                fail(part_name if isinstance(e, PartitionKeyError)
                     else f"state {space.name!r} constructor", e)
                return
        except TypeError:
            fail(part_name, PartitionKeyError(
                f"returned unhashable key {key!r:.80} "
                f"({type(key).__name__}); keys must support == and hash()"))
            return
        if rebuild and ctx.base + cell[0] <= snap_lsn.get(key, -1):
            return  # the snapshot already absorbed this message
        try:
            r = compute(item, st)
        except Exception as e:
            touched_add(key)
            fail(name, e)
            return
        touched_add(key)
        if save_flag:
            try:
                out, save = r
            except (TypeError, ValueError):
                fail(name, StepError(f"a state computation must return "
                                     f"(output, save_state), got {r!r:.80}"))
                return
            if save:
                save_add(key)
        else:
            out = r
            if habit[0] and type(r) is tuple and len(r) == 2 and type(r[1]) is bool:
                habit[0] = _warn_habit(step, r)
        if out is None:
            return
        if encode is None:
            emit(out)
            return
        try:  # the sink stage (_sink_stage), inlined: a call fewer per message
            b = encode(out)
        except Exception as e:
            fail(sink_name, e)
            return
        if type(b) is not bytes:
            b = _coerce_bytes(sink_name, b, fail)
            if b is None:
                return
        append(b)

    def fused_slices(decode, decoder_name: str, counted: list[int]):
        """``make_runner``'s slice loop with push() inlined, for the usual
        shape: one worker, a state step first, its outputs to one plain
        sink (never in rebuild mode, which has no sink).  A call fewer per
        message: the in-process engine ran about 13% faster on the alphabet
        benchmark.  The body is push()'s, failure for failure."""
        dname = f"decoder {decoder_name}"

        def run_slice(payloads: list[bytes], start: int) -> None:
            i = start
            undecoded = 0
            for p in payloads:
                cell[0] = i
                i += 1
                try:
                    item = decode(p)
                except Exception as e:
                    fail(dname, e)
                    undecoded += 1
                    continue
                if part_fn is None:
                    key = None
                else:
                    try:
                        key = part_fn(item)
                    except Exception as e:
                        fail(part_name, e)
                        continue
                try:
                    st = parts[key]
                except KeyError:
                    try:
                        st = create(key)
                    except StoreError:
                        raise
                    except Exception as e:
                        fail(part_name if isinstance(e, PartitionKeyError)
                             else f"state {space.name!r} constructor", e)
                        continue
                except TypeError:
                    fail(part_name, PartitionKeyError(
                        f"returned unhashable key {key!r:.80} "
                        f"({type(key).__name__}); keys must support == and hash()"))
                    continue
                try:
                    r = compute(item, st)
                except Exception as e:
                    touched_add(key)
                    fail(name, e)
                    continue
                touched_add(key)
                if save_flag:
                    try:
                        out, save = r
                    except (TypeError, ValueError):
                        fail(name, StepError(f"a state computation must return "
                                             f"(output, save_state), got {r!r:.80}"))
                        continue
                    if save:
                        save_add(key)
                else:
                    out = r
                    if habit[0] and type(r) is tuple and len(r) == 2 and type(r[1]) is bool:
                        habit[0] = _warn_habit(step, r)
                if out is None:
                    continue
                try:
                    b = encode(out)
                except Exception as e:
                    fail(sink_name, e)
                    continue
                if type(b) is not bytes:
                    b = _coerce_bytes(sink_name, b, fail)
                    if b is None:
                        continue
                append(b)
            counted[0] += len(payloads) - undecoded
        return run_slice

    if counted_by_source:
        if encode is not None:
            push.fuse = fused_slices  # for make_runner
        return push, apply

    def push_counted(item):
        seen[0] += 1
        push(item)
    return push_counted, apply


def compile_pipeline(app: AppSpec, pipeline: PipelineSpec,
                     spaces: dict[str, StateSpace], out_lists: list[list[bytes]],
                     ctx: Context, rebuild: bool,
                     framed: frozenset[int] = frozenset(),
                     route: Route | None = None,
                     counts: list | None = None) -> list[Push]:
    """The closures of the pipeline: ``[i]`` runs step i and the rest
    (``[0]`` takes what the decoder made; the last is the sink stage); a
    state step's entry is a pair (push(message), apply(key, message)),
    the second for messages another worker routed here with their key.
    ``framed``: the sinks whose outputs are kept as protocol frames;
    ``route``: the cluster's placement (None: one worker, every key
    here); ``counts``: gets ``(pipeline, step, [messages the step took])``
    per step."""
    if rebuild:
        nxt: Push = _drop
    elif pipeline.sinks:
        nxt = _sink_stage([(f"encoder {app.sinks[i].encoder.name} of "
                            f"{app.sinks[i].label}",
                            app.sinks[i].encoder.encode, out_lists[i],
                            i in framed)
                           for i in pipeline.sinks], ctx)
    else:
        nxt = _drop
    entries: list = [nxt]
    for i in range(len(pipeline.steps) - 1, -1, -1):
        step = pipeline.steps[i]
        seen = [0]
        if counts is not None:
            counts.append((pipeline.name, step.name, seen))
        by_source = i == 0 and first_counted_by_source(pipeline, route)
        if step.kind == "state":
            nxt, apply = _state_stage(step, spaces[step.state], nxt, ctx, rebuild,
                                      seen, route, (pipeline.index, i),
                                      counted_by_source=by_source)
            entries.append((nxt, apply))
        else:
            nxt = _computation_stage(step, nxt, ctx, None if by_source else seen)
            entries.append(nxt)
    entries.reverse()
    if counts is not None:  # in the pipeline's order
        counts[len(counts) - len(pipeline.steps):] = \
            counts[len(counts) - len(pipeline.steps):][::-1]
    return entries


def first_counted_by_source(pipeline: PipelineSpec, route: Route | None) -> bool:
    """The first step's messages are counted by the source loop, per slice
    (what it decoded), so nothing is added per message; not when a cluster
    routes them on from a first state step (they are counted where applied)."""
    return bool(pipeline.steps) and (route is None or pipeline.steps[0].kind != "state")


def first(entries: list) -> Push:
    """The pipeline's entry for what its decoder made."""
    e = entries[0]
    return e[0] if isinstance(e, tuple) else e


def _bounds(ctx: Context) -> Callable[[int], int]:
    """``room(size)``: how many of the next ``size`` messages a batch may
    still take under ``ctx.max_created`` and ``ctx.max_touched`` (0: none;
    each message creates and touches at most one partition per state step,
    so the next slice is cut to what is left)."""
    created, cap = ctx.created, ctx.max_created
    touched, tcap = ctx.touched, ctx.max_touched

    def room(size: int) -> int:
        if cap is not None:
            size = min(size, max(0, cap - created[0]))
        if tcap is not None:
            size = min(size, max(0, tcap - sum(map(len, touched))))
        return size
    return room


# A batch with a deadline runs its messages in slices and reads the clock
# between slices only: the first slice is small, later ones are sized from
# the measured time per message to end near the deadline.
FIRST_SLICE = 8
MAX_SLICE = 4096


def make_peer_runner(entries: list[list[Push]], decode_unit: Callable,
                     ctx: Context, fail_unit: Callable,
                     take: Callable | None = None) -> Callable[..., int]:
    """The per-chunk loop of peer batches: each unit (a peer batch) holds
    groups of (pipeline, step, keys, messages) that continue at that state
    step's routing (which applies them, or sends them on if their group
    moved).  Like
    ``make_runner``, it stops between units once ``deadline`` passed;
    ``skip`` messages at the front are not run (replay from inside a row).
    A unit that cannot be decoded fails its messages (``fail_unit``).  A
    live move's hand-over (one message) goes to ``take(hand_over)``; replay
    passes none (the take's commit holds what it did)."""
    cell = ctx.cell
    bounds = _bounds(ctx)

    def run(units: list[bytes], base: int, deadline: float | None = None,
            skip: int = 0) -> int:
        ctx.base = base
        i = 0  # message index in the chunk
        done = 0
        for unit in units:
            try:
                groups = decode_unit(unit)
            except Exception as e:
                n = fail_unit(unit, i, e)
                i += n
                done += 1
                continue
            if type(groups) is HandOver:
                if i >= skip and take is not None:
                    cell[0] = i
                    take(groups)
                i += 1
                done += 1
                continue
            for p, s, keys, items in groups:
                apply = entries[p][s][1]
                for key, item in zip(keys, items):
                    if i >= skip:
                        cell[0] = i
                        apply(key, item)
                    i += 1
            done += 1
            if deadline is not None and (perf_counter() >= deadline
                                         or bounds(1) == 0):
                break
        return done
    return run


def make_runner(decode: Callable[[bytes], Any], decoder_name: str, first: Push,
                ctx: Context, seen: list[int] | None = None) -> Callable[..., int]:
    """The per-chunk loop: decode each payload and push it down the chain.

    ``run(payloads, base, deadline=None)`` returns how many payloads it
    processed: all of them without a deadline, otherwise at least one, and
    no more once ``time.perf_counter()`` passed ``deadline`` (so a slow
    application cannot hold the loop for a whole batch) or the batch
    created ``ctx.max_created`` partitions (each new partition is a row
    its commit writes).  ``seen``: the first step's count, which gets what
    was decoded, per slice."""
    cell = ctx.cell
    fail = ctx.fail
    bounds = _bounds(ctx)
    name = f"decoder {decoder_name}"

    counted = [0] if seen is None else seen

    fuse = getattr(first, "fuse", None)  # the first step's loop, inlined
    if fuse is not None:
        run_slice = fuse(decode, decoder_name, counted)
    else:
        def run_slice(payloads: list[bytes], start: int) -> None:
            i = start
            undecoded = 0
            for p in payloads:
                cell[0] = i
                i += 1
                try:
                    d = decode(p)
                except Exception as e:
                    fail(name, e)
                    undecoded += 1
                    continue
                first(d)
            counted[0] += len(payloads) - undecoded

    def run(payloads: list[bytes], base: int, deadline: float | None = None) -> int:
        ctx.base = base
        n = len(payloads)
        if deadline is None:
            run_slice(payloads, 0)
            return n
        i, size = 0, FIRST_SLICE
        while i < n:
            end = min(n, i + size)
            t0 = perf_counter()
            run_slice(payloads[i:end] if (i or end < n) else payloads, i)
            t1 = perf_counter()
            done, i = end - i, end
            if t1 >= deadline:
                break
            per = (t1 - t0) / done
            size = MAX_SLICE if per <= 0 else max(1, min(MAX_SLICE, int(
                (deadline - t1) / per / 2) or 1))
            size = bounds(size)
            if size == 0:
                break
        return i
    return run
