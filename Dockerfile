# cellguard: the operator (`cellguard run`) and the node agent (`cellguard agent`) in one image.
#
#   VERSION=$(PYTHONPATH=operator python3 -c 'import cellguard; print(cellguard.__version__)')
#   docker build -t "cellguard:$VERSION" --build-arg VERSION="$VERSION" \
#     --build-arg REVISION="$(git rev-parse HEAD)" .
#
# The version is written once, as `__version__` in operator/cellguard/__init__.py (the wheel
# built here reads it from there too); pass it as above. The default of ARG VERSION below is
# only for a bare `docker build .`, and tests/unit/test_version.py fails when it drifts.
#
# Stage 1 builds the wheel and installs it with its dependencies into a virtualenv; stage 2 is
# python:3.11-slim with that virtualenv only: no compiler, no pip, no build backend.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what the wheel is built from (see .dockerignore).
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/cellguard \
    && pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/cellguard/bin/pip install --no-compile /wheels/cellguard-*.whl \
    && /opt/cellguard/bin/python -m compileall -q /opt/cellguard/lib \
    && /opt/cellguard/bin/pip uninstall --yes pip setuptools \
    && rm -rf /opt/cellguard/bin/pip* /opt/cellguard/bin/Activate.ps1 /opt/cellguard/bin/activate*

FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="cellguard" \
      org.opencontainers.image.description="Kubernetes operator that refuses StreamCell scale-ups which would push nodes past their OS thread and PID limits, and its node agent" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# The base image's own packaging tools are not needed at run time.
RUN python -m pip uninstall --yes --no-cache-dir pip setuptools wheel
COPY --from=builder /opt/cellguard /opt/cellguard
# MALLOC_ARENA_MAX=2: glibc otherwise keeps up to 8 malloc arenas a core for the operator's
# I/O threads (48 by default); at 5,000 nodes the operator held 249 MiB with it against 269 MiB
# without, same cluster, same run (docs/benchmarks.md).
ENV PATH=/opt/cellguard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    MALLOC_ARENA_MAX=2
# Numeric, so that runAsNonRoot can verify it without a passwd entry.
USER 10001:10001
ENTRYPOINT ["cellguard"]
CMD ["--help"]
