"""The spool: durable batches, torn-tail recovery, ack, late readings, unusable folders."""

from __future__ import annotations

import pytest

from agent.core.errors import StateError
from agent.core.model import Reading
from agent.pipeline.spool import Spool


def test_flush_read_ack_round_trip(tmp_path):
    spool = Spool(tmp_path, 300)
    spool.append([Reading("a", 1.0, 10.0), Reading("b", 2.0, 299.0), Reading("a", 3.0, 300.0),
                  Reading("a", 4.0, 301.0)])
    assert spool.read(300).num_rows == 0  # nothing is on disk before flush
    assert spool.flush() == 4
    assert spool.windows() == [300, 600]
    assert spool.read(300).to_pydict() == {"sensor": ["a", "b", "a"], "ts": [10.0, 299.0, 300.0],
                                           "value": [1.0, 2.0, 3.0]}
    spool.ack(300)
    assert spool.windows() == [600]
    spool.append([Reading("a", 5.0, 200.0)])  # belongs to an acknowledged window: late
    spool.flush()
    assert spool.late == 1 and spool.windows() == [600]


def test_restart_reads_old_and_new_segments(tmp_path):
    first = Spool(tmp_path, 300)
    first.append([Reading("a", 1.0, 10.0)])
    first.flush()
    # no close(): the process died; a new run appends to a new segment of the same window
    second = Spool(tmp_path, 300)
    second.append([Reading("a", 2.0, 20.0)])
    second.flush()
    assert sorted(second.read(300).value.tolist()) == [1.0, 2.0]
    assert len(list(tmp_path.glob("300-*.l4es"))) == 2


@pytest.mark.parametrize("cut", [1, 7, 40])
def test_torn_last_batch_is_skipped_and_earlier_batches_kept(tmp_path, cut):
    spool = Spool(tmp_path, 300)
    spool.append([Reading("a", 1.0, 10.0)])
    spool.flush()
    spool.append([Reading("a", 2.0, 20.0), Reading("a", 3.0, 30.0)])
    spool.flush()
    # no close(): a crash leaves no end-of-stream marker
    (segment,) = tmp_path.glob("300-*.l4es")
    data = segment.read_bytes()
    segment.write_bytes(data[:-cut])  # a crash in the middle of the last write
    recovered = Spool(tmp_path, 300)
    values = recovered.read(300).value.tolist()
    assert values == [1.0]
    assert recovered.torn_segments == 1


def test_empty_segment_from_a_crash_at_creation_is_harmless(tmp_path):
    (tmp_path / "300-dead.l4es").write_bytes(b"")
    spool = Spool(tmp_path, 300)
    assert spool.read(300).num_rows == 0
    spool.ack(300)
    assert not list(tmp_path.glob("*.l4es"))


def test_unwritable_folder_is_a_clear_state_error_even_for_root(tmp_path):
    blocker = tmp_path / "spool"
    blocker.write_text("a file where the folder should be")
    with pytest.raises(StateError, match="not writable"):
        Spool(blocker, 300)


def test_disk_errors_keep_readings_buffered_and_retry(tmp_path, caplog):
    spool = Spool(tmp_path / "s", 300)
    spool.append([Reading("a", 1.0, 10.0)])
    # make the segment path unusable: a folder where the segment file would be created
    (tmp_path / "s" / f"300-{spool.run_id}-000001.l4es").mkdir()
    assert spool.flush() == 0
    assert spool.buffered() == 1
    assert "cannot write" in caplog.text
    (tmp_path / "s" / f"300-{spool.run_id}-000001.l4es").rmdir()
    assert spool.flush() == 1
    assert spool.read(300).value.tolist() == [1.0]


def test_segments_of_the_previous_format_are_still_read(tmp_path):
    """Arrow IPC stream segments (.arrows) written by an earlier version survive an upgrade."""
    import pyarrow as pa

    table = pa.table({"sensor": ["a", "b"], "ts": [10.0, 20.0], "value": [1.5, 2.5]})
    with pa.OSFile(str(tmp_path / "300-0abc.arrows"), "wb") as fh, pa.ipc.new_stream(fh, table.schema) as writer:
        writer.write_table(table)
    spool = Spool(tmp_path, 300)
    spool.append([Reading("a", 3.5, 30.0)])
    spool.flush()
    assert spool.read(300).to_pydict() == {"sensor": ["a", "b", "a"], "ts": [10.0, 20.0, 30.0],
                                           "value": [1.5, 2.5, 3.5]}
    spool.ack(300)
    assert not list(tmp_path.glob("300-*"))


def test_a_corrupt_record_ends_the_segment_there_and_earlier_records_are_kept(tmp_path):
    """A record whose bytes changed (bad CRC) is not trusted, nor anything after it."""
    spool = Spool(tmp_path, 300)
    for k in range(3):
        spool.append([Reading("a", float(k), 10.0 + k)])
        spool.flush()
    (segment,) = tmp_path.glob("300-*.l4es")
    data = bytearray(segment.read_bytes())
    record = len(data) // 3
    data[record + 30] ^= 0xFF  # a flipped byte inside the second record's body
    segment.write_bytes(bytes(data))
    recovered = Spool(tmp_path, 300)
    assert recovered.read(300).value.tolist() == [0.0]
    assert recovered.torn_segments == 1
