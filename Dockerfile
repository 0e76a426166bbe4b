# One image for every process of the exchange. docker-compose.yml runs it once per service; `gx` is
# the entrypoint and the service's command picks the subcommand (`engine --shard 0`, `settle`,
# `gateway`, ...). Settings come from the GX_* environment (streams/settings.py).
#
#   docker build -t gpu-exchange:local .
#   docker run --rm gpu-exchange:local --help

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="gpu-exchange" \
      org.opencontainers.image.description="GPU-hour exchange: gx engine, clock, settle, provision, marketdata, audit, gateway"

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package is built from (pyproject's packages.find and package-data); the rest of
# the tree is kept out by .dockerignore.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY matching ./matching
COPY streams ./streams
COPY exchange ./exchange
# Every dependency ships manylinux wheels (numba, llvmlite, asyncpg, uvloop, confluent-kafka with
# librdkafka inside, ...): no compiler needed. A regular (not editable) install into the image's
# own Python (the image has one purpose: no virtualenv): the code, schemas/catalog.json,
# exchange/web and API.md land in site-packages, compiled to bytecode here because the runtime
# user cannot write there. The sources go afterwards.
RUN pip install --upgrade pip \
 && pip install . \
 && cd .. && rm -rf src

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUMBA_CACHE_DIR=/var/cache/gx/numba

# Unprivileged user; its home is the working directory (faust keeps `gx-provisioning-data/` in
# the working directory) and /var/lib/gx/audit is where the audit keeps its checkpoint (a named
# volume mounted there starts with this ownership).
RUN groupadd --system --gid 10001 gx \
 && useradd --system --uid 10001 --gid gx --home-dir /var/lib/gx --create-home \
        --shell /usr/sbin/nologin gx \
 && mkdir -p /var/lib/gx/audit /var/cache/gx/numba \
 && chown -R gx:gx /var/lib/gx /var/cache/gx

USER gx
WORKDIR /var/lib/gx

# Compile the Numba kernels once, into NUMBA_CACHE_DIR (owned by gx, so the engine reuses and
# extends it): a cold start is about 25 s of compilation, a warm one under a second. Numba keys
# the cache by CPU, so on a host with another CPU model the engine compiles once more at start.
# The kernels are declared `cache=True`: with no writable cache directory (site-packages is not
# writable here) importing `gx` fails, so run the image as this user or keep the directory
# writable for yours.
RUN gx --help > /dev/null \
 && python -c "from matching.engine import Engine, EngineConfig; \
from schemas.catalog import load_catalog; \
from schemas.commands import ClockTick; \
catalog = load_catalog(); \
engine = Engine(catalog, EngineConfig(shard=0, accounts_max=64, instruments_max=2048, \
orders_max=4096, levels_max=1024, positions_max=1024, capacity_rows_max=8192, \
obligations_max=1024)); \
engine.apply([ClockTick(ts_ns=1_796_072_400_000_000_000)]); \
Engine.restore(engine.snapshot(), catalog).state_hash()"

EXPOSE 8080

ENTRYPOINT ["gx"]
CMD ["--help"]
