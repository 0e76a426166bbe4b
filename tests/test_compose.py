"""docker-compose.yml, the Dockerfile and .dockerignore describe a stack that can really run.

Fast and without Docker: the files are parsed (PyYAML) and checked against the code itself. Every
service built from the Dockerfile must run a command that `gx`'s own parser accepts, with a `GX_*`
environment that `load_settings` accepts; the Kafka cluster must have three brokers with
replication 3 and min ISR 2; every service must have a restart policy; everything that talks to
Kafka waits for the topics job; the image's entrypoint is `gx`.

Monitoring: Prometheus scrapes every service that serves GX_HEALTH_PORT (and the gateway), Grafana
mounts its provisioning and dashboards from ops/, and every `gx_*` metric a dashboard queries is
one our processes export: their metrics are rendered by the same health server code a running
process scrapes with, from the real process objects (the gateway's from its metrics module).

Each check is a function returning a list of problems (empty: fine). The tests run them on the
real files, and `test_each_check_catches_its_breakage` breaks a copy of the parsed files in one
place per case and requires the matching check to notice.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import io
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exchange.cli.gx import build_parser
from streams.settings import ENV_PREFIX, Settings, load_settings
from streams.topics import topics

ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER = "placeholder0123456789abcdefghijklmnopqrstuvwxyz"  # a required ${VAR:?...}


# ====================================================================== reading the files


@dataclass
class Stack:
    """The three files, parsed: `compose` interpolated as `docker compose` would, `raw` not."""

    compose: dict[str, Any]
    raw: dict[str, Any]
    dockerfile: str
    dockerignore: str
    ops: dict[str, Any]  # every file under ops/, by path from the root: parsed YAML or JSON


_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[^}]*)\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """Compose's variable interpolation on every string; unset required variables get a dummy."""
    env = {} if env is None else env
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("plain"):
            return env.get(match.group("plain"), "")
        braced = _BRACED.fullmatch(match.group("braced"))
        assert braced, f"bad interpolation {match.group(0)!r}"
        name, op, arg = braced.group("name", "op", "arg")
        is_set = name in env and (env[name] != "" or op is None or not op.startswith(":"))
        if op in (":-", "-"):
            return env[name] if is_set else arg
        if op in (":?", "?"):
            return env[name] if is_set else PLACEHOLDER
        if op in (":+", "+"):
            return arg if is_set else ""
        return env.get(name, "")

    return _VARIABLE.sub(substitute, value)


def load_stack(root: Path = ROOT) -> Stack:
    raw = yaml.safe_load((root / "docker-compose.yml").read_text())
    # JSON round trip: no object shared between services through YAML aliases.
    raw = json.loads(json.dumps(raw))
    return Stack(
        compose=interpolate(raw),
        raw=raw,
        dockerfile=(root / "Dockerfile").read_text(),
        dockerignore=(root / ".dockerignore").read_text(),
        ops={
            str(path.relative_to(root)): (
                json.loads(path.read_text())
                if path.suffix == ".json"
                else yaml.safe_load(path.read_text())
            )
            for path in sorted((root / "ops").rglob("*"))
            if path.is_file()
        },
    )


@pytest.fixture(scope="module")
def stack() -> Stack:
    return load_stack()


# ====================================================================== reading services


def services(stack: Stack) -> dict[str, dict[str, Any]]:
    return stack.compose.get("services") or {}


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def gx_services(stack: Stack) -> dict[str, dict[str, Any]]:
    """Services built from the repository's Dockerfile (or running the image it builds)."""
    built: dict[str, dict[str, Any]] = {}
    for name, service in services(stack).items():
        build = service.get("build")
        if build is None:
            continue
        context, dockerfile = (
            (build, "Dockerfile")
            if isinstance(build, str)
            else (build.get("context", "."), build.get("dockerfile", "Dockerfile"))
        )
        if os.path.normpath(context) == "." and dockerfile == "Dockerfile":
            built[name] = service
    images = {s["image"] for s in built.values() if s.get("image")}
    for name, service in services(stack).items():
        if service.get("image") in images:
            built.setdefault(name, service)
    return built


_SHELLS = {"sh", "/bin/sh", "bash", "/bin/bash"}
_KEYWORDS = {"if", "then", "else", "elif", "do", "while", "until", "!", "{", "exec"}
_SEPARATORS = {";", "&&", "||", "|", "&", "(", ")", ";;"}


def gx_invocations(service: dict[str, Any]) -> list[list[str]] | str:
    """The argument lists the service passes to `gx`, or why they cannot be read."""
    entrypoint = as_list(service.get("entrypoint"))
    command = as_list(service.get("command"))
    if not entrypoint or entrypoint == ["gx"]:
        return [command] if command else "no command: the image would run `gx --help`"
    if entrypoint[0] in _SHELLS and entrypoint[1:] == ["-c"] and len(command) == 1:
        found = _gx_in_script(command[0])
        return found or "its shell script never runs gx"
    return f"entrypoint {entrypoint} is neither the image's `gx` nor `/bin/sh -c SCRIPT`"


def _gx_in_script(script: str) -> list[list[str]]:
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()<>")
        lexer.whitespace_split = True
        words = list(lexer)
        segments: list[list[str]] = [[]]
        for word in words:
            if word in _SEPARATORS:
                segments.append([])
            else:
                segments[-1].append(word)
        for segment in segments:
            while segment and segment[0] in _KEYWORDS:
                segment = segment[1:]
            if not segment or segment[0] != "gx":
                continue
            argv = segment[1:]
            for i, word in enumerate(argv):
                if word and set(word) <= set("<>&"):  # a redirection ends the arguments
                    argv = argv[:i]
                    if argv and argv[-1].isdigit() and not (len(argv) > 1 and argv[-2][:1] == "-"):
                        argv = argv[:-1]  # `2>` is one redirection
                    break
            found.append(argv)
    return found


def parse_gx(argv: list[str]) -> Any:
    """`gx`'s own parser on `argv`; raise ValueError with its message when it refuses."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return build_parser().parse_args(argv)
        except SystemExit:
            pass
    said = err.getvalue().strip().splitlines() or ["refused"]
    raise ValueError(f"gx {shlex.join(argv)}: {said[-1]}")


def parsed_invocations(stack: Stack) -> dict[str, list[Any]]:
    """Service -> its parsed gx invocations (services whose commands do not parse are left out)."""
    out: dict[str, list[Any]] = {}
    for name, service in gx_services(stack).items():
        found = gx_invocations(service)
        if isinstance(found, str):
            continue
        with contextlib.suppress(ValueError):
            out[name] = [parse_gx(argv) for argv in found]
    return out


def runs(stack: Stack, *subcommand: str) -> list[str]:
    """Services running `gx SUBCOMMAND...` (e.g. ("topics", "create"), ("engine",))."""
    names = []
    for name, parsed in parsed_invocations(stack).items():
        for args in parsed:
            words = (args.command, getattr(args, "topics_command", None))
            if words[: len(subcommand)] == subcommand:
                names.append(name)
                break
    return names


def settings_of(service: dict[str, Any]) -> Settings:
    return load_settings(environment(service))


def brokers(stack: Stack) -> dict[str, dict[str, Any]]:
    return {
        name: s
        for name, s in services(stack).items()
        if str(s.get("image", "")).startswith("apache/kafka:")
        and "broker" in environment(s).get("KAFKA_PROCESS_ROLES", "")
    }


def healthy_dependency(service: dict[str, Any], target: str, condition: str) -> bool:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return False  # the short form waits for nothing but the start
    return (depends.get(target) or {}).get("condition") == condition


def named_volumes(stack: Stack, service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> named volume (declared under top-level `volumes`)."""
    declared = set(stack.compose.get("volumes") or {})
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str):
            source, _, rest = volume.partition(":")
            target = rest.split(":")[0]
        else:
            source, target = volume.get("source", ""), volume.get("target", "")
        if source in declared:
            mounts[target] = source
    return mounts


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Mount target -> the repository path bound there (`./x:/y`)."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and volume.startswith("./"):
            source, target = volume.split(":")[:2]
            mounts[target] = os.path.normpath(source)
    return mounts


def mounted_at(mounts: dict[str, str], path: str) -> str | None:
    """The repository path a container `path` comes from through `mounts`, if any."""
    for target, source in mounts.items():
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return os.path.normpath(source + path[len(target) :])
    return None


def service_with_image(stack: Stack, prefix: str) -> tuple[str, dict[str, Any]] | None:
    found = [(n, s) for n, s in services(stack).items() if str(s.get("image", "")).startswith(prefix)]  # fmt: skip
    return found[0] if len(found) == 1 else None


@functools.cache
def exported_metrics() -> frozenset[str]:
    """Sample names our processes export: each stream process object's metrics rendered by the
    health server it runs (with a lag and a database sample), plus the gateway's."""
    from exchange.gateway import metrics as gateway_metrics
    from matching.engine import EngineConfig
    from schemas.catalog import load_catalog
    from streams.clock import Clock
    from streams.engine_runner import EngineRunner
    from streams.health import HealthServer
    from streams.marketdata.process import MarketDataProcess
    from streams.metrics import Health
    from streams.provisioning import ProvisioningProcess
    from streams.settlement import SettlementWriter

    settings = Settings(kafka_bootstrap="kafka:9092")
    loop = asyncio.new_event_loop()
    try:
        processes: dict[str, Any] = {
            "engine": EngineRunner(
                settings, 0, load_catalog(), EngineConfig(shard=0), snapshots=False
            ),  # fmt: skip
            "clock": Clock(settings),
            "settle": SettlementWriter(settings, "postgresql://unused/gx", "kafka:9092"),
            "provision": ProvisioningProcess(settings, mock_broker=True),
            "marketdata": MarketDataProcess(settings),
        }
        names: set[str] = set()
        for name, process in processes.items():
            stats = getattr(process, "stats", None)
            server = HealthServer(name, loop.create_future(), stats=(lambda s=stats: s) if stats else None,
                                  metrics=process.metrics, port=0)  # fmt: skip
            server.last_health = Health(ready=True, lag={("gx.events", 0): 0}, database=True)
            text = generate_latest(server.registry).decode()
            names |= {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    finally:
        loop.close()
    source = Path(gateway_metrics.__file__).read_text()
    for base in re.findall(r'"(gx_gateway_[a-z0-9_]+)"', source):
        names |= {base, base + "_bucket", base + "_count", base + "_sum", base + "_total"}
    return frozenset(names)


# ====================================================================== checks


def check_gx_commands(stack: Stack) -> list[str]:
    problems = []
    built = gx_services(stack)
    if not built:
        problems.append("no service is built from the Dockerfile")
    for name, service in built.items():
        found = gx_invocations(service)
        if isinstance(found, str):
            problems.append(f"{name}: {found}")
            continue
        for argv in found:
            if any("$" in word for word in argv):
                problems.append(f"{name}: gx {shlex.join(argv)}: shell variables hide the command")
                continue
            try:
                args = parse_gx(argv)
            except ValueError as error:
                problems.append(f"{name}: {error}")
                continue
            if not callable(getattr(args, "handler", None)):
                problems.append(f"{name}: gx {shlex.join(argv)} selects no command")
    return problems


def check_settings(stack: Stack) -> list[str]:
    problems = []
    fields = set(Settings.__struct_fields__)
    for name, service in services(stack).items():
        for key in environment(service):
            if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() not in fields:
                problems.append(f"{name}: {key} is not a field of streams.settings.Settings")
    layouts: dict[str, Any] = {}
    for name, service in gx_services(stack).items():
        try:
            settings = settings_of(service)
        except ValueError as error:
            problems.append(f"{name}: {error}")
            continue
        layouts[name] = (settings.kafka_bootstrap, settings.shards, topics(settings))
    if len({repr(layout) for layout in layouts.values()}) > 1:
        problems.append(f"the services disagree on the cluster or the topic layout: {layouts}")
    return problems


def check_kafka(stack: Stack) -> list[str]:
    problems = []
    found = brokers(stack)
    if len(found) != 3:
        problems.append(f"expected 3 Kafka brokers, found {sorted(found)}")
    expected = {
        "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
        "KAFKA_MIN_INSYNC_REPLICAS": "2",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "3",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "2",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }
    node_ids: set[str] = set()
    voters: set[str] = set()
    cluster_ids: set[str] = set()
    advertised: set[str] = set()
    for name, service in found.items():
        env = environment(service)
        image_tag = service["image"].split(":", 1)[1]
        if not re.fullmatch(r"[34]\.\d+\.\d+", image_tag):
            problems.append(f"{name}: image {service['image']}: pin a 3.x or 4.x release")
        for key, value in expected.items():
            if env.get(key, "").lower() != value:
                problems.append(f"{name}: {key} = {env.get(key)!r}, expected {value}")
        if "controller" in env.get("KAFKA_PROCESS_ROLES", ""):
            node_ids.add(env.get("KAFKA_NODE_ID", ""))
        voters.add(env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", ""))
        cluster_ids.add(env.get("CLUSTER_ID", ""))
        advertised.update(
            re.findall(r"PLAINTEXT://([^,]+)", env.get("KAFKA_ADVERTISED_LISTENERS", ""))
        )
        test = " ".join(as_list((service.get("healthcheck") or {}).get("test")))
        if "kafka-broker-api-versions" not in test and "kafka-topics" not in test:
            problems.append(f"{name}: no broker health check")
        if env.get("KAFKA_LOG_DIRS") not in named_volumes(stack, service):
            problems.append(f"{name}: KAFKA_LOG_DIRS is not on a named volume")
    if len(voters) != 1 or {v.split("@")[0] for v in next(iter(voters)).split(",")} != node_ids:
        problems.append(f"the quorum voters {voters} are not the controllers {node_ids}")
    if len(cluster_ids) != 1:
        problems.append(f"the brokers have different CLUSTER_IDs: {cluster_ids}")
    for name, service in gx_services(stack).items():
        with contextlib.suppress(ValueError):
            settings = settings_of(service)
            if set((settings.kafka_bootstrap or "").split(",")) != advertised:
                problems.append(f"{name}: GX_KAFKA_BOOTSTRAP is not the brokers {advertised}")
            if (settings.replication_factor, settings.min_insync_replicas) != (3, 2):
                problems.append(
                    f"{name}: GX_REPLICATION_FACTOR {settings.replication_factor}, "
                    f"GX_MIN_INSYNC_REPLICAS {settings.min_insync_replicas}: expected 3 and 2"
                )
    return problems


def check_restart_policies(stack: Stack) -> list[str]:
    problems = []
    one_shots = {
        target
        for service in services(stack).values()
        if isinstance(service.get("depends_on"), dict)
        for target, dep in service["depends_on"].items()
        if (dep or {}).get("condition") == "service_completed_successfully"
    }
    for name, service in services(stack).items():
        policy = str(service.get("restart", ""))
        if not re.fullmatch(r"no|always|unless-stopped|on-failure(:\d+)?", policy):
            problems.append(f"{name}: restart policy {policy!r}")
        elif name in one_shots and policy in ("always", "unless-stopped"):
            problems.append(f"{name}: a one-shot job must not restart after it completed")
        elif name not in one_shots and policy == "no":
            problems.append(f"{name}: a long-running service with restart: no")
    return problems


def check_dependencies(stack: Stack) -> list[str]:
    problems = []
    topic_jobs = runs(stack, "topics", "create")
    if len(topic_jobs) != 1:
        return [f"expected one service running `gx topics create`, found {topic_jobs}"]
    job = topic_jobs[0]
    for broker in brokers(stack):
        if not healthy_dependency(services(stack)[job], broker, "service_healthy"):
            problems.append(f"{job}: does not wait for {broker} to be healthy")
    postgres = [
        n for n, s in services(stack).items() if str(s.get("image", "")).startswith("postgres:")
    ]
    for name, service in gx_services(stack).items():
        try:
            settings = settings_of(service)
        except ValueError:
            continue
        if settings.kafka_bootstrap and name != job:
            if not healthy_dependency(service, job, "service_completed_successfully"):
                problems.append(f"{name}: uses Kafka but does not wait for {job} to succeed")
        if settings.database_url:
            if not any(healthy_dependency(service, p, "service_healthy") for p in postgres):
                problems.append(f"{name}: uses PostgreSQL but does not wait for it to be healthy")
    for name, service in services(stack).items():
        for target, dep in (service.get("depends_on") or {}).items():
            if target not in services(stack):
                problems.append(f"{name}: depends on an unknown service {target}")
            elif (dep or {}).get("condition") == "service_healthy":
                if not (services(stack)[target].get("healthcheck") or {}).get("test"):
                    problems.append(f"{name}: waits for {target} to be healthy, it has no check")
    return problems


def check_postgres(stack: Stack) -> list[str]:
    found = {
        n: s for n, s in services(stack).items() if str(s.get("image", "")).startswith("postgres:")
    }
    if len(found) != 1:
        return [f"expected one PostgreSQL service, found {sorted(found)}"]
    (name, service), problems = next(iter(found.items())), []
    if not re.match(r"\d", service["image"].split(":", 1)[1]):
        problems.append(f"{name}: pin a major version, not {service['image']}")
    if "pg_isready" not in " ".join(as_list((service.get("healthcheck") or {}).get("test"))):
        problems.append(f"{name}: no pg_isready health check")
    if "/var/lib/postgresql/data" not in named_volumes(stack, service):
        problems.append(f"{name}: the data directory is not on a named volume")
    return problems


def check_engine(stack: Stack) -> list[str]:
    problems, shards, total = [], [], 0
    for name in runs(stack, "engine"):
        try:
            settings = settings_of(gx_services(stack)[name])
        except ValueError as error:
            problems.append(f"{name}: {error}")
            continue
        if not settings.kafka_transactions:
            problems.append(f"{name}: set GX_KAFKA_TRANSACTIONS=true (real Kafka)")
        if not settings.database_url:
            problems.append(f"{name}: snapshots need GX_DATABASE_URL")
        shards += [args.shard for args in parsed_invocations(stack)[name]]
        total = settings.shards
    if not shards or sorted(shards) != list(range(total)):
        problems.append(f"expected one engine per shard, found shards {sorted(shards)}")
    return problems


def check_gateway(stack: Stack) -> list[str]:
    names = runs(stack, "gateway")
    if len(names) != 1:
        return [f"expected one gateway service, found {names}"]
    name, problems = names[0], []
    service = gx_services(stack)[name]
    try:
        settings = settings_of(service)
    except ValueError as error:
        return [f"{name}: {error}"]
    if settings.gateway_host != "0.0.0.0":
        problems.append(
            f"{name}: GX_GATEWAY_HOST {settings.gateway_host}: not reachable from outside"
        )
    if not any(
        str(p).split(":")[-1] == str(settings.gateway_port) for p in service.get("ports") or []
    ):
        problems.append(f"{name}: port {settings.gateway_port} is not published")
    test = " ".join(as_list((service.get("healthcheck") or {}).get("test")))
    if f":{settings.gateway_port}/readyz" not in test:
        problems.append(f"{name}: the health check does not GET /readyz")
    key = environment(stack.raw["services"][name]).get("GX_GATEWAY_MASTER_KEY", "")
    if not key.startswith("${GX_GATEWAY_MASTER_KEY:?"):
        problems.append(
            f"{name}: GX_GATEWAY_MASTER_KEY must come from ${{GX_GATEWAY_MASTER_KEY:?...}}"
        )
    return problems


def check_monitoring(stack: Stack) -> list[str]:
    prometheus, grafana = service_with_image(stack, "prom/prometheus:"), service_with_image(stack, "grafana/grafana:")  # fmt: skip
    if prometheus is None or grafana is None:
        return ["expected one Prometheus (prom/prometheus:) and one Grafana (grafana/grafana:)"]
    problems: list[str] = []
    (p_name, p_service), (g_name, g_service) = prometheus, grafana
    for name, service in (prometheus, grafana):
        if not re.match(r"v?\d", service["image"].split(":", 1)[1]):
            problems.append(f"{name}: pin a version, not {service['image']}")
    config_path = next((a.split("=", 1)[1] for a in as_list(p_service.get("command"))
                        if a.startswith("--config.file=")), "/etc/prometheus/prometheus.yml")  # fmt: skip
    source = mounted_at(bind_mounts(p_service), config_path)
    config = stack.ops.get(source or "")
    if not isinstance(config, dict):
        return problems + [f"{p_name}: {config_path} is not mounted from a file under ops/"]
    targets = {
        str(t)
        for job in config.get("scrape_configs") or []
        for static in job.get("static_configs") or []
        for t in static.get("targets") or []
    }
    wanted: dict[str, str] = {}
    for name, service in gx_services(stack).items():
        try:
            settings = settings_of(service)
        except ValueError:
            continue
        if settings.health_port:
            wanted[name] = f"{name}:{settings.health_port}"
    for name in runs(stack, "gateway"):
        wanted[name] = f"{name}:{settings_of(gx_services(stack)[name]).gateway_port}"
    for name, target in sorted(wanted.items()):
        if target not in targets:
            problems.append(f"{source}: {name} serves metrics on {target} but is not scraped")
    for target in sorted(targets - set(wanted.values())):
        problems.append(f"{source}: target {target} is no service's metrics port")
    g_mounts = bind_mounts(g_service)
    provisioning = mounted_at(g_mounts, "/etc/grafana/provisioning")
    if provisioning is None:
        return problems + [f"{g_name}: /etc/grafana/provisioning is not mounted from ops/"]
    uids, dashboards = set(), []
    for path, content in stack.ops.items():
        if path.startswith(provisioning + "/datasources/"):
            for ds in (content or {}).get("datasources") or []:
                uids.add(ds.get("uid"))
                if ds.get("url") != f"http://{p_name}:9090":
                    problems.append(f"{path}: data source {ds.get('url')} is not http://{p_name}:9090")  # fmt: skip
        elif path.startswith(provisioning + "/dashboards/"):
            for provider in (content or {}).get("providers") or []:
                folder = mounted_at(g_mounts, str((provider.get("options") or {}).get("path")))
                found = [p for p in stack.ops if folder and p.startswith(folder + "/") and p.endswith(".json")]  # fmt: skip
                if not found:
                    problems.append(f"{path}: its dashboards folder is not mounted or has none")
                dashboards += found
    if not uids:
        problems.append(f"{provisioning}: no data source provisioned")
    if not dashboards:
        problems.append(f"{provisioning}: no dashboard provisioned")
    mounted = [s for svc in services(stack).values() for s in bind_mounts(svc).values()]
    for path in stack.ops:
        if not any(path == m or path.startswith(m + "/") for m in mounted):
            problems.append(f"{path}: no service mounts it")
    return problems + check_dashboards(stack, dashboards, uids)


def check_dashboards(stack: Stack, dashboards: list[str], uids: set[Any]) -> list[str]:
    problems, exported = [], exported_metrics()
    for path in dashboards:
        for panel in stack.ops[path].get("panels") or []:
            for target in panel.get("targets") or []:
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                if uid not in uids:
                    problems.append(f"{path}: panel {panel.get('title')!r} uses data source {uid}")
                for metric in re.findall(r"\bgx_[a-z0-9_]+", target.get("expr", "")):
                    if metric not in exported:
                        problems.append(f"{path}: {panel.get('title')!r} queries {metric}, which no process exports")  # fmt: skip
    return problems


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile)
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), (line.split(None, 1) + [""])[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _ignore_rules(dockerignore: str) -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore patterns as (re-include?, regex), the way Docker's pattern matcher reads them."""
    rules = []
    for line in dockerignore.splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = os.path.normpath(pattern.lstrip("!").strip()).lstrip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[" and "]" in pattern[i:]:
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negate, re.compile(regex)))
    return rules


def dockerignored(path: str, dockerignore: str) -> bool:
    """Is `path` (relative to the context) left out of the build context?"""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in _ignore_rules(dockerignore):
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def check_dockerfile(stack: Stack) -> list[str]:
    problems = []
    instructions = _instructions(stack.dockerfile)
    args = {}
    for op, rest in instructions:
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key.strip()] = value.strip()
    froms = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    if not froms:
        return ["Dockerfile: no FROM"]
    final = instructions[froms[-1] :]
    base = re.sub(
        r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), final[0][1]
    )
    if not base.split()[0].startswith("python:3.11-slim"):
        problems.append(f"Dockerfile: the image is based on {base}, expected python:3.11-slim")
    entrypoints = [rest for op, rest in final if op == "ENTRYPOINT"]
    if not entrypoints or json.loads(entrypoints[-1]) != ["gx"]:
        problems.append(f'Dockerfile: ENTRYPOINT {entrypoints[-1:]}, expected ["gx"]')
    users = [rest.split(":")[0] for op, rest in final if op == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("Dockerfile: the final image runs as root")
    runs_text = " ".join(rest for op, rest in instructions if op == "RUN")
    if not re.search(r"pip install (--\S+ )*\.(\s|$)", runs_text):
        problems.append("Dockerfile: no `pip install .` of the project")
    # What the package is built from must be copied in and must be in the build context.
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {
        os.path.normpath(source)
        for op, rest in instructions
        if op == "COPY" and "--from" not in rest
        for source in rest.split()[:-1]
        if not source.startswith("--")
    }
    for needed in sorted(packages | {"pyproject.toml", pyproject["project"]["readme"]}):
        if needed not in copied:
            problems.append(f"Dockerfile: {needed} is not copied into the build")
    for package in sorted(packages):
        for path in (ROOT / package).rglob("*"):
            relative = path.relative_to(ROOT).as_posix()
            if (
                path.is_file()
                and "__pycache__" not in path.parts
                and dockerignored(relative, stack.dockerignore)
            ):
                problems.append(f".dockerignore: leaves {relative} out of the build context")
                break
    for needed in ("pyproject.toml", pyproject["project"]["readme"]):
        if dockerignored(needed, stack.dockerignore):
            problems.append(f".dockerignore: leaves {needed} out of the build context")
    for unwanted in (
        ".venv/bin/python",
        ".git/HEAD",
        "streams/__pycache__/settings.cpython-311.pyc",
    ):
        if not dockerignored(unwanted, stack.dockerignore):
            problems.append(f".dockerignore: sends {unwanted} to the build context")
    return problems


CHECKS: dict[str, Callable[[Stack], list[str]]] = {
    "gx_commands": check_gx_commands,
    "settings": check_settings,
    "kafka": check_kafka,
    "restart_policies": check_restart_policies,
    "dependencies": check_dependencies,
    "postgres": check_postgres,
    "engine": check_engine,
    "gateway": check_gateway,
    "dockerfile": check_dockerfile,
    "monitoring": check_monitoring,
}


@pytest.mark.parametrize("check", CHECKS)
def test_the_stack_passes(stack: Stack, check: str) -> None:
    assert CHECKS[check](stack) == []


def test_every_gx_subcommand_of_the_pipeline_runs(stack: Stack) -> None:
    running = {args.command for parsed in parsed_invocations(stack).values() for args in parsed}
    wanted = {"topics", "engine", "clock", "settle", "provision", "marketdata", "audit", "gateway"}
    assert wanted <= running


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("$$x ${SET} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} ${SET:+alt}", env) == (
        "$x v d d  alt"
    )
    assert interpolate("${UNSET:?say}", env) == PLACEHOLDER


def test_scripts_yield_their_gx_commands() -> None:
    script = "if [ -s f ]; then\n  gx audit --dsn x > out 2>&1\nfi\nuntil gx topics create; do sleep 1; done"
    assert _gx_in_script(script) == [["audit", "--dsn", "x"], ["topics", "create"]]


# ====================================================================== every check can fail


def _service(name: str) -> Callable[[Stack], dict[str, Any]]:
    return lambda s: s.compose["services"][name]


def _set(path: str, value: Any) -> Callable[[Stack], None]:
    """A mutation: `service.key.key = value` (value None deletes)."""

    def mutate(s: Stack) -> None:
        name, *keys = path.split(".")
        node = s.compose["services"][name]
        for key in keys[:-1]:
            node = node[key]
        if value is None:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value

    return mutate


def _text(attribute: str, old: str, new: str) -> Callable[[Stack], None]:
    def mutate(s: Stack) -> None:
        text = getattr(s, attribute)
        assert old in text, f"{old!r} not in {attribute}"
        setattr(s, attribute, text.replace(old, new))

    return mutate


def _script(name: str, old: str, new: str) -> Callable[[Stack], None]:
    def mutate(s: Stack) -> None:
        command = s.compose["services"][name]["command"]
        assert old in command[0]
        command[0] = command[0].replace(old, new)

    return mutate


def _drop_dependency(name: str, target: str) -> Callable[[Stack], None]:
    return lambda s: s.compose["services"][name]["depends_on"].pop(target)


BREAKAGES: dict[str, tuple[str, Callable[[Stack], None]]] = {
    "unknown subcommand": ("gx_commands", _set("settle.command", ["settlement"])),
    "engine without --shard": ("gx_commands", _set("engine.command", ["engine"])),
    "unknown flag in a script": (
        "gx_commands",
        _script("audit", "--write-checkpoint", "--write-cp"),
    ),
    "no command": ("gx_commands", _set("clock.command", None)),
    "unknown GX_ variable": ("settings", _set("clock.environment.GX_KAFKA_BOOTSTRAPS", "k:9092")),
    "mistyped setting": ("settings", _set("marketdata.environment.GX_SHARDS", "one")),
    "another topic layout": ("settings", _set("marketdata.environment.GX_TOPIC_PREFIX", "md.")),
    "two brokers": ("kafka", lambda s: s.compose["services"].pop("kafka3")),
    "min ISR 1": ("kafka", _set("kafka2.environment.KAFKA_MIN_INSYNC_REPLICAS", "1")),
    "auto-created topics": (
        "kafka",
        _set("kafka1.environment.KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true"),
    ),
    "transaction log min ISR 1": (
        "kafka",
        _set("kafka3.environment.KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1"),
    ),
    "default replication 1": (
        "kafka",
        _set("kafka1.environment.KAFKA_DEFAULT_REPLICATION_FACTOR", "1"),
    ),
    "unpinned Kafka": ("kafka", _set("kafka1.image", "apache/kafka:latest")),
    "topics replicated once": ("kafka", _set("topics.environment.GX_REPLICATION_FACTOR", "1")),
    "bootstrap misses a broker": (
        "kafka",
        _set("clock.environment.GX_KAFKA_BOOTSTRAP", "kafka1:9092"),
    ),
    "broker without health check": ("kafka", _set("kafka2.healthcheck", None)),
    "no restart policy": ("restart_policies", _set("settle.restart", None)),
    "one-shot restarting": ("restart_policies", _set("topics.restart", "always")),
    "service never restarted": ("restart_policies", _set("gateway.restart", "no")),
    "clock before the topics": ("dependencies", _drop_dependency("clock", "topics")),
    "started is not completed": (
        "dependencies",
        _set("marketdata.depends_on.topics.condition", "service_started"),
    ),
    "settle before PostgreSQL": ("dependencies", _drop_dependency("settle", "postgres")),
    "topics before a broker": ("dependencies", _drop_dependency("topics", "kafka2")),
    "PostgreSQL without health check": ("dependencies", _set("postgres.healthcheck", None)),
    "no pg_isready": ("postgres", _set("postgres.healthcheck.test", ["CMD", "true"])),
    "engine without transactions": (
        "engine",
        _set("engine.environment.GX_KAFKA_TRANSACTIONS", "false"),
    ),
    "shard without engine": ("engine", _set("engine.environment.GX_SHARDS", "2")),
    "gateway on loopback": ("gateway", _set("gateway.environment.GX_GATEWAY_HOST", "127.0.0.1")),
    "gateway port unpublished": ("gateway", _set("gateway.ports", None)),
    "gateway health elsewhere": ("gateway", _set("gateway.healthcheck.test", ["CMD", "true"])),
    "master key in the file": (
        "gateway",
        lambda s: s.raw["services"]["gateway"]["environment"].update(
            GX_GATEWAY_MASTER_KEY="k" * 40
        ),
    ),
    "entrypoint python": (
        "dockerfile",
        _text("dockerfile", 'ENTRYPOINT ["gx"]', 'ENTRYPOINT ["python"]'),
    ),
    "root user": ("dockerfile", _text("dockerfile", "USER gx", "USER root")),
    "other base image": ("dockerfile", _text("dockerfile", "python:3.11-slim", "python:3.12-slim")),
    "package not copied": ("dockerfile", _text("dockerfile", "COPY streams ./streams", "")),
    "package ignored": (
        "dockerfile",
        lambda s: setattr(s, "dockerignore", s.dockerignore + "exchange/web\n"),
    ),
    "stream process not scraped": (
        "monitoring",
        lambda s: s.ops["ops/prometheus/prometheus.yml"]["scrape_configs"].pop(3),
    ),
    "config not mounted": (
        "monitoring",
        _set("prometheus.volumes", ["prometheus-data:/prometheus"]),
    ),  # fmt: skip
    "provisioning not mounted": (
        "monitoring",
        lambda s: s.compose["services"]["grafana"]["volumes"].pop(0),
    ),
    "dashboards not mounted": (
        "monitoring",
        lambda s: s.compose["services"]["grafana"]["volumes"].pop(1),
    ),
    "data source elsewhere": (
        "monitoring",
        lambda s: s.ops["ops/grafana/provisioning/datasources/prometheus.yml"]["datasources"][
            0
        ].update(url="http://localhost:9090"),  # fmt: skip
    ),
    "dashboard queries a metric nobody exports": (
        "monitoring",
        lambda s: s.ops["ops/grafana/dashboards/exchange.json"]["panels"][0]["targets"][0].update(
            expr="rate(gx_engine_commandz_total[1m])"
        ),  # fmt: skip
    ),
    "panel on an unknown data source": (
        "monitoring",
        lambda s: s.ops["ops/grafana/dashboards/exchange.json"]["panels"][2]["targets"][0].update(
            datasource={"uid": "other"}
        ),  # fmt: skip
    ),
    "caches sent": ("dockerfile", _text("dockerignore", "**/__pycache__\n**/*.py[cod]", "")),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_each_check_catches_its_breakage(stack: Stack, breakage: str) -> None:
    check, mutate = BREAKAGES[breakage]
    broken = copy.deepcopy(stack)
    mutate(broken)
    assert CHECKS[check](broken), f"check_{check} missed: {breakage}"
