// K-quant products (Q4_K, Q5_K, Q6_K weights) on Q8_K activations, as the CPU computes them: the
// activations are quantized per 256-element super-block exactly as `quantize_row_q8_k` (f32
// scale, 16-element group sums), so each super-block's integer sums equal the CPU's; only the
// f32 accumulation order differs. Two weight rows per thread block of 128 threads, two warps per
// row; each thread takes one 32-element group of a super-block per step (8 threads per
// super-block), so a row of 2048 is one step; the two warps' sums are added in order.
//
// Layouts are ggml's: block_q4_K {f16 d, dmin; u8 scales[12]; u8 qs[128]} (144 B),
// block_q5_K {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]} (176 B: Q4_K's scales and
// nibbles, and the fifth bit of element l of group g in bit g of qh[l]),
// block_q6_K {u8 ql[128], qh[64]; i8 scales[16]; f16 d} (210 B),
// block_q8_K {f32 d; i8 qs[256]; i16 bsums[16]} (292 B).

// Scale and min of group j of a Q4_K super-block (ggml's get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int& sc, int& mn) {
    if (j < 4) {
        sc = q[j] & 63;
        mn = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Group j (32 elements) of super-block sb of a K-quant weight row: its quants (4 per int,
// elements 4i..4i+3 in q[i]; Q6_K's unsigned 0..63, its -32 offset left to the caller), the
// super-block's scale d (and dmin, Q4_K / Q5_K), the group's scale and min (Q4_K / Q5_K: sc0,
// mn) or its two 16-element scales (Q6_K: sc0, sc1). Shared by the matrix-vector products
// here and the tensor-core tiles (mmq.cu).
template <int TYPE>
__device__ __forceinline__ void kq_group(const u8* wrow, int sb, int j, int* q, float& d,
                                         float& dmin, int& sc0, int& sc1, int& mn) {
    dmin = 0.0f;
    sc1 = 0;
    mn = 0;
    if (TYPE == 12 || TYPE == 13) { // Q4_K, Q5_K
        const int bsz = TYPE == 12 ? 144 : 176, qoff = TYPE == 12 ? 16 : 48;
        const u8* blk = wrow + (i64)sb * bsz;
        d = h2f(ld_u16(blk));
        dmin = h2f(ld_u16(blk + 2));
        scale_min_k4(j, blk + 4, sc0, mn);
        const int* qs = (const int*)(blk + qoff + 32 * (j >> 1));
        const int sh = 4 * (j & 1);
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = (qs[i] >> sh) & 0x0f0f0f0f;
        if (TYPE == 13) {
            const int* qh = (const int*)(blk + 16);
#pragma unroll
            for (int i = 0; i < 8; ++i) q[i] |= ((qh[i] >> j) & 0x01010101) << 4;
        }
    } else { // Q6_K: elements 32j..32j+32 = half h, quarter qq
        const u8* blk = wrow + (i64)sb * 210;
        d = h2f(ld_u16(blk + 208));
        const int h = j >> 2, qq = j & 3;
        const u8* ql = blk + 64 * h + 32 * (qq & 1);
        const u8* qh = blk + 128 + 32 * h;
        const int shl = 4 * (qq >> 1), shh = 2 * qq;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int lo = (ld_i32_a2(ql + 4 * i) >> shl) & 0x0f0f0f0f;
            const int hi = ((ld_i32_a2(qh + 4 * i) >> shh) & 0x03030303) << 4;
            q[i] = lo | hi;
        }
        sc0 = (int)(i8)blk[192 + 2 * j];
        sc1 = (int)(i8)blk[192 + 2 * j + 1];
    }
}

// Rows 2 pair and 2 pair + 1 of the launch's row space (see mat_job), for the tokens of
// blockIdx.y (NT of them: 8 for batches, 1 for a lone token); the two rows may belong to
// different products of a fused launch.
template <int TYPE, int NT>
__device__ __forceinline__ void mmvq_k_rows(const MatmulParams& p0, int pair, float (&red)[MMV_WARPS][MMV_NT]) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int lt = threadIdx.x & 63; // thread within the row
    int r = pair * 2 + (warp >> 1);
    const MatmulParams p = mat_job(p0, r);
    const int t0 = blockIdx.y * NT;
    const bool row_ok = r < p.rows; // no early return: both rows meet at the barrier below
    const int nt = min(NT, p.n_tok - t0);
    const int nsb = p.cols / QK_K;
    const i64 a_row = (i64)nsb * Q8K_SIZE;
    const u8* wrow = p.w + (i64)(row_ok ? r : 0) * p.row_bytes;
    const u8* abase = p.a + (i64)t0 * a_row;
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;

    for (int k = lt; row_ok && k < 8 * nsb; k += 64) {
        const int sb = k >> 3, j = k & 7;
        int q[8];
        float d, dmin = 0.0f;
        int sc0, sc1 = 0, mn = 0;
        kq_group<TYPE>(wrow, sb, j, q, d, dmin, sc0, sc1, mn);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const u8* ab = abase + t * a_row + (i64)sb * Q8K_SIZE;
                const float da = *(const float*)ab;
                const int* ai = (const int*)(ab + 4 + 32 * j);
                const u32 bs = *(const u32*)(ab + 4 + QK_K + 4 * j);
                const int bs0 = (int)(short)(bs & 0xffff), bs1 = (int)(short)(bs >> 16);
                if (TYPE == 12 || TYPE == 13) {
                    int s = 0;
#pragma unroll
                    for (int i = 0; i < 8; ++i) s = __dp4a(q[i], ai[i], s);
                    acc[t] += (d * da) * (float)(sc0 * s);
                    acc[t] -= (dmin * da) * (float)(mn * (bs0 + bs1));
                } else {
                    int s0 = 0, s1 = 0;
#pragma unroll
                    for (int i = 0; i < 4; ++i) s0 = __dp4a(q[i], ai[i], s0);
#pragma unroll
                    for (int i = 4; i < 8; ++i) s1 = __dp4a(q[i], ai[i], s1);
                    // (q - 32) . a = q . a - 32 * sum(a); group sums are bsums.
                    acc[t] += (d * da) * (float)(sc0 * (s0 - 32 * bs0) + sc1 * (s1 - 32 * bs1));
                }
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        if (t < nt) {
            const float v = warp_sum(acc[t]);
            if (lane == 0) red[warp][t] = v;
        }
    }
    __syncthreads();
    if (row_ok && lt < nt) {
        const int w0 = warp & ~1;
        const float v = red[w0][lt] + red[w0 + 1][lt];
        float* o = p.out + (i64)(t0 + lt) * p.rows + r;
        *o = p.accumulate ? *o + v : v;
    }
}

// A launch of fewer thread blocks than row pairs takes pairs gridDim.x apart in each block.
template <int TYPE, int NT>
__device__ __forceinline__ void mmvq_k(const MatmulParams& p) {
    __shared__ float red[MMV_WARPS][MMV_NT];
    const int pairs = (mat_rows(p) + 1) / 2;
    for (int pair = blockIdx.x; pair < pairs; pair += gridDim.x) {
        mmvq_k_rows<TYPE, NT>(p, pair, red);
        __syncthreads(); // red is read by the rows' store before the next pair writes it
    }
}

// matmul_T: batches (8 tokens per thread block); matmul_T_1: one token.
#define MMVQ_K_KERNELS(name, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(MMV_THREADS) name(const MatmulParams p) {         \
        PDL_ENTRY();                                                                               \
        mmvq_k<T, MMV_NT>(p);                                                                      \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MMV_THREADS) name##_1(const MatmulParams p) {     \
        PDL_ENTRY();                                                                               \
        mmvq_k<T, 1>(p);                                                                           \
    }
MMVQ_K_KERNELS(matmul_q4_k, 12)
MMVQ_K_KERNELS(matmul_q5_k, 13)
MMVQ_K_KERNELS(matmul_q6_k, 14)
