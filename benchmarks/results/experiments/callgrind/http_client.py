"""http_count.sh's client: N chat requests (the overhead scenario's "hi", max_tokens 8) over one
keep-alive connection, serially, blocking or streamed. usage: http_client.py PORT MODE N"""

from __future__ import annotations

import http.client
import json
import sys


def main(port: int, mode: str, requests: int) -> None:
    body: dict[str, object] = {"model": "zero", "max_tokens": 8,
                               "messages": [{"role": "user", "content": "hi"}]}
    if mode == "stream":
        body["stream"] = True
    payload = json.dumps(body).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(requests):
        connection.request("POST", "/v1/chat/completions", payload,
                           {"content-type": "application/json"})
        response = connection.getresponse()
        data = response.read()
        assert response.status == 200, (response.status, data[:200])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
