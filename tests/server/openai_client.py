"""`ember serve` driven by the official `openai` Python client (cli/tests/server.rs runs it).

usage: openai_client.py BASE_URL API_KEY EXPECTED.json

EXPECTED.json holds what `ember generate` / `ember chat` printed for the same greedy requests:
{"completions": {prompt: text}, "chat": {"prompt": ..., "text": ...}, "max_tokens": N}.
Every check raises on failure; the last line printed is "ok".
"""

import json
import sys
import threading
import time
import urllib.request

import httpx
import openai

base, key, expected_path = sys.argv[1], sys.argv[2], sys.argv[3]
with open(expected_path) as f:
    want = json.load(f)
N = want["max_tokens"]
client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def metrics():
    req = urllib.request.Request(base + "/metrics", headers={"Authorization": f"Bearer {key}"})
    text = urllib.request.urlopen(req, timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split(" ")
            out[name] = float(value)
    return out


# The model list.
models = client.models.list().data
check(len(models) == 1, f"one model, got {models}")
model = models[0].id

# Completions, whole and streamed, equal `ember generate`'s greedy text.
prompts = list(want["completions"])
for p in prompts:
    r = client.completions.create(model=model, prompt=p, max_tokens=N, temperature=0)
    check(r.choices[0].text == want["completions"][p], f"completion of {p!r}: {r.choices[0].text!r}")
    check(r.usage.completion_tokens <= N and r.usage.prompt_tokens > 0, f"usage {r.usage}")
    check(r.choices[0].finish_reason in ("stop", "length"), r.choices[0].finish_reason)
    s = client.completions.create(model=model, prompt=p, max_tokens=N, temperature=0, stream=True)
    pieces, finish = [], None
    for chunk in s:
        pieces.append(chunk.choices[0].text)
        finish = chunk.choices[0].finish_reason or finish
    check("".join(pieces) == want["completions"][p], f"streamed completion {pieces!r}")
    check(finish == r.choices[0].finish_reason, f"stream finish {finish}")

# Chat, whole and streamed, equals `ember chat`'s.
msgs = [{"role": "user", "content": want["chat"]["prompt"]}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=N, temperature=0)
check(r.choices[0].message.content == want["chat"]["text"], f"chat: {r.choices[0].message!r}")
check(r.choices[0].message.role == "assistant", "role")
check(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "usage sum")
s = client.chat.completions.create(
    model=model, messages=msgs, max_tokens=N, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
text, usage = "", None
for chunk in s:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        text += c.delta.content or ""
check(text == want["chat"]["text"], f"streamed chat: {text!r}")
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"usage {usage}")

# n = 2: greedy choices are equal; sampled ones (seeded) are reproducible.
r = client.completions.create(model=model, prompt=prompts[0], max_tokens=N, temperature=0, n=2)
check([c.text for c in r.choices] == [want["completions"][prompts[0]]] * 2, f"n=2 greedy {r.choices}")
a = client.chat.completions.create(model=model, messages=msgs, max_tokens=N, temperature=0.9, n=2, seed=7)
b = client.chat.completions.create(model=model, messages=msgs, max_tokens=N, temperature=0.9, n=2, seed=7)
check(len(a.choices) == 2 and [c.index for c in a.choices] == [0, 1], "two choices")
check([c.message.content for c in a.choices] == [c.message.content for c in b.choices], "seeded n=2")

# Stop strings: the text ends before the first stop string, finish_reason "stop".
full = want["completions"][prompts[0]]
stop = next(ch for ch in full.strip() if ch.isalpha())  # a character the greedy text holds
r = client.completions.create(model=model, prompt=prompts[0], max_tokens=N, temperature=0, stop=[stop])
check(r.choices[0].text == full[: full.index(stop)], f"stop {stop!r}: {r.choices[0].text!r}")
check(r.choices[0].finish_reason == "stop", r.choices[0].finish_reason)

# Structured output: response_format json_schema gives a document that parses and fits.
schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}},
          "required": ["city"], "additionalProperties": False}
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Name a city as JSON."}], max_tokens=64,
    temperature=0, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
)
doc = json.loads(r.choices[0].message.content)
check(set(doc) == {"city"} and isinstance(doc["city"], str), f"schema output {doc}")

# 16 concurrent streaming clients: each greedy output equals `ember generate`'s.
results, errors = {}, []


def worker(i):
    try:
        p = prompts[i % len(prompts)]
        c = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)
        s = c.completions.create(model=model, prompt=p, max_tokens=N, temperature=0, stream=True)
        results[i] = (p, "".join(ch.choices[0].text for ch in s))
    except Exception as e:  # reported below
        errors.append(repr(e))


threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check(not errors, f"concurrent clients failed: {errors}")
for i, (p, text) in results.items():
    check(text == want["completions"][p], f"client {i}: {text!r} != {want['completions'][p]!r}")
check(len(results) == 16, "16 results")

# A client that disconnects mid-stream: its request is cancelled and its blocks freed.
before = metrics()
with httpx.Client(timeout=60) as h:
    with h.stream("POST", base + "/v1/completions", headers={"Authorization": f"Bearer {key}"},
                  json={"prompt": "Once upon a time", "max_tokens": 900, "ignore_eos": True,
                        "stream": True}) as resp:
        check(resp.status_code == 200, resp.status_code)
        lines = resp.iter_lines()
        got = 0
        for line in lines:
            if line.startswith("data: "):
                got += 1
                if got == 3:
                    break
        check(metrics()["ember_kv_blocks_used"] > 0, "blocks held while streaming")
deadline = time.time() + 10
while True:
    m = metrics()
    if m["ember_kv_blocks_used"] == 0 and m["ember_requests_cancelled_total"] > before["ember_requests_cancelled_total"]:
        break
    check(time.time() < deadline, f"blocks not freed after a disconnect: {m}")
    time.sleep(0.05)
check(m["ember_requests_running"] == 0, f"{m}")

# Malformed requests: 400 with an OpenAI error object, through the client and raw.
try:
    client.chat.completions.create(model=model, messages=msgs, temperature=-1)
    check(False, "negative temperature accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and "temperature" in str(e), str(e))
try:
    client.chat.completions.create(model=model, messages=[])
    check(False, "empty messages accepted")
except openai.BadRequestError as e:
    check(e.body is not None and "messages" in json.dumps(e.body), str(e.body))
auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
r = httpx.post(base + "/v1/completions", content=b'{"prompt": "x", ', headers=auth)
check(r.status_code == 400 and "error" in r.json() and "message" in r.json()["error"], r.text)
r = httpx.post(base + "/v1/completions", content=b"[1, 2]", headers=auth)
check(r.status_code == 400, r.text)
try:
    client.completions.create(model=model, prompt="hi", max_tokens=10**9)
    check(False, "max_tokens beyond the context accepted")
except openai.BadRequestError as e:
    check(e.code == "context_length_exceeded", str(e.body))

# The API key: required on /v1, not on /health.
r = httpx.post(base + "/v1/completions", json={"prompt": "x"})
check(r.status_code == 401, r.text)
r = httpx.get(base + "/health")
check(r.status_code == 200 and r.json() == {"status": "ok"}, r.text)

# Oversize body: 413 (the server runs with --max-body 65536).
r = httpx.post(base + "/v1/completions", content=b"{" + b" " * 100_000 + b"}", headers=auth)
check(r.status_code == 413, f"{r.status_code} {r.text}")

# Still serving after all of that.
r = client.completions.create(model=model, prompt=prompts[0], max_tokens=N, temperature=0)
check(r.choices[0].text == want["completions"][prompts[0]], "serving after errors")
print("ok")
