"""Test temp dirs are removed, also what instances under other uids wrote into them."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import (
    GATE_ROOT_ENV,
    TMP_ROOT_ENV,
    _tempdirs,
    gate_dir,
    open_tempdir,
    remove_tree,
)


def test_open_tempdir_is_traversable_and_lives_under_the_session_root() -> None:
    path = open_tempdir()
    assert path.parent == Path(os.environ[TMP_ROOT_ENV])
    assert path.stat().st_mode & 0o777 == 0o711
    assert path in _tempdirs  # removed after this test by the autouse fixture


def test_remove_tree_opens_up_closed_dirs_and_entries_of_other_uids() -> None:
    root = open_tempdir()
    closed = root / "scratch" / "closed"
    closed.mkdir(parents=True)
    (closed / "f").write_text("x")
    (closed / "sub").mkdir()
    (closed / "sub" / "g").write_text("y")
    if os.geteuid() == 0:  # as the server does for an instance's scratch dir
        for entry in (closed / "sub" / "g", closed / "sub", closed / "f", closed):
            os.chown(entry, 65534, 65534)
    (closed / "sub").chmod(0o500)
    closed.chmod(0o500)  # no write or search permission for removing the entries inside
    (root / "scratch").chmod(0o500)
    remove_tree(root)
    assert not root.exists()
    remove_tree(root)  # gone already: nothing to do


def test_gate_dir_is_traversable_and_outside_what_an_instance_covers() -> None:
    path = gate_dir()
    assert path in _tempdirs  # removed after this test by the autouse fixture
    assert path.stat().st_mode & 0o777 == 0o711
    if os.geteuid() == 0:  # instances have their own /tmp: the gate is under /run
        assert path.parent == Path(os.environ[GATE_ROOT_ENV])
        assert path.is_relative_to("/run") and path.parent.stat().st_mode & 0o777 == 0o711
    else:
        assert path.parent == Path(os.environ[TMP_ROOT_ENV])
