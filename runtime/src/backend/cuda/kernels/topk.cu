// The most likely tokens of each logits row, for the host's sampler (sampler/top.rs): what
// `top_candidates` there specifies. One thread block per row (TOPK_THREADS threads), a radix
// select on the order-preserving bits of the sanitized logit (NaN as -inf, +inf as FLT_MAX):
//   1. one pass: the histogram of the top 12 bits of the row's usable (above -inf) logits, their
//      count and whether the row holds a NaN;
//   2. the bin holding the k-th largest; while that bin and the ones above hold more than
//      TOPK_CAP logits, a pass refines it on the next bits (12, then the last 8);
//   3. one pass gathers the logits at or above the threshold (every usable one when there are at
//      most k) as 64-bit keys (order bits, then the complement of the id, so a descending sort
//      puts the lowest id first among equal logits), a bitonic sort in shared memory, and the
//      first k keys become (id, raw logit) pairs.
// When more than TOPK_CAP logits equal the k-th largest value, step 3 takes those above it and
// the lowest ids among the equal ones (an ordered compaction).
// Block j takes logits row p.rows[j] (the step's rows that sample from candidates; the others
// are not read). Its results go to one buffer that the host reads in one copy, at j:
//   ids  out[j k ..][k], most likely first;
//   logits (raw bits) out[n k + j k ..][k];
//   info out[2 n k + 2 j] = candidates written, or -1 (the row holds a NaN: the host then reads
//        the row whole); out[2 n k + 2 j + 1] = the row's usable logits.

#define TOPK_THREADS 1024
#define TOPK_BINS 4096
#define TOPK_CAP 2048
#define ORD_NEG_INF 0x007fffffu // topk_ord(-inf)

__device__ __forceinline__ u32 topk_ord(float v) {
    if (v != v) v = NEG_INF;
    v = fminf(v, 3.402823466e38f);
    const u32 b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// The bin (of TOPK_BINS, counts in h) holding the k-th largest element counting from the top,
// and how many elements lie in the bins above it (block-wide; every thread gets the answer).
__device__ void topk_find_bin(const int* h, int k, int* s_warp, int* s_out, int& bin, int& above) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    constexpr int PER = TOPK_BINS / TOPK_THREADS;
    // Thread t owns bins top - PER t - [0, PER), the highest first.
    const int hi = TOPK_BINS - 1 - PER * tid;
    int own = 0;
#pragma unroll
    for (int j = 0; j < PER; ++j) own += h[hi - j];
    int incl = own;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (lane == 31) s_warp[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        int w = lane < TOPK_THREADS / 32 ? s_warp[lane] : 0;
        int wi = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += v;
        }
        if (lane < TOPK_THREADS / 32) s_warp[32 + lane] = wi - w; // warps before this one
    }
    __syncthreads();
    int cum = s_warp[32 + warp] + incl - own;
#pragma unroll
    for (int j = 0; j < PER; ++j) {
        const int c = h[hi - j];
        if (cum < k && cum + c >= k) {
            s_out[0] = hi - j;
            s_out[1] = cum;
        }
        cum += c;
    }
    __syncthreads();
    bin = s_out[0];
    above = s_out[1];
    __syncthreads();
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS) topk_rows(const TopkParams p) {
    PDL_ENTRY();
    __shared__ int hist[TOPK_BINS];
    __shared__ unsigned long long keys[TOPK_CAP];
    __shared__ int s_warp[64];
    __shared__ int s_out[2];
    __shared__ int s_count[2];
    const int j = blockIdx.x, tid = threadIdx.x;
    if (j >= p.n_rows) return;
    const float* x = p.x + (i64)p.rows[j] * p.n_cols;
    const int n = p.n_cols, k = p.k;
    const i64 nk = (i64)p.n_rows * k;
    u32* out_ids = p.out + (i64)j * k;
    u32* out_vals = p.out + nk + (i64)j * k;
    int* info = (int*)(p.out + 2 * nk) + 2 * j;
    for (int i = tid; i < TOPK_BINS; i += TOPK_THREADS) hist[i] = 0;
    if (tid == 0) { s_count[0] = 0; s_count[1] = 0; }
    __syncthreads();

    // 1. Histogram of the top 12 bits, usable count, NaN. Four loads in flight per thread;
    // the lanes of a warp that hit one bin add to it once (logits crowd into few bins).
    const int lane = tid & 31;
    int usable = 0, nan = 0;
    for (int base = 0; base < n; base += 4 * TOPK_THREADS) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int i = base + u * TOPK_THREADS + tid;
            v[u] = i < n ? x[i] : NEG_INF;
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            nan |= v[u] != v[u];
            const u32 o = topk_ord(v[u]);
            const int bin = o > ORD_NEG_INF ? (int)(o >> 20) : -1;
            usable += bin >= 0;
            const unsigned peers = __match_any_sync(0xffffffffu, bin);
            if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&hist[bin], __popc(peers));
        }
    }
    nan = __syncthreads_or(nan);
    atomicAdd(&s_count[0], usable);
    __syncthreads();
    usable = s_count[0];
    if (nan) {
        if (tid == 0) { info[0] = -1; info[1] = usable; }
        return;
    }

    // 2. The threshold: keep the usable logits whose order bits >> shift are >= thr. Up to
    // three levels (bits 31..20, 19..8, 7..0), each narrowing to the bin that holds the k-th
    // largest, until the bins from it up hold at most TOPK_CAP logits.
    u32 thr = ORD_NEG_INF + 1;
    int shift = 0;
    int need = k, above = 0;
    bool ties = false; // more than TOPK_CAP logits from the k-th largest value up
    if (usable > k) {
        u32 pre = 0;
        for (int level = 0; level < 3; ++level) {
            const int sh = level == 0 ? 20 : level == 1 ? 8 : 0;
            if (level > 0) {
                for (int i = tid; i < TOPK_BINS; i += TOPK_THREADS) hist[i] = 0;
                __syncthreads();
                const u32 mask = level == 1 ? 0xfffu : 0xffu;
                for (int i = tid; i < n; i += TOPK_THREADS) {
                    const u32 o = topk_ord(x[i]);
                    if (o > ORD_NEG_INF && (o >> shift) == pre) atomicAdd(&hist[(o >> sh) & mask], 1);
                }
                __syncthreads();
            }
            int b, above_b;
            topk_find_bin(hist, need, s_warp, s_out, b, above_b);
            above += above_b;
            need -= above_b;
            pre = level == 0 ? (u32)b : (pre << (level == 1 ? 12 : 8)) | (u32)b;
            shift = sh;
            const int total = above + hist[b];
            __syncthreads();
            if (total <= TOPK_CAP) break;
            ties = level == 2; // the bin is one value: many logits equal the k-th largest
        }
        thr = pre;
    }

    // 3. Gather, sort, write.
    for (int i = tid; i < n; i += TOPK_THREADS) {
        const u32 o = topk_ord(x[i]);
        if (o > ORD_NEG_INF && (ties ? o > thr : (o >> shift) >= thr)) {
            const int at = atomicAdd(&s_count[1], 1);
            if (at < TOPK_CAP) keys[at] = ((unsigned long long)o << 32) | (u32)(0xffffffffu - (u32)i);
        }
    }
    if (ties) {
        // The `need` lowest ids among the logits equal to the k-th largest, in id order: a
        // block-wide ordered compaction over the row, 1024 positions at a time.
        const int warp = tid >> 5;
        int taken = 0;
        for (int base = 0; base < n && taken < need; base += TOPK_THREADS) {
            const int i = base + tid;
            const bool match = i < n && topk_ord(x[i]) == thr;
            const unsigned bal = __ballot_sync(0xffffffffu, match);
            if (lane == 0) s_warp[warp] = __popc(bal);
            __syncthreads();
            int before = 0, all = 0;
            for (int w = 0; w < TOPK_THREADS / 32; ++w) {
                before += w < warp ? s_warp[w] : 0;
                all += s_warp[w];
            }
            if (match) {
                const int pos = taken + before + __popc(bal & ((1u << lane) - 1u));
                if (pos < need)
                    keys[above + pos] = ((unsigned long long)thr << 32) | (u32)(0xffffffffu - (u32)i);
            }
            taken += all;
            __syncthreads();
        }
        if (tid == 0) s_count[1] = above + need;
    }
    __syncthreads();
    const int g = min(s_count[1], TOPK_CAP);
    int len = 2;
    while (len < g) len <<= 1;
    for (int i = g + tid; i < len; i += TOPK_THREADS) keys[i] = 0ull;
    __syncthreads();
    // Bitonic sort, descending.
    for (int size = 2; size <= len; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < len / 2; i += TOPK_THREADS) {
                const int lo = 2 * i - (i & (stride - 1));
                const int hi = lo + stride;
                const bool desc = (lo & size) == 0;
                const unsigned long long a = keys[lo], b = keys[hi];
                if ((a < b) == desc) { keys[lo] = b; keys[hi] = a; }
            }
            __syncthreads();
        }
    }
    const int m = min(k, g);
    for (int c = tid; c < m; c += TOPK_THREADS) {
        const u32 id = 0xffffffffu - (u32)(keys[c] & 0xffffffffull);
        out_ids[c] = id;
        out_vals[c] = __float_as_uint(x[id]);
    }
    if (tid == 0) { info[0] = m; info[1] = usable; }
}
