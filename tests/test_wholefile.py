"""Small files written whole or not at all (edgeswarm.wholefile): what a crash or a full disk leaves behind."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from edgeswarm.trust.signing import load_or_create_private_key, load_private_key
from edgeswarm.wholefile import write_whole


def full(_fd: int) -> None:
    """os.fsync on a disk that has no room for what was written."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_replace_and_mode(tmp_path):
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    assert write_whole(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["state.json"]  # no temporary file left


def test_exclusive_keeps_what_another_writer_put_there_first(tmp_path):
    target = tmp_path / "swarm.key"
    assert write_whole(target, b"first", exclusive=True)
    assert not write_whole(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["swarm.key"]


def test_a_failed_write_leaves_the_old_file_names_the_target_and_no_temporary(tmp_path, monkeypatch):
    """A full disk fails the write or its flush: "[Errno 28] No space left on device" said which file only now."""
    target = tmp_path / "peer_id"
    target.write_bytes(b"old\n")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError) as failed:
        write_whole(target, b"new\n")
    assert failed.value.errno == errno.ENOSPC and str(target) in str(failed.value)
    assert target.read_bytes() == b"old\n" and os.listdir(tmp_path) == ["peer_id"]


def test_a_key_created_on_a_full_disk_is_absent_not_empty(tmp_path, monkeypatch):
    """An empty swarm.key (an edge's first start on a full disk) made every restart fail: "not a PEM private key"."""
    path = tmp_path / "swarm.key"
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"swarm\.key"):
        load_or_create_private_key(path)
    assert not path.exists()
    monkeypatch.undo()
    key = load_or_create_private_key(path)  # room again: the next start makes it
    assert load_private_key(path).private_bytes_raw() == key.private_bytes_raw()
