// f32 activations to Q8_1 blocks, as ggml-cpu quantizes activations on x86 before a product
// (Ember's `quantize_row_q8_1_act`): d = amax / 127, q = round_half_even(x * (127 / amax)),
// d stored as f16, s = f16(d * sum(q)) with the unrounded f32 d. Bit-identical to the CPU for
// identical inputs. One warp per 32-element block, 8 blocks per thread block.
extern "C" __global__ void quantize_q8_1(const QuantizeParams p) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int nb = p.n_cols / 32;
    const int b = blockIdx.x * 8 + warp;
    const int row = blockIdx.y;
    if (b >= nb || row >= p.n_rows) return;
    const float v = p.x[(i64)row * p.x_stride + b * 32 + lane];
    const float amax = warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const float id = amax != 0.0f ? 127.0f / amax : 0.0f;
    const int q = __float2int_rn(v * id);
    const int sum = warp_sum_i(q);
    u8* blk = p.y + ((i64)row * nb + b) * 36;
    blk[4 + lane] = (u8)(i8)q;
    if (lane == 0) {
        *(u32*)blk = (u32)f2h(d) | ((u32)f2h((float)sum * d) << 16);
    }
}
