#!/usr/bin/env python3
"""Write benches/mixed.jsonl: a mixed request workload for `ember batch` (arena utilization and
throughput). 48 requests: chat-formatted questions and plain continuations of varied length,
greedy and sampled, max_tokens 8..120, a few with stop strings. Deterministic."""
import json, os, random

random.seed(7)
here = os.path.dirname(os.path.abspath(__file__))
gpl = open(os.path.join(here, "..", "tests", "golden", "GPL-3.txt"), encoding="utf-8").read().split("\n\n")
questions = ["What is the capital of France?", "Write a haiku about the sea.", "Explain recursion in one sentence.",
             "List three primes.", "What is 12 * 7?", "Name a famous painter.", "How do plants make food?",
             "Translate 'good morning' to Spanish."]
with open(os.path.join(here, "mixed.jsonl"), "w", encoding="utf-8") as f:
    for i in range(48):
        if i % 2 == 0:
            q = random.choice(questions)
            prompt = f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
        else:
            para = random.choice([p for p in gpl if len(p) > 200])
            prompt = para[: random.randint(40, 600)]
        req = {"id": i, "prompt": prompt, "max_tokens": random.choice([8, 16, 32, 64, 96, 120])}
        if i % 3 == 0:
            req.update({"temperature": 0.7, "seed": i})
        if i % 7 == 0:
            req["stop"] = ["\n\n"]
        f.write(json.dumps(req) + "\n")
