// Float matrix x activations products (F32, F16, BF16 weights): out[t][r] = W[r] . a[t] with
// f32 activations read straight from the f32 buffer (no quantization pass), f32 products and f32
// accumulation. One warp per weight row, MMV_WARPS rows and MMV_NT tokens per thread block, so
// each weight row is read once per MMV_NT tokens.
//
// ggml's F16 and BF16 dots take activations in the weights' own format (vec_dot_type F16 /
// BF16), so the CPU rounds activations to f16 / bf16 first (round to nearest even; bf16 quiets
// NaNs as ggml_compute_fp32_to_bf16). The same rounding is applied here as each activation is
// read; the products of two f16 or two bf16 values are exact in f32. The CPU then sums in f64
// and these kernels in f32 (per lane, then across the warp), the only difference.
//
// Weight layouts are ggml's: rows of little-endian f32, f16 or bf16 (`row_bytes` = cols * 4 or
// * 2). `MatmulParams.a` points at `n_tok` rows of `cols` f32 activations (not Q8_1 blocks).
// Rows whose length is a multiple of 8 with 16-byte aligned weights and activations take 16-byte
// loads (8 elements per lane per step); others one element per lane per step.

#define TYPE_F32 0
#define TYPE_F16 1
#define TYPE_BF16 30

// 16-byte vectors of our own (no CUDA header is included): loads compile to ld.v4.
struct alignas(16) V4f { float x, y, z, w; };
struct alignas(16) V4u { u32 x, y, z, w; };

// bf16 bits (the top half of an f32) to f32 (ggml's GGML_BF16_TO_FP32).
__device__ __forceinline__ float bf2f(u32 b) { return __int_as_float((int)(b << 16)); }

// f32 to bf16 and back, as ggml_compute_fp32_to_bf16 rounds: nearest even, NaNs quieted.
__device__ __forceinline__ float round_bf16(float x) {
    const u32 u = (u32)__float_as_int(x);
    u32 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) h = (u >> 16) | 64u;
    else h = (u + (0x7fffu + ((u >> 16) & 1u))) >> 16;
    return bf2f(h);
}

// An activation as the CPU's dot sees it (rounded to the weights' format).
template <int TYPE>
__device__ __forceinline__ float act_round(float a) {
    if (TYPE == TYPE_F16) return h2f(f2h(a));
    if (TYPE == TYPE_BF16) return round_bf16(a);
    return a;
}

// Weight element i of a row.
template <int TYPE>
__device__ __forceinline__ float w_at(const u8* row, int i) {
    if (TYPE == TYPE_F32) return ((const float*)row)[i];
    const u16 v = ((const u16*)row)[i];
    return TYPE == TYPE_F16 ? h2f(v) : bf2f(v);
}

// Weight elements 8g..8g+8 of a 16-byte aligned row.
template <int TYPE>
__device__ __forceinline__ void w_at8(const u8* row, int g, float w[8]) {
    if (TYPE == TYPE_F32) {
        const V4f a = ((const V4f*)row)[2 * g];
        const V4f b = ((const V4f*)row)[2 * g + 1];
        w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
        w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
    } else {
        const V4u v = ((const V4u*)row)[g];
        const u32 p[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 lo = p[i] & 0xffffu, hi = p[i] >> 16;
            w[2 * i] = TYPE == TYPE_F16 ? h2f((u16)lo) : bf2f(lo);
            w[2 * i + 1] = TYPE == TYPE_F16 ? h2f((u16)hi) : bf2f(hi);
        }
    }
}

template <int TYPE>
__device__ __forceinline__ void mmv_float(const MatmulParams& p0) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r = blockIdx.x * MMV_WARPS + warp;
    const MatmulParams p = mat_job(p0, r);
    const int t0 = blockIdx.y * MMV_NT;
    if (r >= p.rows) return;
    const int nt = min(MMV_NT, p.n_tok - t0);
    const int cols = p.cols;
    const u8* wrow = p.w + (i64)r * p.row_bytes;
    const float* abase = (const float*)p.a + (i64)t0 * cols;
    float acc[MMV_NT];
#pragma unroll
    for (int t = 0; t < MMV_NT; ++t) acc[t] = 0.0f;

    // Uniform across the warp: every row and activation row then starts 16-byte aligned.
    const bool vec = (cols & 7) == 0 && (((u64)p.w | (u64)p.a | (u64)p.row_bytes) & 15) == 0;
    if (vec) {
        for (int g = lane; g < cols / 8; g += 32) {
            float w[8];
            w_at8<TYPE>(wrow, g, w);
#pragma unroll
            for (int t = 0; t < MMV_NT; ++t) {
                if (t < nt) {
                    const V4f* ap = (const V4f*)(abase + (i64)t * cols + 8 * g);
                    const V4f a0 = ap[0], a1 = ap[1];
                    const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[t] += w[i] * act_round<TYPE>(a[i]);
                }
            }
        }
    } else {
        for (int i = lane; i < cols; i += 32) {
            const float w = w_at<TYPE>(wrow, i);
#pragma unroll
            for (int t = 0; t < MMV_NT; ++t) {
                if (t < nt) acc[t] += w * act_round<TYPE>(abase[(i64)t * cols + i]);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < MMV_NT; ++t) {
        if (t < nt) {
            const float v = warp_sum(acc[t]);
            if (lane == 0) {
                float* o = p.out + (i64)(t0 + t) * p.rows + r;
                *o = p.accumulate ? *o + v : v;
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) matmul_f32(const MatmulParams p) { PDL_ENTRY(); mmv_float<TYPE_F32>(p); }
extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) matmul_f16(const MatmulParams p) { PDL_ENTRY(); mmv_float<TYPE_F16>(p); }
extern "C" __global__ void __launch_bounds__(MMV_WARPS * 32) matmul_bf16(const MatmulParams p) { PDL_ENTRY(); mmv_float<TYPE_BF16>(p); }
