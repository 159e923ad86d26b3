// Shared definitions of Ember's CUDA kernels (compiled at start-up by NVRTC, for the device's own
// compute capability). Self-contained on purpose: no CUDA header is included, so a machine with
// only the driver and libnvrtc (no toolkit headers) can compile these. f16 conversions use the
// PTX `cvt` instructions directly (round to nearest even, as the CPU side's `half` crate).
//
// Every kernel takes one parameter struct by value; its layout is mirrored field for field by a
// `#[repr(C)]` struct in `runtime/src/backend/cuda/params.rs` (8-byte pointers first, then 4-byte
// integers and floats, padded to 8 bytes).
//
// Compiled with --fmad=false: the CPU reference never contracts `a*b+c` unless it says so
// (`mul_add`), and activations are re-quantized after every layer, where a last-bit difference
// can change a quantization level. Fused multiply-adds are written out as `fmaf` where the
// reference fuses.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define NEG_INF (__int_as_float(0xff800000))

// The first statement of every kernel. Compute capability 9.0 and above: the backend launches
// kernels with programmatic dependent launch (`CudaDevice::pdl`), so a kernel's blocks may be
// scheduled while the kernel before it in the stream is still running; `griddepcontrol.wait`
// holds them until that kernel has finished and its writes are visible (a no-op in a launch
// without the attribute), and `launch_dependents` then lets the next kernel's blocks be
// scheduled in turn. Every kernel waits before touching memory, so stream order holds exactly
// as without it: what is saved is the launch latency between kernels.
#if __CUDA_ARCH__ >= 900
#define PDL_ENTRY() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else
#define PDL_ENTRY()
#endif

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ int warp_sum_i(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Two little-endian bytes at a 2-byte aligned address.
__device__ __forceinline__ u16 ld_u16(const u8* p) { return *(const u16*)p; }

// Four bytes at a 2-byte aligned address (Q4_0 and Q8_0 blocks are 18 and 34 bytes long).
__device__ __forceinline__ int ld_i32_a2(const u8* p) {
    const u16* q = (const u16*)p;
    return (int)((u32)q[0] | ((u32)q[1] << 16));
}

// ---- parameter structs (mirrored in params.rs) ----

struct QuantizeParams {
    const float* x;  // [n_rows, x_stride] f32
    u8* y;           // [n_rows, n_cols / 32] Q8_1 blocks
    int n_rows;
    int n_cols;      // multiple of 32
    int x_stride;    // elements between rows of x
    int pad;
};

struct MatmulParams {
    const u8* w;     // [rows, row_bytes] weight blocks as in the GGUF file
    const u8* a;     // [n_tok, cols / 32] Q8_1 blocks (Q8_K: cols / 256; F32/F16/BF16 weights: f32 [n_tok, cols])
    float* out;      // [n_tok, rows]
    const u8* w1;    // second product (n_jobs >= 2): [rows1, row_bytes], same type and activations
    float* out1;     // [n_tok, rows1]
    const u8* w2;    // third product (n_jobs == 3): [rows2, row_bytes]
    float* out2;     // [n_tok, rows2]
    int rows;
    int cols;
    int n_tok;
    int row_bytes;
    int accumulate;  // 1: out += x W^T (fused residual add), 0: out = x W^T (every product)
    int n_jobs;      // 1..3 products of the same activations in one launch (Q/K/V, gate/up)
    int rows1;
    int rows2;
    float* part;     // tensor-core tiles with split K (gridDim.z > 1): partial sums, [tiles][splits][BM * BN]
    u32* count;      // and one arrival counter per tile, zero between launches
};

// Rows of every product of a launch together.
__device__ __forceinline__ int mat_rows(const MatmulParams& p) {
    return p.rows + (p.n_jobs > 1 ? p.rows1 : 0) + (p.n_jobs > 2 ? p.rows2 : 0);
}

// A launch's products lie end to end in one row space (rows, then rows1, then rows2): the
// parameters of the product holding row `r` of that space, with `r` made local to it. A row past
// the last product stays past the returned product's rows, so the kernels' bounds checks hold.
__device__ __forceinline__ MatmulParams mat_job(const MatmulParams& p, int& r) {
    MatmulParams q = p;
    if (p.n_jobs > 1 && r >= p.rows) {
        r -= p.rows;
        if (p.n_jobs > 2 && r >= p.rows1) {
            r -= p.rows1;
            q.w = p.w2;
            q.out = p.out2;
            q.rows = p.rows2;
        } else {
            q.w = p.w1;
            q.out = p.out1;
            q.rows = p.rows1;
        }
    }
    return q;
}

struct RmsNormParams {
    const float* x;  // [*, n_cols]
    const float* w;  // [n_cols]
    float* out;      // [n_rows, n_cols]
    const int* rows; // optional: out row i is the norm of x row rows[i]
    u8* q8_1;        // optional: out also quantized to Q8_1 [n_rows, n_cols / 32] (as quantize_q8_1)
    u8* q8_k;        // optional: out also quantized to Q8_K [n_rows, n_cols / 256] (as quantize_q8_k)
    int n_rows;
    int n_cols;
    float eps;
    int pad;
};

// The gated activations may also quantize their output for the product that reads it (q8_1,
// q8_k: as quantize_q8_1 / quantize_q8_k over rows of any multiple of 256; then n is a
// multiple of 256 too and each 256-thread block one super-block).
struct SwigluParams {
    float* gate;     // [n] in: gate projection, out: silu(gate) * up
    const float* up; // [n]
    u8* q8_1;        // optional: [n / 32] Q8_1 blocks of the output
    u8* q8_k;        // optional: [n / 256] Q8_K blocks of the output
    int n;
    int n_vec;       // elements computed with ggml's vectorized expf (n / 8 * 8)
};

struct BiasParams {
    float* x;        // [n_rows, n_cols]
    const float* b;  // [n_cols]
    int n_rows;
    int n_cols;
};

struct RopeKvParams {
    float* q;            // [n_tok, n_head * head_dim]: rotated in place, rounded to f16 values (round_q)
    float* k;            // [n_tok, n_head_kv * head_dim]: rotated in place
    float* v;            // [n_tok, n_head_kv * head_dim]: turned in place when rot_v > 0
    u16* kc;             // key arena [n_blocks][n_layer][n_head_kv][block_size][head_dim] f16
    u16* vc;             // value arena, same layout
    const float* cos;    // [n_ctx, head_dim / 2]
    const float* sin;
    const int* tok_pos;  // [n_tok] position of each token
    const int* tok_block;// [n_tok] physical KV block holding that position
    int n_tok;
    int n_head;
    int n_head_kv;
    int head_dim;
    int block_size;
    int n_layer;
    int layer;
    int neox;            // 1: NEOX pairing (x[i], x[i + d/2]); 0: NORM pairing (x[2i], x[2i+1])
    float q_scale;       // q is multiplied by this after RoPE, before its f16 rounding
    int kv_type;         // how a row is stored: KV_F16, KV_Q8_0, KV_Q4_0
    int row_u16;         // a stored row's size in 16-bit words (all three sizes are even)
    int rot_k;           // > 0: q and k are turned by Walsh-Hadamard blocks of this size
    int rot_v;           // > 0: v is turned by Walsh-Hadamard blocks of this size
    int round_q;         // 1: q rounded to f16 (one-query attention); 0: kept f32 (tiled path)
};

struct AttnParams {
    const float* q;      // [n_tok, n_head * head_dim] (values already rounded to f16)
    float* out;          // [n_tok, n_head * head_dim]
    const u16* kc;       // arenas, as in RopeKvParams
    const u16* vc;
    const int* tables;   // [rows, max_blocks] block tables
    const int* tok_pos;  // [n_tok]
    const int* tok_row;  // [n_tok] row of `tables` of each token's sequence
    float* part_acc;     // [n_tok * n_head, n_parts, head_dim] unnormalized partial outputs
    float* part_ms;      // [n_tok * n_head, n_parts, 2] partial (max, sum)
    int n_tok;
    int n_head;
    int n_head_kv;
    int head_dim;
    int block_size;
    int n_layer;
    int layer;
    int max_blocks;
    int part_len;        // positions per partition (multiple of ATT_WARPS * ATT_UNROLL)
    int n_parts;         // partitions (1: the kernel writes `out` itself)
    float scale;
    int window;          // > 0: a query at position p sees only positions p - window + 1 ..= p
    int kv_type;         // as in RopeKvParams
    int row_u16;
};

struct ArgmaxParams {
    const float* x;  // [n_rows, n_cols]
    int* out;        // [n_rows]
    int* part;       // [n_rows, ARGMAX_PARTS, 2]: each part's best (value bits, index)
    int n_rows;
    int n_cols;
};

struct TopkParams {
    const float* x;   // [*, n_cols] logits
    const int* rows;  // [n_rows]: the logits rows to select from
    u32* out;         // [n_rows, k] ids, [n_rows, k] raw logit bits, [n_rows, 2] (candidates
                      // written or -1 for a NaN in the row, usable logits): topk.cu
    int n_rows;
    int n_cols;
    int k;
    int pad;
};

struct AddParams {
    float* x;        // [n]: x += y
    const float* y;  // [n]
    int n;
    int pad;
};

struct GegluParams {
    float* gate;        // [n]: gate = gelu(gate) * up
    const float* up;    // [n]
    const u16* table;   // [65536] f16 GELU of every f16 input (the CPU's table)
    u8* q8_1;           // optional, as SwigluParams
    u8* q8_k;
    int n;
    int pad;
};

struct GatherParams {
    const float* src;   // [>= max(rows) + 1, n_cols]
    float* dst;         // [n_rows, n_cols]: dst[r] = src[rows[r]]
    const int* rows;    // [n_rows]
    int n_rows;
    int n_cols;
};

struct ShiftKeysParams {
    u16* kc;
    const float* cos;   // [n_ctx, head_dim / 2]: row `delta` is read
    const float* sin;
    int block;          // the block whose keys of `layer` are rotated
    int layer;
    int n_layer;
    int n_head_kv;
    int head_dim;
    int block_size;
    int delta;          // positions to move back by
    int neox;
    int kv_type;        // as in RopeKvParams
    int row_u16;
    int rot_k;          // > 0: keys are stored turned by Walsh-Hadamard blocks of this size
    int pad;
};

struct HadamardParams {
    float* x;           // [n_rows, row_len], turned in place
    int n_rows;
    int row_len;        // a multiple of n
    int n;              // Walsh-Hadamard block size (a power of two, at most 256)
    int pad;
};

struct CopySlotsParams {
    u16* kc;
    u16* vc;
    int src;         // source block
    int dst;         // destination block
    int n_elems;     // elements copied per (layer, head) tile: n_slots * head_dim
    int tile;        // elements of a tile: block_size * head_dim
    int n_tiles;     // tiles per block: n_layer * n_head_kv
    int pad;
};

// The sizes params.rs asserts for its mirrors: a field added on one side only fails here or there.
static_assert(sizeof(QuantizeParams) == 32, "params.rs");
static_assert(sizeof(MatmulParams) == 104, "params.rs");
static_assert(sizeof(RmsNormParams) == 64, "params.rs");
static_assert(sizeof(SwigluParams) == 40, "params.rs");
static_assert(sizeof(BiasParams) == 24, "params.rs");
static_assert(sizeof(RopeKvParams) == 128, "params.rs");
static_assert(sizeof(AttnParams) == 128, "params.rs");
static_assert(sizeof(ArgmaxParams) == 32, "params.rs");
static_assert(sizeof(CopySlotsParams) == 40, "params.rs");
static_assert(sizeof(ShiftKeysParams) == 72, "params.rs");
static_assert(sizeof(HadamardParams) == 24, "params.rs");
static_assert(sizeof(AddParams) == 24, "params.rs");
static_assert(sizeof(TopkParams) == 40, "params.rs");
static_assert(sizeof(GegluParams) == 48, "params.rs");
static_assert(sizeof(GatherParams) == 32, "params.rs");
