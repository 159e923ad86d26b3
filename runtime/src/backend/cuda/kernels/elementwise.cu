// RMSNorm, SwiGLU, GeGLU, adds, row gathers, argmax: the small kernels of the forward pass, each computing what
// the CPU reference (`ember_kernels::reference::ops`) computes, in the same f32 operations.

// out = (x * (1 / sqrt(mean(x^2) + eps))) * w, the sum of squares accumulated in double as ggml
// does (each square rounded to f32 first). One thread block (256 threads) per row.
extern "C" __global__ void rms_norm(const RmsNormParams p) {
    __shared__ double part[8];
    const int row = blockIdx.x;
    if (row >= p.n_rows) return;
    const int src = p.rows ? p.rows[row] : row;
    const float* x = p.x + (i64)src * p.n_cols;
    float* o = p.out + (i64)row * p.n_cols;
    double s = 0.0;
    for (int i = threadIdx.x; i < p.n_cols; i += blockDim.x) {
        const float v = x[i];
        s += (double)(v * v);
    }
    s = warp_sum_d(s);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = s;
    __syncthreads();
    double tot = 0.0;
    for (int w = 0; w < (int)(blockDim.x >> 5); ++w) tot += part[w];
    const float mean = (float)(tot / (double)p.n_cols);
    const float scale = 1.0f / sqrtf(mean + p.eps);
    for (int i = threadIdx.x; i < p.n_cols; i += blockDim.x) o[i] = (x[i] * scale) * p.w[i];
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
extern "C" __global__ void swiglu(const SwigluParams p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    const float g = p.gate[i];
    const float e = i < p.n_vec ? expf_ggml(0.0f - g) : expf(-g);
    p.gate[i] = g / (1.0f + e) * p.up[i];
}

// gate = gelu(gate) * up as ggml's CPU computes it (GGML_GELU_FP16): the input rounded to f16
// and looked up in the CPU's f16 table (`backend/gelu.rs`, uploaded), x <= -10 giving 0 and
// x >= 10 giving x, so the result is the CPU's to the bit.
extern "C" __global__ void geglu(const GegluParams p) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= p.n) return;
    const float x = p.gate[i];
    p.gate[i] = x <= -10.0f ? 0.0f
              : x >= 10.0f  ? x * p.up[i]
                            : h2f(p.table[f2h(x)]) * p.up[i];
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
// ends its request with an error, as on the CPU). One thread block (256 threads) per row.
extern "C" __global__ void argmax(const ArgmaxParams p) {
    __shared__ float sv[8];
    __shared__ int si[8];
    const int row = blockIdx.x;
    if (row >= p.n_rows) return;
    const float* x = p.x + (i64)row * p.n_cols;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    int nan = 0;
    for (int i = threadIdx.x; i < p.n_cols; i += blockDim.x) {
        const float v = x[i];
        nan |= v != v;
        if (v > best || (v == best && i < bi)) { best = v; bi = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
    }
    if ((threadIdx.x & 31) == 0) { sv[threadIdx.x >> 5] = best; si[threadIdx.x >> 5] = bi; }
    nan = __syncthreads_or(nan);
    if (threadIdx.x == 0) {
        best = sv[0];
        bi = si[0];
        for (int w = 1; w < (int)(blockDim.x >> 5); ++w)
            if (sv[w] > best || (sv[w] == best && si[w] < bi)) { best = sv[w]; bi = si[w]; }
        p.out[row] = nan ? -1 : bi == 0x7fffffff ? 0 : bi;
    }
}
