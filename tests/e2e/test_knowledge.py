"""Grounded answers: a tenant's knowledge base over REST (admins only), retrieval per tenant,
sources on replies, the offline assistant quoting an article, and an edit on one instance used
by another instance's next answer. Real servers, the fake LLM API through the real SDK,
SecantusDB where two instances share a database."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import JWT_SECRET, Connect, RunningServer, StartServer, make_token
from tests.fakes.openai_server import FakeOpenAI
from tests.servers import ROOT, MongoServer, clean_env

METRICS_TOKEN = "scrape-" + "k" * 40
ADMIN_1 = make_token("admin-1", tenant="t1", role="admin")
ADMIN_2 = make_token("admin-2", tenant="t2", role="admin")

BLED = {
    "id": "lake-bled",
    "title": "Lake Bled day tour",
    "url": "https://tours.example/bled",
    "content": "# Lake Bled day tour\n\nThe Lake Bled tour leaves every Monday at 9:00 from "
    "Ljubljana bus station and returns at 18:00.\n\n## Price\n\nThe tour costs 65 euros.",
}
REFUNDS = {
    "id": "refunds",
    "title": "Refund policy",
    "content": "Bookings are refunded in full up to 48 hours before departure.",
}
OTHER_TENANTS_BLED = {
    "id": "bled-t2",
    "title": "Bled by boat",
    "content": "Our Bled boat tour leaves on Fridays from the castle pier.",
}


async def call(method: str, url: str, token: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, url, json=body, headers=headers) as response,
    ):
        return response.status, await response.json()


async def add(server: RunningServer, token: str, article: dict[str, Any]) -> dict[str, Any]:
    status, body = await call("POST", f"{server.url}/api/knowledge", token, article)
    assert status == 201, body
    return dict(body["article"])


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(
        jwt_secret=JWT_SECRET, knowledge_max_chars=1000, metrics_token=METRICS_TOKEN
    )


async def test_admins_keep_the_knowledge_base_and_nobody_else_may(server: RunningServer) -> None:
    url = f"{server.url}/api/knowledge"
    created = await add(server, ADMIN_1, BLED)
    assert created["id"] == "lake-bled" and created["updatedAt"]
    generated = await add(server, ADMIN_1, {"title": "No id", "content": "An id is made."})
    assert generated["id"] and generated["id"] != "lake-bled"
    status, body = await call("GET", url, ADMIN_1)
    assert status == 200 and sorted(a["id"] for a in body["articles"]) == sorted(
        ["lake-bled", generated["id"]]
    )
    status, body = await call("GET", f"{url}/lake-bled", ADMIN_1)
    assert (status, body["article"]["url"]) == (200, BLED["url"])
    status, body = await call(
        "PUT", f"{url}/lake-bled", ADMIN_1, {**BLED, "content": "Now on Tuesdays."}
    )
    assert (status, body["article"]["content"]) == (200, "Now on Tuesdays.")
    assert (await call("DELETE", f"{url}/{generated['id']}", ADMIN_1))[0] == 200
    assert (await call("GET", f"{url}/{generated['id']}", ADMIN_1))[0] == 404
    assert (await call("DELETE", f"{url}/{generated['id']}", ADMIN_1))[0] == 404
    assert (await call("PUT", f"{url}/nope", ADMIN_1, REFUNDS))[0] == 404
    # Another tenant's admin sees none of it.
    status, body = await call("GET", url, ADMIN_2)
    assert (status, body["articles"]) == (200, [])
    assert (await call("GET", f"{url}/lake-bled", ADMIN_2))[0] == 404
    # Users and operators may not touch it.
    for token in (make_token("u1", tenant="t1"), make_token("op", tenant="t1", role="operator")):
        status, body = await call("GET", url, token)
        assert (status, body["error"]["code"]) == (403, "forbidden")
        assert (await call("POST", url, token, REFUNDS))[0] == 403
    # Bad articles.
    status, body = await call("POST", url, ADMIN_1, {"content": "no title"})
    assert (status, body["error"]["field"]) == (400, "title")
    status, body = await call("POST", url, ADMIN_1, {"title": "no content"})
    assert (status, body["error"]["field"]) == (400, "content")
    status, body = await call("POST", url, ADMIN_1, {"title": "big", "content": "x" * 1001})
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    status, body = await call("POST", url, ADMIN_1, {**REFUNDS, "url": "javascript:alert(1)"})
    assert (status, body["error"]["field"]) == (400, "url")


async def test_answers_come_from_the_tenants_own_articles_with_their_sources(
    server: RunningServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    await add(server, ADMIN_1, BLED)
    await add(server, ADMIN_1, REFUNDS)
    await add(server, ADMIN_2, OTHER_TENANTS_BLED)

    user = await connect(server.url, token=make_token("u1", tenant="t1"), join="q1")
    # The fake model echoes the question, so "[1]" in it is a citation in the reply.
    _, reply = await user.ask("q1", "When does the Lake Bled tour leave? [1]")
    [request] = fake_openai.requests_for("good")
    prompt = "\n".join(m["content"] for m in request["messages"])
    assert "every Monday at 9:00" in prompt and "Lake Bled day tour" in prompt
    assert "castle pier" not in prompt  # never another tenant's
    assert "refunded in full" not in prompt  # not relevant: under the floor
    assert "<knowledge>" in prompt and "cite" in prompt
    assert reply["sources"] == [
        {"id": "lake-bled", "title": "Lake Bled day tour", "url": BLED["url"], "cited": True}
    ]
    # Stored with the reply: history over REST has them too.
    status, history = await call(
        "GET", f"{server.url}/api/consultations/q1/messages", make_token("u1", tenant="t1")
    )
    assert status == 200 and history["messages"][-1]["sources"] == reply["sources"]

    # Tenant 2 asks the same: only its own article.
    other = await connect(server.url, token=make_token("u2", tenant="t2"), join="q2")
    _, reply = await other.ask("q2", "When does the Bled tour leave?")
    prompt = "\n".join(m["content"] for m in fake_openai.requests_for("good")[-1]["messages"])
    assert "castle pier" in prompt and "every Monday" not in prompt
    assert [s["id"] for s in reply["sources"]] == ["bled-t2"]
    assert reply["sources"][0]["cited"] is False  # the reply cites nothing

    # A question the knowledge base does not cover: no passages, no sources.
    _, reply = await other.ask("q2", "Do you sell umbrellas?")
    assert "sources" not in reply
    prompt = "\n".join(m["content"] for m in fake_openai.requests_for("good")[-1]["messages"])
    assert "<knowledge>" not in prompt

    # The stats: what was cited, what people ask, what had no source (per tenant).
    status, stats = await call("GET", f"{server.url}/api/stats", ADMIN_1)
    assert status == 200
    assert stats["topSources"] == [{"id": "lake-bled", "title": "Lake Bled day tour", "count": 1}]
    assert stats["topQuestions"] == [
        {"text": "when does the lake bled tour leave? [1]", "count": 1}
    ]
    assert stats["unanswered"] == 0
    status, stats = await call("GET", f"{server.url}/api/stats", ADMIN_2)
    assert (stats["topSources"], stats["unanswered"]) == ([], 1)
    assert [q["text"] for q in stats["topQuestions"]] == [
        "do you sell umbrellas",
        "when does the bled tour leave",
    ]
    # And the metrics the dashboard plots: one reply of each grounding.
    headers = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{server.url}/metrics", headers=headers) as r,
    ):
        exposition = await r.text()
    for grounding in ("cited", "uncited", "none"):
        assert f'chat_ai_replies_grounded_total{{grounding="{grounding}"}} 1.0' in exposition


async def test_the_offline_assistant_quotes_the_best_article_and_names_it(
    start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(
        jwt_secret=JWT_SECRET, openai_api_key=None, offline_word_delay_seconds=0
    )
    await add(server, ADMIN_1, BLED)
    await add(server, ADMIN_1, REFUNDS)
    user = await connect(server.url, token=make_token("u1", tenant="t1"), join="q")
    _, reply = await user.ask("q", "Can I get a refund if I cancel?")
    assert reply["model"] == "offline"
    assert "Refund policy" in reply["content"] and "refunded in full" in reply["content"]
    assert reply["sources"] == [{"id": "refunds", "title": "Refund policy", "cited": True}]


async def test_an_edit_on_one_instance_is_used_by_the_next_answer_on_another(
    start_server: StartServer,
    connect: Connect,
    mongo_server: MongoServer,
    fake_openai: FakeOpenAI,
) -> None:
    shared = {"mongodb_url": mongo_server.url, "mongodb_db": f"kb_{uuid.uuid4().hex[:10]}"}
    a = await start_server(jwt_secret=JWT_SECRET, **shared)
    b = await start_server(jwt_secret=JWT_SECRET, **shared)
    await add(a, ADMIN_1, BLED)
    user = await connect(b.url, token=make_token("u1", tenant="t1"), join="q")
    await user.ask("q", "When does the Lake Bled tour leave?")
    prompt = "\n".join(m["content"] for m in fake_openai.requests[-1]["messages"])
    assert "every Monday" in prompt
    status, _ = await call(
        "PUT",
        f"{a.url}/api/knowledge/lake-bled",
        ADMIN_1,
        {**BLED, "content": "The Lake Bled tour now leaves every Tuesday at 10:00."},
    )
    assert status == 200
    await user.ask("q", "And when does the Lake Bled tour leave now?")
    prompt = "\n".join(m["content"] for m in fake_openai.requests[-1]["messages"])
    assert (
        "every Tuesday at 10:00" in prompt and "every Monday" not in prompt.split("<knowledge>")[1]
    )


def knowledge_cli(mongo: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(MONGODB_URL=mongo["mongodb_url"], MONGODB_DB=mongo["mongodb_db"])
    return subprocess.run(
        [sys.executable, "-m", "server", "knowledge", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_folder_of_markdown_and_json_imports_idempotently_and_exports_back(
    start_server: StartServer, mongo_server: MongoServer, tmp_path: Path, connect: Connect
) -> None:
    folder = tmp_path / "kb"
    (folder / "tours").mkdir(parents=True)
    (folder / "tours" / "lake-bled.md").write_text(
        "<!-- url: https://tours.example/bled -->\n# Lake Bled day tour\n\nLeaves every "
        "Monday at 9:00.\n\n## Price\n\n65 euros.\n"
    )
    (folder / "faq.jsonl").write_text(
        json.dumps({"id": "refunds", "title": "Refunds", "content": "Full refund up to 48 h."})
        + "\n"
        + json.dumps({"title": "Visas", "content": "No visa is needed within the EU."})
        + "\n"
    )
    mongo = {"mongodb_url": mongo_server.url, "mongodb_db": f"kb_{uuid.uuid4().hex[:10]}"}
    first = knowledge_cli(mongo, "import", str(folder), "--tenant", "t1")
    assert first.returncode == 0, first.stderr
    assert "imported 3 articles into tenant t1: 3 new, 0 replaced" in first.stdout
    again = knowledge_cli(mongo, "import", str(folder), "--tenant", "t1")
    assert "3 new" not in again.stdout and "0 new, 3 replaced" in again.stdout

    server = await start_server(jwt_secret=JWT_SECRET, **mongo)
    status, body = await call("GET", f"{server.url}/api/knowledge", ADMIN_1)
    assert status == 200
    articles = {a["id"]: a for a in body["articles"]}
    assert sorted(articles) == ["faq-2", "refunds", "tours-lake-bled"]
    bled = articles["tours-lake-bled"]
    assert (bled["title"], bled["url"]) == ("Lake Bled day tour", "https://tours.example/bled")
    assert "<!--" not in bled["content"] and "## Price" in bled["content"]
    # Imported articles answer questions.
    user = await connect(server.url, token=make_token("u1", tenant="t1"), join="q")
    _, reply = await user.ask("q", "How much is the Lake Bled tour?")
    assert [s["id"] for s in reply["sources"]] == ["tours-lake-bled"]

    exported = tmp_path / "out.jsonl"
    result = knowledge_cli(mongo, "export", str(exported), "--tenant", "t1")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["faq-2", "refunds", "tours-lake-bled"]
    markdown = tmp_path / "md"
    knowledge_cli(mongo, "export", str(markdown), "--tenant", "t1")
    text = (markdown / "tours-lake-bled.md").read_text()
    assert text.startswith("<!-- url: https://tours.example/bled -->\n# Lake Bled day tour")
    # What was exported imports back as the same articles (by id).
    back = knowledge_cli(mongo, "import", str(exported), "--tenant", "t1")
    assert "0 new, 3 replaced" in back.stdout, back.stdout + back.stderr


def test_the_knowledge_command_needs_mongodb(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "knowledge", "import", str(tmp_path), "--tenant", "t"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "MONGODB_URL" in result.stderr


async def test_with_embeddings_a_question_in_other_words_finds_its_article(
    start_server: StartServer, connect: Connect, fake_openai: FakeOpenAI
) -> None:
    price = {"id": "price", "title": "Lake Bled tour", "content": "The price is 65 euros."}
    plain = await start_server(jwt_secret=JWT_SECRET)
    await add(plain, ADMIN_1, price)
    user = await connect(plain.url, token=make_token("u1", tenant="t1"), join="q")
    _, reply = await user.ask("q", "What does it cost?")
    assert "sources" not in reply  # BM25 alone: no word in common
    assert fake_openai.embedding_requests == []

    blended = await start_server(jwt_secret=JWT_SECRET, embeddings_model="embed-small")
    await add(blended, ADMIN_1, price)
    user = await connect(blended.url, token=make_token("u1", tenant="t1"), join="q")
    _, reply = await user.ask("q", "What does it cost?")
    assert [s["id"] for s in reply["sources"]] == ["price"]
    prompt = "\n".join(m["content"] for m in fake_openai.requests[-1]["messages"])
    assert "65 euros" in prompt
    # The passages were embedded once (at the index build), then each question.
    inputs = [r["input"] for r in fake_openai.embedding_requests]
    assert inputs[0] == ["Lake Bled tour\nThe price is 65 euros."]
    assert inputs[1] == ["What does it cost?"]
    assert {r["model"] for r in fake_openai.embedding_requests} == {"embed-small"}
