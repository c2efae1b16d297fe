# One image for the server (the default command) and the worker (`python -m worker`).
# Redis and the model run as their own services (docker-compose.yml), so the `embedded`
# extra (Redis binaries, the llama.cpp build, the model) stays out of the image.
#
# Three stages: the Python dependencies, the web client (built with Node), and the image
# itself, whose server serves the built client at / (WEB_DIST=client/dist).

FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The dependencies alone, in their own layer: a code change does not reinstall them.
COPY pyproject.toml /tmp/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --prefix=/install -r /tmp/requirements.txt

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
