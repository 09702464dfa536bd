# syntax=docker/dockerfile:1
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, exactly as locked and hash-checked, in their own layer: rebuilt only when the lock changes.
COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

# Then the bot itself, against those dependencies and the locked build backend (no build isolation).
COPY pyproject.toml README.md ./
COPY bot ./bot
COPY cogs ./cogs
RUN pip install --no-deps --no-build-isolation . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin kontext \
    && mkdir -p /data && chown kontext /data

USER 10001
# METRICS_HOST: inside a container loopback cannot be reached from outside; only a published port exposes it.
ENV DATABASE_PATH=/data/kontext.sqlite3 \
    HEARTBEAT_PATH=/data/heartbeat \
    METRICS_HOST=0.0.0.0
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot.health"]

CMD ["python", "-m", "bot"]
