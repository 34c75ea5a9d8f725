"""The function spec: what a deploy says about code, resources and scaling."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from faasbox.autoscaler.provisioned import ProvisionedWindow

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HANDLER_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class FunctionSpec(BaseModel):
    """Immutable per version. Defaults follow what users know from Lambda where it makes sense."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    handler: str = Field(description="module:function inside the code folder")
    memory_mb: int = Field(128, ge=128, le=10240)
    timeout_s: float = Field(30.0, gt=0, le=900)
    concurrency: int = Field(1, ge=1, le=1000, description="invocations at once per instance")
    min_instances: int = Field(0, ge=0, le=1000)
    max_instances: int = Field(10, ge=1, le=1000)
    idle_ttl_s: float = Field(300.0, ge=0, le=86400, description="most seconds an instance"
                              " above the warm floor stays idle (caps the learned keep-alive)")
    provisioned: list[ProvisionedWindow] = Field(
        default_factory=list, max_length=32,
        description="scheduled warm capacity: instances kept warm in local-time windows")
    reserved_concurrency: int | None = Field(
        None, ge=0, le=100_000, description="executions of this function at once: guaranteed"
        " out of the tenant's max_concurrency, and a cap (0 stops the function)")
    env: dict[str, str] = Field(default_factory=dict)
    network: Literal["none", "egress"] = Field(
        "none", description="none: its own loopback only; egress: outbound connections through"
        " NAT, where the host's addresses and the private ranges stay unreachable unless listed"
        " in network_allow (docs/sandbox.md)")
    network_allow: list[str] = Field(
        default_factory=list, max_length=64, description="IPv4 addresses or CIDR ranges an"
        " egress instance may reach although they are private or the host's")
    ephemeral_storage_mb: int = Field(
        512, ge=16, le=10240, description="size of the instance's private tmpfs (scratch dir,"
        " /tmp, /var/tmp, /dev/shm); the node may cap it lower (422)")
    source_builds: bool = Field(
        False, description="let requirements.txt build packages from source distributions"
        " (in the build sandbox); by default only wheels are installed")
    description: str = Field("", max_length=256)
    on_success: str | None = Field(
        None, description="a function started (as an async task) with this one's result as"
        " its event after each success: a chain")
    service_group: str | None = Field(
        None, description="a service group of the tenant: the function's instances run only"
        " in its dedicated capacity")

    @field_validator("handler")
    @classmethod
    def _handler(cls, v: str) -> str:
        if not HANDLER_RE.match(v):
            raise ValueError("handler must look like module:function (e.g. main:handler)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not ENV_KEY_RE.match(key):
                raise ValueError(f"env name {key!r} is not a valid variable name")
            if key.startswith("FAASBOX_"):
                raise ValueError(f"env name {key!r} is reserved (FAASBOX_ prefix)")
        return v

    @field_validator("network_allow")
    @classmethod
    def _allow(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            try:
                net = ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"network_allow {item!r} is not an IP address or CIDR range"
                                 ) from None
            if net.version != 4:
                raise ValueError(f"network_allow {item!r}: only IPv4 is routed to instances")
            out.append(str(net))
        return out

    @field_validator("on_success")
    @classmethod
    def _next(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"on_success {v!r} is not a function name")
        return v

    @field_validator("service_group")
    @classmethod
    def _group(cls, v: str | None) -> str | None:
        if v is not None and not NAME_RE.match(v):
            raise ValueError(f"service_group {v!r} is not a service group name")
        return v

    @model_validator(mode="after")
    def _scaling(self) -> FunctionSpec:
        if self.min_instances > self.max_instances:
            raise ValueError("min_instances cannot exceed max_instances")
        if any(w.instances > self.max_instances for w in self.provisioned):
            raise ValueError("provisioned instances cannot exceed max_instances")
        if self.network_allow and self.network != "egress":
            raise ValueError('network_allow needs network: "egress"')
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


def as_spec(value: FunctionSpec | dict[str, Any]) -> FunctionSpec:
    """A stored spec (a version's) as a FunctionSpec."""
    return value if isinstance(value, FunctionSpec) else FunctionSpec.model_validate(value)


def validation_text(exc: ValidationError) -> str:
    """A pydantic error as one line: ``memory_mb: Input should be ...; handler: ...``."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err.get("loc", ()))
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        problems.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(problems) or "invalid spec"


def validate_spec(data: dict[str, Any]) -> FunctionSpec:
    """A FunctionSpec from a mapping; a bad one raises InvalidSpec (422) with every problem."""
    from faasbox.errors import InvalidSpec

    try:
        return FunctionSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidSpec(validation_text(exc)) from None


def merge_spec(base: FunctionSpec, changes: dict[str, Any]) -> FunctionSpec:
    """``base`` with some fields replaced, validated as a whole (a PATCH of the spec).

    A field given replaces the base's (``env`` and ``provisioned`` as a whole); a field given
    as ``None`` goes back to its default. Unknown fields are an error.
    """
    from faasbox.errors import InvalidSpec

    unknown = sorted(set(changes) - set(FunctionSpec.model_fields))
    if unknown:
        raise InvalidSpec(f"unknown spec fields: {', '.join(unknown)}")
    data = base.model_dump()
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return validate_spec(data)


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        from faasbox.errors import InvalidSpec

        raise InvalidSpec(
            f"invalid function name {name!r}: use 1-63 lowercase letters, digits, '-' or '_',"
            " starting with a letter or digit"
        )
    return name
