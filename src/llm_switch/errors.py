"""The switch's own errors, each knowing how it reaches a client.

    SwitchError                  base; .status / .type / .code shape the OpenAI error body
    ├── ConfigError              config.yaml is invalid (never reaches a client)
    ├── BadRequest               400: body is not JSON, or `model` missing / not a string
    ├── UnknownModel             404: no such model or alias (message lists the known ones)
    ├── RequestTooLarge          413: body over max_body_bytes
    ├── UnitNotFound             502: systemd knows no such unit
    ├── StartFailed              502: the unit failed or exited while starting
    ├── BackendUnreachable       502: the backend did not answer, or answered as another model
    ├── SystemdUnavailable       502: the user manager cannot be reached over D-Bus
    └── HealthTimeout            504: the model did not turn healthy within health_timeout
"""

from __future__ import annotations


class SwitchError(Exception):
    status = 500
    type = "server_error"
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}


class ConfigError(SwitchError):
    code = "invalid_config"


class BadRequest(SwitchError):
    status, type, code = 400, "invalid_request_error", "invalid_request"

    def __init__(self, message: str, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.code = code


class UnknownModel(SwitchError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class RequestTooLarge(SwitchError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnitNotFound(SwitchError):
    status, type, code = 502, "backend_error", "unit_not_found"


class StartFailed(SwitchError):
    status, type, code = 502, "backend_error", "start_failed"


class BackendUnreachable(SwitchError):
    status, type, code = 502, "backend_error", "backend_unreachable"


class SystemdUnavailable(SwitchError):
    status, type, code = 502, "backend_error", "systemd_unavailable"


class HealthTimeout(SwitchError):
    status, type, code = 504, "timeout_error", "health_timeout"
