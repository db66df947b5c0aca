wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = [[{"model": "zero", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}]]
