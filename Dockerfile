# syntax=docker/dockerfile:1
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir -p bot cogs && touch bot/__init__.py cogs/__init__.py \
    && pip install . \
    && pip uninstall -y kontext-bot \
    && rm -rf bot cogs

# Then the code.
COPY bot ./bot
COPY cogs ./cogs
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin kontext \
    && mkdir -p /data && chown kontext /data

USER 10001
ENV DATABASE_PATH=/data/kontext.sqlite3 \
    HEARTBEAT_PATH=/data/heartbeat
VOLUME ["/data"]

HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "bot.health"]

CMD ["python", "-m", "bot"]
