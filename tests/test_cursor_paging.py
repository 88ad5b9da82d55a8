"""Cursor paging (`after=<next>`) of lists that change while someone pages through them: a
human queue that people answer, and the control plane's task list. Items that stay listed are
seen exactly once (0 missed, 0 duplicated); offset paging, for contrast, skips some."""

from __future__ import annotations

import random
from pathlib import Path

import anyio
import httpx
import pytest

from tests.conftest import gateway_client, running_server

pytestmark = pytest.mark.anyio

CONFIG = {"shutdown_grace": 1, "services": {"desk": {"type": "human"}}}
QUEUE = "/services/desk/tasks"


async def _fill(client: httpx.AsyncClient, count: int) -> list[str]:
    ids = []
    for n in range(count):
        created = await client.post(QUEUE, json={"input": f"q{n}", "task_id": f"q{n:03d}"})
        assert created.status_code == 201, created.text
        ids.append(created.json()["task_id"])
    return ids


async def _answer(client: httpx.AsyncClient, task_id: str) -> None:
    response = await client.post(f"{QUEUE}/{task_id}/handle", json={"result": "ok"})
    assert response.status_code in (200, 409), response.text


async def _page_through(
    client: httpx.AsyncClient, url: str, params: dict, between, *, cursor: bool = True
) -> list[str]:
    """Read every page (by cursor, or by offset for contrast), calling `between()` after each."""
    seen: list[str] = []
    after, offset = None, 0
    while True:
        query = dict(params)
        if cursor and after:
            query["after"] = after
        if not cursor:
            query["offset"] = offset
        body = (await client.get(url, params=query)).json()
        seen += [item["task_id"] for item in body["items"]]
        offset += len(body["items"])
        await between()
        if cursor:
            after = body["next"]
            if after is None:
                return seen
        elif not body["items"]:
            return seen


@pytest.mark.parametrize("order", ["desc", "asc"])
async def test_paging_a_queue_while_it_is_answered_misses_and_repeats_nothing(order) -> None:
    async with gateway_client(CONFIG) as client:
        ids = await _fill(client, 200)
        rng = random.Random(19)
        answered: set[str] = set()

        async def answer_some() -> None:
            left = [i for i in ids if i not in answered]
            for task_id in rng.sample(left, min(6, len(left))):
                answered.add(task_id)
                await _answer(client, task_id)

        seen = await _page_through(client, QUEUE, {"limit": 7, "order": order}, answer_some)
        stayed = [i for i in ids if i not in answered]
        assert len(seen) == len(set(seen)), "a task was listed twice"
        assert set(stayed) <= set(seen), f"missed {len(set(stayed) - set(seen))} tasks"
        assert not (set(seen) - set(ids))
        expected_order = sorted(seen, reverse=order == "desc")
        assert seen == expected_order  # one consistent order across pages

        # for contrast: the same with offsets skips tasks that never left the queue
        rest = [i for i in ids if i not in answered]
        offset_seen = await _page_through(
            client, QUEUE, {"limit": 7, "order": order}, answer_some, cursor=False
        )
        still = [i for i in rest if i not in answered]
        assert set(still) - set(offset_seen), "offset paging was expected to skip some"


async def test_a_bad_or_foreign_cursor_is_a_422() -> None:
    async with gateway_client(CONFIG) as client:
        await _fill(client, 3)
        first = (await client.get(QUEUE, params={"limit": 1})).json()
        assert first["total"] == 3 and first["next"]
        for bad in ("nonsense", "e30", "W10"):
            response = await client.get(QUEUE, params={"after": bad})
            assert response.status_code == 422, bad
        tasks = (await client.get("/control_plane/tasks", params={"limit": 1})).json()
        assert tasks["next"]
        # a task-list cursor (a time) on the queue (arrival numbers) is refused, not misread
        foreign = await client.get(QUEUE, params={"after": tasks["next"]})
        assert foreign.status_code == 422
        last = (await client.get(QUEUE, params={"limit": 3})).json()
        assert last["next"] is None and len(last["items"]) == 3


@pytest.mark.parametrize("store", ["memory", "sqlite"])
async def test_live_task_list_while_people_answer_concurrently(tmp_path: Path, store) -> None:
    """Real server; one reader pages `GET /control_plane/tasks?status=waiting_for_human` and
    the human queue while another client answers at the same time. (With sqlite the task list
    is read from the file, so the cursor is a SQL condition there.)"""
    cfg = {**CONFIG, "store": {"kind": store, "path": str(tmp_path / "paging.db")}}
    if store == "memory":
        cfg["store"] = {"kind": "memory"}
    with running_server(cfg, tmp_path, env={"GATEWAY_SECRET": "paging"}) as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=20) as http:
            ids = await _fill(http, 200)
            rng = random.Random(7)
            order = ids[:]
            rng.shuffle(order)
            to_answer = order[:120]
            answered: set[str] = set()
            reads: dict[str, list[str]] = {}
            reading = anyio.Event()

            async def answerer() -> None:
                await reading.wait()
                for task_id in to_answer:
                    answered.add(task_id)
                    await _answer(http, task_id)

            async def reader(name: str, url: str, params: dict) -> None:
                async def between() -> None:
                    reading.set()
                    await anyio.sleep(0)

                reads[name] = await _page_through(http, url, params, between)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(answerer)
                    tg.start_soon(
                        reader,
                        "tasks",
                        "/control_plane/tasks",
                        {"limit": 9, "status": "waiting_for_human", "service": "desk"},
                    )
                    tg.start_soon(reader, "queue", QUEUE, {"limit": 9})
            stayed = {i for i in ids if i not in answered}
            assert len(stayed) == 80
            for name, seen in reads.items():
                assert len(seen) == len(set(seen)), f"{name}: duplicated"
                assert stayed <= set(seen), f"{name}: missed {len(stayed - set(seen))}"
