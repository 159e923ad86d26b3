// Quantized matrix products for many tokens on the tensor cores (the structure of llama.cpp's
// MMQ): out[t][r] = W[r] . a[t] for a tile of BM weight rows x BN tokens per thread block.
// Each step of the K loop stages 256 elements (8 blocks of 32) of the tile's weight rows and of
// its tokens' activations in shared memory as int8 (the weights' offsets folded in: q - 8 for
// Q4_0, q - 16 for Q5_0, q - 32 for Q6_K), with their scales, then each of the 4 warps multiplies
// its part with int8 `mma.sync` (m16n8k32; m16n8k16 for Q6_K's 16-element scales). Each
// block's integer sums are exact, as in mmvq.cu and kquants.cu. Q4_0..Q8_0 blocks are scaled
// with the same float expressions as there; a K-quant K step is one super-block, whose
// integer sums times their group scales are added as integers and scaled once (as the CPU's
// dot products do), where kquants.cu scales each group. The order of the float accumulation
// differs too (block by block here, lane-strided then a butterfly there), so a row's result
// differs from the matrix-vector kernels' in the last bits. The executor takes this path from
// MMQ_MIN_TOKENS tokens on devices of compute capability 8.0 or more. Each kernel comes in
// three tile shapes: 64 rows x 64 tokens (`mmq_*`), 16 x 32 (`mmq_*_s`) for products whose
// large tiles would not fill the GPU, and 64 x 16 (`mmq_*_n`) for batches of up to 16 tokens
// (decode of 16 sequences): the result does not depend on the shape.
//
// Split K: with gridDim.z = S > 1, split z of a tile sums K steps [z n / S, (z + 1) n / S) of
// the tile's n, writes its partial sums to p.part, and the split that arrives last (a counter
// per tile in p.count, reset by that split) adds the S partials in the order z = 0, 1, ... and
// writes the output. The result is deterministic, and depends on S (float addition is not
// associative): S is chosen per launch by the executor (launch.rs), so that products with few
// tiles still fill the multiprocessors.
//
// Activations: Q8_1 blocks (36 B) for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; Q8_K super-blocks (292 B)
// for Q4_K, Q5_K, Q6_K (as the matrix-vector kernels read).

#define MMQ_KB 8
// Ints per staged row: 8 blocks of 8 ints, and 4 more so that the 8 rows a warp's lanes read
// at once fall in different banks.
#define MMQ_LDI (MMQ_KB * 8 + 4)

// One thread block's staged K step: BM weight rows and BN tokens (64 x 64 for large products,
// 16 x 32 when the large tiles would leave the multiprocessors idle, 64 x 16 for few tokens).
template <int BM, int BN>
struct MmqTile {
    int w[BM * MMQ_LDI];     // weight quants, 4 int8 per int
    int a[BN * MMQ_LDI];     // activation quants
    float wd[BM][MMQ_KB];    // weight block scale (d)
    float wm[BM][MMQ_KB];    // weight block offset (m; dmin for Q4_K / Q5_K)
    int ws[BM][MMQ_KB];      // weight sub-scales (Q4_K / Q5_K: sc | mn << 8; Q6_K: sc0, sc1 bytes)
    float ad[BN][MMQ_KB];    // activation scale
    float as[BN][MMQ_KB];    // activation sum (Q8_1: s; Q8_K: the two group sums, as int bits)
};

__device__ __forceinline__ void mma_k32(int c[4], const int a[4], int b0, int b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void mma_k16(int c[4], int a0, int a1, int b0) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, "
                 "{%4, %5}, {%6}, {%0, %1, %2, %3};"
                 : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0));
}

// Stage block `b` of weight row `r` (int8 quants into q[0..8], elements 4i..4i+3 in q[i]).
template <int TYPE>
__device__ __forceinline__ void mmq_load_w(const MatmulParams& p, int r, int b, int* q, float& d,
                                           float& m, int& s) {
    const u8* wrow = p.w + (i64)r * p.row_bytes;
    m = 0.0f;
    s = 0;
    if (TYPE == TYPE_Q8_0) {
        const u8* blk = wrow + (i64)b * 34;
        d = h2f(ld_u16(blk));
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = ld_i32_a2(blk + 2 + 4 * i);
    } else if (TYPE == TYPE_Q4_0 || TYPE == TYPE_Q4_1 || TYPE == TYPE_Q5_0 || TYPE == TYPE_Q5_1) {
        const int bsz = TYPE == TYPE_Q4_0 ? 18 : TYPE == TYPE_Q4_1 ? 20 : TYPE == TYPE_Q5_0 ? 22 : 24;
        const int qoff = TYPE == TYPE_Q4_0 ? 2 : TYPE == TYPE_Q4_1 ? 4 : TYPE == TYPE_Q5_0 ? 6 : 8;
        const u8* blk = wrow + (i64)b * bsz;
        d = h2f(ld_u16(blk));
        if (TYPE == TYPE_Q4_1 || TYPE == TYPE_Q5_1) m = h2f(ld_u16(blk + 2));
        u32 qh = 0;
        if (TYPE == TYPE_Q5_0 || TYPE == TYPE_Q5_1) qh = (u32)ld_i32_a2(blk + qoff - 4);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int v = ld_i32_a2(blk + qoff + 4 * i);
            int lo = v & 0x0f0f0f0f, hi = (v >> 4) & 0x0f0f0f0f;
            if (TYPE == TYPE_Q5_0 || TYPE == TYPE_Q5_1) {
                lo |= q5_high4(qh >> (4 * i));
                hi |= q5_high4(qh >> (16 + 4 * i));
            }
            if (TYPE == TYPE_Q4_0) { lo = __vsub4(lo, 0x08080808); hi = __vsub4(hi, 0x08080808); }
            if (TYPE == TYPE_Q5_0) { lo = __vsub4(lo, 0x10101010); hi = __vsub4(hi, 0x10101010); }
            q[i] = lo;
            q[4 + i] = hi;
        }
    } else { // K-quants: block b = group b % 8 of super-block b / 8 (kquants.cu's kq_group)
        int sc0, sc1, mn;
        kq_group<TYPE>(wrow, b >> 3, b & 7, q, d, m, sc0, sc1, mn);
        if (TYPE == 14) { // Q6_K: the -32 offset folded into the quants; both scales' bytes
#pragma unroll
            for (int i = 0; i < 8; ++i) q[i] = __vsub4(q[i], 0x20202020);
            s = (sc0 & 0xff) | ((sc1 & 0xff) << 8);
        } else {
            s = sc0 | (mn << 8);
        }
    }
}

// One staged (row, block) pair `e` of the K step at block kb0 (nk blocks): its quants and
// scales, zeros past the matrix.
template <int TYPE>
__device__ __forceinline__ void mmq_fetch_w(const MatmulParams& p, int r0, int kb0, int nk, int e,
                                            int* q, float& d, float& m, int& s) {
    const int i = e / MMQ_KB, kb = e % MMQ_KB;
    if (r0 + i < p.rows && kb < nk) {
        mmq_load_w<TYPE>(p, r0 + i, kb0 + kb, q, d, m, s);
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) q[k] = 0;
        d = 0.0f;
        m = 0.0f;
        s = 0;
    }
}

// One staged (token, block) pair: Q8_1 (d, s) or Q8_K (d, the block's two group sums: an
// integer, kept as its bits in the float).
__device__ __forceinline__ void mmq_fetch_a(const MatmulParams& p, bool kq, i64 a_row, int t0,
                                            int kb0, int nk, int e, int* q, float& d, float& s) {
    const int i = e / MMQ_KB, kb = e % MMQ_KB;
    d = 0.0f;
    s = 0.0f;
    if (t0 + i < p.n_tok && kb < nk) {
        const u8* arow = p.a + (i64)(t0 + i) * a_row;
        const int b = kb0 + kb;
        const u8* src;
        if (kq) {
            const u8* ab = arow + (i64)(b >> 3) * Q8K_SIZE;
            const int j = b & 7;
            d = *(const float*)ab;
            const u32 bs = *(const u32*)(ab + 4 + QK_K + 4 * j);
            s = __int_as_float((int)(short)(bs & 0xffff) + (int)(short)(bs >> 16));
            src = ab + 4 + 32 * j;
        } else {
            const u8* ab = arow + (i64)b * 36;
            const u32 ds = *(const u32*)ab;
            d = h2f((u16)(ds & 0xffff));
            s = h2f((u16)(ds >> 16));
            src = ab + 4;
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) q[k] = ((const int*)src)[k];
    } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) q[k] = 0;
    }
}

// 4 warps; warp w computes rows wr + [0, 16 MT) and tokens wt + [0, 8 NT) of the tile.
template <int TYPE, int BM, int BN>
__device__ __forceinline__ void mmq(const MatmulParams& p0) {
    constexpr int WM = BM == 64 ? (BN == 16 ? 4 : 2) : 1, WN = 4 / WM;
    constexpr int MT = BM / WM / 16, NT = BN / WN / 8;
    __shared__ MmqTile<BM, BN> sm;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tig = lane & 3;
    // A fused launch's products each start on a tile boundary (the launcher checks).
    int r0 = blockIdx.x * BM;
    const MatmulParams p = mat_job(p0, r0);
    const int t0 = blockIdx.y * BN;
    const bool kq = TYPE == 12 || TYPE == 13 || TYPE == 14;
    const int nb = p.cols / 32;
    const i64 a_row = kq ? (i64)(p.cols / QK_K) * Q8K_SIZE : (i64)nb * 36;
    const int wr = (warp % WM) * (16 * MT), wt = (warp / WM) * (8 * NT);
    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) acc[i][j][k] = 0.0f;
    // K-quants: the K step's integer sums (each scaled by its group's 6- or 8-bit scale).
    int isum[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) isum[i][j][k] = 0;

    // The 16 x 32 and 64 x 16 tiles (few per multiprocessor's worth of work, long K loops)
    // pipeline their staging: the next K step's blocks are loaded into registers while the warps
    // multiply the current one, so the global loads' latency is paid once, not per step. The
    // 64 x 64 tiles load just before storing (held across the multiply, their 4 + 4 pairs per
    // thread would take 210 registers and leave 2 thread blocks per multiprocessor instead of
    // 5). Each of the 128 threads takes PW (row, block) and PA (token, block) pairs.
    constexpr bool PF = BM != 64 || BN == 16;
    // This split's K steps (all of them without split K).
    const int n_steps = (nb + MMQ_KB - 1) / MMQ_KB;
    const int k_begin = (int)((i64)blockIdx.z * n_steps / gridDim.z) * MMQ_KB;
    const int k_end = min(nb, (int)((i64)(blockIdx.z + 1) * n_steps / gridDim.z) * MMQ_KB);
    constexpr int PW = BM * MMQ_KB / 128, PA = BN * MMQ_KB / 128;
    int wq[PW][8], wsr[PW], aq[PA][8];
    float wdr[PW], wmr[PW], adr[PA], asr[PA];
#define MMQ_FETCH(KB0)                                                                          \
    {                                                                                          \
        const int nk = min(MMQ_KB, nb - (KB0));                                                \
        _Pragma("unroll") for (int j = 0; j < PW; ++j)                                         \
            mmq_fetch_w<TYPE>(p, r0, (KB0), nk, tid + 128 * j, wq[j], wdr[j], wmr[j], wsr[j]); \
        _Pragma("unroll") for (int j = 0; j < PA; ++j)                                         \
            mmq_fetch_a(p, kq, a_row, t0, (KB0), nk, tid + 128 * j, aq[j], adr[j], asr[j]);    \
    }
    if (PF) MMQ_FETCH(k_begin)
    for (int kb0 = k_begin; kb0 < k_end; kb0 += MMQ_KB) {
        const int nkb = min(MMQ_KB, nb - kb0);
        if (!PF) {
            // One pair at a time (not unrolled: the loads of one pair in flight, few registers).
#pragma unroll 1
            for (int j = 0; j < PW; ++j) {
                const int e = tid + 128 * j, i = e / MMQ_KB, kb = e % MMQ_KB;
                int q[8], sc;
                float d, m;
                mmq_fetch_w<TYPE>(p, r0, kb0, nkb, e, q, d, m, sc);
#pragma unroll
                for (int k = 0; k < 8; ++k) sm.w[i * MMQ_LDI + kb * 8 + k] = q[k];
                sm.wd[i][kb] = d;
                sm.wm[i][kb] = m;
                sm.ws[i][kb] = sc;
            }
#pragma unroll 1
            for (int j = 0; j < PA; ++j) {
                const int e = tid + 128 * j, i = e / MMQ_KB, kb = e % MMQ_KB;
                int q[8];
                float d, sa;
                mmq_fetch_a(p, kq, a_row, t0, kb0, nkb, e, q, d, sa);
#pragma unroll
                for (int k = 0; k < 8; ++k) sm.a[i * MMQ_LDI + kb * 8 + k] = q[k];
                sm.ad[i][kb] = d;
                sm.as[i][kb] = sa;
            }
        } else {
#pragma unroll
            for (int j = 0; j < PW; ++j) {
                const int e = tid + 128 * j, i = e / MMQ_KB, kb = e % MMQ_KB;
#pragma unroll
                for (int k = 0; k < 8; ++k) sm.w[i * MMQ_LDI + kb * 8 + k] = wq[j][k];
                sm.wd[i][kb] = wdr[j];
                sm.wm[i][kb] = wmr[j];
                sm.ws[i][kb] = wsr[j];
            }
#pragma unroll
            for (int j = 0; j < PA; ++j) {
                const int e = tid + 128 * j, i = e / MMQ_KB, kb = e % MMQ_KB;
#pragma unroll
                for (int k = 0; k < 8; ++k) sm.a[i * MMQ_LDI + kb * 8 + k] = aq[j][k];
                sm.ad[i][kb] = adr[j];
                sm.as[i][kb] = asr[j];
            }
        }
        __syncthreads();
        if (PF && kb0 + MMQ_KB < k_end) MMQ_FETCH(kb0 + MMQ_KB)

        for (int kb = 0; kb < nkb; ++kb) {
            // A fragments (m16 x k32): rows g and g + 8, ints tig and 4 + tig of the block.
            int af[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int* w0 = sm.w + (wr + mt * 16 + g) * MMQ_LDI + kb * 8 + tig;
                const int* w1 = w0 + 8 * MMQ_LDI;
                af[mt][0] = w0[0];
                af[mt][1] = w1[0];
                af[mt][2] = w0[4];
                af[mt][3] = w1[4];
            }
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                // B fragment (k32 x n8): token g, ints tig and 4 + tig.
                const int* a0 = sm.a + (wt + nt * 8 + g) * MMQ_LDI + kb * 8 + tig;
                const int b0 = a0[0], b1 = a0[4];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    int c[4] = {0, 0, 0, 0};
                    int c2[4] = {0, 0, 0, 0};
                    if (TYPE == 14) {
                        mma_k16(c, af[mt][0], af[mt][1], b0);
                        mma_k16(c2, af[mt][2], af[mt][3], b1);
                    } else {
                        mma_k32(c, af[mt], b0, b1);
                    }
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        // c[k]: row wr + mt*16 + g (+8 for k >= 2), token wt + nt*8 + 2*tig (+1 odd k).
                        const int r = wr + mt * 16 + g + 8 * (k >> 1);
                        const int t = wt + nt * 8 + 2 * tig + (k & 1);
                        if (!kq) {
                            acc[mt][nt][k] += (float)c[k] * (sm.wd[r][kb] * sm.ad[t][kb]);
                            if (TYPE == TYPE_Q4_1 || TYPE == TYPE_Q5_1)
                                acc[mt][nt][k] += sm.wm[r][kb] * sm.as[t][kb];
                        } else if (TYPE == 12 || TYPE == 13) {
                            isum[mt][nt][k] += (sm.ws[r][kb] & 0xff) * c[k];
                        } else {
                            const int s = sm.ws[r][kb];
                            const int sc0 = (int)(i8)(s & 0xff), sc1 = (int)(i8)(s >> 8);
                            isum[mt][nt][k] += sc0 * c[k] + sc1 * c2[k];
                        }
                    }
                }
            }
        }
        if (kq) {
            // The K step was one super-block: its integer sums, scaled once (d of the weight
            // row's super-block times d of the token's Q8_K super-block), less the mins' term.
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const int r = wr + mt * 16 + g + 8 * (k >> 1);
                        const int t = wt + nt * 8 + 2 * tig + (k & 1);
                        const float ad = sm.ad[t][0];
                        acc[mt][nt][k] += (sm.wd[r][0] * ad) * (float)isum[mt][nt][k];
                        isum[mt][nt][k] = 0;
                        if (TYPE == 12 || TYPE == 13) {
                            int mins = 0;
#pragma unroll
                            for (int kb = 0; kb < MMQ_KB; ++kb)
                                mins += (sm.ws[r][kb] >> 8) * __float_as_int(sm.as[t][kb]);
                            acc[mt][nt][k] -= (sm.wm[r][0] * ad) * (float)mins;
                        }
                    }
        }
        __syncthreads();
    }

    if (gridDim.z > 1) {
        // Split K: this split's partial sums to p.part ([tile][split][element][thread]); the
        // last split to arrive adds them up in split order.
        constexpr int E = MT * NT * 4;
        const int tile = blockIdx.x + gridDim.x * blockIdx.y;
        float* part = p.part + (i64)tile * gridDim.z * (E * 128);
#pragma unroll
        for (int e = 0; e < E; ++e)
            part[((i64)blockIdx.z * E + e) * 128 + tid] = acc[e / (NT * 4)][(e / 4) % NT][e % 4];
        __threadfence();
        __syncthreads();
        __shared__ int last;
        if (tid == 0) last = atomicAdd(p.count + tile, 1u) == gridDim.z - 1;
        __syncthreads();
        if (!last) return;
        __threadfence();
#pragma unroll
        for (int e = 0; e < E; ++e) {
            float& a = acc[e / (NT * 4)][(e / 4) % NT][e % 4];
            const float own = a;
            float sum = blockIdx.z == 0 ? own : __ldcg(part + e * 128 + tid);
            for (int z = 1; z < (int)gridDim.z; ++z)
                sum += z == (int)blockIdx.z ? own : __ldcg(part + ((i64)z * E + e) * 128 + tid);
            a = sum;
        }
        if (tid == 0) p.count[tile] = 0; // ready for the next launch
    }

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const int r = r0 + wr + mt * 16 + g + 8 * (k >> 1);
                const int t = t0 + wt + nt * 8 + 2 * tig + (k & 1);
                if (r < p.rows && t < p.n_tok) {
                    float* o = p.out + (i64)t * p.rows + r;
                    *o = p.accumulate ? *o + acc[mt][nt][k] : acc[mt][nt][k];
                }
            }
}

#undef MMQ_FETCH

#if __CUDA_ARCH__ >= 800
#define MMQ_BODY(T, M, N) mmq<T, M, N>(p);
#else
#define MMQ_BODY(T, M, N) // the executor never launches these below compute capability 8.0
#endif
#define MMQ_KERNELS(name, T) \
    extern "C" __global__ void __launch_bounds__(128) name(const MatmulParams p) { PDL_ENTRY(); MMQ_BODY(T, 64, 64) } \
    extern "C" __global__ void __launch_bounds__(128) name##_s(const MatmulParams p) { PDL_ENTRY(); MMQ_BODY(T, 16, 32) } \
    extern "C" __global__ void __launch_bounds__(128) name##_n(const MatmulParams p) { PDL_ENTRY(); MMQ_BODY(T, 64, 16) }
MMQ_KERNELS(mmq_q4_0, TYPE_Q4_0)
MMQ_KERNELS(mmq_q4_1, TYPE_Q4_1)
MMQ_KERNELS(mmq_q5_0, TYPE_Q5_0)
MMQ_KERNELS(mmq_q5_1, TYPE_Q5_1)
MMQ_KERNELS(mmq_q8_0, TYPE_Q8_0)
MMQ_KERNELS(mmq_q4_k, 12)
MMQ_KERNELS(mmq_q5_k, 13)
MMQ_KERNELS(mmq_q6_k, 14)
