"""Errors the local L4E service answers with, in the AWS JSON 1.0 shape.

Every failure a client can cause is an ApiError carrying the AWS error code (the ``__type`` of the body
and the ``x-amzn-ErrorType`` header) and the HTTP status botocore expects for it. Anything else that
escapes an operation is turned into InternalServerException (500) by the server, never a traceback.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client: ``code`` is the AWS error name, ``status`` the HTTP status."""

    code = "InternalServerException"
    status = 500

    def __init__(self, message: str, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class ValidationException(ApiError):
    code, status = "ValidationException", 400


class ResourceNotFoundException(ApiError):
    code, status = "ResourceNotFoundException", 404


class ConflictException(ApiError):
    code, status = "ConflictException", 409


class ServiceQuotaExceededException(ApiError):
    code, status = "ServiceQuotaExceededException", 402


class AccessDeniedException(ApiError):
    code, status = "AccessDeniedException", 403


class SerializationException(ApiError):
    code, status = "SerializationException", 400


class UnknownOperationException(ApiError):
    code, status = "UnknownOperationException", 400  # what AWS JSON services answer for a bad X-Amz-Target


class InternalServerException(ApiError):
    code, status = "InternalServerException", 500
