"""How an instance process is started: the pure rules (see docs/sandbox.md, "Fast cold start").

Three ways, fastest first: fork from the version's snapshot **template** (module already
imported), **fork** from the node's fork server (runtime already imported), or **spawn** a new
interpreter. ``FAASBOX_START_MODE`` picks the fastest allowed: ``template`` and ``auto`` try all
three in that order, ``forkserver`` the last two, ``spawn`` only the last. They differ in when a
template is made: ``template`` at a version's first cold start (that start waits for it),
``auto`` in the background at its second (a version started once may never start again), or
at its first when that start is ahead of demand (``min_instances``, a schedule, a forecast):
such a start waits for the template, as nobody waits for it, so the instances kept warm are
template children and not the fork server's (which share far less memory). Under a burst
(``BURST_COLD_STARTS`` cold starts of a version under way at once) ``auto`` makes it at once
too, and the burst's starts wait for it: each of them would otherwise import the function in a
fork server's child of its own, where a template imports it once (a first burst of 200 took
0.88 s that way, and 0.48-0.53 s from a template, `bench/scale.py`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

START_MODES = ("auto", "spawn", "forkserver", "template")
# what an instance's ``start_mode`` says
SPAWN, FORK, TEMPLATE = "spawn", "fork", "template"
# the loader's check for a deploy runs as version 0: never worth a template
CHECK_VERSION = 0
# this many cold starts of a version under way at once are a burst: make its template now
BURST_COLD_STARTS = 3


def check_mode(mode: str) -> str:
    if mode not in START_MODES:
        raise ValueError(f"start mode must be one of {', '.join(START_MODES)}, not {mode!r}")
    return mode


def ways(mode: str, version: int) -> list[str]:
    """The ways to try for a cold start of ``version``, in order."""
    if mode == "spawn":
        return [SPAWN]
    if mode == "forkserver" or version == CHECK_VERSION:
        return [FORK, SPAWN]
    return [TEMPLATE, FORK, SPAWN]


def template_due(mode: str, cold_starts: int, ahead: bool = False,
                 under_way: int = 1) -> bool:
    """Whether to make a version's template now, after its ``cold_starts``-th cold start
    (``ahead``: this one is ahead of demand; ``under_way``: its cold starts under way now,
    this one included)."""
    if mode == "template" or (mode == "auto" and (ahead or under_way >= BURST_COLD_STARTS)):
        return cold_starts >= 1
    return mode == "auto" and cold_starts >= 2


def template_awaited(mode: str, ahead: bool = False, under_way: int = 1) -> bool:
    """Whether a cold start waits for a template being made (else it forks meanwhile)."""
    return mode == "template" or (mode == "auto" and (ahead or under_way >= BURST_COLD_STARTS))


def top_level_names(paths: Iterable[str]) -> set[str]:
    """Importable top-level names that ``paths`` (a code folder, a packages folder) provide."""
    names: set[str] = set()
    for path in paths:
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if entry.is_dir():
                if name.isidentifier():
                    names.add(name)
            elif name.endswith((".py", ".pyc", ".so", ".pyd")):
                stem = name.partition(".")[0]
                if stem.isidentifier():
                    names.add(stem)
    return names


def shadowed(provided: set[str], preloaded: Iterable[str]) -> list[str]:
    """Modules the function provides that the fork server has already imported: a spawned
    instance would import the function's copy, a forked one would keep the preloaded one, so
    such a function is spawned."""
    return sorted(n for n in provided.intersection(preloaded) if not n.startswith("__"))
