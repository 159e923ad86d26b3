// RMSNorm, SwiGLU, GeGLU, adds, row gathers, argmax: the small kernels of the forward pass, each computing what
// the CPU reference (`ember_kernels::reference::ops`) computes, in the same f32 operations.

// out = (x * (1 / sqrt(mean(x^2) + eps))) * w, the sum of squares accumulated in double as ggml
// does (each square rounded to f32 first). One thread block (256 threads) per row. With q8_1 /
// q8_k the block then quantizes the row it wrote for the product that reads it (one launch
// instead of two; the same bits as quantize_q8_1 / quantize_q8_k over `out`).
extern "C" __global__ void rms_norm(const RmsNormParams p) {
    __shared__ double part[8];
    const int row = blockIdx.x;
    if (row >= p.n_rows) return;
    const int src = p.rows ? p.rows[row] : row;
    const float* x = p.x + (i64)src * p.n_cols;
    float* o = p.out + (i64)row * p.n_cols;
    // Four loads in flight per thread (one row is a short, latency-bound loop otherwise).
    double s = 0.0;
    const int bd = blockDim.x;
    int i0 = threadIdx.x;
    for (; i0 + 3 * bd < p.n_cols; i0 += 4 * bd) {
        const float a = x[i0], b = x[i0 + bd], c = x[i0 + 2 * bd], e = x[i0 + 3 * bd];
        s += (double)(a * a);
        s += (double)(b * b);
        s += (double)(c * c);
        s += (double)(e * e);
    }
    for (; i0 < p.n_cols; i0 += bd) {
        const float v = x[i0];
        s += (double)(v * v);
    }
    s = warp_sum_d(s);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    double tot = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) tot += part[w];
    const float mean = (float)(tot / (double)p.n_cols);
    const float scale = 1.0f / sqrtf(mean + p.eps);
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
    if (p.q8_1 == nullptr && p.q8_k == nullptr) return;
    __syncthreads(); // the block's writes to `o` are visible to all its threads
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = bd >> 5;
    if (p.q8_1) {
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
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < p.n) p.x[i] += p.y[i];
}

// dst[r] = src[rows[r]] (the rows that want logits, moved to the front of another buffer).
// One thread block per row.
extern "C" __global__ void gather_rows(const GatherParams p) {
    const int r = blockIdx.x;
    if (r >= p.n_rows) return;
    const float* s = p.src + (i64)p.rows[r] * p.n_cols;
    float* d = p.dst + (i64)r * p.n_cols;
    for (int i = threadIdx.x; i < p.n_cols; i += blockDim.x) d[i] = s[i];
}

// x[r] += b (qwen2's q/k/v biases).
extern "C" __global__ void add_bias(const BiasParams p) {
    const int r = blockIdx.y;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n_cols; i += gridDim.x * blockDim.x)
        p.x[(i64)r * p.n_cols + i] += p.b[i];
}

// Index of the largest value of each row, the lowest index winning ties (the sampler's greedy
// rule: a row of -inf gives 0), or -1 for a row holding a NaN (the engine then reads the row and
// ends its request with an error, as on the CPU). Two kernels, so that a vocabulary row is
// scanned by many thread blocks: `argmax_part` gives each (row, part) block ARGMAX_PARTS-th of
// the row and writes its best (value bits, index | NaN flag in bit 31) to `part`; `argmax_reduce`
// merges a row's parts with one warp. NaN never wins a comparison.
#define ARGMAX_PARTS 32

__device__ __forceinline__ void argmax_merge(float& best, int& bi, float ov, int oi) {
    if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
}

extern "C" __global__ void argmax_part(const ArgmaxParams p) {
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
    const int row = blockIdx.x, lane = threadIdx.x;
    if (row >= p.n_rows) return;
    const int* o = p.part + ((i64)row * ARGMAX_PARTS + lane) * 2;
    float best = __int_as_float(o[0]);
    int bi = o[1] & 0x7fffffff;
    const bool nan = __any_sync(0xffffffffu, o[1] < 0);
#pragma unroll
    for (int k = 16; k > 0; k >>= 1)
        argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, k), __shfl_xor_sync(0xffffffffu, bi, k));
    if (lane == 0) p.out[row] = nan ? -1 : bi == 0x7fffffff ? 0 : bi;
}
