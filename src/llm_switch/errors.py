"""The switch's own errors, each knowing how it reaches a client.

    SwitchError                  base; .status / .type / .code shape the OpenAI error body
    ├── ConfigError              config.yaml is invalid (reported at start or reload, never to a client)
    ├── BadRequest               400: body is not JSON, or `model` missing / not a string
    ├── Unauthorized             401: no API key, or a wrong one (with WWW-Authenticate: Bearer)
    ├── Forbidden                403: a right key, but not for this model or route
    ├── UnknownModel             404: no such model or alias (message lists the known ones)
    ├── RequestTooLarge          413: body over max_body_bytes
    ├── UnitNotFound             502: systemd knows no such unit
    ├── StartFailed              502: the unit failed or exited while starting
    │   └── JobFailed            502: a start or stop job ended with a result other than `done`
    ├── BackendUnreachable       502: the backend did not answer, or answered as another model
    │   └── BackendGone          502: the connection was refused: nothing was sent, a retry is safe
    ├── SystemdUnavailable       502: the user manager cannot be reached over D-Bus
    ├── QueueFull                503: more requests wait than max_queue allows
    ├── QueueTimeout             503: the request waited longer than max_wait for its model
    ├── ShuttingDown             503: the switch stopped before the answer was complete
    └── HealthTimeout            504: the model did not turn healthy within health_timeout
"""

from __future__ import annotations


class SwitchError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"
    retry_after: float | None = None  # seconds, sent as Retry-After

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    def headers(self) -> dict[str, str]:
        """Response headers that go with this error."""
        return {"Retry-After": str(int(self.retry_after))} if self.retry_after is not None else {}


class ConfigError(SwitchError):
    code = "invalid_config"

    def __init__(self, message: str, problems: list[str] | tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.problems = tuple(problems) if problems else (message,)  # one line each: `check` prints them all


class BadRequest(SwitchError):
    status, type, code = 400, "invalid_request_error", "invalid_request"

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


class Unauthorized(SwitchError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": "Bearer"}


class Forbidden(SwitchError):
    status, type, code = 403, "invalid_request_error", "permission_denied"

    def __init__(self, message: str, code: str = "permission_denied") -> None:
        super().__init__(message)
        self.code = code


class UnknownModel(SwitchError):
    status, type, code = 404, "invalid_request_error", "model_not_found"

    name = ""  # the name asked for (auth.py lists only a limited key's models for it)

    @classmethod
    def named(cls, name: str, known: str) -> UnknownModel:
        error = cls(f"unknown model {name!r}; this switch serves: {known}")
        error.name = name
        return error


class RequestTooLarge(SwitchError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnitNotFound(SwitchError):
    status, type, code = 502, "backend_error", "unit_not_found"


class StartFailed(SwitchError):
    status, type, code = 502, "backend_error", "start_failed"


class JobFailed(StartFailed):
    """A start or stop job ended with a result other than `done`."""

    def __init__(self, unit: str, verb: str, result: str) -> None:
        super().__init__(f"{unit}: {verb} job ended with result '{result}'")
        self.unit, self.result = unit, result


class BackendUnreachable(SwitchError):
    status, type, code = 502, "backend_error", "backend_unreachable"


class BackendGone(BackendUnreachable):
    """The backend refused the connection: nothing was sent, so the request may be retried."""


class SystemdUnavailable(SwitchError):
    status, type, code = 502, "backend_error", "systemd_unavailable"


class QueueFull(SwitchError):
    status, type, code = 503, "server_error", "queue_full"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class QueueTimeout(SwitchError):
    status, type, code = 503, "server_error", "queue_timeout"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDown(SwitchError):
    status, type, code = 503, "server_error", "shutting_down"


class HealthTimeout(SwitchError):
    status, type, code = 504, "timeout_error", "health_timeout"
