// RoPE on the new queries and keys, and the store of the new keys and values into their paged
// slots, in one pass per token. cos/sin come from the tables the CPU path uses (ggml's
// rope_cache_init order), so the rotation is the CPU's to the bit.
//
// Rows are stored as the engine's KV type (ember_kernels::kv): f16, or ggml's Q8_0 / Q4_0
// blocks of 32, quantized exactly as the CPU's reference quantizers do. Quantized rows of heads
// that are multiples of 64 are stored turned by Walsh-Hadamard blocks (q and k by `rot_k`, v by
// `rot_v`; attention's output is turned back by `hadamard_rows`), with the CPU's butterflies in
// the CPU's order, so the stored bytes equal the CPU's.
//
// Warning: NORM and NEOX pairing are not interchangeable; the wrong one corrupts the output
// silently. Both rotate with the same explicit fused multiply-adds as the CPU reference (and
// ggml's rotate_pairs): NORM the pairs (x[2i], x[2i+1]), NEOX the pairs (x[i], x[i + d/2]).

#define KV_F16 0
#define KV_Q8_0 1
#define KV_Q4_0 2

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

// Elements (e, e + 1) of a stored row (`e` even), exactly as the CPU reads them back: f16, or
// `d * q` (Q8_0) and `d * (q - 8)` (Q4_0) in f32, exact products.
__device__ __forceinline__ void kv_pair(const u16* row, int kt, int e, float& x, float& y) {
    if (kt == KV_F16) {
        const u32 w = *(const u32*)(row + e);
        x = h2f((u16)(w & 0xffff));
        y = h2f((u16)(w >> 16));
    } else if (kt == KV_Q8_0) {
        const u16* b = row + (e >> 5) * 17;
        const float d = h2f(b[0]);
        const u16 w = b[1 + ((e & 31) >> 1)];
        x = (float)(int)(signed char)(w & 0xff) * d;
        y = (float)(int)(signed char)(w >> 8) * d;
    } else {
        const u16* b = row + (e >> 5) * 9;
        const float d = h2f(b[0]);
        const int j = e & 31, hi = j >= 16;
        const u16 w = b[1 + ((j & 15) >> 1)];
        const int lo_byte = w & 0xff, hi_byte = w >> 8;
        x = (float)(((hi ? lo_byte >> 4 : lo_byte) & 15) - 8) * d;
        y = (float)(((hi ? hi_byte >> 4 : hi_byte) & 15) - 8) * d;
    }
}

// Store one row of `d` f32 elements as kind `kt` (one thread per 32-block for the quantized
// kinds, as ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref: roundf and truncation as
// the CPU reference). Threads `tid` of `nt` share the row.
__device__ void kv_store_row(u16* row, const float* x, int d, int kt, int tid, int nt) {
    if (kt == KV_F16) {
        for (int e = tid; e < d; e += nt) row[e] = f2h(x[e]);
        return;
    }
    for (int blk = tid; blk < d / 32; blk += nt) {
        const float* v = x + 32 * blk;
        if (kt == KV_Q8_0) {
            float amax = 0.0f;
            for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(v[i]));
            const float dd = amax / 127.0f;
            const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
            u16* b = row + 17 * blk;
            b[0] = f2h(dd);
            for (int i = 0; i < 16; ++i) {
                const int q0 = (int)roundf(v[2 * i] * id), q1 = (int)roundf(v[2 * i + 1] * id);
                b[1 + i] = (u16)((q0 & 0xff) | ((q1 & 0xff) << 8));
            }
        } else {
            float amax = 0.0f, mx = 0.0f;
            for (int i = 0; i < 32; ++i) {
                if (amax < fabsf(v[i])) {
                    amax = fabsf(v[i]);
                    mx = v[i];
                }
            }
            const float dd = mx / -8.0f;
            const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
            u16* b = row + 9 * blk;
            b[0] = f2h(dd);
            int q[32];
            for (int i = 0; i < 32; ++i) q[i] = min(15, (int)(signed char)(int)(v[i] * id + 8.5f));
            for (int i = 0; i < 8; ++i) {
                const int b0 = q[2 * i] | (q[2 * i + 16] << 4);
                const int b1 = q[2 * i + 1] | (q[2 * i + 17] << 4);
                b[1 + i] = (u16)(b0 | (b1 << 8));
            }
        }
    }
}

// One quantized 32-block stored by a warp, lane i holding element i (`v`): the same numbers as
// kv_store_row's serial loop (the largest |v| by a shuffle reduction, the first such element
// for Q4_0's signed maximum, as the CPU's scan keeps it), quants packed by shuffles.
__device__ __forceinline__ void warp_store_block(u16* b, float v, int kt, int lane) {
    const unsigned full = 0xffffffffu;
    if (kt == KV_Q8_0) {
        float amax = fabsf(v);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(full, amax, o));
        const float dd = amax / 127.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        const int q = (int)roundf(v * id);
        const int qn = __shfl_down_sync(full, q, 1);
        if (lane == 0) b[0] = f2h(dd);
        if ((lane & 1) == 0) b[1 + lane / 2] = (u16)((q & 0xff) | ((qn & 0xff) << 8));
    } else {
        float a = fabsf(v);
        int at = lane;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ao = __shfl_xor_sync(full, a, o);
            const int io = __shfl_xor_sync(full, at, o);
            if (ao > a || (ao == a && io < at)) {
                a = ao;
                at = io;
            }
        }
        const float picked = __shfl_sync(full, v, at);
        const float mx = a > 0.0f ? picked : 0.0f; // an all-zero block keeps the scan's +0
        const float dd = mx / -8.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        const int q = min(15, (int)(v * id + 8.5f));
        const int byte = q | (__shfl_down_sync(full, q, 16) << 4);
        const int next = __shfl_down_sync(full, byte, 1);
        if (lane == 0) b[0] = f2h(dd);
        if (lane < 16 && (lane & 1) == 0) b[1 + lane / 2] = (u16)((byte & 0xff) | ((next & 0xff) << 8));
    }
}

// `x` (rows of `len` elements, `len` a multiple of `n`) turned by Walsh-Hadamard blocks of
// `n`, by the threads of one thread block: the CPU's butterflies (a + c, a - c) stage by
// stage, then the scale 1/sqrt(n). Ends with __syncthreads; call from every thread.
__device__ void block_hadamard(float* x, int len, int n) {
    const int pairs = len / 2, hn = n / 2;
    for (int h = 1; h < n; h *= 2) {
        __syncthreads();
        for (int i = threadIdx.x; i < pairs; i += blockDim.x) {
            const int base = (i / hn) * n, j = i % hn;
            const int at = base + (j / h) * 2 * h + (j % h);
            const float a = x[at], c = x[at + h];
            x[at] = a + c;
            x[at + h] = a - c;
        }
    }
    __syncthreads();
    const float scale = 1.0f / sqrtf((float)n);
    for (int i = threadIdx.x; i < len; i += blockDim.x) x[i] *= scale;
    __syncthreads();
}

// One thread block per token, or (without rotations, gridDim.y = n_head_kv) per token and KV
// head, with the query heads that share it: a lone token's RoPE is then spread over as many
// blocks as KV heads instead of one block's loop.
extern "C" __global__ void rope_kv_write(const RopeKvParams p) {
    PDL_ENTRY();
    const int t = blockIdx.x;
    if (t >= p.n_tok) return;
    const int d = p.head_dim, half = d / 2;
    const int pos = p.tok_pos[t];
    const float* cs = p.cos + (i64)pos * half;
    const float* sn = p.sin + (i64)pos * half;
    // This block's query heads [nq * y, nq * (y + 1)) and KV heads [nkv * y, nkv * (y + 1)).
    const int nq = p.n_head / gridDim.y, nkv = p.n_head_kv / gridDim.y;
    float* q = p.q + ((i64)t * p.n_head + (i64)nq * blockIdx.y) * d;
    float* k = p.k + ((i64)t * p.n_head_kv + (i64)nkv * blockIdx.y) * d;
    float* v = p.v + ((i64)t * p.n_head_kv + (i64)nkv * blockIdx.y) * d;
    // Gemma scales q after RoPE (1 otherwise); ggml's one-query attention multiplies an f16 copy
    // of Q with the f16 K cache, its tiled path (passes of 64+ tokens) keeps Q in f32.
    const bool rot = p.rot_k > 0 || p.rot_v > 0;
    for (int i = threadIdx.x; i < nq * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        float* qh = q + h * d;
        rope_pair(qh, j, half, p.neox, cs[j], sn[j]);
        if (!rot) {
            // This thread's pair only: scaled (and rounded) in place without another pass.
            const int e0 = p.neox ? j : 2 * j, e1 = p.neox ? j + half : 2 * j + 1;
            const float x0 = qh[e0] * p.q_scale, x1 = qh[e1] * p.q_scale;
            qh[e0] = p.round_q ? h2f(f2h(x0)) : x0;
            qh[e1] = p.round_q ? h2f(f2h(x1)) : x1;
        }
    }
    for (int i = threadIdx.x; i < nkv * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        rope_pair(k + h * d, j, half, p.neox, cs[j], sn[j]);
    }
    if (p.rot_k > 0) {
        block_hadamard(q, nq * d, p.rot_k);
        block_hadamard(k, nkv * d, p.rot_k);
    }
    if (p.rot_v > 0) block_hadamard(v, nkv * d, p.rot_v);
    __syncthreads();
    if (rot) {
        for (int i = threadIdx.x; i < nq * d; i += blockDim.x) {
            const float x = q[i] * p.q_scale;
            q[i] = p.round_q ? h2f(f2h(x)) : x;
        }
    }
    const i64 tile = (i64)p.block_size * p.row_u16;
    const i64 base = ((i64)p.tok_block[t] * p.n_layer + p.layer) * p.n_head_kv * tile
                   + (i64)nkv * blockIdx.y * tile + (i64)(pos % p.block_size) * p.row_u16;
    if (p.kv_type == KV_F16) {
        // Every head's row in one pass (kv_store_row's f16 rounding, element by element).
        for (int i = threadIdx.x; i < nkv * d; i += blockDim.x) {
            const int h = i / d, e = i % d;
            p.kc[base + h * tile + e] = f2h(k[i]);
            p.vc[base + h * tile + e] = f2h(v[i]);
        }
        return;
    }
    // Quantized: one warp per 32-block (keys and values of every head).
    const int nb = d / 32, words = p.kv_type == KV_Q8_0 ? 17 : 9;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n_warps = blockDim.x >> 5;
    for (int task = warp; task < nkv * 2 * nb; task += n_warps) {
        const int h = task / (2 * nb), is_v = (task / nb) % 2, blk = task % nb;
        const float* src = (is_v ? v : k) + h * d + 32 * blk;
        u16* dst = (is_v ? p.vc : p.kc) + base + h * tile + blk * words;
        warp_store_block(dst, src[lane], p.kv_type, lane);
    }
}

// Context shift: the keys of one (block, layer), every head and slot, rotated back by `delta`
// positions (RoPE by -delta: cos of delta, sin negated), in f32 from the stored row and stored
// back, as the CPU does (a quantized row is turned back, rotated, turned and quantized again).
// One thread block per (head, slot), its row in shared memory.
extern "C" __global__ void shift_keys(const ShiftKeysParams p) {
    PDL_ENTRY();
    __shared__ float row[256];
    const int d = p.head_dim, half = d / 2;
    const int h = blockIdx.x / p.block_size, slot = blockIdx.x % p.block_size;
    const i64 tile = (i64)p.block_size * p.row_u16;
    u16* k = p.kc + (((i64)p.block * p.n_layer + p.layer) * p.n_head_kv + h) * tile
           + (i64)slot * p.row_u16;
    const float* cs = p.cos + (i64)p.delta * half;
    const float* sn = p.sin + (i64)p.delta * half;
    for (int e = 2 * threadIdx.x; e < d; e += 2 * blockDim.x) kv_pair(k, p.kv_type, e, row[e], row[e + 1]);
    if (p.rot_k > 0) block_hadamard(row, d, p.rot_k);
    __syncthreads();
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        const int a = p.neox ? j : 2 * j, b = p.neox ? j + half : 2 * j + 1;
        float pair[2] = {row[a], row[b]};
        // rope_pair on the pair alone: (x0, x1) at (0, 1) in NORM order.
        rope_pair(pair, 0, 1, 0, cs[j], -sn[j]);
        row[a] = pair[0];
        row[b] = pair[1];
    }
    if (p.rot_k > 0) block_hadamard(row, d, p.rot_k);
    __syncthreads();
    kv_store_row(k, row, d, p.kv_type, threadIdx.x, blockDim.x);
}

// Rows turned by Walsh-Hadamard blocks in place (attention's output, back from the values'
// turn). One thread block per row.
extern "C" __global__ void hadamard_rows(const HadamardParams p) {
    PDL_ENTRY();
    if ((int)blockIdx.x >= p.n_rows) return;
    block_hadamard(p.x + (i64)blockIdx.x * p.row_len, p.row_len, p.n);
}

// Copy the first slots of block `src` into block `dst`, every layer and head (copy-on-write of
// a shared block), in 16-bit words of stored rows. One thread block per (layer, head) tile.
extern "C" __global__ void copy_slots(const CopySlotsParams p) {
    PDL_ENTRY();
    const i64 s = ((i64)p.src * p.n_tiles + blockIdx.x) * p.tile;
    const i64 d = ((i64)p.dst * p.n_tiles + blockIdx.x) * p.tile;
    for (int i = threadIdx.x; i < p.n_elems; i += blockDim.x) {
        p.kc[d + i] = p.kc[s + i];
        p.vc[d + i] = p.vc[s + i];
    }
}
