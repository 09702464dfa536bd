"""Jobs: the model, the ports the runner needs, and the runner that owns every job's life."""

from .model import (
    ACTIVE_STATES,
    BILLABLE_STATES,
    DEFAULT_ENDPOINT,
    TRANSITIONS,
    InvalidTransition,
    Job,
    JobState,
    ReplyToken,
    ResultImage,
)
from .ports import DeliveryFailed, DeliveryReport, FalQueue, JobObserver, JobSink, JobStore
from .runner import CancelOutcome, CancelResult, JobRunner

__all__ = (
    "ACTIVE_STATES",
    "BILLABLE_STATES",
    "DEFAULT_ENDPOINT",
    "TRANSITIONS",
    "CancelOutcome",
    "CancelResult",
    "DeliveryFailed",
    "DeliveryReport",
    "FalQueue",
    "InvalidTransition",
    "Job",
    "JobObserver",
    "JobRunner",
    "JobSink",
    "JobState",
    "JobStore",
    "ReplyToken",
    "ResultImage",
)
