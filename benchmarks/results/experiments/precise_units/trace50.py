import sys, json
from kvgate.bench.scenarios import images_seeds as isd
from kvgate.routing.precise import strategy as ps
from kvgate.routing import prefix_kv_aware as pk
LOG = []
def wrap(cls, label):
    orig = cls.choose
    def choose(self, call, candidates):
        d = orig(self, call, candidates)
        st = call.routing_state
        fp = st.fingerprint
        e = d.explanation
        LOG.append({"arm": label, "n": len(LOG), "t": round(self._scorer._clock(), 3), "img": [h % 100000 for h in fp.hashes[:6]],
                    "to": d.deployment.id[-1], "outcome": e.get("outcome"),
                    "known": [round(k) for k in (st.known_tokens or [])] if getattr(st, "known_tokens", None) else None,
                    "cands": {k[-1]: {kk: vv for kk, vv in v.items() if kk in ("matched_tokens", "predicted_cost_ms", "eviction_ms", "kv_wait_ms")} for k, v in e["candidates"].items()}})
        return d
    cls.choose = choose
wrap(ps.PreciseKV if hasattr(ps, "PreciseKV") else [getattr(ps, n) for n in dir(ps) if n.startswith("Precise") and hasattr(getattr(ps, n), "choose")][0], "precise")
wrap(pk.PrefixKVAware, "approx")
seed = int(sys.argv[1]); arm = sys.argv[2]
r = isd.run_one(50, seed, arm, False)
print(json.dumps({k: r[k] for k in ("ttft_p95_ms", "hit_rate", "route_outcomes", "max_share")}))
json.dump(LOG, open(f"/tmp/trace_{arm}_{seed}.json", "w"))
