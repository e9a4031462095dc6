# syntax=docker/dockerfile:1.7
# One image for the scorer (default target) and the jobs (--target jobs):
#   docker build -t ranker-platform .                       # scorer: gunicorn on :8000, healthcheck on /readyz
#   docker build -t ranker-jobs --target jobs .             # `ranker ...`: pipelines, registry, monitoring
#   docker run --rm ranker-jobs pipeline daily --simulate
# Settings come from the environment (docs/reference/settings.md, docs/guides/deploying.md); nothing secret is baked in.
#
# The base is pinned to a patch release and Debian release; pin the digest as well where builds must be
# bit-for-bit repeatable (docker buildx imagetools inspect python:3.11.14-slim-bookworm).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---------------------------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir ranker api pipelines \
 && touch ranker/__init__.py api/__init__.py pipelines/__init__.py \
 && pip install "pip>=24,<27" \
 && pip install . \
 && pip uninstall -y ranking-platform
COPY ranker ranker
COPY api api
COPY pipelines pipelines
RUN pip install --no-deps . && python -m compileall -q /opt/venv/lib
# numba's cache of the scorer's compiled kernels (RESP parsing, tree inference), made now so workers
# load them in ~1 s instead of compiling for ~10 s; rebuilt in place on a host with another CPU.
ENV NUMBA_CACHE_DIR=/opt/numba-cache
RUN python -c "from ranker.serving import resp, trees; resp.warm_up(); trees.warm_up()"

# ---------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: LightGBM's OpenMP runtime. tini: PID 1 that forwards signals and reaps children.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ranker \
 && useradd --system --uid 10001 --gid ranker --home-dir /app --no-create-home --shell /usr/sbin/nologin ranker
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /opt/numba-cache /opt/numba-cache
WORKDIR /app
COPY feature_repo feature_repo
COPY infra/healthcheck.py infra/
# data/ (feature tables, the file Feast registry) and artifacts/ (registry cache, run records) are the
# only writable folders; mount volumes there. /tmp holds gunicorn's control socket and the metrics files.
RUN mkdir -p data artifacts && chown ranker:ranker data artifacts
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RANKER_HOME=/app \
    RANKER_BIND=0.0.0.0:8000 \
    XDG_RUNTIME_DIR=/tmp/ranker \
    PROMETHEUS_MULTIPROC_DIR=/tmp/ranker/prometheus \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/opt/numba-cache
USER 10001:10001

# ---------------------------------------------------------------------------------------------- jobs
FROM runtime AS jobs
ENTRYPOINT ["tini", "--", "ranker"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------- scorer
FROM runtime AS scorer
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["python", "/app/infra/healthcheck.py"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--"]
# The one gunicorn configuration (api/gunicorn_conf.py, installed with the package), as `ranker serve` loads it.
CMD ["gunicorn", "-c", "python:api.gunicorn_conf"]
