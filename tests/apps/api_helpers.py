"""Small pieces shared by the API tests: a text decoder and encoder, source
and sink configs, and ``run()``, which pushes messages through an
application in-process with ``wallaroo.testing.Driver``."""

from __future__ import annotations

import struct

import wallaroo
from wallaroo.testing import Driver


@wallaroo.decoder(header_length=4, length_fmt=">I")
def text_decoder(bs):
    return bs.decode("utf-8")


@wallaroo.encoder
def line_encoder(data):
    return "%s\n" % (data,)


def source(decoder=text_decoder):
    return wallaroo.TCPSourceConfig("127.0.0.1", 0, decoder)


def sink(encoder=line_encoder):
    return wallaroo.TCPSinkConfig("127.0.0.1", 0, encoder)


def frames(payloads, fmt=">I") -> bytes:
    """Wallaroo frames of ``payloads`` (str is encoded as UTF-8)."""
    out = []
    for p in payloads:
        if isinstance(p, str):
            p = p.encode("utf-8")
        out.append(struct.pack(fmt, len(p)) + p)
    return b"".join(out)


def start(spec) -> Driver:
    d = Driver(spec)
    d.start()
    return d


def run(spec, messages, pipeline=0):
    """Feed ``messages`` (str or bytes payloads, framed ``>I``) to one
    pipeline, run one batch; -> (driver, batch)."""
    d = start(spec)
    d.feed(pipeline, frames=frames(messages))
    batch = d.run_batch()
    return d, batch


def lines(driver, sink_index=0) -> list[str]:
    """What a sink received, as text lines."""
    return driver.received(sink_index).decode("utf-8").splitlines()


def one_step_app(add_step, *, name="app", decoder=text_decoder,
                 encoder=line_encoder):
    """An application with one pipeline ``"p"``: ``add_step(ab)`` adds the
    steps between the source and the sink."""
    ab = wallaroo.ApplicationBuilder(name)
    ab.new_pipeline("p", source(decoder))
    add_step(ab)
    ab.to_sink(sink(encoder))
    return ab.build()
