"""Alerts (stateless), in the Wallaroo 0.6 API.

A generator source makes transactions (``transactions.py``); a stateless
computation turns each one above +1000 into a deposit alert and each one
below -1000 into a withdrawal alert; everything else makes no output.

    wallaroo run alerts_stateless.py --out 127.0.0.1:7002 --transactions 1000
"""

import wallaroo

from transactions import TransactionsGenerator, transactions_flag

THRESHOLD = 1000


def application_setup(args):
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    gen_source = wallaroo.GenSourceConfig(
        TransactionsGenerator(transactions_flag(args)))
    transactions = wallaroo.source("Alerts (stateless)", gen_source)
    pipeline = (transactions
                .to(check_transaction)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_alert)))
    return wallaroo.build_application("Alerts (stateless)", pipeline)


@wallaroo.computation(name="check transaction")
def check_transaction(tx):
    if tx.amount > THRESHOLD:
        return "deposit alert: transaction %d of %s, %d" % (tx.tx_id, tx.user,
                                                            tx.amount)
    if tx.amount < -THRESHOLD:
        return "withdrawal alert: transaction %d of %s, %d" % (tx.tx_id, tx.user,
                                                               tx.amount)
    return None  # no output


@wallaroo.encoder
def encode_alert(alert):
    return (alert + "\n").encode("utf-8")
