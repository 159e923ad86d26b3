// Quantized matrix x activations products with int8 dp4a on Q8_1 activations (the structure of
// llama.cpp's mmvq): out[t][r] = W[r] . a[t]. R weight rows per thread block of 128 threads
// (4 warps), NT tokens per thread block (grid.y covers the batch): R = 1, NT = MMV_NT for
// batches, R = 2, NT = 1 for a lone token (every thread has two rows' loads in flight and one
// token's registers: the 1B shape's decode step ran 1.38x faster on an H100 than with R = 1).
// The threads stride over the row's half-blocks (two threads share a 32-element weight block,
// each taking 16 of its quants), so a row of 2048 is one load per thread: the latency of a few
// dependent loads, not of a long loop, sets the time of a small product. Each weight block is
// read once per NT tokens; the per-block integer sums are exact, only the f32 accumulation order
// differs from the CPU (per thread, then a butterfly per warp, then the 4 warps in order), and it
// does not depend on R or NT.
//
// Weight layouts are ggml's: block_q4_0 {f16 d; u8 qs[16]} (18 B), block_q4_1 {f16 d, m; u8
// qs[16]} (20 B), block_q5_0 {f16 d; u8 qh[4]; u8 qs[16]} (22 B), block_q5_1 {f16 d, m; u8 qh[4];
// u8 qs[16]} (24 B), block_q8_0 {f16 d; i8 qs[32]} (34 B); Q8_1 activations {f16 d, s; i8 qs[32]}.
// In Q4 and Q5 blocks the low nibbles are elements 0..15 and the high nibbles elements 16..31;
// the fifth bit of Q5 element i is bit i of the little-endian u32 qh.

#define MMV_WARPS 4
#define MMV_THREADS (MMV_WARPS * 32)
#define MMV_NT 8
#define TYPE_Q4_0 2
#define TYPE_Q4_1 3
#define TYPE_Q5_0 6
#define TYPE_Q5_1 7
#define TYPE_Q8_0 8

// Bits 0..3 of b moved to bit 4 of bytes 0..3 (the fifth bit of four Q5 quants).
__device__ __forceinline__ int q5_high4(u32 b) {
    return (int)(((b & 1u) << 4) | ((b & 2u) << 11) | ((b & 4u) << 18) | ((b & 8u) << 25));
}

// The 4 warps' sums of each (row j, token t), added in warp order by the first R * NT threads;
// out_j[t][r_j] for the rows that exist.
template <int NT, int R>
__device__ __forceinline__ void mmv_store(const MatmulParams (&p)[R], const int (&r)[R],
                                          float (&red)[MMV_WARPS][MMV_NT], const float (&acc)[R][NT],
                                          int t0, int nt) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int j = 0; j < R; ++j) {
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const float v = warp_sum(acc[j][t]);
                if (lane == 0) red[warp][j * NT + t] = v;
            }
        }
    }
    __syncthreads();
    const int x = threadIdx.x, j = x / NT, t = x % NT;
    if (x < R * NT && t < nt) {
        // Thread x stores row j's token t; the loop over constant indices keeps p and r in
        // registers (p[j] would put them in local memory).
#pragma unroll
        for (int jj = 0; jj < R; ++jj) {
            if (jj == j && r[jj] < p[jj].rows) {
                float v = red[0][x];
#pragma unroll
                for (int w = 1; w < MMV_WARPS; ++w) v += red[w][x];
                float* o = p[jj].out + (i64)(t0 + t) * p[jj].rows + r[jj];
                *o = p[jj].accumulate ? *o + v : v;
            }
        }
    }
}

// Half-block h of weight block b of a row: its quants as int8x4 (q[0..4]), which meet the
// activation ints aidx[0..4] of the block, and its scale d (and offset m, Q4_1 / Q5_1).
template <int TYPE>
__device__ __forceinline__ void mmvq_half(const u8* wrow, int b, int h, int (&q)[4], float& d, float& m) {
    m = 0.0f;
    if (TYPE != TYPE_Q8_0) {
        // Block size and offset of qs; Q5 blocks have qh just before qs.
        const int bsz = TYPE == TYPE_Q4_0 ? 18 : TYPE == TYPE_Q4_1 ? 20 : TYPE == TYPE_Q5_0 ? 22 : 24;
        const int qoff = TYPE == TYPE_Q4_0 ? 2 : TYPE == TYPE_Q4_1 ? 4 : TYPE == TYPE_Q5_0 ? 6 : 8;
        const u8* blk = wrow + (i64)b * bsz;
        d = h2f(ld_u16(blk));
        if (TYPE == TYPE_Q4_1 || TYPE == TYPE_Q5_1) m = h2f(ld_u16(blk + 2));
        // This lane takes packed ints 2h, 2h+1: low nibbles = elements 8h..8h+8,
        // high nibbles = elements 16+8h..16+8h+8.
        int v0, v1;
        if (TYPE == TYPE_Q4_0 || TYPE == TYPE_Q5_0) { // 18- and 22-byte blocks: 2-byte aligned
            v0 = ld_i32_a2(blk + qoff + 8 * h);
            v1 = ld_i32_a2(blk + qoff + 8 * h + 4);
        } else {
            v0 = *(const int*)(blk + qoff + 8 * h);
            v1 = *(const int*)(blk + qoff + 8 * h + 4);
        }
        q[0] = v0 & 0x0f0f0f0f;
        q[1] = v1 & 0x0f0f0f0f;
        q[2] = (v0 >> 4) & 0x0f0f0f0f;
        q[3] = (v1 >> 4) & 0x0f0f0f0f;
        if (TYPE == TYPE_Q5_0 || TYPE == TYPE_Q5_1) {
            const u32 qh = (u32)ld_i32_a2(blk + qoff - 4);
            q[0] |= q5_high4(qh >> (8 * h));
            q[1] |= q5_high4(qh >> (8 * h + 4));
            q[2] |= q5_high4(qh >> (16 + 8 * h));
            q[3] |= q5_high4(qh >> (20 + 8 * h));
        }
    } else {
        const u8* blk = wrow + (i64)b * 34;
        d = h2f(ld_u16(blk));
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = ld_i32_a2(blk + 2 + 16 * h + 4 * i);
    }
}

// Rows r0 .. r0 + R of the launch's row space (see mat_job; they may belong to different
// products of a fused launch), for the NT tokens of blockIdx.y. NT = 8 for batches, NT = 1 for
// a lone token (fewer registers: more thread blocks resident, more loads in flight); R = 2
// issues two rows' loads back to back in each thread.
template <int TYPE, int NT, int R>
__device__ __forceinline__ void mmvq_rows(const MatmulParams& p0, int r0, float (&red)[MMV_WARPS][MMV_NT]) {
    const int tid = threadIdx.x;
    MatmulParams p[R];
    int r[R];
    const u8* wrow[R];
#pragma unroll
    for (int j = 0; j < R; ++j) {
        r[j] = r0 + j;
        p[j] = mat_job(p0, r[j]);
        wrow[j] = p[j].w + (i64)(r[j] < p[j].rows ? r[j] : 0) * p[j].row_bytes;
    }
    if (r[0] >= p[0].rows) return; // the whole block: no row of it exists
    const int t0 = blockIdx.y * NT;
    const int nt = min(NT, p0.n_tok - t0);
    const int nb = p0.cols / 32;
    const i64 a_row = (i64)nb * 36;
    const u8* abase = p0.a + (i64)t0 * a_row;
    float acc[R][NT];
#pragma unroll
    for (int j = 0; j < R; ++j)
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[j][t] = 0.0f;

    for (int k = tid; k < 2 * nb; k += MMV_THREADS) {
        const int b = k >> 1, h = k & 1;
        // q[j][0..4]: row j's weight quants (as int8x4) that meet activation ints ai[aidx[0..4]].
        int q[R][4];
        float d[R], m[R];
#pragma unroll
        for (int j = 0; j < R; ++j) mmvq_half<TYPE>(wrow[j], b, h, q[j], d[j], m[j]);
        int aidx[4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
            aidx[i] = TYPE == TYPE_Q8_0 ? 4 * h + i : (i < 2 ? 2 * h + i : 2 + 2 * h + i);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < nt) {
                const u8* ab = abase + t * a_row + (i64)b * 36;
                const int* ai = (const int*)(ab + 4);
                const u32 ds = *(const u32*)ab;
                int a[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) a[i] = ai[aidx[i]];
                const float da = h2f((u16)(ds & 0xffff));
                int sa = 0;
                if (TYPE == TYPE_Q4_0 || TYPE == TYPE_Q5_0) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) sa = __dp4a(0x01010101, a[i], sa);
                }
#pragma unroll
                for (int j = 0; j < R; ++j) {
                    int sumi = 0;
#pragma unroll
                    for (int i = 0; i < 4; ++i) sumi = __dp4a(q[j][i], a[i], sumi);
                    // x = d * (q - 8) or d * (q - 16)
                    if (TYPE == TYPE_Q4_0 || TYPE == TYPE_Q5_0) sumi -= (TYPE == TYPE_Q4_0 ? 8 : 16) * sa;
                    acc[j][t] += (float)sumi * (d[j] * da);
                    // x = d * q + m: the offset meets the block's activation sum s once.
                    if ((TYPE == TYPE_Q4_1 || TYPE == TYPE_Q5_1) && h == 0)
                        acc[j][t] += m[j] * h2f((u16)(ds >> 16));
                }
            }
        }
    }
    mmv_store<NT, R>(p, r, red, acc, t0, nt);
}

// A launch of fewer thread blocks than row groups (many-row products: the logits) takes groups
// gridDim.x apart in each block.
template <int TYPE, int NT, int R>
__device__ __forceinline__ void mmvq(const MatmulParams& p) {
    __shared__ float red[MMV_WARPS][MMV_NT];
    const int groups = (mat_rows(p) + R - 1) / R;
    for (int g = blockIdx.x; g < groups; g += gridDim.x) {
        mmvq_rows<TYPE, NT, R>(p, g * R, red);
        __syncthreads(); // red is read by the rows' store before the next rows write it
    }
}

// matmul_T: batches (8 tokens per thread block, one row); matmul_T_1: one token, one row per
// thread block; matmul_T_1x2: one token, two rows per thread block.
#define MMVQ_KERNELS(name, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(MMV_THREADS) name(const MatmulParams p) {         \
        PDL_ENTRY();                                                                               \
        mmvq<T, MMV_NT, 1>(p);                                                                     \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MMV_THREADS) name##_1(const MatmulParams p) {     \
        PDL_ENTRY();                                                                               \
        mmvq<T, 1, 1>(p);                                                                          \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(MMV_THREADS) name##_1x2(const MatmulParams p) {   \
        PDL_ENTRY();                                                                               \
        mmvq<T, 1, 2>(p);                                                                          \
    }
MMVQ_KERNELS(matmul_q4_0, TYPE_Q4_0)
MMVQ_KERNELS(matmul_q4_1, TYPE_Q4_1)
MMVQ_KERNELS(matmul_q5_0, TYPE_Q5_0)
MMVQ_KERNELS(matmul_q5_1, TYPE_Q5_1)
MMVQ_KERNELS(matmul_q8_0, TYPE_Q8_0)
