"""Word count in the Wallaroo 0.6 API (partial pipelines, ``key_by``).

The same input and output as ``word_count.py`` (Wallaroo frames of UTF-8
text in; one ``word => count`` line per word occurrence out), written the
0.6 way: a ``computation_multi`` splits each message into words, ``key_by``
makes the word the key, and a state computation keeps one count per word,
on the worker that owns the word's key group.

    wallaroo run word_count_06.py --in 127.0.0.1:7010 --out 127.0.0.1:7002
"""

import wallaroo

PUNCTUATION = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    lines = wallaroo.source("Split and Count",
                            wallaroo.TCPSourceConfig(in_host, in_port, decode_lines))
    pipeline = (lines
                .to(split)
                .key_by(extract_word)
                .to(count_word)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_count)))
    return wallaroo.build_application("Word Count Application", pipeline)


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decode_lines(bs):
    return bs.decode("utf-8")


@wallaroo.computation_multi(name="split into words")
def split(data):
    words = []
    for line in data.split("\n"):
        clean_line = line.lower().strip(PUNCTUATION)
        for word in clean_line.split(" "):
            clean_word = word.strip(PUNCTUATION)
            if clean_word:
                words.append(clean_word)
    return words


@wallaroo.key_extractor
def extract_word(word):
    return word


class WordTotal(object):
    def __init__(self):
        self.count = 0


@wallaroo.state_computation(name="count word", state=WordTotal)
def count_word(word, total):
    total.count += 1
    return "%s => %d" % (word, total.count)


@wallaroo.encoder
def encode_count(line):
    return line + "\n"
