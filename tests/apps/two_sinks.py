"""Two pipelines, "a" and "b", each with its own source and sink, for the
tests of sinks by identity.  Input: u64 payloads; output per message: a line
"<pipeline>:<value>\\n".  Pipeline a uses the first --in/--out address and b
the second, whatever their order in the application: ``--swap`` builds b
first, ``--only-a`` leaves b out."""

import struct

import wallaroo


def application_setup(args):
    ins = wallaroo.tcp_parse_input_addrs(args)
    outs = wallaroo.tcp_parse_output_addrs(args)
    ab = wallaroo.ApplicationBuilder("two sinks")
    names = ["b", "a"] if "--swap" in args else ["a", "b"]
    if "--only-a" in args:
        names = ["a"]
    for name in names:
        i = "ab".index(name)
        ab.new_pipeline(name, wallaroo.TCPSourceConfig(ins[i][0], ins[i][1], decode))
        ab.to(tagger(name))
        ab.to_sink(wallaroo.TCPSinkConfig(outs[i][0], outs[i][1], encode))
    return ab.build()


def tagger(name):
    @wallaroo.computation(name=f"tag {name}")
    def tag(v):
        return f"{name}:{v}\n"
    return tag


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return struct.unpack(">Q", bs)[0]


@wallaroo.encoder
def encode(line):
    return line.encode()
