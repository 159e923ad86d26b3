#!/usr/bin/env python3
"""Parse the raw outputs of scripts/bench/bench-vs-llama.sh and write the side-by-side table.

    bench_table.py show FILE   one line with the figures of one raw output (progress)
    bench_table.py table DIR   the Markdown table for a run directory (medians over rounds)

Raw outputs, named r<round>-<tool>-<kind>[-<B>].<ext> in DIR beside meta.json:
  llama-single.json     `llama-bench -o json`: a list of tests with n_prompt, n_gen, avg_ts
  llama-batched-B.jsonl `llama-batched-bench --output-format jsonl`: pp, tg, pl, speed_pp/_tg
  ember-single.json     `ember bench --json`: prefill_tok_s, decode_tok_s
  ember-batched-B.json  `ember bench --concurrency B --json`: prefill_tok_s, decode_tok_s
Every parse error names the file and what was missing.
"""

import json
import re
import statistics
import sys
from pathlib import Path

FA = {-1: "auto", 0: "off", 1: "on"}
NAME = re.compile(r"^r(\d+)-(llama|ember)-(single|batched)(?:-(\d+))?\.jsonl?$")


class ParseError(Exception):
    pass


def json_objects(path):
    """The JSON values in a file: a whole-file JSON document, or one object per line."""
    text = path.read_text()
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        pass
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ParseError(f"{path}: bad JSON line {line[:80]!r}: {e}") from None
    if not out:
        raise ParseError(f"{path}: no JSON output (see {path.name}.err)")
    return out


def field(obj, key, path):
    if key not in obj:
        raise ParseError(f"{path}: no {key!r} in {json.dumps(obj)[:200]}")
    return obj[key]


def parse(path, meta=None):
    """Measurements of one raw output: {measurement name: tok/s}, plus llama.cpp build facts."""
    m = NAME.match(path.name)
    if not m:
        raise ParseError(f"{path}: not a raw output name (r<round>-<tool>-<kind>[-B].json)")
    tool, kind = m.group(2), m.group(3)
    objs = json_objects(path)
    res, info = {}, {}
    if tool == "llama" and kind == "single":
        tests = objs[0] if isinstance(objs[0], list) else objs
        for t in tests:
            n_prompt, n_gen = field(t, "n_prompt", path), field(t, "n_gen", path)
            name = f"pp{n_prompt}" if n_gen == 0 else f"tg{n_gen}"
            res[name] = float(field(t, "avg_ts", path))
            for k in ("build_commit", "build_number", "cpu_info", "backends", "n_threads",
                      "n_batch", "n_ubatch", "type_k", "type_v", "flash_attn", "model_type"):
                if k in t:
                    info[k] = t[k]
    elif tool == "llama":
        for t in objs:
            b = field(t, "pl", path)
            res[f"S_PP B={b}"] = float(field(t, "speed_pp", path))
            res[f"S_TG B={b}"] = float(field(t, "speed_tg", path))
            info["batched"] = f"pp {t.get('pp')}, tg {t.get('tg')}, n_kv_max {t.get('n_kv_max')}, " \
                f"n_batch {t.get('n_batch')}, n_ubatch {t.get('n_ubatch')}, " \
                f"flash_attn {t.get('flash_attn')}"
    elif kind == "single":
        o = objs[0]
        res[f"pp{field(o, 'n_prompt', path)}"] = float(field(o, "prefill_tok_s", path))
        res[f"tg{field(o, 'n_gen', path)}"] = float(field(o, "decode_tok_s", path))
    else:
        o = objs[0]
        b = field(o, "concurrency", path)
        res[f"S_PP B={b}"] = float(field(o, "prefill_tok_s", path))
        res[f"S_TG B={b}"] = float(field(o, "decode_tok_s", path))
        if o.get("preemptions"):
            info["preemptions"] = o["preemptions"]
    if not res:
        raise ParseError(f"{path}: no measurements in the output")
    return int(m.group(1)), tool, res, info


def system_info(run_dir):
    """llama.cpp's 'system_info' CPU feature line, from the stderr of a batched run."""
    for err in sorted(run_dir.glob("*-llama-*.err")):
        for line in err.read_text(errors="replace").splitlines():
            if "system_info" in line or "CPU :" in line:
                i = line.find("CPU :")
                if i >= 0:
                    feats = [f.strip() for f in line[i + 5:].split("|")]
                    on = [f.split("=")[0].strip() for f in feats if f.endswith("= 1")]
                    return ", ".join(on)
    return None


def order_key(name):
    """pp, tg, then S_TG by B, then S_PP by B."""
    m = re.match(r"(pp|tg)(\d+)$", name)
    if m:
        return (0 if m.group(1) == "pp" else 1, int(m.group(2)))
    m = re.match(r"S_(TG|PP) B=(\d+)$", name)
    if m:
        return (2 if m.group(1) == "TG" else 3, int(m.group(2)))
    return (9, 0)


def cell(values):
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.1f}–{max(values):.1f})"


def is_batch1_decode(name):
    return name.startswith("tg") or name == "S_TG B=1"


def table(run_dir):
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    samples = {}  # (measurement, round) -> {tool: tok/s}
    llama_info, preempted = {}, 0
    for path in sorted(run_dir.iterdir()):
        if not NAME.match(path.name):
            continue
        rnd, tool, res, info = parse(path)
        if tool == "llama":
            llama_info.update(info)
        preempted += info.get("preemptions", 0)
        for name, v in res.items():
            samples.setdefault((name, rnd), {})[tool] = v
    if not samples:
        raise ParseError(f"{run_dir}: no raw outputs")
    names = sorted({n for n, _ in samples}, key=order_key)
    bw = meta.get("bw_limit")
    out = []
    stamp = meta.get("stamp", run_dir.name)
    out.append(f"# Ember vs llama.cpp, side by side ({stamp})")
    out.append("")
    out.append(f"- machine: {meta.get('cpu', '?')}, {meta.get('nproc', '?')} CPUs "
               f"(host {meta.get('host', '?')}); threads: {meta.get('threads', '?')} for both")
    model = Path(meta.get("model", "?")).name
    out.append(f"- model: `{model}`")
    isa = system_info(run_dir) or meta.get("llama_isa")
    commit = llama_info.get("build_commit", "?")
    out.append(f"- llama.cpp: {commit} (build {llama_info.get('build_number', '?')}), from the "
               f"PyPI sdist of llama-cpp-python {meta.get('llama_cpp_python', '?')}, Release, "
               f"ggml-cpu ISA: {isa or 'unknown'}; "
               f"flash attention {FA.get(llama_info.get('flash_attn'), '?')}, "
               f"KV {llama_info.get('type_k', '?')}/{llama_info.get('type_v', '?')}")
    if meta.get("llama_cmake_args"):
        out.append(f"- llama.cpp extra cmake arguments: `{meta['llama_cmake_args']}`")
    if meta.get("llama_build_seconds") is not None:
        out.append(f"- llama.cpp build time (2 targets): {meta['llama_build_seconds']} s")
    ember_cpu = meta.get("ember_cpu") or ""
    path = f"EMBER_CPU={ember_cpu}" if ember_cpu else "EMBER_CPU unset"
    out.append(f"- Ember: {meta.get('ember_commit', '?')}, release build, {path}")
    n_rounds = len({r for _, r in samples})
    out.append(f"- {n_rounds} round(s), llama.cpp and Ember back to back for each measurement, "
               "the order alternating between rounds; cells: median (min–max) tok/s; ratio: "
               "median over rounds of Ember ÷ llama.cpp in the same round")
    t, n, npp, ntg = (meta.get(k, "?") for k in ("threads", "n_gen", "npp", "ntg"))
    out.append(f"- commands: `llama-bench -t {t} -p {meta.get('n_prompt', '?')} -n {n} -r 1 "
               f"-o json` vs `ember bench -t {t} -p {meta.get('n_prompt', '?')} -n {n} -r 1 "
               f"--json`; `llama-batched-bench -t {t} -c B*{npp + ntg if isinstance(ntg, int) else '?'} "
               f"-b 2048 -ub 512 "
               f"-npp {npp} -ntg {ntg} -npl B` vs `ember bench -t {t} --concurrency B "
               f"-p {npp} -n {ntg + 1 if isinstance(ntg, int) else '?'} --json` "
               f"(both: {ntg} batched decode steps after a {npp}-token prefill per sequence)")
    if meta.get("load_before"):
        out.append(f"- load average (1/5/15 min) before: {meta['load_before']}, after: "
                   f"{meta.get('load_after', '?')} (the benchmark itself adds about "
                   f"{meta.get('threads', '?')}; more means other work shared the CPUs and the "
                   f"figures are noisy); measuring took {meta.get('measure_seconds', '?')} s")
    if preempted:
        out.append(f"- note: Ember's engine preempted sequences {preempted} times in the "
                   "batched runs (its KV arena was too small)")
    out.append("")
    head = "| measurement | llama.cpp tok/s | Ember tok/s | Ember / llama.cpp |"
    rule = "| --- | ---: | ---: | ---: |"
    if bw:
        head += f" % of bandwidth limit ({bw:g} tok/s), llama.cpp / Ember |"
        rule += " ---: |"
    out += [head, rule]
    for name in names:
        rounds = sorted(r for n, r in samples if n == name)
        per = [samples[(name, r)] for r in rounds]
        lv = [p["llama"] for p in per if "llama" in p]
        ev = [p["ember"] for p in per if "ember" in p]
        ratios = [p["ember"] / p["llama"] for p in per if "llama" in p and "ember" in p]
        label = name
        if name.startswith("S_"):
            label = f"{name[:4]} at {name.split('=')[1]} seq"
        ratio = f"{statistics.median(ratios):.2f}×" if ratios else "–"
        row = f"| {label} | {cell(lv) if lv else '–'} | {cell(ev) if ev else '–'} | {ratio} |"
        if bw:
            if is_batch1_decode(name) and lv and ev:
                row += f" {100 * statistics.median(lv) / bw:.0f}% / " \
                       f"{100 * statistics.median(ev) / bw:.0f}% |"
            else:
                row += " |"
        out.append(row)
    out.append("")
    return "\n".join(out)


def main(argv):
    if len(argv) != 3 or argv[1] not in ("show", "table"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        if argv[1] == "show":
            path = Path(argv[2])
            rnd, tool, res, _ = parse(path)
            figs = ", ".join(f"{k} {v:.2f}" for k, v in sorted(res.items(),
                                                               key=lambda kv: order_key(kv[0])))
            print(f"round {rnd} {'llama.cpp' if tool == 'llama' else 'Ember':9}: {figs} tok/s")
        else:
            print(table(Path(argv[2])))
    except (ParseError, OSError, json.JSONDecodeError) as e:
        print(f"bench_table: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
