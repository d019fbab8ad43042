"""Errors answered in OpenAI's shape, and the one table from the errors other layers raise to status and code.

Invariant: a client's mistake is a 4xx whose `param` names the request field (never a 500): only the error
types in `_TABLE` (grammar errors, prompt errors, engine admission errors) and `APIError` become 4xx; any other
exception is a bug, answered 500 for that request alone, with the traceback in the server log.
"""

from __future__ import annotations

from typing import Any

from strictcall.grammars import AutomatonLimitError, GrammarError, InvalidSchemaError, RegexSyntaxError, TurnError, UnsupportedSchemaError
from strictcall.server.engine import EngineOverloadedError, EngineRequestError
from strictcall.server.prompt import PromptError

_TYPES = {401: "authentication_error", 404: "invalid_request_error", 408: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
          503: "service_unavailable"}


class APIError(Exception):
    """An error answered in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


# Error type -> (status, code). Looked up along the type's MRO, so a subclass takes its closest entry.
_TABLE: dict[type[Exception], tuple[int, str]] = {
    InvalidSchemaError: (400, "invalid_value"),
    UnsupportedSchemaError: (400, "unsupported_schema"),
    RegexSyntaxError: (400, "unsupported_schema"),
    AutomatonLimitError: (400, "grammar_too_large"),
    TurnError: (400, "invalid_value"),
    GrammarError: (400, "unsupported_schema"),
    PromptError: (400, "invalid_value"),
    EngineRequestError: (400, "invalid_value"),
    EngineOverloadedError: (429, "rate_limit_exceeded"),
}


def api_error(error: Exception, param: str | None = None) -> APIError:
    """The 4xx for an error another layer raised, naming `param` (the request field it came from).

    Raises:
        the error itself, if it is not a client's mistake (a bug: the app answers 500 and logs it).
    """
    for kind in type(error).__mro__:
        if kind in _TABLE:
            status, code = _TABLE[kind]
            break
    else:
        raise error
    if isinstance(error, TurnError) and error.cause is not None:
        code = api_error(error.cause).code or code
    if isinstance(error, PromptError):
        param = error.param
    message = f"the server is busy: {error}" if status == 429 else str(error)
    return APIError(status, message, param=param, code=code, type="rate_limit_error" if status == 429 else None)
