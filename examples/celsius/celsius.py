"""Celsius to Fahrenheit: a stateless pipeline of two computations.

Input: Wallaroo frames whose payload is a text line holding a temperature in
degrees Celsius (e.g. the lines of ``temperatures.txt`` sent with
``wallaroo send HOST:PORT --file temperatures.txt``).  Output: the
temperature in degrees Fahrenheit, ``"%.2f\\n"``.

A line that is not a number makes the decoder raise: that message is logged
and skipped, and the rest of the stream carries on.
"""

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Celsius to Fahrenheit")
    ab.new_pipeline("convert temperature readings",
                    wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(multiply)
    ab.to(add)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return float(bs.decode("utf-8"))


@wallaroo.computation(name="multiply by 1.8")
def multiply(data):
    return data * 1.8


@wallaroo.computation(name="add 32")
def add(data):
    return data + 32


@wallaroo.encoder
def encoder(data):
    return "%.2f\n" % data
