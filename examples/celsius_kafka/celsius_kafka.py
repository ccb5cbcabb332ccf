"""Celsius to Fahrenheit over Kafka, in the form of Wallaroo's own
celsius-kafka example: the source and the sink take their topics and
brokers from the command line through ``DefaultKafkaSourceCLIParser`` and
``DefaultKafkaSinkCLIParser``::

    wallaroo run examples/celsius_kafka/celsius_kafka.py \\
        --kafka_source_topic celsius --kafka_source_brokers 127.0.0.1:9092 \\
        --kafka_sink_topic fahrenheit --kafka_sink_brokers 127.0.0.1:9092

Input: records whose value is a temperature in degrees Celsius, either
text such as ``21.5`` or a 4-byte big-endian float32 (as Wallaroo's example
sent them).  Output: records whose value is the temperature in degrees
Fahrenheit as text, ``"%.2f"``, without a key.  A value that is neither
makes the decoder raise: that record is logged and skipped.
"""

import struct

import wallaroo


def application_setup(args):
    ab = wallaroo.ApplicationBuilder("Celsius to Fahrenheit with Kafka")
    ab.new_pipeline("convert temperature readings",
                    wallaroo.DefaultKafkaSourceCLIParser(decoder))
    ab.to(multiply)
    ab.to(add)
    ab.to_sink(wallaroo.DefaultKafkaSinkCLIParser(encoder))
    return ab.build()


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    try:
        return float(bs.decode("ascii"))
    except ValueError:
        if len(bs) == 4:
            return struct.unpack(">f", bs)[0]
        raise


@wallaroo.computation(name="multiply by 1.8")
def multiply(data):
    return data * 1.8


@wallaroo.computation(name="add 32")
def add(data):
    return data + 32


@wallaroo.encoder
def encoder(data):
    return ("%.2f" % data, None)
