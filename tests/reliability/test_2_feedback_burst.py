"""Scenario 2: the same labels sent several times at once, to two workers.

Two workers serve N single-row predictions with known X-Request-IDs. Once every row is in
the prediction log, several threads send each label REPEATS times, all at once, each
request on a new connection so both workers answer. The rows are labelled in fixed groups
(one to five rows per request, the same groups every time, as a client retrying its own
requests would): every group must be answered 200 exactly once and 409 otherwise, and every
row must carry exactly its one label. A 429 is honoured (Retry-After) and the request sent
again: the burst is larger than a worker's burst allowance in the full form.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.test_serve import FEEDBACK, ROW, serving
from tests.reliability.conftest import (
    Connection,
    Results,
    Scenario,
    captured_keys,
    champion_project,
    pick,
    read_only,
    readyz_pids,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

ROWS = pick(200, 2000)
REPEATS = pick(3, 4)
THREADS = 8
MAX_429_RETRIES = 20


def _groups(ids: list[str], seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out: list[list[str]] = []
    i = 0
    while i < len(ids):
        n = rng.randint(1, 5)
        out.append(ids[i : i + n])
        i += n
    return out


def test_each_label_is_joined_exactly_once_under_a_concurrent_burst(
    module_dir: Path, template_db: Path, report: Results
) -> None:
    """It labels every row once: one 200 per group, 409 for every copy, nothing lost."""
    scn = Scenario(
        "feedback_burst",
        "feedback burst from two workers",
        [
            "every prediction is captured before labels are sent",
            "each label group is answered 200 exactly once; every other copy 409",
            "200s == label groups; labels joined == rows == rows labelled in the log",
            "every labelled row holds the label sent for it; no 404, no 5xx, no error",
        ],
    )
    project = champion_project(module_dir / "proj", template_db)
    ids = [f"burst-{i:05d}" for i in range(ROWS)]
    truth = {rid: i % 2 for i, rid in enumerate(ids)}
    groups = _groups(ids, seed=7)
    sends = [g for g in groups for _ in range(REPEATS)]
    random.Random(11).shuffle(sends)
    with serving(project, workers=2, CHAMPION_SCHEDULER="false") as base:
        pids = readyz_pids(base, workers=2)
        scn.put("workers", len(pids))
        lock = threading.Lock()
        predicted: Counter[int] = Counter()

        def predict(chunk: list[str]) -> None:
            with httpx.Client(timeout=30) as client:
                for rid in chunk:
                    r = client.post(
                        f"{base}/predict",
                        json={"instances": [ROW]},
                        headers={"X-Request-ID": rid},
                    )
                    with lock:
                        predicted[r.status_code] += 1

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(predict, [ids[i::4] for i in range(4)]))
        scn.put("predictions sent", ROWS)
        scn.put("predictions answered 200", predicted[200])
        log_path = project.settings.prediction_log_path
        wanted = {(rid, 0) for rid in ids}
        captured = wait_until(lambda: wanted <= captured_keys(log_path), timeout=30)
        scn.put("predictions captured before the burst", len(wanted & captured_keys(log_path)))

        statuses: Counter[int] = Counter()
        labelled_by_200 = 0
        wins: Counter[tuple[str, ...]] = Counter()
        errors: list[str] = []
        bodies: list[str] = []
        counter = itertools.count()
        by_worker: Counter[tuple[int, int]] = Counter()

        def send(group: list[str]) -> None:
            nonlocal labelled_by_200
            body = [{"request_id": rid, "label": truth[rid]} for rid in group]
            payload = body[0] if len(body) == 1 and next(counter) % 2 else body
            for _ in range(MAX_429_RETRIES):
                # A new connection for every label request: the kernel hands it to either
                # worker; /readyz on the same connection says which one answers.
                conn = Connection(base, timeout=60)
                try:
                    pid = conn.learn_pid()
                    status, headers, answer = conn.request(
                        "POST", "/feedback", payload, headers=FEEDBACK
                    )
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    return
                finally:
                    conn.close()
                with lock:
                    statuses[status] += 1
                    by_worker[(pid, status)] += 1
                if status != 429:
                    break
                time.sleep(float(headers.get("retry-after", "1")))
            with lock:
                if status == 200:
                    wins[tuple(group)] += 1
                    labelled_by_200 += int(answer["labelled"])
                elif status != 409 and len(bodies) < 5:
                    bodies.append(f"{status} {str(answer)[:300]}")

        burst = time.monotonic()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(send, sends))
        burst_seconds = time.monotonic() - burst
    with read_only(log_path) as conn:
        rows = conn.execute(
            "SELECT request_id, label FROM predictions WHERE request_id LIKE 'burst-%'"
        ).fetchall()
    labels = {rid: label for rid, label in rows}
    in_log = sum(label is not None for label in labels.values())
    wrong = sum(
        1 for rid, label in labels.items() if label is not None and json.loads(label) != truth[rid]
    )
    once = sum(1 for g in groups if wins[tuple(g)] == 1)
    scn.figures.update(
        {
            "label groups": len(groups),
            "copies of each group": REPEATS,
            "feedback requests sent": len(sends),
            "labels sent": sum(len(g) for g in sends),
            "answered 200": statuses[200],
            "answered 409": statuses[409],
            "answered 429 (retried after Retry-After)": statuses[429],
            "answered otherwise": sum(v for k, v in statuses.items() if k not in (200, 409, 429)),
            "requests failed (no response)": len(errors),
            "groups labelled exactly once": once,
            "groups labelled twice or more": sum(1 for g in groups if wins[tuple(g)] > 1),
            "groups never labelled": sum(1 for g in groups if wins[tuple(g)] == 0),
            "labels joined (sum of 200 bodies)": labelled_by_200,
            "rows labelled in the log": in_log,
            "rows with a wrong label": wrong,
            "rows lost (not labelled)": ROWS - in_log,
            "feedback answered by each worker": {
                f"pid {pid}": {str(st): n for (p, st), n in sorted(by_worker.items()) if p == pid}
                for pid in sorted({p for p, _ in by_worker})
            },
            "burst seconds": round(burst_seconds, 1),
            "labels per second": round(sum(len(g) for g in sends) / burst_seconds, 1),
            "seconds": round(time.monotonic() - started, 1),
        }
    )
    if bodies or errors:
        scn.put("examples of unexpected answers", bodies + errors[:5])
    scn.notes.append(
        f"{ROWS} single-row predictions; labels in {len(groups)} fixed groups of 1 to 5 rows "
        f"(a single row sent as an object every other time, else as a list), each group sent "
        f"{REPEATS} times in shuffled order from {THREADS} threads, a new connection per "
        "request. Feedback rate limits are the defaults (200 labels/s per worker, burst 2000)."
    )
    report.record(scn)
    assert predicted[200] == ROWS, predicted
    assert captured, "not every prediction reached the prediction log"
    assert not errors and not bodies, (errors[:5], bodies)
    assert len({p for p, _ in by_worker}) == 2, by_worker  # both workers labelled
    assert statuses[200] == len(groups), statuses
    assert statuses[409] == len(sends) - len(groups), statuses
    assert once == len(groups)
    assert labelled_by_200 == ROWS == in_log, (labelled_by_200, in_log)
    assert wrong == 0
