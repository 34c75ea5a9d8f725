"""Request and response shapes of the API (also the OpenAPI spec)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from faasbox import errors
from faasbox.spec import FunctionSpec
from faasbox.store import FunctionRow, VersionRow
from faasbox.tenancy.names import display


class DeployRequest(FunctionSpec):
    """A function spec plus its code: a base64 zip of the function folder."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code_zip: str | None = Field(
        None, description="base64 of a zip of the function folder; omit to reuse the code of"
        " the latest version (a configuration-only deploy)")
    check: bool = Field(True, description="load the function in a throwaway instance first")

    def spec(self) -> FunctionSpec:
        return FunctionSpec(**self.model_dump(exclude={"code_zip", "check"}))

    def code(self) -> bytes | None:
        return _decode_zip(self.code_zip)


class CreateRequest(DeployRequest):
    name: str


class PatchRequest(BaseModel):
    """Some spec fields to change on the latest version's spec (the others are kept; ``null``
    puts a field back to its default), and optionally new code."""

    model_config = ConfigDict(extra="allow", frozen=True)

    code_zip: str | None = Field(
        None, description="base64 of a zip of the function folder; omit to keep the code")
    check: bool = Field(True, description="load the function in a throwaway instance first")

    def changes(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def code(self) -> bytes | None:
        return _decode_zip(self.code_zip)

    @classmethod
    def openapi_schema(cls) -> dict[str, Any]:
        """The request body's schema: every spec field optional, plus ``code_zip`` and
        ``check``."""
        schema = DeployRequest.model_json_schema()
        schema.pop("required", None)
        schema["title"] = cls.__name__
        schema["description"] = cls.__doc__
        return schema


def _decode_zip(code_zip: str | None) -> bytes | None:
    if code_zip is None:
        return None
    try:
        return base64.b64decode(code_zip, validate=True)
    except binascii.Error as exc:
        raise errors.InvalidRequest(f"code_zip is not valid base64: {exc}") from None


def function_view(fn: FunctionRow, latest: VersionRow) -> dict[str, Any]:
    return {
        "name": display(fn.name),
        "latest_version": fn.latest_version,
        "created_at": fn.created_at,
        "updated_at": fn.updated_at,
        "spec": latest.spec.model_dump(),
        "code_sha256": latest.code_sha,
        "packages": latest.packages_key,
    }


def version_view(row: VersionRow) -> dict[str, Any]:
    return {
        "function": display(row.function),
        "version": row.version,
        "created_at": row.created_at,
        "spec": row.spec.model_dump(),
        "code_sha256": row.code_sha,
        "packages": row.packages_key,
    }
