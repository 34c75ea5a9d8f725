"""The stack file (``faasbox.yaml``): several functions deployed at once.

::

    functions:
      hello:
        path: ./hello           # folder, relative to the stack file
        handler: main:handler
        memory_mb: 128          # any FunctionSpec field
        triggers:               # cron triggers by name (see docs/triggers.md)
          nightly: {cron: "0 2 * * *", timezone: Europe/Berlin}
    workflows:                  # workflow definitions by name (see docs/delivery.md)
      thumbnails:
        chain: [hello, {map: resize, callback: count}]
        on_failure: report
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from faasbox import errors

ALIASES = {"memory": "memory_mb", "timeout": "timeout_s", "min": "min_instances",
           "max": "max_instances", "idle_ttl": "idle_ttl_s"}


@dataclass
class StackItem:
    name: str
    path: Path
    spec: dict[str, Any]
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_stack(path: Path, problems: list[tuple[str, str]] | None = None) -> list[StackItem]:
    """The functions of a stack file. A bad entry raises InvalidSpec; with ``problems`` it is
    left out and ``(name, message)`` appended there instead (the server deploys the rest)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise errors.InvalidRequest(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise errors.InvalidRequest(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("functions"), dict):
        raise errors.InvalidSpec(f"{path}: expected a 'functions:' mapping")
    items = []
    for name, body in doc["functions"].items():
        try:
            items.append(_item(path, str(name), body))
        except errors.InvalidSpec as exc:
            if problems is None:
                raise
            problems.append((str(name), exc.message))
    return items


def load_workflows(path: Path) -> dict[str, dict[str, Any]]:
    """The workflow definitions of a stack file (its optional ``workflows:`` mapping)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}  # load_stack reports it
    flows = doc.get("workflows") if isinstance(doc, dict) else None
    if flows is None:
        return {}
    if not isinstance(flows, dict) or not all(isinstance(f, dict) for f in flows.values()):
        raise errors.InvalidSpec(f"{path}: workflows must map each workflow name to its"
                                 " chain and on_failure")
    return {str(k): dict(v) for k, v in flows.items()}


def _item(path: Path, name: str, body: Any) -> StackItem:
    if not isinstance(body, dict):
        raise errors.InvalidSpec(f"{path}: function {name!r} must be a mapping")
    body = {ALIASES.get(k, k): v for k, v in body.items()}
    folder = (path.parent / str(body.pop("path", name))).resolve()
    if not folder.is_dir():
        raise errors.InvalidSpec(f"{path}: function {name!r}: no folder {folder}")
    if "env" in body and isinstance(body["env"], dict):
        body["env"] = {str(k): str(v) for k, v in body["env"].items()}
    triggers = body.pop("triggers", None) or {}
    if not isinstance(triggers, dict) or not all(
            isinstance(t, dict) for t in triggers.values()):
        raise errors.InvalidSpec(f"{path}: function {name!r}: triggers must map each"
                                 " trigger name to its settings")
    return StackItem(name, folder, body, {str(k): v for k, v in triggers.items()})
