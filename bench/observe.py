"""Reading the fakes' records after a run: fal requests per job, status and delivery latencies, losses.

Every bench job has a unique prompt (`bench_prompt`), which shows up in fal's input, in every status
text and in the result message; the fake fal's `TimedJob.times` and FakeDiscord's `Recorded.time`
share the event loop's clock.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.world import request_times, timed_job
from tests.fakes.fake_discord import FakeDiscord, Json, Recorded, message_text
from tests.fakes.fake_fal import KINDS, FakeFal

_TOKEN_PATH = re.compile(r"/interactions/\d+/(?P<cb>[^/]+)/callback|/webhooks/\d+/(?P<wh>[^/]+)/messages/@original")
_CHANNEL_POST = re.compile(r"/channels/\d+/messages")
_THREAD_POST = re.compile(r"/channels/\d+/messages/\d+/threads")
QUEUE_KINDS = ("submit", "status", "stream", "result", "cancel")


# -- fal requests per job ---------------------------------------------------------------------


def requests_per_job(fal: FakeFal, prompts: Iterable[str]) -> dict[str, Counter[str]]:
    """Requests the fake fal received for each job, by kind (submit, status, stream, result, cancel, file)."""
    wanted = set(prompts)
    by_request: dict[str, str] = {rid: job.input.get("prompt", "") for rid, job in fal.jobs.items()}
    counts: dict[str, Counter[str]] = {prompt: Counter() for prompt in wanted}
    for rec in fal.requests:
        prompt = _prompt_of(rec.json) if rec.kind == "submit" else by_request.get(_request_id(rec.path), "")
        if prompt in counts:
            counts[prompt][rec.kind] += 1
    return counts


def _prompt_of(body: object) -> str:
    return str(body.get("prompt", "")) if isinstance(body, dict) else ""


def _request_id(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["files"] and len(parts) > 1:
        return parts[1]
    return parts[parts.index("requests") + 1] if "requests" in parts[:-1] else ""


@dataclass
class RequestMix:
    jobs: int
    by_kind: dict[str, float]  # mean per job

    @property
    def queue_api(self) -> float:
        return sum(self.by_kind.get(kind, 0.0) for kind in QUEUE_KINDS)

    @property
    def total(self) -> float:
        return sum(self.by_kind.values())


def request_mix(counts: dict[str, Counter[str]]) -> RequestMix:
    jobs = len(counts) or 1
    return RequestMix(len(counts), {kind: sum(c[kind] for c in counts.values()) / jobs for kind in KINDS})


# -- status texts -----------------------------------------------------------------------------


def status_texts(discord: FakeDiscord) -> dict[str, list[tuple[float, str]]]:
    """(arrival time, content) of every accepted callback/webhook edit, by interaction token."""
    texts: dict[str, list[tuple[float, str]]] = {}
    for rec in discord.requests:
        match = _TOKEN_PATH.fullmatch(rec.path)
        if match is None or rec.status >= 300 or not isinstance(rec.json, dict):
            continue
        body: Json = (rec.json.get("data") or {}) if match["cb"] else rec.json
        if isinstance(body, dict) and "content" in body:
            texts.setdefault(match["cb"] or match["wh"], []).append((rec.time, str(body["content"])))
    return texts


def visible_changes(fal: FakeFal, request_id: str) -> list[tuple[float, str, str]]:
    """(time, kind, marker) for each fal change that alters the status text; kind is one of
    submit (first queue position), queue (position moved), started (first IN_PROGRESS), done."""
    job = timed_job(fal, request_id)
    changes: list[tuple[float, str, str]] = []
    last = ""
    for (state, position, _logs), at in zip(job.history, job.times, strict=True):
        marker = _marker(state, position)
        if marker != last:
            kind = {"IN_PROGRESS": "started", "COMPLETED": "done"}.get(state, "queue" if changes else "submit")
            changes.append((at, kind, marker))
            last = marker
    return changes


def _marker(state: str, position: int | None) -> str:
    if state == "IN_QUEUE":
        return "In the queue: next in line" if position == 0 else f"In the queue: {position} job(s) ahead"
    return "🎨 Generating" if state == "IN_PROGRESS" else "✅ Done"


@dataclass
class StatusLatency:
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    missed: Counter[str] = field(default_factory=Counter)  # changes never shown (coalesced or lost)

    def all_changes(self) -> list[float]:
        return [v for kind, values in self.by_kind.items() if kind != "done" for v in values]


def status_latency(fal: FakeFal, discord: FakeDiscord, token_of: dict[str, str]) -> StatusLatency:
    """For each visible fal change: time until FakeDiscord receives an edit of that job's status carrying it."""
    texts = status_texts(discord)
    result = StatusLatency()
    for request_id, job in fal.jobs.items():
        token = token_of.get(job.input.get("prompt", ""))
        if token is None:
            continue
        edits = texts.get(token, [])
        for at, kind, marker in visible_changes(fal, request_id):
            shown = next((t for t, content in edits if t >= at and marker in content), None)
            if shown is None:
                result.missed[kind] += 1
            else:
                result.by_kind.setdefault(kind, []).append(shown - at)
    return result


# -- completion to files ------------------------------------------------------------------------


STAGES = ("detect", "fetch", "thread", "upload")


@dataclass
class Delivery:
    """Per job, seconds from fal's COMPLETED to: result GET (detect), file GET (fetch), thread POST
    (thread), result upload received by FakeDiscord (upload; cumulative)."""

    stages: dict[str, list[float]] = field(default_factory=lambda: {stage: [] for stage in STAGES})
    missing: int = 0


def delivery_latency(fal: FakeFal, discord: FakeDiscord, prompts: Iterable[str]) -> Delivery:
    wanted = set(prompts)
    uploads = _first_times(discord.requests, _CHANNEL_POST, wanted, files=True)
    threads = _first_times(discord.requests, _THREAD_POST, wanted, files=False)
    fal_firsts = _fal_first_times(fal)
    result = Delivery()
    for request_id, job in fal.jobs.items():
        prompt = job.input.get("prompt", "")
        if prompt not in wanted:
            continue
        done = timed_job(fal, request_id).times[-1]
        marks = {
            "detect": fal_firsts.get((request_id, "result")),
            "fetch": fal_firsts.get((request_id, "file")),
            "thread": threads.get(prompt),
            "upload": uploads.get(prompt),
        }
        if marks["upload"] is None:
            result.missing += 1
            continue
        for stage, at in marks.items():
            if at is not None:
                result.stages[stage].append(at - done)
    return result


def _first_times(records: list[Recorded], path: re.Pattern[str], prompts: set[str], *, files: bool) -> dict[str, float]:
    firsts: dict[str, float] = {}
    for rec in records:
        if rec.method != "POST" or rec.status >= 300 or not path.fullmatch(rec.path) or bool(rec.files) != files:
            continue
        body = rec.json if isinstance(rec.json, dict) else {}
        text = message_text(body) if files else str(body.get("name", ""))  # a result card's text, a thread's name
        prompt = next((p for p in _candidates(text) if p in prompts), None)
        if prompt is not None:
            firsts.setdefault(prompt, rec.time)
    return firsts


def _candidates(text: str) -> list[str]:
    """Bench prompts mentioned in a text: `bench <phase> job <n> make it blue` (threads cut names at 100)."""
    return [m.group(0) for m in re.finditer(r"bench \w+ job \d{5} make it blue", text)]


def _fal_first_times(fal: FakeFal) -> dict[tuple[str, str], float]:
    firsts: dict[tuple[str, str], float] = {}
    for rec, at in zip(fal.requests, request_times(fal), strict=True):
        if rec.kind in ("result", "file"):
            firsts.setdefault((_request_id(rec.path), rec.kind), at)
    return firsts


def submit_delays(fal: FakeFal, dispatched_at: dict[str, float]) -> list[float]:
    """Per job, INTERACTION_CREATE sent → its submit recorded by the fake fal."""
    delays = []
    for rec, at in zip(fal.requests, request_times(fal), strict=True):
        prompt = _prompt_of(rec.json) if rec.kind == "submit" else ""
        if prompt in dispatched_at:
            delays.append(at - dispatched_at[prompt])
    return delays


# -- losses -------------------------------------------------------------------------------------


def result_messages(discord: FakeDiscord, prompts: Iterable[str]) -> Counter[str]:
    """How many result messages ("here is your edit", with files) the fake holds for each prompt."""
    counts: Counter[str] = Counter({prompt: 0 for prompt in prompts})
    for message in discord.messages.values():
        content = message_text(message)  # the result card's Text Displays
        if "here is your edit" in content and message.get("attachments"):
            for prompt in _candidates(content):
                if prompt in counts:
                    counts[prompt] += 1
    return counts
