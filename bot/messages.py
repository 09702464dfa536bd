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
from bot.i18n import N_, t

__all__ = ("describe_failure",)

_ISSUE_TEXT = {
    "content_policy_violation": N_(
        "Sorry, the image service's safety filter refused this request. Try other wording or images."
    ),
    "image_too_small": N_("Sorry, one of the images is too small."),
    "image_too_large": N_("Sorry, one of the images is too large (in pixels)."),
    "file_too_large": N_("Sorry, one of the images is too large (in bytes)."),
    "file_download_error": N_("Sorry, the image service could not download one of the images."),
    "image_load_error": N_("Sorry, the image service could not read one of the images."),
    "unsupported_image_format": N_("Sorry, one of the images has an unsupported format (use PNG, JPEG or WebP)."),
    "generation_timeout": N_("Sorry, the image service took too long to generate the image."),
    "client_cancelled": N_("The job was cancelled."),
}


def describe_failure(error: FalError | None, *, timed_out: bool = False) -> str:
    """One sentence for the user; never contains a secret or a raw stack trace."""
    if timed_out:
        return t(
            "The image service did not finish in time, so the job was cancelled there. "
            "If it had already started, it may still be charged."
        )
    if isinstance(error, FalSubmitUnconfirmed):
        return t(
            "The image service did not confirm the request. It was not sent again, so you are never charged twice; "
            "if it went through, an admin can find it in the logs."
        )
    if isinstance(error, FalTimeout):
        return t("The image service did not answer in time. Please try again later.")
    if isinstance(error, FalAuthError):
        if error.balance_exhausted:
            return t("The bot's image-service account is out of credit. Please tell a server admin.")
        return t("The bot's image-service key was refused. Please tell a server admin.")
    if isinstance(error, FalValidationError | FalRequestFailed):
        return _issue_text(error)
    if isinstance(error, FalRateLimited):
        return t("The image service is busy right now. Please try again in a minute.")
    if isinstance(error, FalServerError | FalConnectionError):
        return t("The image service is having trouble right now. Please try again later.")
    if isinstance(error, FalProtocolError):
        return t("The image service sent something unexpected ({detail}), so the job could not be finished.",
                 detail=str(error)[:200])  # fmt: skip
    return t("Something went wrong with the image service.")


def _issue_text(error: FalValidationError | FalRequestFailed) -> str:
    for kind in error.error_types:
        if kind in _ISSUE_TEXT:
            return t(_ISSUE_TEXT[kind])
    summary = error.summary.strip() or t("error {status}", status=error.status)
    return t("Sorry, the image service refused the request: {reason}", reason=summary[:300])
