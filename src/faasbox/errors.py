"""The exception tree of faasbox.

Every error a caller can see derives from :class:`FaasboxError`. The API maps each class to an
HTTP status and a stable error ``code``; the CLI prints the message.

::

    FaasboxError                      500 internal
    ├── Unauthenticated               401 unauthenticated
    ├── Forbidden                     403 forbidden
    ├── InvalidRequest                400 invalid_request
    │   ├── MalformedJSON             400 malformed_json
    │   ├── HostNotAllowed            400 invalid_host
    │   └── UnsafeArchive             400 unsafe_archive
    ├── NotFound                      404 not_found
    │   ├── FunctionNotFound          404 function_not_found
    │   ├── VersionNotFound           404 version_not_found
    │   ├── InvocationNotFound        404 invocation_not_found
    │   ├── TaskNotFound              404 task_not_found
    │   ├── JobNotFound               404 job_not_found
    │   ├── TriggerNotFound           404 trigger_not_found
    │   ├── TraceNotFound             404 trace_not_found
    │   └── ServiceGroupNotFound      404 service_group_not_found
    ├── Conflict                      409 conflict
    ├── PayloadTooLarge               413 payload_too_large
    ├── InvalidSpec                   422 invalid_spec
    │   ├── LimitExceeded             422 (a tenant limit on deploys; code names the limit)
    │   └── DeployFailed              422 deploy_failed
    │       ├── DependencyInstallFailed   422 dependency_install_failed
    │       └── LoadFailed            422 load_error
    ├── Throttled                     429 throttled          (carries retry_after)
    │   └── OverLimit                 429 (a tenant limit; code names it: rate_exceeded,
    │                                      tenant_concurrency_exceeded, queue_full, ...)
    ├── InvocationError               500 (a failed execution; code says why)
    │   ├── FunctionError             500 function_error     (the handler raised)
    │   │   └── ResponseTooLarge      413 response_too_large (a result over the cap)
    │   ├── InitError                 500 init_error         (import/module code failed)
    │   ├── OutOfMemory               500 out_of_memory
    │   ├── InstanceCrashed           500 instance_crashed
    │   │   └── ProtocolViolation     500 protocol_error     (the instance broke the protocol)
    │   ├── Cancelled                 409 cancelled          (a task cancelled while running)
    │   └── InvocationTimeout         504 timeout
    └── Unavailable                   503 unavailable
        └── StoreUnavailable          503 store_unavailable
"""

from __future__ import annotations

from typing import Any


class FaasboxError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        body.update({k: v for k, v in self.details.items() if v is not None})
        return {"error": body}


class Unauthenticated(FaasboxError):
    status = 401
    code = "unauthenticated"


class Forbidden(FaasboxError):
    status = 403
    code = "forbidden"


class InvalidRequest(FaasboxError):
    status = 400
    code = "invalid_request"


class MalformedJSON(InvalidRequest):
    code = "malformed_json"


class HostNotAllowed(InvalidRequest):
    code = "invalid_host"


class UnsafeArchive(InvalidRequest):
    code = "unsafe_archive"


class NotFound(FaasboxError):
    status = 404
    code = "not_found"


class FunctionNotFound(NotFound):
    code = "function_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class InvocationNotFound(NotFound):
    code = "invocation_not_found"


class TaskNotFound(NotFound):
    code = "task_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class TriggerNotFound(NotFound):
    code = "trigger_not_found"


class TraceNotFound(NotFound):
    code = "trace_not_found"


class ServiceGroupNotFound(NotFound):
    code = "service_group_not_found"


class Conflict(FaasboxError):
    status = 409
    code = "conflict"


class PayloadTooLarge(FaasboxError):
    status = 413
    code = "payload_too_large"


class InvalidSpec(FaasboxError):
    status = 422
    code = "invalid_spec"


class LimitExceeded(InvalidSpec):
    """A deploy over a tenant limit (``code`` names it)."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, **details)
        self.code = code


class DeployFailed(InvalidSpec):
    code = "deploy_failed"


class DependencyInstallFailed(DeployFailed):
    code = "dependency_install_failed"


class LoadFailed(DeployFailed):
    code = "load_error"


class Throttled(FaasboxError):
    status = 429
    code = "throttled"

    def __init__(self, message: str, retry_after: float = 1.0, **details: Any) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after


class OverLimit(Throttled):
    """A call over a tenant or function limit (``code`` names it)."""

    def __init__(self, code: str, message: str, retry_after: float = 1.0,
                 **details: Any) -> None:
        super().__init__(message, retry_after, **details)
        self.code = code


class NotStarted(FaasboxError):
    """A call sent to an instance behind another (pipelined) that never started: the
    instance was stopped first. Nothing ran; a task goes back to its queue."""

    status = 503
    code = "not_started"


class InvocationError(FaasboxError):
    """An execution that did not produce a result. ``duration_ms`` and ``logs`` are what the
    instance reported, for the invocation record (not part of the error body)."""

    status = 500
    code = "invocation_error"
    duration_ms: float = 0.0
    logs: str = ""
    record: Any = None  # the InvocationRecord written for it, set by the invoker


class FunctionError(InvocationError):
    code = "function_error"


class ResponseTooLarge(FunctionError):
    status = 413
    code = "response_too_large"


class InitError(InvocationError):
    code = "init_error"


class OutOfMemory(InvocationError):
    code = "out_of_memory"


class InstanceCrashed(InvocationError):
    code = "instance_crashed"


class Preempted(InstanceCrashed):
    """An interruptible task's instance was stopped to make room (it is retried)."""

    code = "preempted"


class ProtocolViolation(InstanceCrashed):
    code = "protocol_error"


class Cancelled(InvocationError):
    status = 409
    code = "cancelled"


class InvocationTimeout(InvocationError):
    status = 504
    code = "timeout"


class Unavailable(FaasboxError):
    status = 503
    code = "unavailable"


class StoreUnavailable(Unavailable):
    """The store cannot write (its disk is full, its database unreachable)."""

    code = "store_unavailable"
