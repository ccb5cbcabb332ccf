"""Counting by key over Kafka, with resilience: each record's value is a
key (text); the output, produced with that key, is ``<key>:<count so far>``.
Run it with ``--resilience-dir`` and it survives SIGKILL with exact
counts: the offsets each batch consumed are committed with the counts.

    wallaroo run examples/kafka_count/kafka_count.py --resilience-dir ./state \\
        --kafka_source_topic words --kafka_source_brokers 127.0.0.1:9092 \\
        --kafka_sink_topic counts --kafka_sink_brokers 127.0.0.1:9092

The options are read with ``kafka_parse_source_options`` and
``kafka_parse_sink_options``, Wallaroo 0.5's command-line helpers.
"""

import wallaroo


def application_setup(args):
    topic, brokers, log_level = wallaroo.kafka_parse_source_options(args)
    (out_topic, out_brokers, out_log_level, max_produce_buffer_ms,
     max_message_size) = wallaroo.kafka_parse_sink_options(args)

    ab = wallaroo.ApplicationBuilder("Counting by key over Kafka")
    ab.new_pipeline("count keys", wallaroo.KafkaSourceConfig(
        topic, brokers, log_level, decoder))
    ab.to_state_partition(count, Counts, "counts", partition)
    ab.to_sink(wallaroo.KafkaSinkConfig(
        out_topic, out_brokers, out_log_level, max_produce_buffer_ms,
        max_message_size, encoder))
    return ab.build()


class Counts(object):
    def __init__(self):
        self.counts = {}


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.partition
def partition(key):
    return key


@wallaroo.state_computation(name="count")
def count(key, state):
    n = state.counts.get(key, 0) + 1
    state.counts[key] = n
    return ((key, n), True)


@wallaroo.encoder
def encoder(data):
    key, n = data
    return ("%s:%d" % (key, n), key)
