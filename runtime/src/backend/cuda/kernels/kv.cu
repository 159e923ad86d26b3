// RoPE on the new queries and keys, and the store of the new keys and values into their paged
// slots (f16), in one pass per token. cos/sin come from the tables the CPU path uses (ggml's
// rope_cache_init order), so the rotation is the CPU's to the bit.
//
// Warning: NORM and NEOX pairing are not interchangeable; the wrong one corrupts the output
// silently. Both rotate with the same explicit fused multiply-adds as the CPU reference (and
// ggml's rotate_pairs): NORM the pairs (x[2i], x[2i+1]), NEOX the pairs (x[i], x[i + d/2]).
__device__ __forceinline__ void rope_pair(float* h, int i, int half, int neox, float c, float s) {
    if (neox) {
        const float x0 = h[i], x1 = h[i + half];
        h[i] = fmaf(x0, c, -(x1 * s));
        h[i + half] = fmaf(x0, s, x1 * c);
    } else {
        const float x0 = h[2 * i], x1 = h[2 * i + 1];
        h[2 * i] = fmaf(x0, c, -(x1 * s));
        h[2 * i + 1] = fmaf(x0, s, x1 * c);
    }
}

// One thread block per token.
extern "C" __global__ void rope_kv_write(const RopeKvParams p) {
    const int t = blockIdx.x;
    if (t >= p.n_tok) return;
    const int d = p.head_dim, half = d / 2;
    const int pos = p.tok_pos[t];
    const float* cs = p.cos + (i64)pos * half;
    const float* sn = p.sin + (i64)pos * half;
    float* q = p.q + (i64)t * p.n_head * d;
    float* k = p.k + (i64)t * p.n_head_kv * d;
    const float* v = p.v + (i64)t * p.n_head_kv * d;
    for (int i = threadIdx.x; i < p.n_head * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        float* qh = q + h * d;
        rope_pair(qh, j, half, p.neox, cs[j], sn[j]);
        // Gemma scales q here (1 otherwise); ggml's attention multiplies an f16 copy of Q with
        // the f16 K cache.
        const int a = p.neox ? j : 2 * j, b = p.neox ? j + half : 2 * j + 1;
        qh[a] = h2f(f2h(qh[a] * p.q_scale));
        qh[b] = h2f(f2h(qh[b] * p.q_scale));
    }
    const i64 tile = (i64)p.block_size * d;
    const i64 base = ((i64)p.tok_block[t] * p.n_layer + p.layer) * p.n_head_kv * tile
                   + (i64)(pos % p.block_size) * d;
    for (int i = threadIdx.x; i < p.n_head_kv * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        float* kh = k + h * d;
        rope_pair(kh, j, half, p.neox, cs[j], sn[j]);
        const int a = p.neox ? j : 2 * j, b = p.neox ? j + half : 2 * j + 1;
        p.kc[base + h * tile + a] = f2h(kh[a]);
        p.kc[base + h * tile + b] = f2h(kh[b]);
    }
    for (int i = threadIdx.x; i < p.n_head_kv * d; i += blockDim.x) {
        const int h = i / d, e = i % d;
        p.vc[base + h * tile + e] = f2h(v[i]);
    }
}

// Context shift: the keys of one (block, layer), every head and slot, rotated back by `delta`
// positions (RoPE by -delta: cos of delta, sin negated), in f32 and rounded back to f16, as the
// CPU does. One thread block per (head, slot), one thread per pair.
extern "C" __global__ void shift_keys(const ShiftKeysParams p) {
    const int d = p.head_dim, half = d / 2;
    const int h = blockIdx.x / p.block_size, slot = blockIdx.x % p.block_size;
    const i64 tile = (i64)p.block_size * d;
    u16* k = p.kc + (((i64)p.block * p.n_layer + p.layer) * p.n_head_kv + h) * tile
           + (i64)slot * d;
    const float* cs = p.cos + (i64)p.delta * half;
    const float* sn = p.sin + (i64)p.delta * half;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        const int a = p.neox ? j : 2 * j, b = p.neox ? j + half : 2 * j + 1;
        float pair[2] = {h2f(k[a]), h2f(k[b])};
        // rope_pair on the pair alone: (x0, x1) at (0, 1) in NORM order.
        rope_pair(pair, 0, 1, 0, cs[j], -sn[j]);
        k[a] = f2h(pair[0]);
        k[b] = f2h(pair[1]);
    }
}

// Copy the first slots of block `src` into block `dst`, every layer and head (copy-on-write of
// a shared block). One thread block per (layer, head) tile.
extern "C" __global__ void copy_slots(const CopySlotsParams p) {
    const i64 s = ((i64)p.src * p.n_tiles + blockIdx.x) * p.tile;
    const i64 d = ((i64)p.dst * p.n_tiles + blockIdx.x) * p.tile;
    for (int i = threadIdx.x; i < p.n_elems; i += blockDim.x) {
        p.kc[d + i] = p.kc[s + i];
        p.vc[d + i] = p.vc[s + i];
    }
}
