"""Turning run results into the printed tables and the JSON figures, one function per section."""

from __future__ import annotations

import re
from dataclasses import asdict
from typing import Any

from bench.metrics import LogCounter, Spread
from bench.observe import (
    QUEUE_KINDS,
    RequestMix,
    delivery_latency,
    request_mix,
    requests_per_job,
    result_messages,
    status_latency,
    submit_delays,
)
from bench.report import Table, mib, ms, num
from bench.scenarios import OfficialResult, PhaseResult
from bench.world import Startup
from tests.fakes.fake_fal import KINDS

Figures = dict[str, Any]
_CALLBACK = re.compile(r"/interactions/\d+/(?P<token>[^/]+)/callback")
CHANGE_LABELS = {
    "submit": "first queue position (submit → shown)",
    "queue": "queue position moved",
    "started": "IN_PROGRESS (generating)",
}


def _spread(values: list[float]) -> Figures:
    return asdict(Spread.of(values))


def _script_text(result: PhaseResult) -> str:
    s, jitter = result.spec.script, result.spec.jitter
    positions = ",".join(str(p) for p in s.queue_positions)
    return (
        f"queue positions {positions}, then {s.progress_steps} progress steps, {s.step_seconds:g} s "
        f"± {jitter / 2:g} s apart (uniform per job)"
    )


# -- 1. requests per job ------------------------------------------------------------------------


def requests_section(sse: PhaseResult, poll: PhaseResult, official: OfficialResult) -> tuple[Table, Figures]:
    mixes: dict[str, tuple[str, str, RequestMix]] = {
        "ours_sse": ("ours (KontextBot)", "SSE /status/stream", _mix(sse)),
        "ours_poll": ("ours (KontextBot)", f"poll /status every {poll.spec.poll_interval:g} s", _mix(poll)),
    }
    for interval, prompts in official.prompts.items():
        how = f"poll /status every {interval:g} s" + (" (default)" if interval == 0.1 else "")
        mix = request_mix(requests_per_job(official.fal, prompts))
        mixes[f"official_{interval:g}s"] = ("fal_client subscribe", how, mix)
    table = Table(
        "1. fal HTTP requests per job (FakeFal.requests by kind, mean per job)",
        ["client", "status via", "jobs", *KINDS, "queue API", "all"],
    )
    for label, how, mix in mixes.values():
        table.add(label, how, mix.jobs, *(num(mix.by_kind[k]) for k in KINDS), num(mix.queue_api), num(mix.total))
    ratios = _ratios(mixes)
    table.notes += [
        f"Same job script for every row: {_script_text(sse)},",
        f"≈{_fal_seconds(sse):g} s at fal per job. fal_client.subscribe is given on_queue_update (as a bot showing",
        "queue positions would), so it polls until COMPLETED and once more inside handle.get().",
        f"queue API = {' + '.join(QUEUE_KINDS)}; 'file' = result image downloads, which fal_client.subscribe",
        "never does (it returns URLs), so the ratios compare queue API requests only.",
        *(f"ratio {name}: {num(value, 1)}x" for name, value in ratios.items()),
    ]
    if official.errors:
        table.notes.append(f"fal_client calls that raised: {len(official.errors)}, e.g. {official.errors[0][:80]}")
    figures = {key: {"client": c, "status_via": h, **asdict(m), "queue_api": m.queue_api, "all": m.total}
               for key, (c, h, m) in mixes.items()}  # fmt: skip
    return table, {"per_job": figures, "ratios_official_over_ours": ratios}


def _mix(result: PhaseResult) -> RequestMix:
    return request_mix(requests_per_job(result.fal, result.prompts))


def _fal_seconds(result: PhaseResult) -> float:
    s = result.spec.script
    return (len(s.queue_positions) - 1 + s.progress_steps + 1) * s.step_seconds


def _ratios(mixes: dict[str, tuple[str, str, RequestMix]]) -> dict[str, float]:
    ratios: dict[str, float] = {}
    for official in (k for k in mixes if k.startswith("official")):
        for ours in ("ours_sse", "ours_poll"):
            ratios[f"{official} / {ours}"] = mixes[official][2].queue_api / mixes[ours][2].queue_api
    return ratios


# -- 2. status propagation ------------------------------------------------------------------------


def status_section(runs: list[PhaseResult]) -> tuple[Table, Figures]:
    table = Table(
        "2. Status propagation: fal state change → FakeDiscord receives the status edit showing it",
        ["bot mode", "change", "shown", "p50 ms", "p95 ms", "max ms"],
    )
    figures: Figures = {}
    for run in runs:
        latency = status_latency(run.fal, run.discord, run.token_of)
        mode = _mode(run)
        figures[mode] = {}
        for kind, label in CHANGE_LABELS.items():
            values = latency.by_kind.get(kind, [])
            _latency_row(table, mode, label, values, latency.missed[kind])
            figures[mode][kind] = {**_spread(values), "missed": latency.missed[kind]}
        missed_all = sum(latency.missed[k] for k in CHANGE_LABELS)
        _latency_row(table, mode, "all of the above", latency.all_changes(), missed_all)
        figures[mode]["all"] = {**_spread(latency.all_changes()), "missed": missed_all}
    first = runs[0]
    interval = first.spec.edit_interval
    shortest = first.spec.script.step_seconds - first.spec.jitter / 2
    table.notes += [
        f"{first.spec.jobs} jobs per mode, started over {first.spec.jobs / first.spec.dispatch_rate:g} s;",
        f"{_script_text(first)}.",
        f"status_edit_interval_seconds = {interval:g} (the production default): a status is edited at most once",
        f"per {interval:g} s and changes in between are coalesced. Changes here are at least {shortest:g} s apart,",
        "so every change is shown and the pacing adds nothing; changes closer than the interval wait up to",
        f"{interval:g} s and intermediate ones are skipped (see the load run), by design: Discord allows 5 edits",
        "per 5 s per interaction token. Jittered steps put changes at every phase of the poll cycle, so polling",
        "adds about half a poll interval on average; SSE pushes each change at once.",
    ]
    return table, figures


def _mode(run: PhaseResult) -> str:
    return "SSE" if run.spec.use_stream else f"poll {run.spec.poll_interval:g} s"


def _latency_row(table: Table, mode: str, label: str, values: list[float], missed: int) -> None:
    spread = Spread.of(values)
    table.add(mode, label, f"{spread.n}/{spread.n + missed}", ms(spread.p50), ms(spread.p95), ms(spread.max))


# -- 3. completion → files ----------------------------------------------------------------------------

STAGE_LABELS = {
    "detect": "COMPLETED → GET result at fal",
    "fetch": "COMPLETED → GET image at fal",
    "thread": "COMPLETED → thread created",
    "upload": "COMPLETED → files upload received",
}


def delivery_section(runs: list[PhaseResult]) -> tuple[Table, Figures]:
    table = Table(
        "3. Completion → result files posted (cumulative from fal's COMPLETED)",
        ["bot mode", "stage", "n", "p50 ms", "p95 ms", "max ms"],
    )
    figures: Figures = {}
    for run in runs:
        delivery = delivery_latency(run.fal, run.discord, run.prompts)
        done = status_latency(run.fal, run.discord, run.token_of).by_kind.get("done", [])
        stages = {**delivery.stages, "done_edit": done}
        labels = {**STAGE_LABELS, "done_edit": "COMPLETED → '✅ Done' status edit"}
        for stage, values in stages.items():
            spread = Spread.of(values)
            table.add(_mode(run), labels[stage], spread.n, ms(spread.p50), ms(spread.p95), ms(spread.max))
        figures[_mode(run)] = {stage: _spread(values) for stage, values in stages.items()}
        figures[_mode(run)]["missing_uploads"] = delivery.missing
    table.notes += [
        "Stages: the bot sees COMPLETED (SSE event or poll), GETs the result JSON, downloads each image, saves",
        "to SQLite, creates the thread, uploads the files (multipart). The ✅ edit follows the upload (paced by",
        "the status interval when the previous edit was recent).",
    ]
    return table, figures


# -- 4. start → ready -----------------------------------------------------------------------------------


def startup_section(starts: list[tuple[str, Startup]]) -> tuple[Table, Figures]:
    table = Table(
        "4. Start → ready (KontextBot() constructed → on_ready)",
        ["bot start", "guild_ready_timeout s", "login+setup_hook ms", "gateway → on_ready ms", "total ms"],
    )
    for name, start in starts:
        gateway = start.ready - start.logged_in
        table.add(name, f"{start.guild_ready_timeout:g}", ms(start.login_seconds), ms(gateway), ms(start.total_seconds))
    table.notes += [
        "login+setup_hook: GET /users/@me, load the cog, sync the commands (PUT); then the gateway: HELLO, IDENTIFY,",
        "READY, GUILD_CREATE, and discord.py waits guild_ready_timeout for more guilds before on_ready. The tests use",
        "0.05 s; production uses discord.py's default of 2 s, which the 'default' row shows: it is nearly all of it.",
    ]
    figures = {name: {**asdict(start), "login_seconds": start.login_seconds, "total_seconds": start.total_seconds}
               for name, start in starts}  # fmt: skip
    return table, figures


# -- 5. load -----------------------------------------------------------------------------------------------


def load_section(run: PhaseResult, log: LogCounter, overflows: int) -> tuple[Table, Figures]:
    figures = load_figures(run, log, overflows)
    table = Table(f"5. {run.spec.jobs} concurrent jobs in one process", ["figure", "value"])
    for label, value in _load_rows(run, figures):
        table.add(label, value)
    table.notes += _load_notes(run)
    return table, figures


def load_figures(run: PhaseResult, log: LogCounter, overflows: int) -> Figures:
    jobs = run.spec.jobs
    results = result_messages(run.discord, run.prompts)
    acks = _ack_latencies(run)
    delivered = run.states.get("delivered", 0)
    assert run.memory is not None
    figures: Figures = {
        "jobs": jobs,
        "wall_seconds": run.wall,
        "stalled": run.stalled,
        "states": dict(run.states),
        "delivered": delivered,
        "lost": jobs - delivered,
        "results_missing": sum(1 for n in results.values() if n == 0),
        "results_duplicated": sum(1 for n in results.values() if n > 1),
        "interactions_failed": jobs - len(acks["ok"]),
        "ack_latency": _spread(acks["ok"]),
        "discord_429": run.discord.rate_limited,
        "error_logs": log.errors,
        "listen_overflows": overflows,
        "peaks": asdict(run.peaks),
        "memory": {**asdict(run.memory), "increase_kib": run.memory.increase_kib},
        "fal_requests_per_job": asdict(_mix(run)),
        "completion_to_upload": _spread(delivery_latency(run.fal, run.discord, run.prompts).stages["upload"]),
        "dispatch_to_submit": _spread(submit_delays(run.fal, run.dispatched_at)),
    }
    if run.cpu is not None:
        figures["cpu"] = {**asdict(run.cpu), "per_job": run.cpu.cpu_total / jobs,
                          "bot_estimate_per_job": run.cpu.cpu_bot_estimate / jobs}  # fmt: skip
    latency = status_latency(run.fal, run.discord, run.token_of)
    figures["status_changes"] = {**_spread(latency.all_changes()), "missed": sum(latency.missed.values())}
    return figures


def _ack_latencies(run: PhaseResult) -> dict[str, list[float]]:
    first: dict[str, tuple[float, int]] = {}
    for rec in run.discord.requests:
        if (match := _CALLBACK.fullmatch(rec.path)) is not None:
            first.setdefault(match["token"], (rec.time, rec.status))
    ok = []
    for prompt, token in run.token_of.items():
        at, status = first.get(token, (0.0, 0))
        if status == 200:
            ok.append(at - run.dispatched_at[prompt])
    return {"ok": ok}


def _load_rows(run: PhaseResult, f: Figures) -> list[tuple[str, str]]:
    mem, peaks, mix = f["memory"], f["peaks"], f["fal_requests_per_job"]["by_kind"]
    rows = [
        ("wall time, first dispatch → all settled", f"{run.wall:.1f} s" + (" (STALLED)" if run.stalled else "")),
        ("peak jobs in flight (JobRunner tasks)", str(peaks["active_jobs"])),
        ("peak jobs unfinished at fal", str(peaks["unfinished_at_fal"])),
        ("peak SSE streams open at fal", str(peaks["open_streams"])),
        ("peak TCP connections bot → fal / → Discord", f"{peaks['fal_connections']} / {peaks['discord_connections']}"),
        ("peak RSS increase over baseline", f"{mib(mem['increase_kib'])} MiB (from {mib(mem['baseline_kib'])} MiB)"),
        ("peak open fds (both ends of loopback conns)", f"{mem['fds_peak']} (baseline {mem['fds_baseline']})"),
    ]
    rows += _cpu_rows(f)
    ack, upload, submit = f["ack_latency"], f["completion_to_upload"], f["dispatch_to_submit"]
    rows += [
        ("interaction ack p50 / p95 / max", f"{ms(ack['p50'])} / {ms(ack['p95'])} / {ms(ack['max'])} ms (limit 3000)"),
        ("interactions not acknowledged in time", str(f["interactions_failed"])),
        ("interaction → submit received by fal p50 / p95", f"{ms(submit['p50'])} / {ms(submit['p95'])} ms"),
        ("Discord 429s received (target 0)", str(f["discord_429"])),
        ("jobs DELIVERED", f"{f['delivered']} of {f['jobs']}"),
        ("jobs lost (target 0)", str(f["lost"])),
        ("result messages missing / duplicated", f"{f['results_missing']} / {f['results_duplicated']}"),
        ("fal requests per job", ", ".join(f"{k} {v:.2f}" for k, v in mix.items() if v)),
        ("completion → files p50 / p95", f"{ms(upload['p50'])} / {ms(upload['p95'])} ms"),
        ("status changes shown; latency p50 / p95",
         f"{f['status_changes']['n']}/{f['status_changes']['n'] + f['status_changes']['missed']}; "
         f"{ms(f['status_changes']['p50'])} / {ms(f['status_changes']['p95'])} ms"),
        ("ERROR log records during the run", str(f["error_logs"])),
        ("kernel listen-queue overflows during the run", str(f["listen_overflows"])),
    ]  # fmt: skip
    return rows


def _cpu_rows(f: Figures) -> list[tuple[str, str]]:
    cpu = f.get("cpu")
    if cpu is None:
        return []
    owners = cpu["by_owner"]
    total = cpu["cpu_total"]
    return [
        ("CPU total (process_time) / per job", f"{total:.1f} s / {cpu['per_job'] * 1000:.1f} ms (upper bound)"),
        ("  fakes' event-loop callbacks", f"{owners.get('fakes', 0):.1f} s ({owners.get('fakes', 0) / total:.0%})"),
        ("  bot callbacks + loop overhead (main thread)",
         f"{cpu['cpu_main'] - owners.get('fakes', 0) - owners.get('bench', 0):.1f} s"),
        ("  other threads (aiosqlite worker)", f"{total - cpu['cpu_main']:.1f} s"),
        ("  bench's own monitor", f"{owners.get('bench', 0):.2f} s"),
        ("≈ bot CPU per job (total - fakes - bench)", f"{cpu['bot_estimate_per_job'] * 1000:.1f} ms"),
    ]  # fmt: skip


def _load_notes(run: PhaseResult) -> list[str]:
    spec = run.spec
    limit, per = spec.edit_rate
    pool = "production's (MAX_STATUS_STREAMS + 100)" if spec.fal_connections is None else str(spec.fal_connections)
    return [
        f"{spec.jobs} /kontext from {spec.jobs} distinct users at {spec.dispatch_rate:g}/s;",
        f"{_script_text(run)} (≈{_fal_seconds(run):g} s at fal per job).",
        f"Production settings: status edits ≥ {spec.edit_interval:g} s apart, SSE with {spec.poll_interval:g} s "
        "polling as fallback.",
        f"FakeDiscord allows {limit} message creates/edits per {per:g} s per channel and per interaction token",
        f"(Discord's shape, real time). fal connection pool of the bot's session: {pool}.",
        "CPU includes both fakes (same process). The split books each event-loop callback's CPU time to its owner",
        "(aiohttp server + tests/fakes = fakes); 'other threads' is aiosqlite's worker, i.e. the bot's SQLite work.",
    ]


# -- summary ---------------------------------------------------------------------------------------------------


def summary_section(figures: Figures, log: LogCounter) -> Table:
    load = figures["load"]
    req = figures["requests"]["per_job"]
    status = figures["status"]
    table = Table("Summary", ["check / figure", "value", "target", "ok"])
    checks = [
        ("Discord 429s under load", load["discord_429"], 0),
        ("jobs lost under load", load["lost"], 0),
        ("result messages missing + duplicated", load["results_missing"] + load["results_duplicated"], 0),
        ("interactions not acknowledged in 3 s", load["interactions_failed"], 0),
        ("ERROR log records (whole run)", log.errors, 0),
    ]
    for label, value, target in checks:
        table.add(label, str(value), str(target), "yes" if value == target else "NO")
    sse_mode = next(iter(status))
    table.add("fal queue requests/job: ours SSE / poll", f"{num(req['ours_sse']['queue_api'])} / "
              f"{num(req['ours_poll']['queue_api'])}", "", "")  # fmt: skip
    for key in (k for k in req if k.startswith("official")):
        table.add(f"fal queue requests/job: {key}", num(req[key]["queue_api"]), "", "")
    table.add(f"status latency p95 ({sse_mode})", f"{ms(status[sse_mode]['all']['p95'])} ms", "", "")
    if "cpu" in load:
        table.add("CPU per job under load (bot ≈)", f"{load['cpu']['per_job'] * 1000:.1f} ms "
                  f"({load['cpu']['bot_estimate_per_job'] * 1000:.1f} ms)", "", "")  # fmt: skip
    table.add("peak RSS increase for the load", f"{mib(load['memory']['increase_kib'])} MiB", "", "")
    return table


def log_table(log: LogCounter) -> Table:
    table = Table("Log records at WARNING and above (whole run)", ["level", "count", "message (first distinct ones)"])
    for level, messages in sorted(log.samples.items()):
        for message, count in messages.most_common():
            table.add(level, count, message)
    if not table.rows:
        table.add("-", 0, "none")
    table.notes.append("'voice will NOT be supported' is discord.py's warning at client creation: expected.")
    return table
