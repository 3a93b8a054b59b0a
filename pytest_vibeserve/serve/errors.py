"""Constants of the server and its one error type: an OpenAI-shaped HTTP error."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from pytest_vibeserve.runner import EngineFailure, Limits

POLL_S = 0.005  # how long the driver waits for engine events before looking for new requests
DEFAULT_MAX_TOKENS = 16  # the OpenAI completions default
MAX_LOGPROBS = 20  # the OpenAI limit on logprobs / top_logprobs
LOGPROB_FLOOR = -9999.0  # what vLLM reports for a -inf logprob: JSON has no infinity
GRACEFUL_SHUTDOWN_S = 5  # how long open requests may finish once a shutdown is asked for
REPLACEMENT_CHAR = "\ufffd"  # what a partial UTF-8 character decodes to
DEFAULT_LIMITS = Limits()  # frozen: safe to share as a default


class ApiError(Exception):
    """A request the server refuses or cannot answer; ``response()`` is its OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "BadRequestError",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.param = param
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": str(self),
                "type": self.kind,
                "param": self.param,
                "code": self.status,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def _engine_error(failure: EngineFailure) -> ApiError:
    return ApiError(500, str(failure), kind="InternalServerError")
