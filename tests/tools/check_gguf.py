#!/usr/bin/env python3
"""Reads a GGUF file with gguf-py's GGUFReader and prints a JSON summary of it.

gguf-py is an implementation independent of Ember's; the writer test
(runtime/src/gguf/writer.rs) compares this summary with what it meant to write.

Usage: check_gguf.py FILE.gguf

Summary: version, tensor_count, kv_count, alignment, data_offset (absolute),
kvs {key: {"types": [value type ids, outer first], "value": contents}} (the
GGUF.* pseudo-fields excluded; gguf-py flattens nested arrays), and tensors
[{name, type (ggml id), shape (ne order), n_bytes, data_offset (absolute),
data (hex of the raw bytes)}].
"""

import json
import sys

import numpy as np
from gguf import GGUFReader


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: check_gguf.py FILE.gguf")
    reader = GGUFReader(sys.argv[1])
    fields = reader.fields
    kvs = {
        name: {"types": [int(t) for t in field.types], "value": field.contents()}
        for name, field in fields.items()
        if not name.startswith("GGUF.")
    }
    tensors = [
        {
            "name": t.name,
            "type": int(t.tensor_type),
            "shape": [int(d) for d in t.shape],
            "n_bytes": int(t.n_bytes),
            "data_offset": int(t.data_offset),
            "data": np.ascontiguousarray(t.data).tobytes().hex(),
        }
        for t in reader.tensors
    ]
    summary = {
        "version": int(fields["GGUF.version"].contents()),
        "tensor_count": int(fields["GGUF.tensor_count"].contents()),
        "kv_count": int(fields["GGUF.kv_count"].contents()),
        "alignment": int(reader.alignment),
        "data_offset": int(reader.data_offset),
        "kvs": kvs,
        "tensors": tensors,
    }
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
