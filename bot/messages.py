"""Plain-language texts for what went wrong, shown to Discord users. No Discord imports."""

from __future__ import annotations

from bot.fal import (
    FalAuthError,
    FalConnectionError,
    FalError,
    FalProtocolError,
    FalRateLimited,
    FalRequestFailed,
    FalServerError,
    FalSubmitUnconfirmed,
    FalTimeout,
    FalValidationError,
)

__all__ = ("describe_failure",)

_ISSUE_TEXT = {
    "content_policy_violation": "the image service's safety filter refused this request. Try other wording or images.",
    "image_too_small": "one of the images is too small.",
    "image_too_large": "one of the images is too large (in pixels).",
    "file_too_large": "one of the images is too large (in bytes).",
    "file_download_error": "the image service could not download one of the images.",
    "image_load_error": "the image service could not read one of the images.",
    "unsupported_image_format": "one of the images has an unsupported format (use PNG, JPEG or WebP).",
    "generation_timeout": "the image service took too long to generate the image.",
    "client_cancelled": "the job was cancelled.",
}


def describe_failure(error: FalError | None, *, timed_out: bool = False) -> str:
    """One sentence for the user; never contains a secret or a raw stack trace."""
    if timed_out or isinstance(error, FalTimeout):
        return "The image service did not finish in time. Nothing more will be charged for this job."
    if isinstance(error, FalSubmitUnconfirmed):
        return (
            "The image service did not confirm the request. It was not sent again, so you are never charged twice; "
            "if it went through, an admin can find it in the logs."
        )
    if isinstance(error, FalAuthError):
        if error.balance_exhausted:
            return "The bot's image-service account is out of credit. Please tell a server admin."
        return "The bot's image-service key was refused. Please tell a server admin."
    if isinstance(error, FalValidationError | FalRequestFailed):
        return "Sorry, " + _issue_text(error)
    if isinstance(error, FalRateLimited):
        return "The image service is busy right now. Please try again in a minute."
    if isinstance(error, FalServerError | FalConnectionError):
        return "The image service is having trouble right now. Please try again later."
    if isinstance(error, FalProtocolError):
        return f"The image service sent something unexpected ({error}); the job could not be finished."
    return "Something went wrong with the image service."


def _issue_text(error: FalValidationError | FalRequestFailed) -> str:
    for kind in error.error_types:
        if kind in _ISSUE_TEXT:
            return _ISSUE_TEXT[kind]
    summary = error.summary.strip() or f"error {error.status}"
    return f"the image service refused the request: {summary[:300]}"
