"""GC pauses in the in-process gateway (routing_cost's setup: 64 deployments, ~8k-token
prompts), with and without the start-up heap frozen. Usage: python gc_pauses.py STRATEGY plain|freeze
Prints one JSON line."""
import asyncio, time, gc, sys, collections
from kvgate.bench import routing_cost as rc
stats = collections.Counter(); start = {}
def cb(phase, info):
    if phase == "start": start["t"] = time.perf_counter_ns()
    else:
        stats[info["generation"]] += 1; stats["ns"] += time.perf_counter_ns() - start["t"]; stats[f"ns{info['generation']}"] += time.perf_counter_ns() - start["t"]; stats["max"] = max(stats["max"], time.perf_counter_ns() - start["t"])
gc.callbacks.append(cb)
async def main(name, mode):
    app = rc.create_app(rc.gateway_settings(name, 64))
    prompts = rc.Prompts(rc.SYSTEM_TOKENS, rc.USER_TOKENS)
    route = app.gateway.routes[rc.MODEL]
    await rc.warm(route.strategy, route.deployments, prompts)
    bodies = [prompts.body(10000 + i) for i in range(10000)]
    if mode == "freeze":
        from kvgate.api.app import freeze_startup_heap
        freeze_startup_heap()
    stats.clear()
    t = time.thread_time_ns()
    for b in bodies:
        await rc._serve_one(app, b)
    total = time.thread_time_ns() - t
    await app.gateway.aclose()
    n = len(bodies)
    import json
    print(json.dumps({"strategy": name, "mode": mode, "requests": n,
                      "max_pause_ms": round(stats["max"] / 1e6, 2),
                      "cpu_us_per_request": round(total / n / 1e3, 1),
                      "gc_us_per_request": round(stats["ns"] / n / 1e3, 2),
                      "collections": {str(g): stats[g] for g in (0, 1, 2)},
                      "full_pass_ms": round(stats["ns2"] / max(1, stats[2]) / 1e6, 1)}))
asyncio.run(main(sys.argv[1], sys.argv[2]))
