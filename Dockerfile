# The app image used by deploy/docker-compose.yml.

# socket.io-client's browser bundle, installed from npm at build time, so the pages work
# without reaching the CDN.
FROM node:20-slim AS client
RUN npm install --prefix /client --no-audit --no-fund --loglevel=error socket.io-client@4.8.1

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
# Exactly the versions in uv.lock (the build fails when it does not match pyproject.toml).
RUN pip install uv==0.13.9
COPY pyproject.toml uv.lock .python-version README.md ./
COPY server ./server
COPY --from=client /client/node_modules/socket.io-client/dist/socket.io.min.js \
     /client/node_modules/socket.io-client/dist/socket.io.min.js.map \
     ./.cache/socket.io-client/node_modules/socket.io-client/dist/
RUN uv sync --locked --no-editable --python /usr/local/bin/python3 && useradd --system --uid 10001 app
USER app

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)" || exit 1
CMD ["python", "-m", "server"]
