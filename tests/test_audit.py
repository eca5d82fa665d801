"""The audit log is hash-chained: edits, insertions and deletions are found."""

import json

from sqlalchemy import text

from numex.services import audit
from numex.services.runtime import Actor

ACTOR = Actor.system("test")


def _write(rt, n):
    for i in range(n):
        with rt.transaction() as session:
            audit.record(session, ACTOR, "thing.done", "thing", i, {"i": i, "note": "ok"})


def test_intact_chain_verifies(rt):
    _write(rt, 5)
    report = audit.verify(rt)
    assert report.ok and report.events == 5 and report.problems == []


def test_an_edited_payload_is_found(rt):
    _write(rt, 5)
    with rt.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_events SET payload = :p WHERE seq = 3"),
            {"p": json.dumps({"i": 2, "note": "forged"})},
        )
    report = audit.verify(rt)
    assert not report.ok
    assert [(p.seq, p.kind) for p in report.problems] == [(3, "edited")]


def test_an_edited_actor_is_found(rt):
    _write(rt, 3)
    with rt.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1"))
    assert [(p.seq, p.kind) for p in audit.verify(rt).problems] == [(1, "edited")]


def test_a_deleted_event_is_found(rt):
    _write(rt, 5)
    with rt.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    kinds = {(p.seq, p.kind) for p in audit.verify(rt).problems}
    assert (3, "gap") in kinds and (3, "broken_link") in kinds


def test_deleting_the_newest_event_leaves_a_chain_whose_head_moved(rt):
    _write(rt, 3)
    head = audit.verify(rt).last_hash
    with rt.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq = 3"))
    # A truncated tail is a valid shorter chain; the exported head hash tells it apart.
    assert audit.verify(rt).last_hash != head


def test_an_inserted_event_is_found(rt):
    _write(rt, 3)
    with rt.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET seq = seq + 10 WHERE seq >= 2"))
        row = connection.execute(
            text("SELECT prev_hash, hash FROM audit_events WHERE seq = 12")
        ).one()
        connection.execute(
            text(
                "INSERT INTO audit_events (seq, occurred_at, actor, action, entity_type, "
                "entity_id, payload, prev_hash, hash) VALUES (2, '2026-01-01 00:00:00', "
                "'mallory', 'thing.done', 'thing', 'x', '{}', :prev, 'sha256:forged')"
            ),
            {"prev": row.prev_hash},
        )
    problems = audit.verify(rt).problems
    assert any(p.seq == 2 and p.kind == "edited" for p in problems)
    assert any(p.seq == 12 and p.kind in ("gap", "broken_link") for p in problems)


def test_a_rolled_back_change_leaves_no_event(rt):
    try:
        with rt.transaction() as session:
            audit.record(session, ACTOR, "thing.done", "thing", 1)
            raise RuntimeError("the change failed")
    except RuntimeError:
        pass
    assert audit.verify(rt).events == 0


def test_cli_verify_and_export(runner, rt):
    _write(rt, 2)
    ok = runner.invoke("audit", "verify")
    assert ok.exit_code == 0 and "intact: 2 events" in ok.output
    lines = runner.invoke("audit", "export", "--format", "jsonl").output.strip().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2]
    assert json.loads(lines[1])["prev_hash"] == json.loads(lines[0])["hash"]
    with rt.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET action = 'x' WHERE seq = 1"))
    broken = runner.invoke("audit", "verify")
    assert broken.exit_code == 1 and "BROKEN" in broken.output


def test_audit_page_shows_the_chain_status(client, auth, rt):
    auth.login("vic")
    page = client.get("/audit/")
    assert page.status_code == 200 and "Chain verified" in page.text
    assert "user.added" in page.text
    with rt.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 1"))
    page = client.get("/audit/?action=user.added")
    assert "The audit chain is broken" in page.text
