"""Prints the args application_setup receives (for the CLI tests)."""

import json
import sys

import wallaroo


def application_setup(args):
    print("ARGS " + json.dumps(args), file=sys.stderr, flush=True)
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("args")
    ab.new_pipeline("p", wallaroo.TCPSourceConfig(in_host, in_port, decode))
    ab.to(upper)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode(bs):
    return bs.decode()


@wallaroo.computation("upper")
def upper(s):
    return s.upper()


@wallaroo.encoder
def encode(s):
    return s + "\n"
