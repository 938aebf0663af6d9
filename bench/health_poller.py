"""Asks `GET PATH` every 50 ms until its stdin closes, then prints the latencies (ms) as a
JSON list. A process of its own, as a load balancer's health check is: threads of the
benchmark that sends the load would otherwise delay its polls in their own interpreter.

    python bench/health_poller.py PORT PATH
"""

import http.client
import json
import select
import sys
import time


def main() -> None:
    port, path = int(sys.argv[1]), sys.argv[2]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    while not select.select([sys.stdin], [], [], 0.05)[0]:  # readable: closed by the benchmark
        started = time.perf_counter()
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{path} answered {response.status}")
        latencies.append((time.perf_counter() - started) * 1000)
    print(json.dumps(latencies))


if __name__ == "__main__":
    main()
