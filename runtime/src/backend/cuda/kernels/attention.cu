// Paged attention over the KV arena (f16, or Q8_0 / Q4_0 rows read back exactly, kv.cu), for decode and prefill alike: one thread block per
// (token, query head), walking the token's block table up to its own position (causal; from
// `window` positions back on sliding-window layers, as the CPU's `attn_start`), so a
// prefill chunk is a batch of queries of one sequence and a decode step a batch of one query per
// sequence. Long contexts are split into partitions of `part_len` positions (grid.y), each
// writing an unnormalized partial output and its (max, sum); `attention_reduce` combines them,
// as vLLM's paged attention v2 does.
//
// Inside a block, each of the ATT_WARPS warps takes ATT_UNROLL consecutive positions at a time
// (their K and V rows loaded before any is used), lanes splitting the head dimension in pairs of
// f16 (one 32-bit load per lane per row for head_dim 64); an online softmax per warp, then the
// warps are merged through shared memory. The query arrives rounded to f16 values (as ggml
// multiplies an f16 copy of Q with the f16 cache); scores and the weighted sum are f32.

#define ATT_WARPS 4
#define ATT_UNROLL 4
#define ATT_MAX_PAIRS 4 // head_dim <= 256: at most 4 f16 pairs per lane

extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) paged_attention(const AttnParams p) {
    PDL_ENTRY();
    __shared__ float s_m[ATT_WARPS], s_s[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][256];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int th = blockIdx.x, part = blockIdx.y;
    const int t = th / p.n_head, h = th % p.n_head;
    const int kvh = h / (p.n_head / p.n_head_kv);
    const int d = p.head_dim, half = d / 2;
    const int n_pos = p.tok_pos[t] + 1;
    // This partition's positions, from the window's first on sliding-window layers.
    const int start = max(part * p.part_len, p.window > 0 ? n_pos - p.window : 0);
    const int end = min(n_pos, part * p.part_len + p.part_len);
    const int* table = p.tables + (i64)p.tok_row[t] * p.max_blocks;
    const float* q = p.q + (i64)th * d;

    float qx[ATT_MAX_PAIRS], qy[ATT_MAX_PAIRS], ax[ATT_MAX_PAIRS], ay[ATT_MAX_PAIRS];
#pragma unroll
    for (int k = 0; k < ATT_MAX_PAIRS; ++k) {
        const int pp = lane + 32 * k;
        qx[k] = pp < half ? q[2 * pp] : 0.0f;
        qy[k] = pp < half ? q[2 * pp + 1] : 0.0f;
        ax[k] = 0.0f;
        ay[k] = 0.0f;
    }
    const i64 tile = (i64)p.block_size * p.row_u16;
    const i64 head_off = ((i64)p.layer * p.n_head_kv + kvh) * tile;
    const i64 blk_stride = (i64)p.n_layer * p.n_head_kv * tile;
    const int kt = p.kv_type;
    float m = NEG_INF, s = 0.0f;

    for (int j0 = start + warp * ATT_UNROLL; j0 < end; j0 += ATT_WARPS * ATT_UNROLL) {
        // Rows read back as f32 pairs (kv_pair: f16, or dequantized exactly).
        float kx[ATT_UNROLL][ATT_MAX_PAIRS], ky[ATT_UNROLL][ATT_MAX_PAIRS];
        float vx[ATT_UNROLL][ATT_MAX_PAIRS], vy[ATT_UNROLL][ATT_MAX_PAIRS];
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; ++u) {
            const int j = j0 + u;
            const bool ok = j < end;
            const i64 off = ok ? (i64)table[j / p.block_size] * blk_stride + head_off
                                     + (i64)(j % p.block_size) * p.row_u16
                               : 0;
#pragma unroll
            for (int k = 0; k < ATT_MAX_PAIRS; ++k) {
                const int pp = lane + 32 * k;
                kx[u][k] = ky[u][k] = vx[u][k] = vy[u][k] = 0.0f;
                if (ok && pp < half) {
                    kv_pair(p.kc + off, kt, 2 * pp, kx[u][k], ky[u][k]);
                    kv_pair(p.vc + off, kt, 2 * pp, vx[u][k], vy[u][k]);
                }
            }
        }
        float sc[ATT_UNROLL];
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; ++u) {
            float dot = 0.0f;
#pragma unroll
            for (int k = 0; k < ATT_MAX_PAIRS; ++k) {
                dot += qx[k] * kx[u][k];
                dot += qy[k] * ky[u][k];
            }
            sc[u] = dot;
        }
        float mx = m;
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; ++u) {
            sc[u] = j0 + u < end ? warp_sum(sc[u]) * p.scale : NEG_INF;
            mx = fmaxf(mx, sc[u]);
        }
        const float ms = expf(m - mx);
        s *= ms;
#pragma unroll
        for (int k = 0; k < ATT_MAX_PAIRS; ++k) {
            ax[k] *= ms;
            ay[k] *= ms;
        }
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; ++u) {
            const float w = expf(sc[u] - mx);
            s += w;
#pragma unroll
            for (int k = 0; k < ATT_MAX_PAIRS; ++k) {
                ax[k] += w * vx[u][k];
                ay[k] += w * vy[u][k];
            }
        }
        m = mx;
    }

    if (lane == 0) {
        s_m[warp] = m;
        s_s[warp] = s;
    }
#pragma unroll
    for (int k = 0; k < ATT_MAX_PAIRS; ++k) {
        const int pp = lane + 32 * k;
        if (pp < half) {
            s_acc[warp][2 * pp] = ax[k];
            s_acc[warp][2 * pp + 1] = ay[k];
        }
    }
    __syncthreads();
    float mm = NEG_INF;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; ++w) mm = fmaxf(mm, s_m[w]);
    float f[ATT_WARPS];
    float ss = 0.0f;
#pragma unroll
    for (int w = 0; w < ATT_WARPS; ++w) {
        f[w] = s_m[w] == NEG_INF ? 0.0f : expf(s_m[w] - mm);
        ss += s_s[w] * f[w];
    }
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        float a = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; ++w) a += s_acc[w][e] * f[w];
        if (p.n_parts == 1) {
            p.out[(i64)th * d + e] = ss > 0.0f ? a / ss : 0.0f;
        } else {
            p.part_acc[((i64)th * p.n_parts + part) * d + e] = a;
        }
    }
    if (p.n_parts > 1 && threadIdx.x == 0) {
        p.part_ms[((i64)th * p.n_parts + part) * 2] = mm;
        p.part_ms[((i64)th * p.n_parts + part) * 2 + 1] = ss;
    }
}

// Merge the partitions of each (token, head). One thread block per (token, head).
extern "C" __global__ void attention_reduce(const AttnParams p) {
    PDL_ENTRY();
    const int th = blockIdx.x;
    const int d = p.head_dim;
    const float* ms = p.part_ms + (i64)th * p.n_parts * 2;
    float mm = NEG_INF;
    for (int i = 0; i < p.n_parts; ++i) mm = fmaxf(mm, ms[2 * i]);
    float ss = 0.0f;
    for (int i = 0; i < p.n_parts; ++i)
        ss += ms[2 * i] == NEG_INF ? 0.0f : ms[2 * i + 1] * expf(ms[2 * i] - mm);
    for (int e = threadIdx.x; e < d; e += blockDim.x) {
        float a = 0.0f;
        for (int i = 0; i < p.n_parts; ++i) {
            if (ms[2 * i] != NEG_INF)
                a += p.part_acc[((i64)th * p.n_parts + i) * d + e] * expf(ms[2 * i] - mm);
        }
        p.out[(i64)th * d + e] = ss > 0.0f ? a / ss : 0.0f;
    }
}

// ---- grouped-query variant (head_dim 64 or 128, 1 to 8 query heads per KV head) ----
//
// One thread block per (token, KV head, partition) computes all G query heads that share the KV
// head (GQA), so each K/V byte is read once for the whole group instead of once per query head.
// A position's row is split over D/8 lanes, each loading 16 bytes (8 f16) of K and of V; a warp
// therefore covers 32/(D/8) positions per load, and each such sub-warp takes U consecutive
// positions per step. Dot products are reduced within the sub-warp; every sub-warp keeps its own
// online softmax per head; the sub-warps of a warp are merged by shuffles, the warps through
// shared memory. Same outputs (and partials, for attention_reduce) as paged_attention, within
// the tolerance of tests/cuda.rs (not bit-equal).
//
// Written so that the memory system, not the instruction stream, is the limit (the first
// version reached 49% of copy bandwidth on the H100, see BENCHMARKS.md):
// - G is a template parameter: the heads' dot products, shuffles and exponentials are
//   independent instruction streams the compiler interleaves (a run-time `g < G` test per head
//   serialized them behind each shuffle's latency);
// - the next step's K/V rows (and block-table entries) are loaded before the current step is
//   computed, so loads stay in flight while the warp computes;
// - products and rescaled sums are explicit `fmaf` (this file is compiled with --fmad=false,
//   where `a*b+c` is two instructions);
// - scores are kept in log2 units (the query is pre-multiplied by scale·log2(e)), so every
//   exponential is one `ex2.approx` (relative error ~2^-22);
// - a softmax state starts at -FLT_MAX, not -inf, so no step needs an "empty so far" branch
//   (2^(-FLT_MAX - m) is 0, 2^(-FLT_MAX + FLT_MAX) is 1 with a zero sum);
// - the running maximum is raised (and the sums rescaled) only when a score exceeds it by more
//   than RESCALE_SLACK, one branch per step for all heads;
// - a position's block and slot advance by addition, not an integer division per position.

#define AT2_WARPS 4
#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f
#define M_EMPTY (__int_as_float(0xff7fffff)) // -FLT_MAX
#define RESCALE_SLACK 8.0f // log2 units: weights up to 256 between rescales

struct __attribute__((aligned(16))) u32x4 {
    u32 x, y, z, w;
};

__device__ __forceinline__ void unpack8(const u32x4 v, float* f) {
    f[0] = h2f((u16)(v.x & 0xffff)); f[1] = h2f((u16)(v.x >> 16));
    f[2] = h2f((u16)(v.y & 0xffff)); f[3] = h2f((u16)(v.y >> 16));
    f[4] = h2f((u16)(v.z & 0xffff)); f[5] = h2f((u16)(v.z >> 16));
    f[6] = h2f((u16)(v.w & 0xffff)); f[7] = h2f((u16)(v.w >> 16));
}

// 2^x (ex2.approx.ftz: one MUFU instruction; 2^-inf = 0).
__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// A lane's 8 elements (8*sl .. 8*sl+8) of a stored row, as loaded: 16 bytes of f16, or the
// block scale and 8 bytes of Q8_0 quants / of Q4_0 nibble pairs (16-bit loads: quantized rows
// are only 2-byte aligned).
struct Raw8 {
    u32x4 w;
    u16 d;
};

// Words of a stored row of D elements of kind KT (kv.cu's KV_* kinds).
template <int D, int KT>
__device__ __forceinline__ constexpr int row_words() {
    return KT == KV_F16 ? D : KT == KV_Q8_0 ? D / 32 * 17 : D / 32 * 9;
}

template <int KT>
__device__ __forceinline__ Raw8 load8(const u16* row, int sl) {
    Raw8 r;
    if (KT == KV_F16) {
        r.w = *(const u32x4*)(row + 8 * sl);
        r.d = 0;
    } else {
        // Q8_0: block sl/4 (17 words), quants 8*(sl%4).. ; Q4_0: block sl/4 (9 words), bytes
        // 8*(sl%2).. (low nibbles for sl%4 < 2, high ones after).
        const u16* b = KT == KV_Q8_0 ? row + (sl >> 2) * 17 + 1 + 4 * (sl & 3)
                                     : row + (sl >> 2) * 9 + 1 + 4 * (sl & 1);
        r.d = KT == KV_Q8_0 ? row[(sl >> 2) * 17] : row[(sl >> 2) * 9];
        r.w.x = (u32)b[0] | ((u32)b[1] << 16);
        r.w.y = (u32)b[2] | ((u32)b[3] << 16);
        r.w.z = 0u;
        r.w.w = 0u;
    }
    return r;
}

// The 8 f32 elements of a Raw8, exactly as the CPU reads them back.
template <int KT>
__device__ __forceinline__ void unpack_raw(const Raw8& r, int sl, float* f) {
    if (KT == KV_F16) {
        unpack8(r.w, f);
    } else {
        const float d = h2f(r.d);
        const int shift = (KT == KV_Q4_0 && (sl & 3) >= 2) ? 4 : 0;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const u32 word = i < 4 ? r.w.x : r.w.y;
            const int byte = (word >> (8 * (i & 3))) & 0xff;
            f[i] = KT == KV_Q8_0 ? (float)(int)(signed char)byte * d
                                 : (float)(((byte >> shift) & 15) - 8) * d;
        }
    }
}

// Where a sub-warp's U consecutive positions from j0 = (table index blk, slot) live, and which
// of them are before `end`; their K/V rows loaded (zeros past `end`).
template <int D, int U, int KT>
__device__ __forceinline__ void load_rows(const AttnParams& p, const int* table, int blk, int slot,
                                          int j0, int end, int sl, i64 head_off, i64 blk_stride,
                                          Raw8 (&kw)[U], Raw8 (&vw)[U], bool (&ok)[U]) {
#pragma unroll
    for (int u = 0; u < U; ++u) {
        ok[u] = j0 + u < end;
        int b = blk, r = slot + u;
        while (r >= p.block_size) {
            r -= p.block_size;
            ++b;
        }
        if (ok[u]) {
            const i64 off = (i64)table[b] * blk_stride + head_off + (i64)r * row_words<D, KT>();
            kw[u] = load8<KT>(p.kc + off, sl);
            vw[u] = load8<KT>(p.vc + off, sl);
        } else {
            kw[u] = Raw8{u32x4{0u, 0u, 0u, 0u}, 0};
            vw[u] = Raw8{u32x4{0u, 0u, 0u, 0u}, 0};
        }
    }
}

// Merge the online-softmax states (m in log2 units, s, acc) of lanes `o` apart into both.
template <int G>
__device__ __forceinline__ void merge_xor(float (&m)[G], float (&s)[G], float (&acc)[G][8],
                                          const int o) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float mo = __shfl_xor_sync(0xffffffffu, m[g], o);
        const float so = __shfl_xor_sync(0xffffffffu, s[g], o);
        const float mn = fmaxf(m[g], mo);
        const float fa = fast_exp2(m[g] - mn), fb = fast_exp2(mo - mn);
        s[g] = fmaf(s[g], fa, so * fb);
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const float ao = __shfl_xor_sync(0xffffffffu, acc[g][e], o);
            acc[g][e] = fmaf(acc[g][e], fa, ao * fb);
        }
        m[g] = mn;
    }
}

template <int D, int G, int U, int KT>
__device__ __forceinline__ void attn_gqa(const AttnParams& p) {
    constexpr int L = D / 8;             // lanes per position
    constexpr int P = 32 / L;            // positions per warp per load
    constexpr int SUB = AT2_WARPS * P;   // sub-warps per thread block
    constexpr int STEP = SUB * U;        // positions per block per step
    __shared__ float s_m[AT2_WARPS * G], s_s[AT2_WARPS * G];
    __shared__ float s_acc[AT2_WARPS * G * D];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sl = lane % L;             // dims 8*sl .. 8*sl+8 of the head
    const int t = blockIdx.x / p.n_head_kv, kvh = blockIdx.x % p.n_head_kv;
    const int part = blockIdx.y;
    const int n_pos = p.tok_pos[t] + 1;
    // This partition's positions, from the window's first on sliding-window layers.
    const int start = max(part * p.part_len, p.window > 0 ? n_pos - p.window : 0);
    const int end = min(n_pos, part * p.part_len + p.part_len);
    const int bs = p.block_size;
    const int* table = p.tables + (i64)p.tok_row[t] * p.max_blocks;

    const float qs = p.scale * LOG2E;
    float q[G][8], acc[G][8], m[G], s[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float* qh = p.q + ((i64)t * p.n_head + kvh * G + g) * D + 8 * sl;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            q[g][e] = qh[e] * qs;
            acc[g][e] = 0.0f;
        }
        m[g] = M_EMPTY;
        s[g] = 0.0f;
    }
    const i64 tile = (i64)bs * row_words<D, KT>();
    const i64 head_off = ((i64)p.layer * p.n_head_kv + kvh) * tile;
    const i64 blk_stride = (i64)p.n_layer * p.n_head_kv * tile;

    // This sub-warp's first position as (table index, slot), advanced by STEP each step.
    const int step_b = STEP / bs, step_r = STEP % bs;
    const int sub0 = (lane / L) * U;
    int jw = start + warp * P * U;
    int blk = (jw + sub0) / bs, slot = (jw + sub0) % bs;
    Raw8 kw[U], vw[U];
    bool ok[U];
    load_rows<D, U, KT>(p, table, blk, slot, jw + sub0, end, sl, head_off, blk_stride, kw, vw, ok);

    // The loop bound is uniform across the warp (shuffles below need every lane).
    for (; jw < end; jw += STEP) {
        // This step's rows were loaded by the previous one; load the next step's now.
        Raw8 ck[U], cv[U];
        bool cok[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            ck[u] = kw[u];
            cv[u] = vw[u];
            cok[u] = ok[u];
        }
        blk += step_b;
        slot += step_r;
        if (slot >= bs) {
            slot -= bs;
            ++blk;
        }
        load_rows<D, U, KT>(p, table, blk, slot, jw + STEP + sub0, end, sl, head_off, blk_stride, kw,
                            vw, ok);
        float kf[U][8], vf[U][8];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            unpack_raw<KT>(ck[u], sl, kf[u]);
            unpack_raw<KT>(cv[u], sl, vf[u]);
        }
        float sc[G][U];
#pragma unroll
        for (int g = 0; g < G; ++g) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float dd = q[g][0] * kf[u][0];
#pragma unroll
                for (int e = 1; e < 8; ++e) dd = fmaf(q[g][e], kf[u][e], dd);
                sc[g][u] = dd;
            }
        }
#pragma unroll
        for (int o = L / 2; o > 0; o >>= 1) {
#pragma unroll
            for (int g = 0; g < G; ++g) {
#pragma unroll
                for (int u = 0; u < U; ++u) sc[g][u] += __shfl_xor_sync(0xffffffffu, sc[g][u], o);
            }
        }
        float mx[G];
        bool grow = false;
#pragma unroll
        for (int g = 0; g < G; ++g) {
            mx[g] = m[g];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                sc[g][u] = cok[u] ? sc[g][u] : NEG_INF;
                mx[g] = fmaxf(mx[g], sc[g][u]);
            }
            grow = grow || mx[g] > m[g] + RESCALE_SLACK;
        }
        // Rescale only when a score exceeds the running maximum by more than the slack (rare
        // after the first steps); weights are then relative to a slightly stale maximum, at
        // most 2^RESCALE_SLACK, which the final division by the sum cancels.
        if (grow) {
#pragma unroll
            for (int g = 0; g < G; ++g) {
                const float ms = fast_exp2(m[g] - mx[g]);
                s[g] *= ms;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[g][e] *= ms;
                m[g] = mx[g];
            }
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float w[U];
            float sum = s[g];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                w[u] = fast_exp2(sc[g][u] - m[g]);
                sum += w[u];
            }
            s[g] = sum;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                float a = acc[g][e];
#pragma unroll
                for (int u = 0; u < U; ++u) a = fmaf(w[u], vf[u][e], a);
                acc[g][e] = a;
            }
        }
    }

    // Sub-warps of a warp hold the same dims for different positions: merge them by shuffles,
    // then one sub-warp per warp goes through shared memory.
#pragma unroll
    for (int o = L; o < 32; o <<= 1) merge_xor<G>(m, s, acc, o);
    if (lane < L) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
            if (sl == 0) {
                s_m[warp * G + g] = m[g];
                s_s[warp * G + g] = s[g];
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) s_acc[(warp * G + g) * D + 8 * sl + e] = acc[g][e];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int g = i / D, e = i % D;
        float mm = M_EMPTY;
#pragma unroll
        for (int k = 0; k < AT2_WARPS; ++k) mm = fmaxf(mm, s_m[k * G + g]);
        float ss = 0.0f, a = 0.0f;
#pragma unroll
        for (int k = 0; k < AT2_WARPS; ++k) {
            const float f = fast_exp2(s_m[k * G + g] - mm);
            ss = fmaf(s_s[k * G + g], f, ss);
            a = fmaf(s_acc[(k * G + g) * D + e], f, a);
        }
        const i64 th = (i64)t * p.n_head + kvh * G + g;
        if (p.n_parts == 1) {
            p.out[th * D + e] = ss > 0.0f ? a / ss : 0.0f;
        } else {
            p.part_acc[(th * p.n_parts + part) * D + e] = a;
            if (e == 0) {
                // attention_reduce works in natural-log units, -inf marking an empty partition.
                p.part_ms[(th * p.n_parts + part) * 2] = ss > 0.0f ? mm * LN2 : NEG_INF;
                p.part_ms[(th * p.n_parts + part) * 2 + 1] = ss;
            }
        }
    }
}

// The kernels the backend launches, by head_dim and group size. Groups of up to 3 heads leave
// registers for 4 positions per sub-warp per step (twice the bytes in flight) at 3 blocks per
// SM; groups of 4 keep 2 positions at 4 blocks per SM, larger groups 2 blocks per SM
// (BENCHMARKS.md).
#define GQA_KERNEL(D, G, U, MINB)                                                                 \
    extern "C" __global__ void __launch_bounds__(AT2_WARPS * 32, MINB)                            \
        attn_gqa_d##D##_g##G(const AttnParams p) {                                                \
            PDL_ENTRY();                                                                          \
            attn_gqa<D, G, U, KV_F16>(p);                                                         \
        }                                                                                         \
    extern "C" __global__ void __launch_bounds__(AT2_WARPS * 32, MINB)                            \
        attn_gqa_q8_d##D##_g##G(const AttnParams p) {                                             \
            PDL_ENTRY();                                                                          \
            attn_gqa<D, G, U, KV_Q8_0>(p);                                                        \
        }                                                                                         \
    extern "C" __global__ void __launch_bounds__(AT2_WARPS * 32, MINB)                            \
        attn_gqa_q4_d##D##_g##G(const AttnParams p) {                                             \
            PDL_ENTRY();                                                                          \
            attn_gqa<D, G, U, KV_Q4_0>(p);                                                        \
        }
GQA_KERNEL(64, 1, 4, 3) GQA_KERNEL(64, 2, 4, 3) GQA_KERNEL(64, 3, 4, 3) GQA_KERNEL(64, 4, 2, 4)
GQA_KERNEL(64, 5, 2, 2) GQA_KERNEL(64, 6, 2, 2) GQA_KERNEL(64, 7, 2, 2) GQA_KERNEL(64, 8, 2, 2)
GQA_KERNEL(128, 1, 4, 3) GQA_KERNEL(128, 2, 4, 3) GQA_KERNEL(128, 3, 4, 3) GQA_KERNEL(128, 4, 2, 4)
GQA_KERNEL(128, 5, 2, 2) GQA_KERNEL(128, 6, 2, 2) GQA_KERNEL(128, 7, 2, 2) GQA_KERNEL(128, 8, 2, 2)
