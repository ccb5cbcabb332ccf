"""Reverse: a stateless application that reverses each line of text.

Input: Wallaroo frames (a big-endian u32 length, then the payload) whose
payload is UTF-8 text, e.g. the lines of a file sent with
``wallaroo send HOST:PORT --file words.txt``.  Output: each text reversed,
followed by a newline.

Written with the decorators, as in the Wallaroo Python API documentation.
"""

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Reverse Word")
    ab.new_pipeline("reverse",
                    wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(reverse)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.computation("reverse")
def reverse(data):
    return data[::-1]


@wallaroo.encoder
def encoder(data):
    # A str is sent as UTF-8.
    return data + "\n"
