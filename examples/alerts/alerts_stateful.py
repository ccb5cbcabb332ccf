"""Alerts (stateful), in the Wallaroo 0.6 API.

The same generated transactions (``transactions.py``), keyed by user: each
user's running balance is a state (one partition per user, on the worker
that owns the user's key group), and a transaction that takes the balance
above +5000 or below -5000 makes an alert.

    wallaroo run alerts_stateful.py --out 127.0.0.1:7002 --transactions 1000
"""

import wallaroo

from transactions import TransactionsGenerator, transactions_flag

LIMIT = 5000


def application_setup(args):
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    gen_source = wallaroo.GenSourceConfig(
        TransactionsGenerator(transactions_flag(args)))
    transactions = wallaroo.source("Alerts (stateful)", gen_source)
    pipeline = (transactions
                .key_by(extract_user)
                .to(check_balance)
                .to_sink(wallaroo.TCPSinkConfig(out_host, out_port, encode_alert)))
    return wallaroo.build_application("Alerts (stateful)", pipeline)


class Balance(object):
    def __init__(self):
        self.total = 0


@wallaroo.key_extractor
def extract_user(tx):
    return tx.user


@wallaroo.state_computation(name="check balance", state=Balance)
def check_balance(tx, balance):
    before = balance.total
    balance.total += tx.amount
    if before <= LIMIT < balance.total:
        return "balance alert: %s above %d after transaction %d (%d)" % (
            tx.user, LIMIT, tx.tx_id, balance.total)
    if before >= -LIMIT > balance.total:
        return "balance alert: %s below -%d after transaction %d (%d)" % (
            tx.user, LIMIT, tx.tx_id, balance.total)
    return None


@wallaroo.encoder
def encode_alert(alert):
    return (alert + "\n").encode("utf-8")
