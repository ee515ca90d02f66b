"""deploy/: the shared-mode compose file, validated offline, and what it runs.

No container engine runs here or in CI. `deploy/check.sh` validates the compose file with a
real compose (`docker compose`, or Debian's docker-compose, which it installs when missing)
and the replicas' scrape config with promtool; these tests read the compose file as that
compose renders it and check the facts shared mode rests on: both replicas on the same
PostgreSQL, MLflow server and object store, no champion state on a volume, Prometheus on both
with the shipped rules. They also check that its commands are the ones the test suite runs:
`mlflow server` with tests/mlflow_server.py's flags, `champion serve` execing the
`bentoml serve` target test_serve.py starts, and the seed step against real PostgreSQL + S3.

When compose cannot be installed these tests skip with the reason, except with CI set: then
they fail.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import tomli_w
import typer
import yaml
from typer.testing import CliRunner

from tests import pg

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHECK = DEPLOY / "check.sh"
PROMETHEUS = ROOT / "monitoring" / "prometheus"
SCRAPE_CONFIG = PROMETHEUS / "prometheus-replicas.yml"
ALERTS = PROMETHEUS / "alerts.yml"
GRAFANA = ROOT / "monitoring" / "grafana"
REPLICAS = ("champion-a", "champion-b")
CANNOT_INSTALL = 3  # deploy/check.sh: a checker is missing and cannot be installed here


def run_check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CHECK), *args],
        capture_output=True,
        text=True,
        timeout=600,  # a first run may install docker-compose with apt-get
        env=os.environ | env,
        check=False,
    )


@pytest.fixture(scope="module")
def checked() -> subprocess.CompletedProcess[str]:
    """`deploy/check.sh` once: skips (fails under CI) only when a checker cannot be had."""
    proc = run_check()
    if proc.returncode == CANNOT_INSTALL:
        reason = f"deploy/check.sh cannot install its checkers here: {proc.stderr.strip()}"
        if "CI" in os.environ:
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)
    return proc


@pytest.fixture(scope="module")
def services(checked: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    """The services of deploy/compose.yaml as compose renders them (profiles included)."""
    proc = run_check("render")
    assert proc.returncode == 0, proc.stderr
    rendered = yaml.safe_load(proc.stdout)
    return dict(rendered["services"])


# -- compose v1 and v2 render some keys differently: one shape for both ----------------------


@dataclass(frozen=True)
class Mount:
    kind: str  # bind | volume | tmpfs
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    found = []
    for item in service.get("volumes") or []:
        if isinstance(item, str):  # v1: source:target[:mode] (binds with absolute sources)
            parts = item.split(":")
            if len(parts) == 1:
                found.append(Mount("volume", "", parts[0], False))
                continue
            source, target, mode = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
            kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
            found.append(Mount(kind, source, target, "ro" in mode.split(",")))
        else:  # v2: the long syntax
            found.append(
                Mount(
                    item["type"],
                    str(item.get("source", "")),
                    item["target"],
                    bool(item.get("read_only", False)),
                )
            )
    return found


def mount_at(service: dict[str, Any], target: str) -> Mount:
    matches = [m for m in mounts(service) if m.target == target]
    assert len(matches) == 1, f"expected one mount at {target}: {mounts(service)}"
    return matches[0]


def published(service: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(host address, host port, container port) of each published port."""
    found = []
    for item in service.get("ports") or []:
        if isinstance(item, str):  # v1: host_ip:published:target[/protocol]
            host_ip, port, target = item.split("/")[0].split(":")
            found.append((host_ip, port, int(target)))
        else:
            found.append((item.get("host_ip", ""), str(item["published"]), int(item["target"])))
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()}


def conditions(service: dict[str, Any]) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in (service.get("depends_on") or {}).items()}


def options(argv: list[str]) -> dict[str, str | None]:
    """`--flag value` and bare `--flag` options of a command line, by flag."""
    found: dict[str, str | None] = {}
    for i, arg in enumerate(argv):
        if arg.startswith("--"):
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            found[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return found


def dockerfile_cmd() -> list[str]:
    match = re.search(r"^CMD\s+(\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, "the Dockerfile has no exec-form CMD"
    return list(json.loads(match.group(1)))


# -- the checks ------------------------------------------------------------------------------


def test_compose_file_and_scrape_config_pass_the_real_checkers(
    checked: subprocess.CompletedProcess[str],
) -> None:
    assert checked.returncode == 0, checked.stderr
    assert f"OK: {DEPLOY / 'compose.yaml'}" in checked.stderr
    assert f"OK: {SCRAPE_CONFIG}" in checked.stderr
    assert "SUCCESS: 1 rule files found" in checked.stderr  # promtool read alerts.yml too


def test_compose_refuses_to_start_without_the_secrets(
    checked: subprocess.CompletedProcess[str], tmp_path: Path
) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("COMPOSE_PROJECT_NAME=champion\n")
    proc = run_check(DEPLOY_ENV_FILE=str(empty))
    assert proc.returncode == 1, proc.stderr
    assert "set it in deploy/.env (see .env.example)" in proc.stderr
    # Every ${VAR} the compose file uses has a placeholder in .env.example.
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (DEPLOY / "compose.yaml").read_text()))
    example = (DEPLOY / ".env.example").read_text()
    given = set(re.findall(r"^#?\s*([A-Z0-9_]+)=", example, re.M))
    assert used <= given, f"not in .env.example: {sorted(used - given)}"
    assert "\n.env\n" in "\n" + (DEPLOY / ".gitignore").read_text()


def test_both_replicas_run_one_image_and_command_on_the_shared_stores(
    services: dict[str, dict[str, Any]],
) -> None:
    a, b = (services[name] for name in REPLICAS)
    assert a["image"] == b["image"]
    assert a["command"] == b["command"] == dockerfile_cmd()
    assert environment(a) == environment(b)
    assert {a.get("hostname"), b.get("hostname")} == set(REPLICAS)  # ledger entries name them
    env = environment(a)
    db = urlsplit(env["CHAMPION_DATABASE_URL"])
    assert (db.scheme, db.hostname, db.port, db.path) == (
        "postgresql",
        "postgres",
        5432,
        "/champion",
    )
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert urlsplit(env["AWS_ENDPOINT_URL_S3"]).hostname == "minio"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
    contract = mount_at(a, env["CHAMPION_PROJECT_FILE"])
    assert (contract.kind, Path(contract.source), contract.read_only) == (
        "bind",
        DEPLOY / "champion.toml",
        True,
    )
    for replica in (a, b):
        assert "/readyz" in " ".join(replica["healthcheck"]["test"])
        assert conditions(replica) == {
            "postgres": "service_healthy",
            "mlflow": "service_healthy",
            "bootstrap": "service_completed_successfully",
        }
    ports = {name: published(services[name]) for name in REPLICAS}
    assert all(
        host == "127.0.0.1" and target == 3000 for p in ports.values() for host, _, target in p
    )
    assert len({port for p in ports.values() for _, port, _ in p}) == 2  # distinct host ports


def test_no_champion_state_on_a_volume(services: dict[str, dict[str, Any]]) -> None:
    """Shared state is in PostgreSQL, MLflow and S3; /app/var is each replica's own."""
    for name in (*REPLICAS, "bootstrap", "tune-worker"):
        for m in mounts(services[name]):
            assert m.kind == "bind" and m.read_only, f"{name}: {m} (only read-only files)"
            assert not m.target.startswith("/app/var"), f"{name}: {m}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert not re.search(r"^\s*VOLUME\b", dockerfile, re.M), "the image forces a volume"
    assert "CHAMPION_HOME=/app/var" in dockerfile  # the local-only home is still there


def test_mlflow_server_runs_with_the_flags_the_tests_use(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    helper = helper_mlflow_command(tmp_path)
    mlflow = services["mlflow"]
    cmd = [str(arg) for arg in mlflow["command"]]
    assert cmd[:2] == ["mlflow", "server"] and Path(helper[0]).name == "mlflow"
    assert helper[1] == "server"
    ours, theirs = options(cmd), options(helper)
    # The same options; the helper binds 127.0.0.1, so only it can leave out --allowed-hosts.
    assert set(theirs) <= set(ours)
    assert set(ours) - set(theirs) <= {"--allowed-hosts"}
    assert "--serve-artifacts" in ours and ours["--serve-artifacts"] is None
    assert ours["--workers"] == theirs["--workers"]
    backend, tested = (
        urlsplit(str(ours["--backend-store-uri"])),
        urlsplit(str(theirs["--backend-store-uri"])),
    )
    assert backend.scheme == tested.scheme == "postgresql+psycopg"
    assert (backend.hostname, backend.path) == ("postgres", "/mlflow")  # not champion's db
    champion_db = urlsplit(environment(services["champion-a"])["CHAMPION_DATABASE_URL"])
    assert backend.path != champion_db.path
    destination = urlsplit(str(ours["--artifacts-destination"]))
    assert destination.scheme == "s3"
    assert f"minio/{destination.netloc}" in services["buckets"]["command"]  # it is created
    assert ours["--host"] == "0.0.0.0"
    tracking = urlsplit(environment(services["champion-a"])["MLFLOW_TRACKING_URI"])
    assert tracking.netloc in str(ours["--allowed-hosts"]).split(",")
    assert int(str(ours["--port"])) == tracking.port
    env = environment(mlflow)
    assert urlsplit(env["MLFLOW_S3_ENDPOINT_URL"]).hostname == "minio"
    assert "CHAMPION_DATABASE_URL" not in env
    # The same image as the replicas: the MLflow their client is; it has boto3 for s3://.
    assert mlflow["image"] == services["champion-a"]["image"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install -c deploy/constraints.txt \. .*\bboto3\b", dockerfile, re.M)
    assert "COPY deploy/constraints.txt" in dockerfile
    # Every option is one this MLflow's `mlflow server` knows.
    usage = subprocess.run(
        [helper[0], "server", "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for flag in ours:
        assert re.search(rf"(^|[\s,/]){re.escape(flag)}\b", usage), f"mlflow server: no {flag}"


def helper_mlflow_command(tmp_path: Path) -> list[str]:
    """The command line tests/mlflow_server.py starts, captured instead of run."""
    from tests import mlflow_server as helper

    seen: list[list[str]] = []

    class Started:
        returncode = None

        def poll(self) -> None:
            return None

    def popen(cmd: list[Any], **kwargs: Any) -> Started:
        seen.append([str(arg) for arg in cmd])
        return Started()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(helper.subprocess, "Popen", popen)
        mp.setattr(helper, "healthy", lambda url: True)
        mp.setattr(helper, "_stop", lambda proc: None)
        with helper.mlflow_server(
            "postgresql://mlflow:secret@postgres:5432/mlflow", tmp_path / "artifacts"
        ):
            pass
    assert len(seen) == 1
    return seen[0]


def test_champion_serve_execs_the_bentoml_service_the_tests_serve(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    from champion.service import cli, root
    from champion.training.config import Settings
    from tests.integration import test_serve

    command = [str(arg) for arg in services["champion-a"]["command"]]
    assert command[:2] == ["champion", "serve"]
    execs: list[tuple[str, list[str], dict[str, str]]] = []
    real_build = root.build

    def build() -> root.Components:
        settings = Settings(project_file=DEPLOY / "champion.toml", home=tmp_path / "home")
        return real_build(settings, configure_logging=False, tracking_uri="http://mlflow:5000")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(root, "build", build)
        mp.setattr(os, "execve", lambda path, argv, env: execs.append((path, argv, env)))
        result = CliRunner().invoke(cli.app, command[1:])
    assert result.exit_code == 0, result.output
    [(path, argv, env)] = execs
    assert Path(path).name == "bentoml"
    assert argv[1:3] == ["serve", "champion.service.app:Champion"]
    assert options(argv) == {"--port": "3000", "--host": "0.0.0.0"}
    assert "services.champion.workers=2" in env["BENTOML_CONFIG_OPTIONS"].split()
    # test_serve.py's `serving` starts that same target with the same workers option.
    source = inspect.getsource(test_serve.serving)
    assert '"champion.service.app:Champion"' in source
    assert "services.champion.workers=" in source


def test_bootstrap_runs_once_before_the_replicas_and_tune_worker_waits_for_a_profile(
    services: dict[str, dict[str, Any]],
) -> None:
    replica = services["champion-a"]
    boot = services["bootstrap"]
    assert boot["image"] == replica["image"]
    assert boot["restart"] == "no"
    assert boot["command"] == ["champion", "bootstrap"]
    assert environment(boot) == environment(replica) | {"CHAMPION_DEMO_DATA": "true"}
    assert conditions(boot) == {
        "postgres": "service_healthy",
        "mlflow": "service_healthy",
        "buckets": "service_completed_successfully",
    }
    worker = services["tune-worker"]
    assert worker["profiles"] == ["tuning"]
    assert worker["command"] == ["champion", "tune-worker"]
    assert worker["image"] == replica["image"]
    assert environment(worker) == environment(replica)
    assert conditions(worker)["postgres"] == "service_healthy"
    # Every `champion` subcommand the compose file runs is one the CLI has.
    from champion.service import cli

    known = set(getattr(typer.main.get_command(cli.app), "commands", {}))
    assert {"serve", "bootstrap", "tune-worker"} <= known


def test_prometheus_scrapes_both_replicas_with_the_shipped_rules(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    flags = dict(str(arg).split("=", 1) for arg in prometheus["command"] if "=" in str(arg))
    config_at = flags["--config.file"]
    config, rules = (
        mount_at(prometheus, config_at),
        mount_at(prometheus, "/etc/prometheus/alerts.yml"),
    )
    assert (Path(config.source), config.read_only) == (SCRAPE_CONFIG, True)
    assert (Path(rules.source), rules.read_only) == (ALERTS, True)
    scrape = yaml.safe_load(SCRAPE_CONFIG.read_text())
    # rule_files resolve against the config's folder: alerts.yml is mounted beside it.
    assert scrape["rule_files"] == ["alerts.yml"]
    assert Path(config_at).parent == Path(rules.target).parent
    [job] = scrape["scrape_configs"]
    assert job["job_name"] == "champion"  # the rules select up{job="champion"}
    targets = {
        t: group.get("labels", {}) for group in job["static_configs"] for t in group["targets"]
    }
    port = options([str(arg) for arg in services["champion-a"]["command"]])["--port"]
    assert targets == {f"{name}:{port}": {"replica": name} for name in REPLICAS}
    single = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert scrape["global"] == single["global"]


def test_grafana_provisions_the_shipped_dashboard_on_this_prometheus(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    sources = mount_at(grafana, "/etc/grafana/provisioning/datasources")
    providers = mount_at(grafana, "/etc/grafana/provisioning/dashboards")
    assert Path(sources.source) == DEPLOY / "grafana" / "datasources"
    assert Path(providers.source) == GRAFANA / "provisioning" / "dashboards"
    [provider] = yaml.safe_load((GRAFANA / "provisioning/dashboards/champion.yml").read_text())[
        "providers"
    ]
    dashboards = mount_at(grafana, provider["options"]["path"])
    assert Path(dashboards.source) == GRAFANA / "dashboards"
    [ours] = yaml.safe_load((DEPLOY / "grafana/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    [shipped] = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert ours | {"url": shipped["url"]} == shipped  # only where Prometheus is differs
    flags = dict(str(arg).split("=", 1) for arg in services["prometheus"]["command"])
    listen = flags["--web.listen-address"].rsplit(":", 1)[1]
    assert ours["url"] == f"http://prometheus:{listen}"
    assert (
        ours["jsonData"]["timeInterval"]
        == yaml.safe_load(SCRAPE_CONFIG.read_text())["global"]["scrape_interval"]
    )


def test_every_bind_mount_is_a_file_of_this_repository(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        for m in mounts(service):
            if m.kind == "bind":
                source = Path(m.source)
                assert source.exists() and source.is_relative_to(ROOT), f"{name}: {m}"
    init = mount_at(services["postgres"], "/docker-entrypoint-initdb.d/10-databases.sh")
    assert os.access(init.source, os.X_OK)  # executable: the image runs it, not sources it


def test_deploy_contract_is_the_shipped_contract_with_batches_on_s3(
    services: dict[str, dict[str, Any]],
) -> None:
    from champion.training.config import load_contract

    shipped = tomllib.loads((ROOT / "champion.toml").read_text())
    ours = tomllib.loads((DEPLOY / "champion.toml").read_text())
    folders = ("landing_zone", "quarantine", "store")
    buckets = {arg.removeprefix("minio/") for arg in services["buckets"]["command"][2:]}
    for key in folders:
        where = urlsplit(ours["data"][key])
        assert where.scheme == "s3" and where.netloc in buckets, (key, ours["data"][key])
    assert len({ours["data"][key] for key in folders}) == len(folders)
    for raw in (shipped, ours):
        for key in folders:
            raw["data"].pop(key)
    assert ours == shipped
    contract = load_contract(DEPLOY / "champion.toml")  # it loads: the URIs are valid
    assert str(contract.data.landing_zone).startswith("s3://")


@pytest.fixture
def shared_stores(tmp_path: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    """A fresh PostgreSQL database and a moto S3 with the batches bucket; the env to use."""
    pg.require()
    from tests.s3 import moto_s3

    raw = tomllib.loads((DEPLOY / "champion.toml").read_text())
    raw["data"]["settle_seconds"] = 0  # bootstrap waits settle_seconds + 1 s
    from tests.integration.conftest import SMALL

    raw |= SMALL  # a small search: the first cycle in seconds
    contract = tmp_path / "champion.toml"
    contract.write_text(tomli_w.dumps(raw))
    bucket = urlsplit(raw["data"]["landing_zone"]).netloc
    with pg.fresh_database("champion_deploy") as url, moto_s3(bucket) as s3:
        yield (
            s3,
            os.environ
            | {
                "CHAMPION_DATABASE_URL": url,
                "CHAMPION_PROJECT_FILE": str(contract),
                "CHAMPION_HOME": str(tmp_path / "home"),
                # Its own registry: never one another test left in the environment.
                "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}",
            },
        )


def test_bootstrap_fills_an_empty_s3_landing_zone_once_and_makes_a_champion(
    shared_stores: tuple[Any, dict[str, str]],
) -> None:
    """What the compose file's bootstrap service runs, on the shared stores: with demo data
    off it writes nothing; on, it writes the four demo batches into the S3 landing zone,
    waits for them to settle and promotes a first champion; run again, it changes nothing."""
    s3, env = shared_stores

    def bootstrap(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(Path(sys.executable).with_name("champion")), "bootstrap"],
            capture_output=True,
            text=True,
            timeout=600,
            env=env | {"CHAMPION_LOG_FORMAT": "text"} | extra,
            check=False,
        )

    off = bootstrap(CHAMPION_DEMO_DATA="false")
    assert "demo batches" not in off.stdout, off.stdout + off.stderr
    assert s3.keys("landing/") == []
    first = bootstrap()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "wrote 4 demo batches into s3://" in first.stdout
    assert "PROMOTE" in first.stdout, first.stdout
    assert len(s3.keys("store/")) == 4
    before = {key: s3.client.head_object(Bucket=s3.bucket, Key=key)["ETag"] for key in s3.keys("")}
    again = bootstrap()
    assert again.returncode == 0 and "is in place" in again.stdout, again.stdout + again.stderr
    after = {key: s3.client.head_object(Bucket=s3.bucket, Key=key)["ETag"] for key in s3.keys("")}
    assert after == before
