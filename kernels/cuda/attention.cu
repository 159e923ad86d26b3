// Paged attention over the f16 KV arena, for decode and prefill alike: one thread block per
// (token, query head), walking the token's block table up to its own position (causal), so a
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
    __shared__ float s_m[ATT_WARPS], s_s[ATT_WARPS];
    __shared__ float s_acc[ATT_WARPS][256];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int th = blockIdx.x, part = blockIdx.y;
    const int t = th / p.n_head, h = th % p.n_head;
    const int kvh = h / (p.n_head / p.n_head_kv);
    const int d = p.head_dim, half = d / 2;
    const int n_pos = p.tok_pos[t] + 1;
    const int start = part * p.part_len;
    const int end = min(n_pos, start + p.part_len);
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
    const i64 tile = (i64)p.block_size * d;
    const i64 head_off = ((i64)p.layer * p.n_head_kv + kvh) * tile;
    const i64 blk_stride = (i64)p.n_layer * p.n_head_kv * tile;
    float m = NEG_INF, s = 0.0f;

    for (int j0 = start + warp * ATT_UNROLL; j0 < end; j0 += ATT_WARPS * ATT_UNROLL) {
        u32 kw[ATT_UNROLL][ATT_MAX_PAIRS], vw[ATT_UNROLL][ATT_MAX_PAIRS];
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; ++u) {
            const int j = j0 + u;
            const bool ok = j < end;
            const i64 off = ok ? (i64)table[j / p.block_size] * blk_stride + head_off
                                     + (i64)(j % p.block_size) * d
                               : 0;
            const u32* kr = (const u32*)(p.kc + off);
            const u32* vr = (const u32*)(p.vc + off);
#pragma unroll
            for (int k = 0; k < ATT_MAX_PAIRS; ++k) {
                const int pp = lane + 32 * k;
                kw[u][k] = ok && pp < half ? kr[pp] : 0u;
                vw[u][k] = ok && pp < half ? vr[pp] : 0u;
            }
        }
        float sc[ATT_UNROLL];
#pragma unroll
        for (int u = 0; u < ATT_UNROLL; ++u) {
            float dot = 0.0f;
#pragma unroll
            for (int k = 0; k < ATT_MAX_PAIRS; ++k) {
                dot += qx[k] * h2f((u16)(kw[u][k] & 0xffff));
                dot += qy[k] * h2f((u16)(kw[u][k] >> 16));
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
                ax[k] += w * h2f((u16)(vw[u][k] & 0xffff));
                ay[k] += w * h2f((u16)(vw[u][k] >> 16));
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

// ---- grouped-query variant (head_dim 64 or 128) ----
//
// One thread block per (token, KV head, partition) computes all the query heads that share the KV
// head (GQA), so each K/V row is read once for the whole group instead of once per query head.
// A position's row is split over D/8 lanes, each loading 16 bytes (8 f16) of K and of V; a warp
// therefore covers 32/(D/8) positions per load, and each such sub-warp takes 2 consecutive
// positions per step (4 loads of 16 bytes in flight per lane). Dot products are reduced within
// the sub-warp; every sub-warp keeps its own online softmax per head, merged at the end through
// shared memory. Same outputs (and partials, for attention_reduce) as paged_attention.

#define AT2_WARPS 4

struct __attribute__((aligned(16))) u32x4 {
    u32 x, y, z, w;
};

__device__ __forceinline__ void unpack8(const u32x4 v, float* f) {
    f[0] = h2f((u16)(v.x & 0xffff)); f[1] = h2f((u16)(v.x >> 16));
    f[2] = h2f((u16)(v.y & 0xffff)); f[3] = h2f((u16)(v.y >> 16));
    f[4] = h2f((u16)(v.z & 0xffff)); f[5] = h2f((u16)(v.z >> 16));
    f[6] = h2f((u16)(v.w & 0xffff)); f[7] = h2f((u16)(v.w >> 16));
}

// U: consecutive positions per sub-warp per step (2 K and 2 V loads of 16 bytes in flight per
// lane; 4 measured no faster on the H100, nor did ex2.approx for expf: see BENCHMARKS.md).
template <int D, int MAXG, int U>
__device__ __forceinline__ void attn_gqa(const AttnParams& p) {
    constexpr int L = D / 8;             // lanes per position
    constexpr int P = 32 / L;            // positions per warp per load
    constexpr int SUB = AT2_WARPS * P;   // sub-warps per thread block
    __shared__ float s_m[SUB * MAXG], s_s[SUB * MAXG];
    __shared__ float s_acc[SUB * MAXG * D];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int sub = warp * P + lane / L; // this lane's sub-warp
    const int sl = lane % L;             // dims 8*sl .. 8*sl+8 of the head
    const int G = p.n_head / p.n_head_kv;
    const int t = blockIdx.x / p.n_head_kv, kvh = blockIdx.x % p.n_head_kv;
    const int part = blockIdx.y;
    const int n_pos = p.tok_pos[t] + 1;
    const int start = part * p.part_len;
    const int end = min(n_pos, start + p.part_len);
    const int* table = p.tables + (i64)p.tok_row[t] * p.max_blocks;

    float q[MAXG][8], acc[MAXG][8], m[MAXG], s[MAXG];
#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
        const float* qh = p.q + ((i64)t * p.n_head + kvh * G + min(g, G - 1)) * D + 8 * sl;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            q[g][e] = qh[e];
            acc[g][e] = 0.0f;
        }
        m[g] = NEG_INF;
        s[g] = 0.0f;
    }
    const i64 tile = (i64)p.block_size * D;
    const i64 head_off = ((i64)p.layer * p.n_head_kv + kvh) * tile + 8 * sl;
    const i64 blk_stride = (i64)p.n_layer * p.n_head_kv * tile;

    // The loop bound is uniform across the warp (shuffles below need every lane).
    for (int jw = start + warp * P * U; jw < end; jw += SUB * U) {
        const int j0 = jw + (lane / L) * U;
        u32x4 kw[U], vw[U];
        bool ok[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = j0 + u;
            ok[u] = j < end;
            if (ok[u]) {
                const i64 off = (i64)table[j / p.block_size] * blk_stride + head_off
                              + (i64)(j % p.block_size) * D;
                kw[u] = *(const u32x4*)(p.kc + off);
                vw[u] = *(const u32x4*)(p.vc + off);
            } else {
                kw[u] = u32x4{0u, 0u, 0u, 0u};
                vw[u] = u32x4{0u, 0u, 0u, 0u};
            }
        }
        float kf[U][8], vf[U][8];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            unpack8(kw[u], kf[u]);
            unpack8(vw[u], vf[u]);
        }
#pragma unroll
        for (int g = 0; g < MAXG; ++g) {
            if (g < G) {
                float sc[U];
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    float dd = 0.0f;
#pragma unroll
                    for (int e = 0; e < 8; ++e) dd += q[g][e] * kf[u][e];
                    sc[u] = dd;
                }
#pragma unroll
                for (int o = L / 2; o > 0; o >>= 1) {
#pragma unroll
                    for (int u = 0; u < U; ++u) sc[u] += __shfl_xor_sync(0xffffffffu, sc[u], o);
                }
                float mx = m[g];
#pragma unroll
                for (int u = 0; u < U; ++u) {
                    sc[u] = ok[u] ? sc[u] * p.scale : NEG_INF;
                    mx = fmaxf(mx, sc[u]);
                }
                if (mx != NEG_INF) {
                    const float ms = expf(m[g] - mx);
                    float w[U];
                    s[g] *= ms;
#pragma unroll
                    for (int u = 0; u < U; ++u) {
                        w[u] = expf(sc[u] - mx);
                        s[g] += w[u];
                    }
#pragma unroll
                    for (int e = 0; e < 8; ++e) {
                        float a = acc[g][e] * ms;
#pragma unroll
                        for (int u = 0; u < U; ++u) a += w[u] * vf[u][e];
                        acc[g][e] = a;
                    }
                    m[g] = mx;
                }
            }
        }
    }

#pragma unroll
    for (int g = 0; g < MAXG; ++g) {
        if (sl == 0) {
            s_m[sub * MAXG + g] = m[g];
            s_s[sub * MAXG + g] = s[g];
        }
#pragma unroll
        for (int e = 0; e < 8; ++e) s_acc[(sub * MAXG + g) * D + 8 * sl + e] = acc[g][e];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int g = i / D, e = i % D;
        float mm = NEG_INF;
        for (int k = 0; k < SUB; ++k) mm = fmaxf(mm, s_m[k * MAXG + g]);
        float ss = 0.0f, a = 0.0f;
        for (int k = 0; k < SUB; ++k) {
            const float mk = s_m[k * MAXG + g];
            if (mk != NEG_INF) {
                const float f = expf(mk - mm);
                ss += s_s[k * MAXG + g] * f;
                a += s_acc[(k * MAXG + g) * D + e] * f;
            }
        }
        const i64 th = (i64)t * p.n_head + kvh * G + g;
        if (p.n_parts == 1) {
            p.out[th * D + e] = ss > 0.0f ? a / ss : 0.0f;
        } else {
            p.part_acc[(th * p.n_parts + part) * D + e] = a;
            if (e == 0) {
                p.part_ms[(th * p.n_parts + part) * 2] = mm;
                p.part_ms[(th * p.n_parts + part) * 2 + 1] = ss;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(AT2_WARPS * 32) attn_gqa_d64_g4(const AttnParams p) { attn_gqa<64, 4, 2>(p); }
extern "C" __global__ void __launch_bounds__(AT2_WARPS * 32) attn_gqa_d64_g8(const AttnParams p) { attn_gqa<64, 8, 2>(p); }
extern "C" __global__ void __launch_bounds__(AT2_WARPS * 32) attn_gqa_d128_g4(const AttnParams p) { attn_gqa<128, 4, 2>(p); }
extern "C" __global__ void __launch_bounds__(AT2_WARPS * 32) attn_gqa_d128_g8(const AttnParams p) { attn_gqa<128, 8, 2>(p); }
