"""The file store behind ``wallaroo receive --resumable`` (``wallaroo/tools/
file_store.py``): what is durable when, the torn tails it repairs, what it
refuses, records cut across outputs, and the index's compaction."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from wallaroo.receiver import OutputsRejected
from wallaroo.tools.common import ToolError
from wallaroo.tools.file_store import INDEX_SUFFIX, FileStore

from .test_receiver_resumable import records


def test_file_store_is_durable_only_after_sync_and_reopens_with_its_counts(tmp_path):
    path = tmp_path / "out.txt"
    store = FileStore(str(path), "length", "hex")
    store.append("a", 0, [records(b"one"), records(b"two")])
    store.append("b", 0, [records(b"x", b"y")])  # one output, two records
    assert (store.have("a"), store.have("b")) == (0, 0)
    store.sync()
    assert (store.have("a"), store.have("b")) == (2, 1)
    store.close()
    store = FileStore(str(path), "length", "hex")
    assert (store.have("a"), store.have("b"), store.have("c")) == (2, 1, 0)
    assert store.synced_records == 4 and store.notes == []
    store.append("a", 2, [records(b"three")])
    store.sync()
    store.close()
    assert path.read_text() == "6f6e65\n74776f\n78\n79\n7468726565\n"


def test_file_store_truncates_a_torn_tail_and_drops_a_torn_index_record(tmp_path):
    path = tmp_path / "out.bin"
    index = Path(str(path) + INDEX_SUFFIX)
    store = FileStore(str(path), "length", "raw")
    store.append("s", 0, [records(b"a"), records(b"b")])
    store.sync()
    store.append("s", 2, [records(b"c")])  # written, never synced: a crash now
    store.close()
    torn_at = index.stat().st_size
    with open(index, "ab") as f:
        f.write(b"\x00\x00\x00\x30\x12")  # a torn index record
    durable = records(b"a", b"b")
    assert path.stat().st_size == len(durable) + 5
    store = FileStore(str(path), "length", "raw")
    assert store.have("s") == 2
    assert path.read_bytes() == durable
    assert store.notes == [
        f"{index}: dropped a torn last record at byte {torn_at} (5 bytes: a commit "
        f"never acknowledged)",
        f"{path}: truncated a torn tail of 5 bytes (written, never acknowledged)"]
    store.close()
    assert FileStore(str(path), "length", "raw").notes == []  # repaired for good


def test_file_store_refuses_a_file_shorter_than_its_index_says(tmp_path):
    path = tmp_path / "out.bin"
    store = FileStore(str(path))
    store.append("s", 0, [b"0123456789"])
    store.sync()
    store.close()
    os.truncate(path, 4)
    with pytest.raises(ToolError, match=r"out\.bin is 4 bytes, but its index .* says "
                                         r"10 bytes are durable"):
        FileStore(str(path))


def test_file_store_refuses_an_index_that_fails_its_checksum(tmp_path):
    path = tmp_path / "out.bin"
    store = FileStore(str(path))
    store.append("s", 0, [b"x"])
    store.sync()
    store.close()
    index = Path(str(path) + INDEX_SUFFIX)
    data = bytearray(index.read_bytes())
    at = data.index(b'"streams"') + 2  # inside the first, full record
    data[at] ^= 0x01
    index.write_bytes(bytes(data))
    with pytest.raises(ToolError, match="the record at byte 26 fails its checksum; "
                                        "the index is damaged"):
        FileStore(str(path))


def test_file_store_refuses_foreign_files_other_options_and_a_second_receiver(tmp_path):
    foreign = tmp_path / "plain.txt"
    foreign.write_text("written by a plain wallaroo receive\n")
    with pytest.raises(ToolError, match="has no index"):
        FileStore(str(foreign))
    path = tmp_path / "out.txt"
    FileStore(str(path), "length", "hex").close()
    with pytest.raises(ToolError, match="was written with --framing length --format hex "
                                        "--header-fmt '>I', this run asks for "
                                        "--framing lines --format hex"):
        FileStore(str(path), "lines", "hex")
    first = FileStore(str(path), "length", "hex")
    with pytest.raises(ToolError, match="in use by another wallaroo receive"):
        FileStore(str(path), "length", "hex")
    first.close()


def test_file_store_writes_only_whole_records_and_counts_only_outputs_ending_one(tmp_path):
    path = tmp_path / "out.txt"
    store = FileStore(str(path), "length", "text")
    whole = records(b"abc")
    store.append("s", 0, [whole[:3]])  # a record cut across two outputs
    store.sync()
    assert store.have("s") == 0 and path.read_bytes() == b""
    store.append("s", 1, [whole[3:] + records(b"d")[:2]])
    store.sync()
    assert store.have("s") == 0 and path.read_bytes() == b""
    # The worker reconnects and resends from HAVE 0: nothing twice.
    store.append("s", 0, [whole[:3], whole[3:] + records(b"d")[:2], records(b"d")[2:]])
    store.sync()
    assert store.have("s") == 3 and path.read_bytes() == b"abc\nd\n"
    store.close()


@pytest.mark.parametrize("framing, outputs, reason", [
    ("lines", [b"no newline " * 10], r"output 0 of stream s leaves 110 bytes that end "
                                       r"no record \(over --max-record-size 100"),
    ("length", [records(b"ok"), struct.pack(">I", 500)],
     r"output 1 of stream s: a header at byte 0 of what is pending announces 500"),
])
def test_file_store_rejects_outputs_that_break_the_framing(tmp_path, framing, outputs,
                                                            reason):
    store = FileStore(str(tmp_path / "out.bin"), framing, "raw", max_record=100)
    with pytest.raises(OutputsRejected, match=reason):
        store.append("s", 0, outputs)
    store.sync()
    assert store.have("s") == (1 if framing == "length" else 0)
    store.append("s", store.have("s"), [records(b"z") if framing == "length" else b"z\n"])
    store.close()


def test_file_store_index_is_compacted_as_it_grows(tmp_path, monkeypatch):
    from wallaroo.tools import file_store
    monkeypatch.setattr(file_store, "COMPACT_AT", 2000)
    path = tmp_path / "out.bin"
    index = Path(str(path) + INDEX_SUFFIX)
    store = FileStore(str(path))
    sizes = []
    for i in range(200):
        store.append(f"s{i % 7}", i // 7, [b"%d" % i])
        store.sync()
        sizes.append(index.stat().st_size)
    store.close()
    assert max(sizes) < 2000 + 200 and sizes != sorted(sizes)  # rewritten, not grown
    store = FileStore(str(path))
    assert {f"s{k}": store.have(f"s{k}") for k in range(7)} == \
        {f"s{k}": len(range(k, 200, 7)) for k in range(7)}
    store.close()
