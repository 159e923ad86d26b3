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
