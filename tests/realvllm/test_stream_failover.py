"""A real vLLM replica killed mid-stream: the gateway resumes the answer on the other one.

Runs last in this folder (the conftest restarts the killed replica if another test follows).
"""

from __future__ import annotations

import pytest

from tests.realvllm.client import RealGateway, document, question, text_messages, wait_for

pytestmark = [pytest.mark.realvllm, pytest.mark.timeout(900)]

MAX_TOKENS = 400
KILL_AFTER_CHUNKS = 12


def test_stream_survives_its_replica_being_killed(gateway: RealGateway) -> None:
    killed: list[str] = []

    def kill_serving_replica(chunks: int, deployment: str) -> None:
        if chunks == KILL_AFTER_CHUNKS and not killed:
            gateway.replica(deployment).kill()
            killed.append(deployment)

    body = {"model": "kv", "max_tokens": MAX_TOKENS, "ignore_eos": True,
            "messages": text_messages(document("failover", 400), question("failover", 0))}
    answer = gateway.stream(body, on_chunk=kill_serving_replica)
    assert killed == [answer.deployment]
    assert answer.chunks > KILL_AFTER_CHUNKS, "the stream went on after the kill"
    assert answer.finish_reason == "length"

    # Blocking requests keep working: the dead replica fails over, then its circuit opens.
    survivor = {"vllm0", "vllm1"} - set(killed)
    served = [gateway.ask("rr", text_messages(document("after-kill", 200), question("k", i)))
              .deployment for i in range(4)]
    assert set(served) == survivor
    wait_for(lambda: gateway.http.get("/readyz").status_code == 200, what="still ready")
