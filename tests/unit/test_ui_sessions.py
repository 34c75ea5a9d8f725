"""Dashboard sessions kept in files, shared by the servers (workers) of one data dir."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from faasbox.ui import session as ui_session
from faasbox.ui.session import Sessions, load_secret


def test_two_servers_on_one_data_dir_share_their_sessions(tmp_path: Path) -> None:
    a = Sessions(load_secret(tmp_path), tmp_path / "ui-sessions")
    b = Sessions(load_secret(tmp_path), tmp_path / "ui-sessions")
    made, cookie = a.create("fbx_key")
    seen = b.get(cookie)
    assert seen is not None and seen.key == "fbx_key" and seen.csrf == made.csrf
    # a change through one (an admin's tenant) is what the other reads next
    seen.tenant = "team-a"
    b.save(seen)
    again = a.get(cookie)
    assert again is not None and again.tenant == "team-a"
    # a sign-out through one ends it on both
    b.drop(seen)
    assert a.get(cookie) is None and b.get(cookie) is None
    folder = tmp_path / "ui-sessions"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert list(folder.iterdir()) == []


def test_a_session_file_is_private_and_a_forged_or_odd_id_finds_nothing(tmp_path: Path) -> None:
    sessions = Sessions(load_secret(tmp_path), tmp_path / "ui-sessions")
    made, cookie = sessions.create("fbx_key")
    path = tmp_path / "ui-sessions" / made.id
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sessions.get(cookie.replace(made.id, made.id[:-1] + "x")) is None  # bad signature
    # a signed id that is not a session id (a path) is refused before any file is opened
    assert sessions.get(sessions.sign("../../admin.key")) is None
    assert sessions.get(sessions.sign("x" * 24)) is None  # no such session


def test_an_expired_session_is_gone_and_its_file_swept(tmp_path: Path) -> None:
    sessions = Sessions(load_secret(tmp_path), tmp_path / "ui-sessions")
    old, cookie = sessions.create("fbx_old")
    old.created -= ui_session.LIFETIME_S + 1
    sessions.save(old)
    assert sessions.get(cookie) is None
    assert not (tmp_path / "ui-sessions" / old.id).exists()
    # a file left by a session nobody asked for again goes at the next sweep
    stale, _ = sessions.create("fbx_stale")
    path = tmp_path / "ui-sessions" / stale.id
    past = time.time() - ui_session.LIFETIME_S - 10
    os.utime(path, (past, past))
    sessions._swept = 0.0
    sessions.create("fbx_new")
    assert not path.exists()


def test_servers_starting_together_keep_one_secret(tmp_path: Path) -> None:
    first = load_secret(tmp_path)
    assert load_secret(tmp_path) == first
    (tmp_path / "ui.secret").write_text("not a secret")
    replaced = load_secret(tmp_path)
    assert replaced != first and load_secret(tmp_path) == replaced


def test_one_keys_sign_ins_never_sign_anyone_else_out(tmp_path: Path) -> None:
    """A hostile key signs in again and again: its own oldest sessions go (at most
    ``per_key``), and when the folder is full, the key holding the most loses its oldest."""
    sessions = Sessions(load_secret(tmp_path), tmp_path / "ui-sessions", max_sessions=12,
                        per_key=8)
    _, victim = sessions.create("fbx_victim")
    _, other = sessions.create("fbx_other")
    cookies = []
    for _ in range(40):
        cookies.append(sessions.create("fbx_hostile")[1])
        time.sleep(0.002)  # distinct mtimes: the oldest is well defined
    assert sessions.get(victim) is not None and sessions.get(other) is not None
    live = [c for c in cookies if sessions.get(c) is not None]
    assert live == cookies[-8:]  # its own newest 8
    # many keys fill the folder: the one holding the most gives way, not the victim
    for i in range(4):
        sessions.create(f"fbx_k{i}")
    assert len(list((tmp_path / "ui-sessions").iterdir())) <= 12
    assert sessions.get(victim) is not None
