wrk.method = "POST"
wrk.headers["content-type"] = "application/json"
wrk.body = [[{"model": "zero", "stream": true, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}]]
