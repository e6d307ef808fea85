# syntax=docker/dockerfile:1
# Stage 1: build a wheel with the compiled Cython extensions.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gateway ./gateway
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# Stage 2: a slim runtime with the wheel and its dependencies, no compiler.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home gateway
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -c "import gateway._fast.router as r; assert r.IMPLEMENTATION == 'compiled'"
USER gateway
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_ADMIN_HOST=127.0.0.1 \
    GATEWAY_ADMIN_PORT=9901 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request,os; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_ADMIN_PORT', '9901'), timeout=2)" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["run"]
