"""Kafka through Wallaroo 0.5's custom parsers: ``CustomKafkaSourceCLIParser``
and ``CustomKafkaSinkCLIParser`` read the ``--kafka_source_*`` and
``--kafka_sink_*`` options from ``args``.  The encoder returns the 0.5 shape
``(value, key, partition)``: partition 1 for every output.  Upper-cases
each record's value."""

import wallaroo


def application_setup(args):
    ab = wallaroo.ApplicationBuilder("kafka custom parsers")
    ab.new_pipeline("upper", wallaroo.CustomKafkaSourceCLIParser(args, decoder))
    ab.to(upper)
    ab.to_sink(wallaroo.CustomKafkaSinkCLIParser(args, encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode()


@wallaroo.computation(name="upper")
def upper(s):
    return s.upper()


@wallaroo.encoder
def encoder(s):
    return (s, "k-" + s, 1)
