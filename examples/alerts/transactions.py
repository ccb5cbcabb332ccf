"""The transactions the alerts examples watch, and the generator that makes
them (a ``wallaroo.GenSourceConfig`` source).

Each transaction comes from the previous one by a fixed rule, so the
stream is the same at every run: after a restart the engine advances a
new generator to where the last one stopped.  ``limit`` (0: none) ends the
stream after that many transactions, for finite runs; the command line's
``--transactions N`` sets it.
"""

USERS = ("alice", "bob", "carol", "dave", "erin")


class Transaction(object):
    def __init__(self, tx_id, user, amount):
        self.tx_id = tx_id
        self.user = user
        self.amount = amount

    def __repr__(self):
        return "Transaction(%d, %r, %d)" % (self.tx_id, self.user, self.amount)


class TransactionsGenerator(object):
    def __init__(self, limit=0):
        self.limit = limit

    def initial_value(self):
        return Transaction(1, USERS[0], 0)

    def apply(self, v):
        if self.limit and v.tx_id >= self.limit:
            return None  # the end of a finite stream
        tx_id = v.tx_id + 1
        return Transaction(tx_id, USERS[tx_id % len(USERS)], amount_of(tx_id))


def amount_of(tx_id):
    """An amount between -1250 and 1249, spread by an integer hash."""
    h = (tx_id * 0x9E3779B1) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    return h % 2500 - 1250


def transactions_flag(args):
    """``--transactions N`` from the application's arguments (0: endless)."""
    for i, a in enumerate(args):
        if a == "--transactions" and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--transactions="):
            return int(a.split("=", 1)[1])
    return 0


def transactions(limit):
    """The first ``limit`` transactions, as the generator makes them."""
    gen = TransactionsGenerator(limit)
    v = gen.initial_value()
    while v is not None:
        yield v
        v = gen.apply(v)
