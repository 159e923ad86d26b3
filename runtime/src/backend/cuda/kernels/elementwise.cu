// RMSNorm, SwiGLU, GeGLU, adds, row gathers, argmax: the small kernels of the forward pass, each computing what
// the CPU reference (`ember_kernels::reference::ops`) computes, in the same f32 operations.

// Q8_1 of one 32-element block held by 4 consecutive lanes, 8 consecutive elements each (lane
// 4g + j holds elements 8j..8j+8 of its group's block): the same bits as q8_1_block (amax and the
// integer sum do not depend on the order they are gathered in). Every lane of the warp calls it.
__device__ __forceinline__ void q8_1_block_x4(const float (&v)[8], u8* blk, int lane) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(v[i]));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, 2));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    int sum = 0;
    u32 w[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int q = __float2int_rn(v[i] * id);
        sum += q;
        w[i >> 2] |= (u32)(u8)(i8)q << (8 * (i & 3));
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    if (blk) {
        u32* qs = (u32*)(blk + 4 + 8 * (lane & 3));
        qs[0] = w[0];
        qs[1] = w[1];
        if ((lane & 3) == 0) *(u32*)blk = (u32)f2h(d) | ((u32)f2h((float)sum * d) << 16);
    }
}

// Chunks of 8 elements a thread of rms_norm's register path holds (rows up to 8 * 256 * this).
#define RMS_CHUNKS 4

// out = (x * (1 / sqrt(mean(x^2) + eps))) * w, the sum of squares accumulated in double as ggml
// does (each square rounded to f32 first). One thread block (256 threads) per row. With q8_1 /
// q8_k the block then quantizes the row it wrote for the product that reads it (one launch
// instead of two; the same bits as quantize_q8_1 / quantize_q8_k over `out`).
//
// Rows of a multiple of 8 up to 8192 elements stay in registers: thread t holds chunks t, t + 256,
// ... of 8 consecutive elements (two 16-byte loads each), and a Q8_1 block is 4 neighbouring
// lanes' chunks, quantized from registers with no second pass over memory. Other rows take the
// strided loop.
extern "C" __global__ void rms_norm(const RmsNormParams p) {
    PDL_ENTRY();
    __shared__ double part[8];
    const int row = blockIdx.x;
    if (row >= p.n_rows) return;
    const int src = p.rows ? p.rows[row] : row;
    const float* x = p.x + (i64)src * p.n_cols;
    float* o = p.out + (i64)row * p.n_cols;
    const int bd = blockDim.x;
    const int n_chunks = p.n_cols / 8;
    const bool regs = p.n_cols % 8 == 0 && n_chunks <= RMS_CHUNKS * bd;
    float v[RMS_CHUNKS][8];
    double s = 0.0;
    if (regs) {
#pragma unroll
        for (int k = 0; k < RMS_CHUNKS; ++k) {
            const int c = threadIdx.x + k * bd;
            if (c < n_chunks) {
                const float4 a = ((const float4*)x)[2 * c], b = ((const float4*)x)[2 * c + 1];
                v[k][0] = a.x; v[k][1] = a.y; v[k][2] = a.z; v[k][3] = a.w;
                v[k][4] = b.x; v[k][5] = b.y; v[k][6] = b.z; v[k][7] = b.w;
#pragma unroll
                for (int i = 0; i < 8; ++i) s += (double)(v[k][i] * v[k][i]);
            } else {
#pragma unroll
                for (int i = 0; i < 8; ++i) v[k][i] = 0.0f; // quantized by no one, but shuffled
            }
        }
    } else {
        // Four loads in flight per thread (one row is a short, latency-bound loop otherwise).
        int i0 = threadIdx.x;
        for (; i0 + 3 * bd < p.n_cols; i0 += 4 * bd) {
            const float a = x[i0], b = x[i0 + bd], c = x[i0 + 2 * bd], e = x[i0 + 3 * bd];
            s += (double)(a * a);
            s += (double)(b * b);
            s += (double)(c * c);
            s += (double)(e * e);
        }
        for (; i0 < p.n_cols; i0 += bd) {
            const float a = x[i0];
            s += (double)(a * a);
        }
    }
    s = warp_sum_d(s);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    double tot = 0.0;
    for (int w = 0; w < (int)(bd >> 5); ++w) tot += part[w];
    const float mean = (float)(tot / (double)p.n_cols);
    const float scale = 1.0f / sqrtf(mean + p.eps);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = bd >> 5;
    if (regs) {
#pragma unroll
        for (int k = 0; k < RMS_CHUNKS; ++k) {
            const int c = threadIdx.x + k * bd;
            // A warp's chunks are all in the row or all past it, or (at the end of the row)
            // split on a multiple of 4 when q8_1 asks for whole blocks: the shuffles of
            // q8_1_block_x4 see whole groups.
            if (k * bd + warp * 32 >= n_chunks) break;
            const bool in = c < n_chunks;
            if (in) {
                const float4 wa = ((const float4*)p.w)[2 * c], wb = ((const float4*)p.w)[2 * c + 1];
                const float wv[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
                for (int i = 0; i < 8; ++i) v[k][i] = (v[k][i] * scale) * wv[i];
                ((float4*)o)[2 * c] = make_float4(v[k][0], v[k][1], v[k][2], v[k][3]);
                ((float4*)o)[2 * c + 1] = make_float4(v[k][4], v[k][5], v[k][6], v[k][7]);
            }
            u8* blk = in && p.q8_1 ? p.q8_1 + ((i64)row * (n_chunks / 4) + c / 4) * 36 : nullptr;
            if (p.q8_1) q8_1_block_x4(v[k], blk, lane);
        }
    } else {
        int i = threadIdx.x;
        for (; i + 3 * bd < p.n_cols; i += 4 * bd) {
            const float a = x[i], b = x[i + bd], c = x[i + 2 * bd], e = x[i + 3 * bd];
            const float wa = p.w[i], wb = p.w[i + bd], wc = p.w[i + 2 * bd], we = p.w[i + 3 * bd];
            o[i] = (a * scale) * wa;
            o[i + bd] = (b * scale) * wb;
            o[i + 2 * bd] = (c * scale) * wc;
            o[i + 3 * bd] = (e * scale) * we;
        }
        for (; i < p.n_cols; i += bd) o[i] = (x[i] * scale) * p.w[i];
    }
    if (p.q8_k == nullptr && (regs || p.q8_1 == nullptr)) return;
    __syncthreads(); // the block's writes to `o` are visible to all its threads
    if (p.q8_1 && !regs) {
        const int nb = p.n_cols / 32;
        for (int b = warp; b < nb; b += nw)
            q8_1_block(o[b * 32 + lane], p.q8_1 + ((i64)row * nb + b) * 36, lane);
    }
    if (p.q8_k) {
        const int nb = p.n_cols / QK_K;
        for (int b = warp; b < nb; b += nw)
            q8_k_block(o + (i64)b * QK_K, p.q8_k + ((i64)row * nb + b) * Q8K_SIZE, lane);
    }
}

// ggml's vectorized expf (ggml_v_expf), bit for bit as `ember_kernels::reference::ops::expf_ggml`.
__device__ __forceinline__ float expf_ggml(float x) {
    const float z = fmaf(x, __int_as_float(0x3fb8aa3b), __int_as_float(0x4b400000));
    const float n = z - __int_as_float(0x4b400000);
    const float b = fmaf(-n, __int_as_float(0x35bfbe8e), fmaf(-n, __int_as_float(0x3f317200), x));
    const u32 e = (u32)__float_as_int(z) << 23;
    const float k = __int_as_float((int)(e + (u32)__float_as_int(1.0f)));
    const float u = b * b;
    const float j = fmaf(fmaf(fmaf(__int_as_float(0x3c072010), b, __int_as_float(0x3d2b9f17)), u,
                              fmaf(__int_as_float(0x3e2aaf33), b, __int_as_float(0x3efffedb))),
                         u, __int_as_float(0x3f7ffff6) * b);
    if (fabsf(n) <= 126.0f) return fmaf(j, k, k);
    const u32 g = n <= 0.0f ? 0x82000000u : 0u;
    const float s1 = __int_as_float((int)(g + 0x7f000000u));
    const float s2 = __int_as_float((int)(e - g));
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, j, s2) * s1;
}

// gate = silu(gate) * up, silu(g) = g / (1 + exp(-g)); the first n_vec elements use ggml's
// vectorized expf (as the CPU does for whole blocks of 8), the tail the libm-style expf.
// The output quantized in place for the down product (see SwigluParams): warp w of a 256-thread
// block holds Q8_1 block 8 blockIdx.x + w in its lanes; the block's 256 values are one Q8_K
// super-block, read back after the barrier.
__device__ __forceinline__ void quantize_gated(u8* q8_1, u8* q8_k, const float* out, int i, float y) {
    const int lane = threadIdx.x & 31;
    if (q8_1) q8_1_block(y, q8_1 + (i64)(i >> 5) * 36, lane);
    if (q8_k) {
        __syncthreads();
        if (threadIdx.x < 32)
            q8_k_block(out + (i64)blockIdx.x * QK_K, q8_k + (i64)blockIdx.x * Q8K_SIZE, lane);
    }
}

extern "C" __global__ void swiglu(const SwigluParams p) {
    PDL_ENTRY();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return; // never in a quantizing launch (n a multiple of 256)
    const float g = p.gate[i];
    const float e = i < p.n_vec ? expf_ggml(0.0f - g) : expf(-g);
    const float y = g / (1.0f + e) * p.up[i];
    p.gate[i] = y;
    if (p.q8_1 || p.q8_k) quantize_gated(p.q8_1, p.q8_k, p.gate, i, y);
}

// gate = gelu(gate) * up as ggml's CPU computes it (GGML_GELU_FP16): the input rounded to f16
// and looked up in the CPU's f16 table (`backend/gelu.rs`, uploaded), x <= -10 giving 0 and
// x >= 10 giving x, so the result is the CPU's to the bit.
extern "C" __global__ void geglu(const GegluParams p) {
    PDL_ENTRY();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    const float x = p.gate[i];
    const float y = x <= -10.0f ? 0.0f
                  : x >= 10.0f  ? x * p.up[i]
                                : h2f(p.table[f2h(x)]) * p.up[i];
    p.gate[i] = y;
    if (p.q8_1 || p.q8_k) quantize_gated(p.q8_1, p.q8_k, p.gate, i, y);
}

// x += y (a residual add).
extern "C" __global__ void add(const AddParams p) {
    PDL_ENTRY();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] += p.y[i];
}

// dst[r] = src[rows[r]] (the rows that want logits, moved to the front of another buffer).
// One thread block per row.
extern "C" __global__ void gather_rows(const GatherParams p) {
    PDL_ENTRY();
    const int r = blockIdx.x;
    if (r >= p.n_rows) return;
    const float* s = p.src + (i64)p.rows[r] * p.n_cols;
    float* d = p.dst + (i64)r * p.n_cols;
    for (int i = threadIdx.x; i < p.n_cols; i += blockDim.x) d[i] = s[i];
}

// x[r] += b (qwen2's q/k/v biases).
extern "C" __global__ void add_bias(const BiasParams p) {
    PDL_ENTRY();
    const int r = blockIdx.y;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n_cols; i += gridDim.x * blockDim.x)
        p.x[(i64)r * p.n_cols + i] += p.b[i];
}

// Index of the largest value of each row, the lowest index winning ties (the sampler's greedy
// rule: a row of -inf gives 0), or -1 for a row holding a NaN (the engine then reads the row and
// ends its request with an error, as on the CPU). Two kernels, so that a vocabulary row is
// scanned by many thread blocks: `argmax_part` gives each (row, part) block ARGMAX_PARTS-th of
// the row and writes its best (value bits, index | NaN flag in bit 31) to `part`; `argmax_reduce`
// merges a row's parts with one warp (ARGMAX_PARTS / 32 per lane). NaN never wins a comparison.
// 128 parts: a 128k vocabulary row is 4 loads per thread, on about as many blocks as an H100 has
// multiprocessors (32 parts took 10.8 us there under ncu for a 128 256-wide row).
#define ARGMAX_PARTS 128

__device__ __forceinline__ void argmax_merge(float& best, int& bi, float ov, int oi) {
    if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
}

extern "C" __global__ void argmax_part(const ArgmaxParams p) {
    PDL_ENTRY();
    __shared__ float sv[8];
    __shared__ int si[8];
    const int row = blockIdx.x, part = blockIdx.y;
    if (row >= p.n_rows) return;
    const int len = (p.n_cols + ARGMAX_PARTS - 1) / ARGMAX_PARTS;
    const int lo = part * len, hi = min(p.n_cols, lo + len);
    const float* x = p.x + (i64)row * p.n_cols;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    int nan = 0;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const float v = x[i];
        nan |= v != v;
        argmax_merge(best, bi, v, i);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
    if ((threadIdx.x & 31) == 0) { sv[threadIdx.x >> 5] = best; si[threadIdx.x >> 5] = bi; }
    nan = __syncthreads_or(nan);
    if (threadIdx.x == 0) {
        best = sv[0];
        bi = si[0];
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w) argmax_merge(best, bi, sv[w], si[w]);
        int* o = p.part + ((i64)row * ARGMAX_PARTS + part) * 2;
        o[0] = __float_as_int(best);
        o[1] = (bi & 0x7fffffff) | (nan ? (int)0x80000000 : 0);
    }
}

extern "C" __global__ void argmax_reduce(const ArgmaxParams p) {
    PDL_ENTRY();
    const int row = blockIdx.x, lane = threadIdx.x;
    if (row >= p.n_rows) return;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    bool nan = false;
    for (int part = lane; part < ARGMAX_PARTS; part += 32) {
        const int* o = p.part + ((i64)row * ARGMAX_PARTS + part) * 2;
        argmax_merge(best, bi, __int_as_float(o[0]), o[1] & 0x7fffffff);
        nan |= o[1] < 0;
    }
    nan = __any_sync(0xffffffffu, nan);
#pragma unroll
    for (int k = 16; k > 0; k >>= 1)
        argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, k), __shfl_xor_sync(0xffffffffu, bi, k));
    if (lane == 0) p.out[row] = nan ? -1 : bi == 0x7fffffff ? 0 : bi;
}
