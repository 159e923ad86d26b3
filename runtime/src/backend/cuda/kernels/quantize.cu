// f32 activations to Q8_1 blocks, as ggml-cpu quantizes activations on x86 before a product
// (Ember's `quantize_row_q8_1_act`): d = amax / 127, q = round_half_even(x * (127 / amax)),
// d stored as f16, s = f16(d * sum(q)) with the unrounded f32 d. Bit-identical to the CPU for
// identical inputs. One warp per 32-element block: lane i holds element i (`v`).
__device__ __forceinline__ void q8_1_block(float v, u8* blk, int lane) {
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const int q = __float2int_rn(v * id);
    const int sum = warp_sum_i(q);
    blk[4 + lane] = (u8)(i8)q;
    if (lane == 0) {
        *(u32*)blk = (u32)f2h(d) | ((u32)f2h((float)sum * d) << 16);
    }
}

// 8 blocks per thread block.
extern "C" __global__ void quantize_q8_1(const QuantizeParams p) {
    PDL_ENTRY();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nb = p.n_cols / 32;
    const int b = blockIdx.x * 8 + warp;
    const int row = blockIdx.y;
    if (b >= nb || row >= p.n_rows) return;
    q8_1_block(p.x[(i64)row * p.x_stride + b * 32 + lane], p.y + ((i64)row * nb + b) * 36, lane);
}

#define QK_K 256
#define Q8K_SIZE 292

// f32 activations to Q8_K (ggml's quantize_row_q8_K): the value of largest magnitude (first
// one on ties) sets iscale = -127 / max; q = min(round_half_even(iscale * x), 127); d = 1 / iscale.
// One warp per 256-element super-block, 8 consecutive elements per lane.
__device__ __forceinline__ void q8_k_block(const float* x, u8* blk, int lane) {
    x += lane * 8;
    float v[8];
    float amax = 0.0f, mx = 0.0f;
    int idx = 0x7fffffff;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        v[i] = x[i];
        if (fabsf(v[i]) > amax) { amax = fabsf(v[i]); mx = v[i]; idx = lane * 8 + i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float oa = __shfl_xor_sync(0xffffffffu, amax, o);
        const float om = __shfl_xor_sync(0xffffffffu, mx, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (oa > amax || (oa == amax && oi < idx)) { amax = oa; mx = om; idx = oi; }
    }
    int q[8];
    int sum = 0;
    float d = 0.0f;
    if (amax != 0.0f) {
        const float iscale = -127.0f / mx;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            q[i] = min(__float2int_rn(iscale * v[i]), 127);
            sum += q[i];
        }
        d = 1.0f / iscale;
    } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) q[i] = 0;
    }
    u32 lo = 0, hi = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        lo |= (u32)(u8)(i8)q[i] << (8 * i);
        hi |= (u32)(u8)(i8)q[4 + i] << (8 * i);
    }
    *(u32*)(blk + 4 + lane * 8) = lo;
    *(u32*)(blk + 8 + lane * 8) = hi;
    // Group g of 16 elements = lanes 2g and 2g+1.
    const int gsum = sum + __shfl_xor_sync(0xffffffffu, sum, 1);
    if ((lane & 1) == 0) *(short*)(blk + 4 + QK_K + lane) = (short)gsum;
    if (lane == 0) *(float*)blk = d;
}

// One warp per super-block, 4 super-blocks per thread block.
extern "C" __global__ void quantize_q8_k(const QuantizeParams p) {
    PDL_ENTRY();
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nb = p.n_cols / QK_K;
    const int b = blockIdx.x * 4 + warp;
    const int row = blockIdx.y;
    if (b >= nb || row >= p.n_rows) return;
    q8_k_block(p.x + (i64)row * p.x_stride + (i64)b * QK_K, p.y + ((i64)row * nb + b) * Q8K_SIZE, lane);
}
