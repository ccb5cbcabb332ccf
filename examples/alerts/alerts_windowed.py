"""Alerts over windows, in the Wallaroo 0.6 API.

The generated transactions (``transactions.py``), keyed by user, summed in
range windows of 9 seconds that start every 3 seconds (each transaction is
in three windows).  When a window closes, its total is an output if it is
above +20000 or below -20000 ("window alert"); with ``--all`` every
window's total is.

A transaction's time is when the worker took it in.  A window closes once
the worker has seen a transaction 9 s after the window's start, or, when no
transaction comes, by the clock: a finite stream's last windows still close.

    wallaroo run alerts_windowed.py --out 127.0.0.1:7002 --transactions 1000 --all
"""

import wallaroo

from transactions import TransactionsGenerator, transactions_flag

LIMIT = 20000


def application_setup(args):
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    agg = WindowTotalAll if "--all" in args else WindowTotal
    gen_source = wallaroo.GenSourceConfig(
        TransactionsGenerator(transactions_flag(args)))
    transactions = wallaroo.source("Alerts (windowed)", gen_source)
    pipeline = (transactions
                .key_by(extract_user)
                .to(wallaroo.range_windows(wallaroo.seconds(9))
                    .with_slide(wallaroo.seconds(3))
                    .over(agg))
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode)))
    return wallaroo.build_application("Alerts (windowed)", pipeline)


@wallaroo.key_extractor
def extract_user(tx):
    return tx.user


class Total(object):
    def __init__(self, amount=0, count=0):
        self.amount = amount
        self.count = count


class WindowTotal(wallaroo.Aggregation):
    def initial_accumulator(self):
        return Total()

    def update(self, tx, total):
        total.amount += tx.amount
        total.count += 1

    def combine(self, t1, t2):
        return Total(t1.amount + t2.amount, t1.count + t2.count)

    def output(self, user, total):
        if abs(total.amount) > LIMIT:
            return "window alert: %s %+d over %d transactions" % (
                user, total.amount, total.count)
        return None  # no output for this window

    def name(self):
        return "window total"


class WindowTotalAll(WindowTotal):
    def output(self, user, total):
        return "%s %+d over %d transactions" % (user, total.amount, total.count)


@wallaroo.encoder
def encode(line):
    return (line + "\n").encode("utf-8")
