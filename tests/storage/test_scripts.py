"""The scripts' one reply convention, decoded in one place, against a real Redis."""

from __future__ import annotations

import re
from enum import IntEnum
from importlib.resources import files

import pytest
from redis.asyncio import Redis

from runtime.config import CommonSettings
from storage import keys, scripts
from storage.connection import is_cluster
from storage.scripts import Script, ScriptReplyError, StopStatus, decode
from storage.store import SessionExpired, Store

#: Each script and the enum its replies are decoded into.
STATUSES: dict[str, type[IntEnum]] = {
    "admit.lua": scripts.AdmitStatus,
    "quota.lua": scripts.QuotaStatus,
    "charge.lua": scripts.ChargeStatus,
    "renew.lua": scripts.RenewStatus,
    "enqueue.lua": scripts.EnqueueStatus,
    "revise.lua": scripts.ReviseStatus,
    "set_model.lua": scripts.SetModelStatus,
    "begin.lua": scripts.BeginStatus,
    "emit_batch.lua": scripts.BatchStatus,
    "finish.lua": scripts.FinishStatus,
    "lost.lua": scripts.LostStatus,
    "stop.lua": scripts.StopStatus,
    "owner_add.lua": scripts.OwnerAddStatus,
    "title.lua": scripts.TitleStatus,
    "summary.lua": scripts.SummaryStatus,
    "fail.lua": scripts.FailStatus,
    "due.lua": scripts.DueStatus,
    "trim_stream.lua": scripts.TrimStatus,
    "claim.lua": scripts.ClaimStatus,
    "heartbeat.lua": scripts.HeartbeatStatus,
    "release.lua": scripts.ReleaseStatus,
    "sweep_consumers.lua": scripts.SweepStatus,
}


def declared_statuses(name: str) -> dict[str, int]:
    """The statuses a script declares: ``local A, B = 0, 1`` before its first statement."""
    text = files("storage").joinpath("lua", name).read_text(encoding="utf-8")
    match = re.search(r"^local ([A-Z_, ]+) = ([0-9, ]+)$", text, re.MULTILINE)
    assert match is not None, f"{name} declares no statuses"
    names = [n.strip() for n in match[1].split(",")]
    values = [int(v) for v in match[2].split(",")]
    return dict(zip(names, values, strict=True))


def test_every_script_declares_the_statuses_of_its_enum() -> None:
    lua = {
        str(p.name)
        for p in files("storage").joinpath("lua").iterdir()
        if p.name.endswith(".lua")  # the shared parts are in includes/
    }
    assert lua == set(STATUSES)
    for name, statuses in STATUSES.items():
        assert declared_statuses(name) == {s.name: s.value for s in statuses}, name


def test_a_reply_is_decoded_into_its_status_and_payload() -> None:
    assert decode("stop.lua", StopStatus, [0, 7]) == (StopStatus.STOPPED, 7)
    status, payload = decode("stop.lua", StopStatus, [2, None])
    assert status is StopStatus.NO_SESSION and payload is None


def test_an_unknown_status_is_a_clear_error() -> None:
    with pytest.raises(ScriptReplyError, match=r"stop\.lua answered status 9, which StopStatus"):
        decode("stop.lua", StopStatus, [9, None])


@pytest.mark.parametrize("reply", [7, None, "OK", [], [0], [0, 1, 2], ["0", 1]])
def test_a_reply_outside_the_convention_is_a_clear_error(reply: object) -> None:
    with pytest.raises(ScriptReplyError, match=r"stop\.lua answered .*not \{status, payload\}"):
        decode("stop.lua", StopStatus, reply)


class OnlyStopped(IntEnum):
    STOPPED = 0


async def test_a_real_script_answering_a_status_its_enum_lacks_raises(redis: Redis) -> None:
    script = Script(redis, "stop.lua", OnlyStopped)
    with pytest.raises(ScriptReplyError, match=r"stop\.lua answered status 2"):
        await script(keys=[keys.session_key("00000000-0000-4000-8000-000000000000")])


async def test_scripts_run_again_after_redis_forgot_them(redis: Redis) -> None:
    """A Redis restarted without persistence (or SCRIPT FLUSH) has no scripts: each is
    loaded again on NOSCRIPT."""
    store = Store(redis, CommonSettings(session_ttl_seconds=60))
    session = await store.sessions.create_session("ada")
    assert await store.sessions.stop(session.token) == 0
    await redis.script_flush()
    await store.queue.enqueue(session.token, "one", max_pending=10)
    assert await store.sessions.stop(session.token) == 1
    with pytest.raises(SessionExpired):
        await store.sessions.stop("00000000-0000-4000-8000-000000000000")


async def test_a_session_is_written_with_its_ttl_and_no_index(redis: Redis) -> None:
    store = Store(redis, CommonSettings(session_ttl_seconds=60))
    session = await store.sessions.create_session("ada")
    assert 0 < await redis.ttl(keys.session_key(session.token)) <= 60
    assert (await store.sessions.get_session(session.token)).name == "ada"
    # Every node (a cluster's primaries) has no RediSearch index: nothing searches sessions.
    on = {"target_nodes": redis.get_primaries()} if is_cluster(redis) else {}  # type: ignore[attr-defined]
    indexes = await redis.execute_command("FT._LIST", **on)
    assert not any(indexes.values()) if isinstance(indexes, dict) else indexes == []
