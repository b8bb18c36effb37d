"""Domain errors shared by every app. The API turns them into the contract's error body (§2.2)."""

from __future__ import annotations


class ServiceError(Exception):
    status = 400
    type = "invalid_request_error"

    def __init__(
        self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }


class InvalidRequest(ServiceError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(ServiceError):
    status = 401
    type = "authentication_error"


class PermissionDenied(ServiceError):
    status = 403
    type = "permission_error"


class NotFound(ServiceError):
    status = 404
    type = "not_found_error"


class MethodNotAllowed(ServiceError):
    status = 405
    type = "method_not_allowed"


class Conflict(ServiceError):
    status = 409
    type = "conflict_error"


class PayloadTooLarge(ServiceError):
    status = 413
    type = "invalid_request_error"


class UnsupportedMediaType(ServiceError):
    status = 415
    type = "invalid_request_error"


class RateLimited(ServiceError):
    status = 429
    type = "rate_limit_error"


class UpstreamFailed(ServiceError):
    status = 502
    type = "upstream_error"


class UpstreamTimeout(ServiceError):
    status = 504
    type = "upstream_error"


class ServiceUnavailable(ServiceError):
    status = 503
    type = "service_unavailable"
