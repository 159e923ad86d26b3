"""A bounded load test of an OpenAI-compatible server (ember serve, llama-server) on loopback.

usage: serve_load.py URL CONCURRENCY REQUESTS MAX_TOKENS

CONCURRENCY clients (threads, one keep-alive connection each, Python's standard library only)
send REQUESTS chat completions in all (greedy, `max_tokens` MAX_TOKENS, `ignore_eos` so every
answer has the same length, prompts cycling through a fixed list) and stop. Prints one JSON
line: requests/s, p50/p99 latency (s), generated tokens/s, errors.
"""

import http.client
import json
import sys
import threading
import time
import urllib.parse

url, conc, total, max_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
u = urllib.parse.urlparse(url)
PROMPTS = [
    "Write a short poem about the sea.",
    "Explain what a CPU cache is.",
    "Give three tips for learning a language.",
    "What is the capital of France?",
    "Describe a sunrise in the mountains.",
    "How do airplanes fly?",
    "Summarize the plot of a detective story.",
    "List some healthy breakfast ideas.",
]
lock = threading.Lock()
next_i = 0
latencies, tokens, errors = [], [], []


def client():
    global next_i
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    while True:
        with lock:
            if next_i >= total:
                break
            i = next_i
            next_i += 1
        body = json.dumps({
            "messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        })
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            dt = time.perf_counter() - t0
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
            usage = json.loads(data)["usage"]
            with lock:
                latencies.append(dt)
                tokens.append(usage["completion_tokens"])
        except Exception as e:  # counted, then a fresh connection
            with lock:
                errors.append(repr(e))
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    conn.close()


t0 = time.perf_counter()
threads = [threading.Thread(target=client) for _ in range(conc)]
for t in threads:
    t.start()
for t in threads:
    t.join()
wall = time.perf_counter() - t0
lat = sorted(latencies)


def pct(p):
    return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")


print(json.dumps({
    "concurrency": conc, "requests": len(lat), "errors": len(errors), "wall_s": wall,
    "req_s": len(lat) / wall, "p50_s": pct(50), "p99_s": pct(99),
    "gen_tok_s": sum(tokens) / wall, "first_error": errors[0] if errors else None,
}))
