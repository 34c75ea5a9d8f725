"""An instance's output sink: its file is made at the first output, capped, and an output
that cannot be kept is read and dropped without failing."""

from __future__ import annotations

import os
from pathlib import Path

from faasbox.node.output import MARKER, OutputSink


def test_an_instance_that_prints_nothing_makes_no_file(tmp_path: Path) -> None:
    path = tmp_path / "i.out"
    sink = OutputSink(path, 16)
    sink.close_write_end()
    sink.drain()  # the writer is gone: the sink closes
    assert sink.read_fd is None
    assert not path.exists()


def test_output_is_kept_up_to_the_cap_then_marked(tmp_path: Path) -> None:
    path = tmp_path / "i.out"
    sink = OutputSink(path, 16)
    os.write(sink.write_fd, b"hello\n")
    sink.drain()
    assert path.read_bytes() == b"hello\n"
    os.write(sink.write_fd, b"x" * 40)
    sink.close_write_end()
    sink.drain()
    assert path.read_bytes() == b"hello\n" + b"x" * 10 + MARKER.format(cap=16).encode()
    assert sink.truncated and sink.read_fd is None


def test_output_that_cannot_be_kept_is_dropped_and_the_pipe_still_drained(
        tmp_path: Path) -> None:
    path = tmp_path / "gone" / "i.out"  # its folder is missing
    sink = OutputSink(path, 16)
    os.write(sink.write_fd, b"a" * 100)
    sink.close_write_end()
    sink.drain()
    assert sink.read_fd is None and not path.exists()
