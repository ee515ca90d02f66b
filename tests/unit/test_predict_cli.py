"""Unit tests of `champion predict --file`: chunking to the service's row limit, one answer."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from champion.service.cli import app
from champion.training.config import get_settings
from champion.training.demo.simulate import agrawal_frame
from tests.unit.conftest import PROJECT_FILE


class _Service:
    """A stand-in for the service: /openapi.json names `limit`, /predict refuses more rows."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.bodies: list[list[dict[str, Any]]] = []

    def openapi(self) -> dict[str, Any]:
        instances = {"type": "array"} | ({"maxItems": self.limit} if self.limit else {})
        request = {"type": "object", "properties": {"instances": instances}}
        return {"components": {"schemas": {"PredictRequest": request}}}

    def predict(self, rows: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
        self.bodies.append(rows)
        limit = self.limit or 1000
        if len(rows) > limit:
            return 422, {"error": f"'instances' has {len(rows)} rows; at most {limit} allowed"}
        problems = [
            {"row": i, "field": "salary", "kind": "wrong_type", "problem": "not a number"}
            for i, row in enumerate(rows)
            if not isinstance(row["salary"], float)
        ]
        if problems:
            return 422, {"error": f"{len(problems)} problem(s)", "problems": problems}
        n = len(self.bodies)
        return 200, {
            "predictions": [int(row["salary"]) % 2 for row in rows],
            "probabilities": [[0.5, 0.5] for _ in rows],
            "classes": [0, 1],
            "model_version": "3",
            "request_id": f"req-{n}",
        }


@pytest.fixture
def service(request: pytest.FixtureRequest) -> Iterator[tuple[_Service, str]]:
    stub = _Service(getattr(request, "param", 4))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/openapi.json":
                self._answer(200, stub.openapi())
            else:
                self._answer(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            payload = json.loads(self.rfile.read(length))
            self._answer(*stub.predict(payload["instances"]))

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stub, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def rows_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Ten rows of a batch file; CHAMPION_* variables point at the shipped contract."""
    monkeypatch.setenv("CHAMPION_PROJECT_FILE", str(PROJECT_FILE))
    monkeypatch.setenv("CHAMPION_HOME", str(tmp_path / "var"))
    monkeypatch.setenv("CHAMPION_LOG_FORMAT", "text")
    monkeypatch.setenv("CHAMPION_MAX_ROWS", "3")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'var' / 'mlflow.db'}")
    path = tmp_path / "rows.csv"
    agrawal_frame(10, function=1, seed=1).to_csv(path, index=False)
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def _predict(path: Path, url: str) -> Any:
    return CliRunner().invoke(app, ["predict", "--file", str(path), "--url", url])


def test_a_file_longer_than_the_limit_goes_in_chunks_and_comes_back_as_one(service, rows_file):
    """It sends 10 rows as 4 + 4 + 2 (the service's maxItems) and prints every prediction."""
    stub, url = service
    result = _predict(rows_file, url)
    assert result.exit_code == 0, result.output
    assert [len(body) for body in stub.bodies] == [4, 4, 2]
    answer = json.loads(result.stdout)
    assert len(answer["predictions"]) == 10 and len(answer["probabilities"]) == 10
    salaries = [row["salary"] for body in stub.bodies for row in body]
    assert answer["predictions"] == [int(s) % 2 for s in salaries]
    assert answer["request_ids"] == ["req-1", "req-2", "req-3"] and "request_id" not in answer
    assert answer["chunk_rows"] == 4 and answer["model_version"] == "3"
    assert answer["classes"] == [0, 1]


@pytest.mark.parametrize("service", [None], indirect=True)
def test_without_a_limit_in_the_schema_it_uses_champion_max_rows(service, rows_file):
    """It falls back on CHAMPION_MAX_ROWS when the service's schema names no maxItems."""
    stub, url = service
    result = _predict(rows_file, url)
    assert result.exit_code == 0, result.output
    assert [len(body) for body in stub.bodies] == [3, 3, 3, 1]


@pytest.mark.parametrize("service", [20], indirect=True)
def test_a_file_within_the_limit_is_one_request_answered_as_the_service_gave_it(service, rows_file):
    """It sends a short file in one request and prints the service's answer unchanged."""
    stub, url = service
    result = _predict(rows_file, url)
    assert result.exit_code == 0, result.output
    assert [len(body) for body in stub.bodies] == [10]
    assert json.loads(result.stdout)["request_id"] == "req-1"


def test_a_refused_chunk_exits_1_with_row_numbers_of_the_whole_file(service, rows_file):
    """It stops at the refused chunk and counts the problem rows in the whole file."""
    stub, url = service
    text = rows_file.read_text().splitlines()
    header = text[0].split(",")
    at = header.index("salary")
    row = text[7].split(",")  # the file's row 6 (0-based), the second chunk's row 2
    row[at] = "lots"
    text[7] = ",".join(row)
    rows_file.write_text("\n".join(text) + "\n")
    result = _predict(rows_file, url)
    assert result.exit_code == 1
    assert [len(body) for body in stub.bodies] == [4, 4]
    assert "rows 5 to 8 refused (HTTP 422)" in result.stderr
    body = json.loads(result.stdout)
    assert [p["row"] for p in body["problems"]] == [6]
