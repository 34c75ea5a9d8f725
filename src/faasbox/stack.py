"""The stack file (``faasbox.yaml``): several functions deployed at once
(:func:`deploy_stack`, ``faasbox server --deploy``).

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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from faasbox import errors
from faasbox.codestore import zip_folder
from faasbox.spec import validate_spec, validation_text
from faasbox.tenancy.names import DEFAULT_TENANT, qualify
from faasbox.triggers.cron import TriggerSpec, check_trigger_name

if TYPE_CHECKING:
    from faasbox.platform import Platform

log = logging.getLogger(__name__)

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


# -- deploying a stack ------------------------------------------------------------------
async def deploy_stack(platform: Platform, path: Path) -> list[str]:
    """Deploy every function of a stack file (``faasbox server --deploy``).

    A function that cannot be deployed (its requirements do not install, it does not load,
    a bad spec or trigger) is logged as one line and the others are deployed; a function
    whose code and spec equal its latest version's keeps that version. Returns a line per
    function and trigger deployed.
    """
    done: list[str] = []
    problems: list[tuple[str, str]] = []
    try:
        items = load_stack(path, problems)
    except errors.FaasboxError as exc:
        log.error("cannot deploy the stack %s: %s", path, one_line(exc.message))
        return done
    for name, message in problems:
        log.error("cannot deploy %s: %s", name, one_line(message))
    for item in items:
        try:
            done += await _deploy_item(platform, item)
        except Exception as exc:  # one function's failure must not stop the server
            message = exc.message if isinstance(exc, errors.FaasboxError) else str(exc)
            log.error("cannot deploy %s: %s", item.name, one_line(message))
            log.debug("the deploy of %s failed", item.name, exc_info=True)
    done += await _deploy_workflows(platform, path)
    return done

async def _deploy_workflows(platform: Platform, path: Path) -> list[str]:
    from faasbox.delivery.workflows import parse_spec
    from faasbox.spec import check_name

    done: list[str] = []
    try:
        flows = load_workflows(path)
    except errors.FaasboxError as exc:
        log.error("cannot deploy the workflows of %s: %s", path, exc.message)
        return done
    for name, body in flows.items():
        try:
            spec = parse_spec(body)
            await platform.delivery_store.put_definition(
                qualify(DEFAULT_TENANT, check_name(name)), spec.model_dump(),
                platform.clock.now())
            done.append(f"deployed workflow {name}")
        except errors.FaasboxError as exc:
            log.error("cannot deploy workflow %s: %s", name, one_line(exc.message))
    return done

async def _deploy_item(platform: Platform, item: StackItem) -> list[str]:
    spec = validate_spec(item.spec)
    triggers = {name: _trigger_spec(name, body) for name, body in item.triggers.items()}
    function = qualify(DEFAULT_TENANT, item.name)
    await platform.check_deploy(function, spec)
    result = await platform.registry.deploy(function, spec, zip_folder(item.path))
    version = result.version.version
    done = [f"{item.name} unchanged (v{version})" if result.unchanged
            else f"deployed {item.name} v{version}"]
    for name, tspec in triggers.items():
        await platform.triggers.put(function, name, tspec, create_only=False)
        done.append(f"deployed {item.name} trigger {name} ({tspec.cron})")
    return done


def _trigger_spec(name: str, body: dict[str, Any]) -> TriggerSpec:
    try:
        check_trigger_name(name)
        return TriggerSpec(**body)
    except ValidationError as exc:
        raise errors.InvalidSpec(f"trigger {name!r}: {validation_text(exc)}") from None
    except ValueError as exc:
        raise errors.InvalidSpec(f"trigger {name!r}: {exc}") from None


def one_line(message: str) -> str:
    """A multi-line error message (pip's output) as one line: its first line and its last
    ``ERROR:`` line (or its last line)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    errors_ = [ln for ln in lines[1:] if ln.startswith("ERROR:")]
    return f"{lines[0].rstrip(':')}: {(errors_ or lines)[-1]}"
