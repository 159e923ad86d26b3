#!/usr/bin/env python3
"""Per-tensor (type, sha256 of the data) of a GGUF file, plus its general.file_type, as JSON.

Used to record what llama-quantize writes (scripts/golden/kquant-golden.sh) and to compare
`ember convert`'s output with it (runtime/tests/convert_kquants.rs). Standard library only.
"""
import hashlib, json, struct, sys

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
# ggml type id -> (name, block size, bytes per block)
TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
         6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
         12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
         15: ("Q8_K", 256, 292), 30: ("BF16", 1, 2)}


def main(path):
    b = open(path, "rb").read()
    at = 0

    def take(fmt):
        nonlocal at
        v = struct.unpack_from(fmt, b, at)
        at += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal at
        n = take("<Q")
        s = b[at:at + n].decode("utf-8", "replace")
        at += n
        return s

    def value(t):
        if t == 8:
            return string()
        if t == 9:
            et, n = take("<I"), take("<Q")
            return [value(et) for _ in range(n)]
        return take(SCALARS[t])

    assert b[:4] == b"GGUF", "not a GGUF file"
    at = 4
    _version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    meta = {}
    for _ in range(n_kv):
        k = string()
        meta[k] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        ty, off = take("<I"), take("<Q")
        infos.append((name, dims, ty, off))
    align = meta.get("general.alignment", 32)
    base = (at + align - 1) // align * align
    tensors = {}
    for name, dims, ty, off in infos:
        tname, bs, size = TYPES[ty]
        n = 1
        for d in dims:
            n *= d
        data = b[base + off:base + off + n // bs * size]
        tensors[name] = [tname, hashlib.sha256(data).hexdigest()]
    out = {"file_type": meta.get("general.file_type"), "tensors": tensors}
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
