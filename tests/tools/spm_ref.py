#!/usr/bin/env python3
"""Independent reference for llama.cpp's SentencePiece (SPM) tokenizer, used to check Ember's
`runtime/src/tokenizer/spm.rs`.

It follows llama.cpp's `llm_tokenizer_spm_session` and `llama_vocab::impl::tokenize` (SPM branch):
special tokens split out first (longest first; control/unknown only with parse_special), a space
prefix before a plain fragment that starts the text or follows a special token, ' ' -> U+2581,
then merges by highest score (ties: leftmost), and byte fallback to <0xXX> tokens.

Usage: python3 tests/tools/spm_ref.py > tests/tools/spm_synthetic.json
The JSON holds a synthetic vocabulary and the ids this reference gives for each case; the Rust
unit test `tokenizer::tests::spm_matches_python_reference` replays them.
"""
import heapq
import json

UNK, NORMAL, CONTROL, USER, BYTE = 2, 1, 3, 4, 6


def build_vocab():
    toks, types, scores = [], [], []

    def add(t, ty=NORMAL, sc=0.0):
        toks.append(t)
        types.append(ty)
        scores.append(sc)

    add("<unk>", UNK)
    add("<s>", CONTROL)
    add("</s>", CONTROL)
    for b in range(256):
        add("<0x%02X>" % b, BYTE)
    add("<|im_end|>", CONTROL)
    add("<tool>", USER)
    # Normal pieces; equal scores on purpose to exercise the leftmost tie rule.
    pieces = [
        ("\u2581", -1.0), ("h", -2.0), ("e", -2.0), ("l", -2.0), ("o", -2.0), ("w", -2.0),
        ("r", -2.0), ("d", -2.0), ("a", -2.0), ("b", -2.0), ("\u00e9", -3.0),
        ("he", -5.0), ("ll", -5.0), ("llo", -6.0), ("hell", -7.0), ("hello", -4.0),
        ("\u2581hello", -3.5), ("\u2581w", -6.0), ("or", -5.5), ("ld", -5.5),
        ("\u2581wor", -6.5), ("\u2581world", -3.0), ("ab", -4.0), ("ba", -4.0), ("aba", -4.5),
        ("bab", -4.5), ("\u2581a", -4.2), ("\u2581\u2581", -8.0), ("\u2581\u00e9", -2.5),
        ("x", -9.0),
    ]
    for t, s in pieces:
        add(t, NORMAL, s)
    return toks, types, scores


def spm_session(text, ids, scores, byte_id, unk):
    syms = []  # [start, n, prev, next]
    off = 0
    chars = list(text)
    starts = []
    for c in chars:
        starts.append(off)
        off += len(c)
    for i, c in enumerate(chars):
        syms.append([starts[i], len(c), i - 1, -1 if i == len(chars) - 1 else i + 1])
    heap = []
    rev_merge = {}

    def sym_text(i):
        return text[syms[i][0]:syms[i][0] + syms[i][1]]

    def try_add(left, right):
        if left == -1 or right == -1:
            return
        t = text[syms[left][0]:syms[left][0] + syms[left][1] + syms[right][1]]
        if t not in ids:
            return
        # max score first, then smallest left
        heapq.heappush(heap, (-scores[ids[t]], left, right, len(t)))
        rev_merge[t] = (left, right)

    for i in range(1, len(syms)):
        try_add(i - 1, i)
    while heap:
        _, left, right, size = heapq.heappop(heap)
        ls, rs = syms[left], syms[right]
        if ls[1] == 0 or rs[1] == 0 or ls[1] + rs[1] != size:
            continue
        ls[1] += rs[1]
        rs[1] = 0
        ls[3] = rs[3]
        if rs[3] >= 0:
            syms[rs[3]][2] = left
        try_add(ls[2], left)
        try_add(left, ls[3])

    out = []

    def resegment(i):
        t = sym_text(i)
        if t in ids:
            out.append(ids[t])
            return
        if t in rev_merge:
            a, b = rev_merge[t]
            resegment(a)
            resegment(b)
            return
        for byte in t.encode("utf-8"):
            out.append(byte_id.get(byte, unk))

    i = 0
    while i != -1 and syms:
        resegment(i)
        i = syms[i][3]
    return out


def tokenize(text, toks, types, scores, parse_special, add_bos, add_space_prefix=True):
    ids = {}
    for i, t in enumerate(toks):
        ids[t] = i
    byte_id = {}
    for i, t in enumerate(toks):
        if types[i] == BYTE:
            byte_id[int(t[3:5], 16)] = i
    specials = [i for i, ty in enumerate(types) if ty in (CONTROL, USER, UNK)]
    specials.sort(key=lambda i: (-len(toks[i].encode()), i))
    frags = [("text", text)] if text else []
    for sid in specials:
        if not parse_special and types[sid] in (CONTROL, UNK):
            continue
        needle = toks[sid]
        nxt = []
        for kind, val in frags:
            if kind != "text":
                nxt.append((kind, val))
                continue
            rest = val
            while needle in rest:
                pos = rest.index(needle)
                if pos > 0:
                    nxt.append(("text", rest[:pos]))
                nxt.append(("tok", sid))
                rest = rest[pos + len(needle):]
            if rest:
                nxt.append(("text", rest))
        frags = nxt
    out = [1] if add_bos else []
    prev_special = True
    for kind, val in frags:
        if kind == "text":
            t = (" " if add_space_prefix and prev_special else "") + val
            t = t.replace(" ", "\u2581")
            out += spm_session(t, ids, scores, byte_id, 0)
            prev_special = False
        else:
            out.append(val)
            prev_special = True
    return out


CASES = [
    "hello world",
    "hello",
    "  hello   world ",
    "abababa",
    "babab a",
    "hello<|im_end|>world",
    "x<tool>hello<tool>",
    "é and ü and 😀",
    "hellohello",
    "\n\tq",
    "",
    "<|im_end|>",
    "wor ld",
]


def main():
    toks, types, scores = build_vocab()
    cases = []
    for text in CASES:
        cases.append({
            "text": text,
            "bos_special": tokenize(text, toks, types, scores, True, True),
            "plain": tokenize(text, toks, types, scores, False, False),
        })
    print(json.dumps({"tokens": toks, "token_types": types, "scores": scores, "cases": cases},
                     ensure_ascii=False, indent=0))


if __name__ == "__main__":
    main()
