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
// MMQ_MIN_TOKENS tokens (MMQ_MIN_TOKENS_KQUANT for K-quants) on devices of compute capability
// 8.0 or more. Each kernel comes in three tile shapes: 64 rows x 64 tokens (`mmq_*`), 16 x 32
// (`mmq_*_s`) for products whose large tiles would not fill the GPU, and 64 x 16 (`mmq_*_n`)
// for batches of up to 16 tokens (decode of up to 16 sequences; for Q4_0 and Q4_K the weights
// go straight to the fragments, mmq_direct below, and those serve up to 64 / 128 tokens too:
// launch.rs, MMQ_DIRECT_TOKENS): the result does not depend on the shape.
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

// f(mt, nt, k, r, t) for each element k of each of a thread's mma accumulators [mt][nt]: row
// wr + mt*16 + g (+8 for k >= 2) and token wt + nt*8 + 2*tig (+1 for odd k) of the tile.
template <int MT, int NT, class F>
__device__ __forceinline__ void mmq_each(int wr, int wt, F f) {
    const int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int k = 0; k < 4; ++k)
                f(mt, nt, k, wr + mt * 16 + g + 8 * (k >> 1), wt + nt * 8 + 2 * tig + (k & 1));
}

// The tile's results out: with split K (gridDim.z > 1), this split's partial sums to p.part
// ([tile][split][element][thread]), and the last split to arrive adds them up in split order;
// then each thread's elements (rows wr + mt*16 + g (+8), tokens wt + nt*8 + 2*tig (+1)).
template <int MT, int NT>
__device__ __forceinline__ void mmq_store(const MatmulParams& p, float (&acc)[MT][NT][4], int r0,
                                          int t0, int wr, int wt) {
    const int tid = threadIdx.x;
    if (gridDim.z > 1) {
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

    mmq_each<MT, NT>(r0 + wr, t0 + wt, [&](int mt, int nt, int k, int r, int t) {
        if (r < p.rows && t < p.n_tok) {
            float* o = p.out + (i64)t * p.rows + r;
            *o = p.accumulate ? *o + acc[mt][nt][k] : acc[mt][nt][k];
        }
    });
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
    // K-quants: the K step's integer sums (each scaled by its group's 6- or 8-bit scale).
    int isum[MT][NT][4];
    mmq_each<MT, NT>(0, 0, [&](int mt, int nt, int k, int, int) {
        acc[mt][nt][k] = 0.0f;
        isum[mt][nt][k] = 0;
    });

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
            // row's super-block times d of the token's Q8_K super-block), less the mins' term,
            // an integer dot product over the step's groups summed in isum again (the group
            // loop not unrolled in the 64 x 64 tiles: there its shared loads were hoisted into
            // 60 more registers; unrolled in the others, 3% faster at 16 sequences).
            mmq_each<MT, NT>(wr, wt, [&](int mt, int nt, int k, int r, int t) {
                acc[mt][nt][k] += (sm.wd[r][0] * sm.ad[t][0]) * (float)isum[mt][nt][k];
                isum[mt][nt][k] = 0;
            });
            if (TYPE == 12 || TYPE == 13) {
                constexpr int MU = BM == 64 && BN == 64 ? 1 : MMQ_KB;
#pragma unroll 1
                for (int kg = 0; kg < MMQ_KB; kg += MU)
#pragma unroll
                    for (int u = 0; u < MU; ++u)
                        mmq_each<MT, NT>(wr, wt, [&](int mt, int nt, int k, int r, int t) {
                            const int bsum = __float_as_int(sm.as[t][kg + u]);
                            isum[mt][nt][k] += (sm.ws[r][kg + u] >> 8) * bsum;
                        });
                mmq_each<MT, NT>(wr, wt, [&](int mt, int nt, int k, int r, int t) {
                    acc[mt][nt][k] -= (sm.wm[r][0] * sm.ad[t][0]) * (float)isum[mt][nt][k];
                    isum[mt][nt][k] = 0;
                });
            }
        }
        __syncthreads();
    }

    mmq_store<MT, NT>(p, acc, r0, t0, wr, wt);
}


// ---- The 64 x 16 tiles of Q4_0 and Q4_K, weights straight into the fragments ----
//
// Decoding 16 tokens, the staged 64 x 16 tiles were latency bound (ncu, 1B Q4_K: a quarter of a
// scheduler's cycles issued, 8 to 15% of DRAM bandwidth) on the instructions of staging the
// weights through shared memory: most of a K step's. Here each warp's 16 weight rows go from
// global memory into its own mma A fragments: thread (g, tig) loads the ints of rows g and g + 8
// that its fragments hold (ints tig and 4 + tig of each 32-element block), one K step ahead, as
// they lie in the block (nibbles, scale bytes), and unpacks them where they are multiplied; only
// the 16 tokens' activations are staged. The sums and their order are the staged tiles' (the
// same bits).

// One thread's raw weight ints for a K step: Q4_0, per block: int tig of the 16 nibble bytes
// (elements 4 tig.. in its low nibbles, 16 + 4 tig.. in its high ones) and d, rows g and g + 8.
struct DwQ4_0 {
    int q[MMQ_KB][2];
    int d[MMQ_KB][2];
};
// Q4_K (a K step is one super-block): the ints at 32 c + 16 h + 4 tig of the quants (chunk c
// holds groups 2c, low nibbles, and 2c + 1, high), d | dmin << 16, the 12 scale bytes.
struct DwQ4_K {
    int q[2][8];
    u32 dm[2];
    u32 sc[2][3];
};

__device__ __forceinline__ void dw_load(const MatmulParams& p, int row, int rr, int kb0, int nk,
                                        int tig, DwQ4_0& w) {
    const bool ok = row < p.rows;
    const u8* wrow = p.w + (i64)(ok ? row : 0) * p.row_bytes;
    // Rows of an even number of blocks from a 4-byte aligned base: a pair of blocks (36 bytes)
    // is 9 aligned ints, from which 5 loads give both blocks' ints tig and d (kb0 is even).
    if (ok && nk == MMQ_KB && (p.row_bytes & 3) == 0 && ((size_t)p.w & 3) == 0) {
#pragma unroll
        for (int m = 0; m < MMQ_KB / 2; ++m) {
            const u32* w32 = (const u32*)(wrow + (i64)(kb0 + 2 * m) * 18);
            const u32 i0 = w32[0], lo = w32[tig], hi = w32[tig + 1], i4 = w32[4];
            w.d[2 * m][rr] = (int)(i0 & 0xffff);
            w.q[2 * m][rr] = (int)__byte_perm(lo, hi, 0x5432); // bytes 2 + 4 tig .. 5 + 4 tig
            w.d[2 * m + 1][rr] = (int)(i4 >> 16);
            w.q[2 * m + 1][rr] = (int)w32[5 + tig]; // bytes 20 + 4 tig ..
        }
        return;
    }
#pragma unroll
    for (int kb = 0; kb < MMQ_KB; ++kb) {
        if (ok && kb < nk) {
            const u8* blk = wrow + (i64)(kb0 + kb) * 18;
            w.q[kb][rr] = ld_i32_a2(blk + 2 + 4 * tig);
            w.d[kb][rr] = ld_u16(blk);
        } else {
            w.q[kb][rr] = (int)0x88888888u; // nibbles 8: zeros once the offset is taken off
            w.d[kb][rr] = 0;
        }
    }
}

__device__ __forceinline__ void dw_load(const MatmulParams& p, int row, int rr, int kb0, int nk,
                                        int tig, DwQ4_K& w) {
    const bool ok = row < p.rows && nk > 0;
    const u8* blk = p.w + (i64)(ok ? row : 0) * p.row_bytes + (i64)(kb0 >> 3) * 144;
    w.dm[rr] = ok ? *(const u32*)blk : 0u;
#pragma unroll
    for (int i = 0; i < 3; ++i) w.sc[rr][i] = ok ? *(const u32*)(blk + 4 + 4 * i) : 0u;
#pragma unroll
    for (int i = 0; i < 8; ++i)
        w.q[rr][i] = ok ? *(const int*)(blk + 16 + 32 * (i >> 1) + 16 * (i & 1) + 4 * tig) : 0;
}

// Block kb's A fragment (rows g, g + 8 x ints tig, 4 + tig, as mmq's af), the rows' d (Q4_0)
// or their group scale and min (Q4_K).
__device__ __forceinline__ void dw_frag(const DwQ4_0& w, int kb, int af[4], float wd[2], int sc[2],
                                        int mn[2]) {
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        // Each byte's nibble b less 8 without a byte-wise subtraction: b ^ 8 is b - 8 where bit
        // 3 is set; where it is clear, b ^ 8 = b + 8 and the byte's top 4 bits are set too.
        const int v = w.q[kb][rr];
        const int lo = v & 0x0f0f0f0f, hi = (v >> 4) & 0x0f0f0f0f;
        af[rr] = (lo ^ 0x08080808) | (((lo & 0x08080808) ^ 0x08080808) * 0x1e);
        af[2 + rr] = (hi ^ 0x08080808) | (((hi & 0x08080808) ^ 0x08080808) * 0x1e);
        wd[rr] = h2f((u16)w.d[kb][rr]);
        sc[rr] = mn[rr] = 0;
    }
}

__device__ __forceinline__ void dw_frag(const DwQ4_K& w, int kb, int af[4], float wd[2], int sc[2],
                                        int mn[2]) {
    const int c = kb >> 1, sh = 4 * (kb & 1);
#pragma unroll
    for (int rr = 0; rr < 2; ++rr) {
        af[rr] = (w.q[rr][2 * c] >> sh) & 0x0f0f0f0f;
        af[2 + rr] = (w.q[rr][2 * c + 1] >> sh) & 0x0f0f0f0f;
        // Byte k of the scales; then ggml's get_scale_min_k4 (scale_min_k4 in kquants.cu).
#define DW_SB(k) ((int)((w.sc[rr][(k) >> 2] >> (8 * ((k) & 3))) & 0xff))
        if (kb < 4) {
            sc[rr] = DW_SB(kb) & 63;
            mn[rr] = DW_SB(kb + 4) & 63;
        } else {
            sc[rr] = (DW_SB(kb + 4) & 0x0f) | ((DW_SB(kb - 4) >> 6) << 4);
            mn[rr] = (DW_SB(kb + 4) >> 4) | ((DW_SB(kb) >> 6) << 4);
        }
#undef DW_SB
        wd[rr] = 0.0f; // d and dmin are applied once per super-block
    }
}

// The staged activations of a 64 x 16 tile whose weights go straight to the fragments.
struct MmqActs16 {
    int a[16 * MMQ_LDI];
    float ad[16][MMQ_KB];
    float as[16][MMQ_KB];
};

// d | dmin << 16 of row g (rr = 0) or g + 8 (Q4_K).
__device__ __forceinline__ u32 dw_dm(const DwQ4_0&, int) { return 0u; }
__device__ __forceinline__ u32 dw_dm(const DwQ4_K& w, int rr) { return w.dm[rr]; }

// Raw: DwQ4_0 or DwQ4_K.
template <int TYPE, class Raw>
__device__ __forceinline__ void mmq_direct(const MatmulParams& p0) {
    constexpr bool kq = TYPE == 12;
    __shared__ MmqActs16 sm;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, tig = lane & 3;
    int r0 = blockIdx.x * 64; // mat_job makes it the row within the fused launch's product
    const MatmulParams p = mat_job(p0, r0);
    const int t0 = blockIdx.y * 16;
    const int nb = p.cols / 32;
    const i64 a_row = kq ? (i64)(p.cols / QK_K) * Q8K_SIZE : (i64)nb * 36;
    const int wr = warp * 16; // the warp's rows; its tokens are all 16 (two n8 halves)
    float acc[1][2][4];
#pragma unroll
    for (int j = 0; j < 2; ++j)
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[0][j][k] = 0.0f;
    const int n_steps = (nb + MMQ_KB - 1) / MMQ_KB;
    const int k_begin = (int)((i64)blockIdx.z * n_steps / gridDim.z) * MMQ_KB;
    const int k_end = min(nb, (int)((i64)(blockIdx.z + 1) * n_steps / gridDim.z) * MMQ_KB);
    Raw cur, nxt;
    int aq[8];
    float adr, asr;
#define DW_FETCH(KB0)                                                                 \
    {                                                                                 \
        const int nk = min(MMQ_KB, nb - (KB0));                                       \
        dw_load(p, r0 + wr + g, 0, (KB0), nk, tig, nxt);                              \
        dw_load(p, r0 + wr + g + 8, 1, (KB0), nk, tig, nxt);                          \
        mmq_fetch_a(p, kq, a_row, t0, (KB0), nk, tid, aq, adr, asr);                  \
    }
    if (k_begin < k_end) DW_FETCH(k_begin)
    for (int kb0 = k_begin; kb0 < k_end; kb0 += MMQ_KB) {
        const int nkb = min(MMQ_KB, nb - kb0);
        cur = nxt;
        {
            const int i = tid / MMQ_KB, kb = tid % MMQ_KB;
#pragma unroll
            for (int k = 0; k < 8; ++k) sm.a[i * MMQ_LDI + kb * 8 + k] = aq[k];
            sm.ad[i][kb] = adr;
            sm.as[i][kb] = asr;
        }
        __syncthreads();
        if (kb0 + MMQ_KB < k_end) DW_FETCH(kb0 + MMQ_KB)

        int isum[2][4], imin[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int k = 0; k < 4; ++k) isum[j][k] = imin[j][k] = 0;
#pragma unroll
        for (int kb = 0; kb < MMQ_KB; ++kb) {
            if (kb < nkb) {
                int af[4], sc[2], mn[2];
                float wd[2];
                dw_frag(cur, kb, af, wd, sc, mn);
#pragma unroll
                for (int nt = 0; nt < 2; ++nt) {
                    const int* a0 = sm.a + (nt * 8 + g) * MMQ_LDI + kb * 8 + tig;
                    int c[4] = {0, 0, 0, 0};
                    mma_k32(c, af, a0[0], a0[4]);
#pragma unroll
                    for (int k = 0; k < 4; ++k) {
                        const int t = nt * 8 + 2 * tig + (k & 1);
                        if (!kq) {
                            acc[0][nt][k] += (float)c[k] * (wd[k >> 1] * sm.ad[t][kb]);
                        } else {
                            isum[nt][k] += sc[k >> 1] * c[k];
                            imin[nt][k] += mn[k >> 1] * __float_as_int(sm.as[t][kb]);
                        }
                    }
                }
            }
        }
        if (kq) {
            // As the staged tiles: the super-block's sums scaled once, less the mins' term.
            mmq_each<1, 2>(0, 0, [&](int, int nt, int k, int, int t) {
                const float ad = sm.ad[t][0];
                const u32 rdm = dw_dm(cur, k >> 1);
                acc[0][nt][k] += (h2f((u16)(rdm & 0xffff)) * ad) * (float)isum[nt][k];
                acc[0][nt][k] -= (h2f((u16)(rdm >> 16)) * ad) * (float)imin[nt][k];
            });
        }
        __syncthreads();
    }
#undef DW_FETCH
    mmq_store<1, 2>(p, acc, r0, t0, wr, 0);
}

#undef MMQ_FETCH

#if __CUDA_ARCH__ >= 800
#define MMQ_BODY(T, M, N) mmq<T, M, N>(p);
#define MMQ_DIRECT(T, RAW) mmq_direct<T, RAW>(p);
#else
#define MMQ_BODY(T, M, N) // the executor never launches these below compute capability 8.0
#define MMQ_DIRECT(T, RAW)
#endif
// NARROW: the 64 x 16 tile's body (staged, or straight to the fragments for Q4_0 and Q4_K).
#define MMQ_KERNELS(name, T, NARROW) \
    extern "C" __global__ void __launch_bounds__(128) name(const MatmulParams p) { PDL_ENTRY(); MMQ_BODY(T, 64, 64) } \
    extern "C" __global__ void __launch_bounds__(128) name##_s(const MatmulParams p) { PDL_ENTRY(); MMQ_BODY(T, 16, 32) } \
    extern "C" __global__ void __launch_bounds__(128) name##_n(const MatmulParams p) { PDL_ENTRY(); NARROW }
MMQ_KERNELS(mmq_q4_0, TYPE_Q4_0, MMQ_DIRECT(TYPE_Q4_0, DwQ4_0))
MMQ_KERNELS(mmq_q4_1, TYPE_Q4_1, MMQ_BODY(TYPE_Q4_1, 64, 16))
MMQ_KERNELS(mmq_q5_0, TYPE_Q5_0, MMQ_BODY(TYPE_Q5_0, 64, 16))
MMQ_KERNELS(mmq_q5_1, TYPE_Q5_1, MMQ_BODY(TYPE_Q5_1, 64, 16))
MMQ_KERNELS(mmq_q8_0, TYPE_Q8_0, MMQ_BODY(TYPE_Q8_0, 64, 16))
MMQ_KERNELS(mmq_q4_k, 12, MMQ_DIRECT(12, DwQ4_K))
MMQ_KERNELS(mmq_q5_k, 13, MMQ_BODY(13, 64, 16))
MMQ_KERNELS(mmq_q6_k, 14, MMQ_BODY(14, 64, 16))
