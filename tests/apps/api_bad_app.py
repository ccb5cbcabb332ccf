"""An application with a mistake in its description: its pipeline has no
sink.  ``wallaroo run`` must refuse it with a message naming the pipeline."""

import wallaroo


@wallaroo.decoder(header_length=4, length_fmt=">I")
def decoder(bs):
    return bs.decode("utf-8")


@wallaroo.computation("shout")
def shout(data):
    return data.upper()


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("bad app")
    ab.new_pipeline("forgetful pipeline",
                    wallaroo.TCPSourceConfig(in_host, in_port, decoder))
    ab.to(shout)
    return ab.build()
