"""Alphabet: a stateful vote counter, written with classes.

The application of "Writing Your Own Wallaroo Python Stateful Application",
unchanged apart from this docstring: it already runs on Python 3 (``struct``
unpacks the letter as a 1-byte ``bytes``, and packs it back the same way).

Input: Wallaroo frames whose payload is one letter and a big-endian u32 vote
count (struct ``>sI``); ``make_votes.py`` writes a file of them for
``wallaroo send HOST:PORT --frames votes.bin``.  Output: per message, the
letter's new total: a 4-byte length (9), the letter, a big-endian u64
(struct ``>IsQ``).

All letters share one state object (``AllVotes``) named "letter state".
"""

import struct
import pickle  # noqa: F401  (the document imports it)

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("alphabet")
    ab.new_pipeline("alphabet",
                    wallaroo.TCPSourceConfig(in_host, in_port, Decoder()))
    ab.to_stateful(AddVotes(), LetterStateBuilder(), "letter state")
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, Encoder()))
    return ab.build()


class AddVotes(object):
    def name(self):
        return "add votes"

    def compute(self, data, state):
        state.update(data)
        return (state.get_votes(data.letter), True)


class Votes(object):
    def __init__(self, letter, votes):
        self.letter = letter
        self.votes = votes


class AllVotes(object):
    def __init__(self):
        self.votes_by_letter = {}

    def update(self, votes):
        letter = votes.letter
        vote_count = votes.votes

        votes_for_letter = self.votes_by_letter.get(letter, Votes(letter, 0))
        votes_for_letter.votes += vote_count
        self.votes_by_letter[letter] = votes_for_letter

    def get_votes(self, letter):
        vbl = self.votes_by_letter[letter]
        return Votes(letter, vbl.votes)


class LetterStateBuilder(object):
    def build(self):
        return AllVotes()


class Encoder(object):
    def encode(self, data):
        # data is a Votes
        return struct.pack(">IsQ", 9, data.letter, data.votes)


class Decoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        (letter, vote_count) = struct.unpack(">sI", bs)
        return Votes(letter, vote_count)
