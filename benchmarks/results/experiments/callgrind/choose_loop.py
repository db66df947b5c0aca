"""One KV-aware decision repeated, for its instructions under callgrind (see README.md).

python choose_loop.py N: the long-prompt gateway of ``loop.py`` (64 mock deployments, ~8k-token
prompts, virtual clock), 100 requests served to warm it, one new prompt prepared, then
``_choose`` on it 50 + N times. Run for two N: the difference of the totals over the
difference of N is one decision's instructions (the strategy's choice and its explanation, on
a fixed state: no refresh, no bookkeeping).
"""

from __future__ import annotations

import sys

import uvloop

sys.argv = [sys.argv[0], "prefix_kv_aware", *sys.argv[1:]]  # loop.py's virtual clock
import loop  # noqa: E402


async def main(decisions: int) -> None:
    from kvgate.bench.routing_cost import _serve_one as serve

    app, route, prompts = await loop.long_prompt_gateway("prefix_kv_aware")
    for n in range(100):
        loop._virtual_now_s[0] += loop.VIRTUAL_STEP_S
        await serve(app, prompts.body(10_000 + n))
    strategy = route.strategy
    call = prompts.call(99_999)
    await strategy.prepare(call)
    deployments = list(route.deployments)
    for _ in range(50 + decisions):
        strategy._choose(call.routing_state, deployments)  # type: ignore[attr-defined]
    await app.gateway.aclose()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[2])))
