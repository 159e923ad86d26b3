// Quantized matrix x activations products with int8 dp4a on Q8_1 activations (the structure of
// llama.cpp's mmvq): out[t][r] = W[r] . a[t]. One weight row per thread block of 128 threads
// (4 warps), MMV_NT tokens per thread block (grid.y covers the batch). The threads stride over
// the row's half-blocks (two threads share a 32-element weight block, each taking 16 of its
// quants), so a row of 2048 is one load per thread: the latency of a few dependent loads, not of
// a long loop, sets the time of a small product. Each weight block is read once per MMV_NT
// tokens; the per-block integer sums are exact, only the f32 accumulation order differs from
// the CPU (per thread, then a butterfly per warp, then the 4 warps in order).
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

// The 4 warps' sums of each token, added in warp order by the first nt threads; out[t][r].
__device__ __forceinline__ void mmv_store(const MatmulParams& p, float (&red)[MMV_WARPS][MMV_NT],
                                          const float* acc, int r, int t0, int nt) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int t = 0; t < MMV_NT; ++t) {
        if (t < nt) {
            const float v = warp_sum(acc[t]);
            if (lane == 0) red[warp][t] = v;
        }
    }
    __syncthreads();
    if ((int)threadIdx.x < nt) {
        const int t = threadIdx.x;
        float v = red[0][t];
#pragma unroll
        for (int w = 1; w < MMV_WARPS; ++w) v += red[w][t];
        float* o = p.out + (i64)(t0 + t) * p.rows + r;
        *o = p.accumulate ? *o + v : v;
    }
}

// Row `r` of the launch's row space (see mat_job), for the tokens of blockIdx.y.
template <int TYPE>
__device__ __forceinline__ void mmvq_row(const MatmulParams& p0, int r, float (&red)[MMV_WARPS][MMV_NT]) {
    const int tid = threadIdx.x;
    const MatmulParams p = mat_job(p0, r);
    const int t0 = blockIdx.y * MMV_NT;
    if (r >= p.rows) return;
    const int nt = min(MMV_NT, p.n_tok - t0);
    const int nb = p.cols / 32;
    const i64 a_row = (i64)nb * 36;
    const u8* wrow = p.w + (i64)r * p.row_bytes;
    const u8* abase = p.a + (i64)t0 * a_row;
    float acc[MMV_NT];
#pragma unroll
    for (int t = 0; t < MMV_NT; ++t) acc[t] = 0.0f;

    for (int k = tid; k < 2 * nb; k += MMV_THREADS) {
        const int b = k >> 1, h = k & 1;
        // q[0..4]: weight quants (as int8x4) that meet activation ints ai[0..4] below.
        int q[4];
        float d, m = 0.0f;
        int aidx[4];
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
            aidx[0] = 2 * h;
            aidx[1] = 2 * h + 1;
            aidx[2] = 4 + 2 * h;
            aidx[3] = 5 + 2 * h;
        } else {
            const u8* blk = wrow + (i64)b * 34;
            d = h2f(ld_u16(blk));
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                q[i] = ld_i32_a2(blk + 2 + 16 * h + 4 * i);
                aidx[i] = 4 * h + i;
            }
        }
#pragma unroll
        for (int t = 0; t < MMV_NT; ++t) {
            if (t < nt) {
                const u8* ab = abase + t * a_row + (i64)b * 36;
                const int* ai = (const int*)(ab + 4);
                const u32 ds = *(const u32*)ab;
                int sumi = 0;
#pragma unroll
                for (int i = 0; i < 4; ++i) sumi = __dp4a(q[i], ai[aidx[i]], sumi);
                const float da = h2f((u16)(ds & 0xffff));
                if (TYPE == TYPE_Q4_0 || TYPE == TYPE_Q5_0) { // x = d * (q - 8) or d * (q - 16)
                    int sa = 0;
#pragma unroll
                    for (int i = 0; i < 4; ++i) sa = __dp4a(0x01010101, ai[aidx[i]], sa);
                    sumi -= (TYPE == TYPE_Q4_0 ? 8 : 16) * sa;
                }
                acc[t] += (float)sumi * (d * da);
                // x = d * q + m: the offset meets the block's activation sum s once.
                if ((TYPE == TYPE_Q4_1 || TYPE == TYPE_Q5_1) && h == 0)
                    acc[t] += m * h2f((u16)(ds >> 16));
            }
        }
    }
    mmv_store(p, red, acc, r, t0, nt);
}

// A launch of fewer thread blocks than rows (many-row products: the logits) takes rows
// gridDim.x apart in each block.
template <int TYPE>
__device__ __forceinline__ void mmvq(const MatmulParams& p) {
    __shared__ float red[MMV_WARPS][MMV_NT];
    const int total = mat_rows(p);
    for (int r = blockIdx.x; r < total; r += gridDim.x) {
        mmvq_row<TYPE>(p, r, red);
        __syncthreads(); // red is read by the row's store before the next row writes it
    }
}

extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) matmul_q4_0(const MatmulParams p) { mmvq<TYPE_Q4_0>(p); }
extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) matmul_q4_1(const MatmulParams p) { mmvq<TYPE_Q4_1>(p); }
extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) matmul_q5_0(const MatmulParams p) { mmvq<TYPE_Q5_0>(p); }
extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) matmul_q5_1(const MatmulParams p) { mmvq<TYPE_Q5_1>(p); }
extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) matmul_q8_0(const MatmulParams p) { mmvq<TYPE_Q8_0>(p); }
