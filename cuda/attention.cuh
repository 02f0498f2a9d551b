// cuda/attention.cuh: the decode attention kernel of tpla.cu (flash-decoding on Hopper tensor cores; README
// "The decode attention kernel"), whole in one place: what it computes, its tile shape (one definition
// for the kernel and the host), its PTX helpers, the kernel, the merge of its splits and its launch.
// Included by tpla.cu, after the CUDA headers, tpla.h and the bf16 type.
//
// Q (rows, ha, Dk) and each cached token c = [latent slice (dcs) | rope key (dr)] share a layout, so
// with Dk = dcs + dr:  S = Q K^T over Dk,  P = online softmax of S,  O += P V  with V = the first dcs
// columns of the same cached tile. A block takes the heads of one head tile of one sequence over one
// split of its cached tokens, in tiles of TC = 64 tokens. Both products are Hopper warpgroup MMAs
// (wgmma, bf16 in, f32 accumulators): S (m64n64k16 steps) reads Q and the tile from shared memory; P V
// (one m64n(64 NJ)k16 per 16 tokens) takes P from registers (the accumulator layout of S is the A
// layout) and reads V from the same tile, transposed. Tiles arrive by the tensor-memory accelerator (TMA: one thread issues a 64 x 64 box per
// 64 columns; an mbarrier per stage counts the bytes) into a ring of `stages` buffers; the warpgroup
// that frees a stage last refills it, so the two warpgroups of a block never wait for each other
// except where the mode below makes them.
// Shared operands use the 128-byte swizzle: a matrix is stored as blocks of 64 columns; in a block,
// row r is 128 bytes whose 16-byte chunk c sits at position c ^ (r % 8) (no bank conflicts).
//
// Two warpgroups of 128 threads. Slices of 256 or less, in one of two modes:
//   HEADS  (more than 64 heads): warpgroup w owns heads 64w.. of a 128-head tile; both read every cached
//          tile. Each issues S(i) together with P V(i-1) and runs the softmax of tile i while P V(i-1)
//          is on the tensor cores (FlashAttention-3's intra-warpgroup overlap; README "Measured" has
//          what else was tried).
//   STREAM (64 heads or fewer): both own the same heads; warpgroup w takes tiles w, w+2, .. with its own
//          softmax, and the two results are merged at the end through shared memory.
// Slices of 257..512 (64 heads a block) go to the seesaw kernel below, which has its own description.
// Cache slots past a sequence's length never count: their scores are -inf, and the rows of the last
// tile past the length are zeroed in shared memory before P V (they may hold anything, NaN too).
// Each split writes O / l and lse = m + log2(l) (log2 units); attn_merge_kernel combines the splits (a
// sequence of one split is written as the final O by the kernel itself).

#define TC 64                      // cached tokens per tile
#define SMEM_BLOCK (227 * 1024)    // the shared memory one block may use on Hopper
#define LOG2E 1.4426950408889634f
enum { ATT_HEADS, ATT_STREAM };
enum { BAR_WG = 1, BAR_END = 3 };   // named barriers (0 is __syncthreads): BAR_WG + wg, BAR_END

// The kernel's tile shape, one definition for the kernel and the host (attention_shape): sizes of the
// instance <MODE, NJ, NB>, NJ 64-column blocks of O per warpgroup, NB 64-column boxes of a cached token.
template <int MODE, int NJ, int NB> struct AttnTile {
    static constexpr int HB = MODE == ATT_HEADS ? 128 : 64;        // heads (rows of Q) per block
    static constexpr int QB = NB - 1;                              // Q's last 64-column box (the rope key's) ..
    static constexpr bool QR = MODE == ATT_HEADS;                  // .. is held in registers (HEADS)
    static constexpr int DQ = QR ? QB * 64 : NB * 64;              // columns of Q in shared memory
    static constexpr int DKP = NB * 64;                            // columns of a tile
    // shared memory: Q, then per stage a tile, an mbarrier and a counter
    static constexpr size_t fixed = (size_t)HB * DQ * 2, stage = (size_t)TC * DKP * 2 + 16;
};
// The seesaw kernel's (slices of 257..512): Q's first 512 columns (the rope box in registers), two
// stages of 576-column tiles, the two P matrices handed over, the running maximum, the pair's two
// rescale factors, the two row sums at the end, and an mbarrier per stage and box.
#define SEE_SMEM (64 * 512 * 2 + 2 * TC * 576 * 2 + 2 * 64 * TC * 2 + 5 * 64 * 4 + 2 * 9 * 8)

// ---- PTX helpers: shared-memory addresses, mbarriers, the TMA, wgmma

__device__ __forceinline__ uint32_t smem_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(smem_u32(dst)), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void cp_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }   // generic writes -> TMA/wgmma
__device__ __forceinline__ void bar_sync(int id, int n) { asm volatile("bar.sync %0, %1;\n" :: "r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void bar_arrive(int id, int n) { asm volatile("bar.arrive %0, %1;\n" :: "r"(id), "r"(n) : "memory"); }
__device__ __forceinline__ void mbar_init(uint64_t *b) { asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" :: "r"(smem_u32(b))); }
__device__ __forceinline__ void mbar_expect(uint64_t *b, uint32_t bytes) {   // the producer's arrival: bytes to come
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" :: "r"(smem_u32(b)), "r"(bytes) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint64_t *b, int parity) {
    uint32_t done;
    do asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                    : "=r"(done) : "r"(smem_u32(b)), "r"(parity) : "memory");
    while (!done);
}
// one box of the tensor map (columns x.., rows y..) into shared memory, counted on mbarrier b; the cache
// is read once, so it is marked first to leave L2
__device__ __forceinline__ void tma_load(void *dst, const CUtensorMap *map, int x, int y, uint64_t *b) {
    asm volatile("{\n.reg .b64 pol;\ncreatepolicy.fractional.L2::evict_first.b64 pol, 1.0;\n"
                 "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1, {%2, %3}], [%4], pol;\n}\n"
                 :: "r"(smem_u32(dst)), "l"((uint64_t)map), "r"(x), "r"(y), "r"(smem_u32(b)) : "memory");
}
// element offset of (row r, column k) in a swizzled matrix of `rows` rows (see above)
__device__ __forceinline__ int swz(int r, int k, int rows) {
    return (k >> 6) * rows * 64 + r * 64 + ((((k >> 3) & 7) ^ (r & 7)) << 3) + (k & 7);
}
// wgmma shared-memory descriptor of a 128-byte-swizzled operand: start address, leading byte offset
// (between 64-column blocks; read for the transposed operand only), stride byte offset 1024 (8 rows)
__device__ __forceinline__ uint64_t wg_desc(const void *p, uint32_t lbo) {
    return (uint64_t)((smem_u32(p) & 0x3FFFF) >> 4) | (uint64_t)(lbo >> 4) << 16 | (uint64_t)(1024 >> 4) << 32 | 1ull << 62;
}
#define WG_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), "+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_D32 WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24)
#define WG_REGS32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
                  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_R32 "{" WG_REGS32 "}"
// d (64 x 64, f32) = (acc ? d : 0) + A (64 x 16) B (16 x 64): A and B^T row-major in shared memory
__device__ __forceinline__ void wgmma_ss(float *d, uint64_t a, uint64_t b, int acc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_R32 ", %32, %33, p, 1, 1, 0, 0;\n}\n"
                 : WG_D32 : "l"(a), "l"(b), "r"(acc));
#endif
}
// d (64 x 64, f32) = (acc ? d : 0) + A (64 x 16, registers) B (16 x 64): B^T row-major in shared memory
__device__ __forceinline__ void wgmma_rs(float *d, const uint32_t *a, uint64_t b, int acc) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 " WG_R32 ", {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
                 : WG_D32 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(acc));
#endif
}
// O (64 x 64 NJ, f32) += P (64 x 16, registers) V (16 x 64 NJ): V row-major in shared memory, read
// transposed; one instruction for all of a warpgroup's output columns (the accumulator layout is that of
// NJ 64 x 64 tiles side by side, so o[NJ][32] is one operand)
#define WG_REGS64 WG_REGS32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
                  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_REGS128 WG_REGS64 ", " \
                   "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
                   "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
                   "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
                   "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define WG_OUT64 WG_D32, WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56)
#define WG_OUT128 WG_OUT64, WG_D8(64), WG_D8(72), WG_D8(80), WG_D8(88), WG_D8(96), WG_D8(104), WG_D8(112), WG_D8(120)
template <int NJ> __device__ __forceinline__ void wgmma_pv(float *d, const uint32_t *a, uint64_t b);
#define WG_PV(NJ, N, REGS, OUTS, A0, A1, A2, A3, B)                                                              \
    template <> __device__ __forceinline__ void wgmma_pv<NJ>(float *d, const uint32_t *a, uint64_t b) {          \
        asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"                                               \
                     "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.bf16.bf16 {" REGS "}, "                     \
                     "{%" #A0 ", %" #A1 ", %" #A2 ", %" #A3 "}, %" #B ", p, 1, 1, 1;\n}\n"                      \
                     : OUTS : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));                              \
    }
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
WG_PV(1, 64, WG_REGS32, WG_D32, 32, 33, 34, 35, 36)
WG_PV(2, 128, WG_REGS64, WG_OUT64, 64, 65, 66, 67, 68)
WG_PV(4, 256, WG_REGS128, WG_OUT128, 128, 129, 130, 131, 132)
#else
template <int NJ> __device__ __forceinline__ void wgmma_pv(float *, const uint32_t *, uint64_t) {}
#endif
#undef WG_PV
// O (64 x 256, f32) += P (64 x 16) V (16 x 256), both in shared memory: P row-major, V read transposed
__device__ __forceinline__ void wgmma_pv_ss(float *d, uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, 1, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {" WG_REGS128 "}, %128, %129, p, 1, 1, 0, 1;\n}\n"
                 : WG_OUT128 : "l"(a), "l"(b));
#endif
}
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void wgmma_wait_n() { asm volatile("wgmma.wait_group.sync.aligned %0;\n" :: "n"(N) : "memory"); }
// x becomes opaque to the compiler: descriptors derived from it are computed where they are used, not
// hoisted out of a loop into registers that the accumulators need
__device__ __forceinline__ void opaque(uint64_t &x) { asm volatile("" : "+l"(x)); }
// programmatic dependent launch: the merge may start (and wait in griddepcontrol.wait for this grid's
// results) while this grid's last blocks finish
__device__ __forceinline__ void launch_dependents() { asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory"); }
__device__ __forceinline__ void wait_primary() { asm volatile("griddepcontrol.wait;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void keep(float *d) {   // the compiler must not move d across a wgmma
    #pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}
__device__ __forceinline__ float ex2(float x) {   // 2^x; 0 for -inf
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

// The online softmax of a 64 x 64 score tile, on elements [K0, K1) of this thread's 32 (element k: row
// (k >> 1) & 1, token 8(k >> 2) + 2(lane % 4) + k % 2 of the tile); log2 units. Maxima and sums are
// trees (four accumulators), not chains: the softmax is on the critical path.
template <int K0, int K1> __device__ __forceinline__ void mask_tail(float *sv, int t0, int t_end, int lane) {
    if (t0 + TC <= t_end) return;            // only the last tile of a split has slots past the end
    #pragma unroll
    for (int k = K0; k < K1; k++)
        if (t0 + (k >> 2) * 8 + (lane & 3) * 2 + (k & 1) >= t_end) sv[k] = -INFINITY;
}
template <int K0, int K1> __device__ __forceinline__ void row_max(const float *sv, float *mx) {
    float a[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    #pragma unroll
    for (int k = K0; k < K1; k++) a[k & 3] = fmaxf(a[k & 3], sv[k]);
    #pragma unroll
    for (int r = 0; r < 2; r++) {            // a[2r], a[2r+1] hold row r; then over the quad
        mx[r] = fmaxf(a[2 * r], a[2 * r + 1]);
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 1));
        mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffff, mx[r], 2));
    }
}
// the running maxima m (log2 units) take the tile's row maxima mx; alpha rescales what came before
__device__ __forceinline__ void new_max(const float *mx, float *m, float *alpha, float scale_log2) {
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        float m_new = fmaxf(m[r], mx[r] * scale_log2);   // finite: every tile has a valid token
        alpha[r] = ex2(m[r] - m_new);                    // 0 on the first tile
        m[r] = m_new;
    }
}
// sv = 2^(sv scale - m), and the running row sums l (this thread's share; over the quad at the end)
template <int K0, int K1> __device__ __forceinline__ void exp_rows(float *sv, const float *m, float *l, const float *alpha, float scale_log2) {
    float a[4] = {0, 0, 0, 0};
    #pragma unroll
    for (int k = K0; k < K1; k++) { sv[k] = ex2(fmaf(sv[k], scale_log2, -m[(k >> 1) & 1])); a[k & 3] += sv[k]; }
    #pragma unroll
    for (int r = 0; r < 2; r++) l[r] = l[r] * alpha[r] + (a[2 * r] + a[2 * r + 1]);
}
// O = O f (f of each row, the accumulator layout of N 64 x 64 tiles), skipped when no row of the warp has
// a new maximum (f = 1: at long contexts, most tiles); never while a product on O is in flight
template <int N> __device__ __forceinline__ void scale_o(float *o, const float *f) {
    if (__any_sync(0xffffffff, f[0] != 1.0f || f[1] != 1.0f))
        #pragma unroll
        for (int k = 0; k < 32 * N; k++) o[k] *= f[(k >> 1) & 1];
}
// P as the A operand of P V: k step j (tokens 16j..16j+15) is elements 8j..8j+7, two bf16 a register
template <int K0, int K1> __device__ __forceinline__ void pack_p(const float *sv, uint32_t (*p)[4]) {
    #pragma unroll
    for (int j = K0 / 8; j < K1 / 8; j++) {
        const float *x = sv + 8 * j;
        p[j][0] = pack_bf16(x[0], x[1]); p[j][1] = pack_bf16(x[2], x[3]);
        p[j][2] = pack_bf16(x[4], x[5]); p[j][3] = pack_bf16(x[6], x[7]);
    }
}

// Where a block's results go, in both kernels. A sequence of one split has its final O / l (bf16, in O)
// and lse (in lse_out, if given) written by the kernel, and no merge; otherwise each split writes O / l and
// lse to its slot of opart and lse, and the merge combines them.
struct AttnOut { float *opart, *lse; bf16 *O; float *lse_out; };
__device__ __forceinline__ void put_o(const AttnOut &d, size_t so, int b, int ha, int h, int dcs, int col, float x0, float x1) {
    if (gridDim.z == 1) *(__nv_bfloat162 *)(d.O + ((size_t)b * ha + h) * dcs + col) = __floats2bfloat162_rn(x0, x1);
    else *(float2 *)(d.opart + (so * ha + h) * dcs + col) = make_float2(x0, x1);
}
__device__ __forceinline__ void put_lse(const AttnOut &d, size_t so, int b, int ha, int h, float v) {
    if (gridDim.z > 1) d.lse[so * ha + h] = v;
    else if (d.lse_out) d.lse_out[(size_t)b * ha + h] = v;
}
// a split with nothing cached: lse = -inf (weight zero in the merge), or, alone, O = 0
__device__ __forceinline__ void put_empty(const AttnOut &d, size_t so, int b, int ha, int h_base, int hb, int dcs) {
    for (int h = h_base + threadIdx.x; h < min(ha, h_base + hb); h += blockDim.x) put_lse(d, so, b, ha, h, -INFINITY);
    for (int k = threadIdx.x; gridDim.z == 1 && k < hb * dcs; k += blockDim.x)
        if (h_base + k / dcs < ha) d.O[((size_t)b * ha + h_base) * dcs + k] = __float2bfloat16(0.0f);
}

// The start of a block, in both kernels: in every stage, the tile columns past the cached token's kbox
// boxes (read by wgmma, never written by the TMA) are zeros; Q's HB rows from h_base of sequence b come in
// by cp.async (zeros past ha and past Dk), committed.
template <int HB, int DQ, int NB>
__device__ __forceinline__ void block_start(bf16 *Qs, bf16 *Ks, int stages, int kbox, const bf16 *Q, int b, int ha, int h_base, int Dk) {
    const int tid = threadIdx.x, lane = tid & 31;
    for (int k = tid; k < stages * (NB - kbox) * TC * 8; k += blockDim.x) {
        int per = (NB - kbox) * TC * 8, st = k / per, c = kbox + k % per / (TC * 8);
        *(uint4 *)(Ks + st * TC * NB * 64 + c * TC * 64 + k % (TC * 8) * 8) = make_uint4(0, 0, 0, 0);
    }
    for (int r = tid >> 5; r < HB; r += blockDim.x / 32)
        for (int c = lane; c < DQ / 8; c += 32) {
            int ok = h_base + r < ha && c < Dk / 8;
            cp_async16(Qs + swz(r, c * 8, HB), Q + ((size_t)b * ha + (ok ? h_base + r : 0)) * Dk + (ok ? c * 8 : 0), ok ? 16 : 0);
        }
    cp_commit();
}

// ---- the kernel
// Accumulator layout of a 64 x 64 wgmma tile (warp w of the warpgroup, lane l): element d[4j + e] is row
// 16w + l/4 + 8(e/2), column 8j + 2(l%4) + e%2. Thread t of either warpgroup owns the same rows.

template <int MODE, int NJ, int NB>
__global__ void __launch_bounds__(256, 1)
decode_attention_kernel(const bf16 *__restrict__ Q, const __grid_constant__ CUtensorMap cache, int row0,
                        const int *__restrict__ lens, const AttnOut out, int ha, int dcs,
                        int Dk, int stages, int max_len, int chunk, float scale_log2) {
    typedef AttnTile<MODE, NJ, NB> Tile;                    // the sizes, shared with the host
    constexpr int HB = Tile::HB, QB = Tile::QB, DQ = Tile::DQ, DKP = Tile::DKP;
    constexpr bool QR = Tile::QR;
    extern __shared__ __align__(1024) char smem[];
    bf16 *Qs = (bf16 *)smem;                                 // HB x DQ, swizzled
    bf16 *Ks = Qs + HB * DQ;                                 // [stages][TC x DKP], swizzled
    uint64_t *full = (uint64_t *)(Ks + stages * TC * DKP);   // [stages]: the stage's tile has landed
    int *freed = (int *)(full + stages);                     // [stages]: warpgroups done with the stage's tile

    // (the warpgroup index through a shuffle: the compiler then knows it is the same in a warp)
    const int tid = threadIdx.x, wg = __shfl_sync(0xffffffff, tid >> 7, 0), t = tid & 127, lane = tid & 31, warp = t >> 5;
    const int h_base = blockIdx.x * HB, b = blockIdx.y, split = blockIdx.z;
    const int len = lens[b], t_begin = split * chunk, t_end = min(len, t_begin + chunk);
    const int ntiles = t_begin < t_end ? (t_end - t_begin + TC - 1) / TC : 0;
    const size_t so = (size_t)b * gridDim.z + split;         // this split's output slot
    if (ntiles == 0) { put_empty(out, so, b, ha, h_base, HB, dcs); return; }   // nothing to attend to
    if (smem_u32(smem) & 1023) __trap();     // swizzle atoms need 1024-byte alignment

    // the tiles of this warpgroup, and who reads each tile
    const int first = MODE == ATT_STREAM ? wg : 0, step = MODE == ATT_STREAM ? 2 : 1, readers = MODE == ATT_STREAM ? 1 : 2;
    const int kbox = (Dk + 63) / 64;         // 64-column boxes of a cached token (the TMA zero-fills past Dk)
    auto load_tile = [&](int i) {            // tile i into stage i % stages
        int s = i % stages;
        mbar_expect(&full[s], kbox * TC * 128);
        for (int c = 0; c < kbox; c++)
            tma_load(Ks + (s * DKP + c * 64) * TC, &cache, c * 64, row0 + b * max_len + t_begin + i * TC, &full[s]);
    };
    if (tid == 0) {                          // the first tiles are on their way while Q comes in
        for (int s = 0; s < stages; s++) { mbar_init(&full[s]); freed[s] = 0; }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");   // seen by the TMA
        for (int i = 0; i < min(stages, ntiles); i++) load_tile(i);
    }
    block_start<HB, DQ, NB>(Qs, Ks, stages, kbox, Q, b, ha, h_base, Dk);
    cp_wait_all();
    fence_async();
    __syncthreads();

    // HEADS: Q's box QB as A operands of 4 k steps (accumulator layout, two bf16 a register), straight
    // from global memory: it leaves room for one more tile
    const int qrow = MODE == ATT_HEADS ? 64 * wg : 0;        // this warpgroup's first row of Q
    uint32_t qr[4][4];
    if (QR) {
        #pragma unroll
        for (int k = 0; k < 4; k++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int h = h_base + qrow + warp * 16 + lane / 4 + 8 * (e & 1), col = QB * 64 + 16 * k + 8 * (e >> 1) + 2 * (lane & 3);
                qr[k][e] = h < ha && col < Dk ? *(const uint32_t *)(Q + ((size_t)b * ha + h) * Dk + col) : 0u;
            }
    }

    // S(i) = Q K^T, issued (it completes at the next wgmma_wait)
    const uint64_t dq = wg_desc(Qs + qrow * 64, 16), dk = wg_desc(Ks, 16), dv = wg_desc(Ks, TC * 128);
    auto issue_S = [&](float *d, int i) {
        int s = i % stages;
        mbar_wait(&full[s], (i / stages) & 1);
        const uint64_t kb = dk + s * TC * DKP / 8;           // descriptors advance in units of 16 bytes
        keep<32>(d);
        wgmma_fence();
        #pragma unroll
        for (int k = 0; k < DQ / 16; k++) wgmma_ss(d, dq + (k >> 2) * HB * 8 + (k & 3) * 2, kb + (k >> 2) * TC * 8 + (k & 3) * 2, k > 0);
        if (QR)
            #pragma unroll
            for (int k = 0; k < 4; k++) wgmma_rs(d, qr[k], kb + QB * TC * 8 + k * 2, 1);
        wgmma_commit();
    };

    // done with tile i: the warpgroup that frees its stage last refills it
    auto release = [&](int i) {
        bar_sync(BAR_WG + wg, 128);
        if (t == 0) {
            int s = i % stages;
            if (atomicAdd(&freed[s], 1) == readers - 1) {
                atomicExch(&freed[s], 0);
                if (i + stages < ntiles) load_tile(i + stages);
            }
        }
    };
    // rows of tile i past the sequence's end, in the output columns this warpgroup reads, are zeroed
    auto zero_tail = [&](int i) {
        int valid = t_end - (t_begin + i * TC);
        if (valid >= TC) return;
        bf16 *tile = Ks + (i % stages) * TC * DKP;
        for (int k = t; k < (TC - valid) * NJ * 8; k += 128) {
            int r = valid + k / (NJ * 8), c = k % (NJ * 8) * 8;
            *(uint4 *)(tile + swz(r, c, TC)) = make_uint4(0, 0, 0, 0);
        }
        fence_async();
        bar_sync(BAR_WG + wg, 128);
    };

    float o[NJ][32], m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0, 0}, sv[32], alpha[2];
    uint32_t pa[TC / 16][4];                                 // P as the A operand of P V: 16 tokens per k step
    #pragma unroll
    for (int j = 0; j < NJ; j++)
        #pragma unroll
        for (int k = 0; k < 32; k++) o[j][k] = 0;
    // the online softmax of tile i's scores sv (log2 units): sv becomes P, alpha rescales what came before
    // (rows lane/4 and lane/4 + 8 of this warp's 16)
    auto softmax = [&](float *sv, int i) {
        mask_tail<0, 32>(sv, t_begin + i * TC, t_end, lane);
        float mx[2];
        row_max<0, 32>(sv, mx);
        new_max(mx, m_run, alpha, scale_log2);
        exp_rows<0, 32>(sv, m_run, l_run, alpha, scale_log2);
    };
    // O += P V of tile i, issued; wait_o: every product in flight is done (O included)
    auto issue_pv = [&](int i) {
        zero_tail(i);
        #pragma unroll
        for (int j = 0; j < NJ; j++) keep<32>(o[j]);
        wgmma_fence();
        const uint64_t vb = dv + (i % stages) * TC * DKP / 8;
        #pragma unroll
        for (int k = 0; k < TC / 16; k++) wgmma_pv<NJ>(&o[0][0], pa[k], vb + k * 128);
        wgmma_commit();
    };
    auto wait_o = [&]() {
        wgmma_wait();
        #pragma unroll
        for (int j = 0; j < NJ; j++) keep<32>(o[j]);
    };
    // HEADS (FlashAttention-3's intra-warpgroup overlap): S(i) and P V(i-1) are issued together, and the
    // softmax of tile i runs while P V(i-1) does, so tiles i - 1 and i are both held until P V(i-1) is
    // done. STREAM: warpgroup w takes tiles w, w + 2, .. one at a time.
    if (MODE == ATT_HEADS) {
        issue_S(sv, 0);
        wgmma_wait();                                        // S(0)
        keep<32>(sv);
        softmax(sv, 0);
        pack_p<0, 32>(sv, pa);
        for (int i = 1; i < ntiles; i++) {
            issue_S(sv, i);
            issue_pv(i - 1);                                 // in flight: S(i), P V(i-1)
            wgmma_wait_n<1>();                               // S(i)
            keep<32>(sv);
            softmax(sv, i);
            // a branch on the softmax's sums, never taken, keeps ptxas from moving the next wait above the
            // softmax (which would undo the overlap)
            if (__any_sync(0xffffffff, l_run[0] + l_run[1] == -1.0f)) __trap();
            wait_o();                                        // P V(i-1)
            release(i - 1);
            scale_o<NJ>(&o[0][0], alpha);
            pack_p<0, 32>(sv, pa);
        }
        issue_pv(ntiles - 1);
        wait_o();
        release(ntiles - 1);
    } else
    for (int i = first; i < ntiles; i += step) {
        issue_S(sv, i);
        wgmma_wait();                                        // S(i)
        keep<32>(sv);
        softmax(sv, i);
        scale_o<NJ>(&o[0][0], alpha);
        pack_p<0, 32>(sv, pa);
        issue_pv(i);
        wait_o();
        release(i);
    }
    wgmma_wait();                                            // (nothing is in flight; the compiler cannot tell)
    launch_dependents();

    // the row sums of this thread's rows, over the quad
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffff, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffff, l_run[r], 2);
    }
    if (MODE == ATT_STREAM) {                   // warpgroup 1 hands its O, m and l to warpgroup 0
        float *E = (float *)Ks;                 // the tiles are all read: their buffers are free
        bar_sync(BAR_END, 256);
        if (wg == 1) {
            #pragma unroll
            for (int j = 0; j < NJ; j++)
                #pragma unroll
                for (int k = 0; k < 32; k++) E[(j * 32 + k) * 128 + t] = o[j][k];
            #pragma unroll
            for (int r = 0; r < 2; r++) { E[(NJ * 32 + r) * 128 + t] = m_run[r]; E[(NJ * 32 + 2 + r) * 128 + t] = l_run[r]; }
        }
        bar_sync(BAR_END, 256);
        if (wg == 1) return;
        float w0[2], w1[2];
        #pragma unroll
        for (int r = 0; r < 2; r++) {
            float m1 = E[(NJ * 32 + r) * 128 + t], l1 = E[(NJ * 32 + 2 + r) * 128 + t], M = fmaxf(m_run[r], m1);
            w0[r] = ex2(m_run[r] - M); w1[r] = ex2(m1 - M);   // warpgroup 1 may have had no tile: m1 = -inf
            l_run[r] = l_run[r] * w0[r] + l1 * w1[r];
            m_run[r] = M;
        }
        #pragma unroll
        for (int j = 0; j < NJ; j++)
            #pragma unroll
            for (int k = 0; k < 32; k++) o[j][k] = o[j][k] * w0[(k >> 1) & 1] + E[(j * 32 + k) * 128 + t] * w1[(k >> 1) & 1];
    }

    // O / l and lse, for the heads that exist
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        int h = h_base + qrow + warp * 16 + lane / 4 + 8 * r;
        if (h >= ha) continue;
        float inv = 1.0f / l_run[r];
        #pragma unroll
        for (int j = 0; j < NJ; j++)
            #pragma unroll
            for (int q = 0; q < 8; q++) {
                int col = j * 64 + q * 8 + (lane & 3) * 2;
                if (col < dcs) put_o(out, so, b, ha, h, dcs, col, o[j][4 * q + 2 * r] * inv, o[j][4 * q + 2 * r + 1] * inv);
            }
        if ((lane & 3) == 0) put_lse(out, so, b, ha, h, m_run[r] + log2f(l_run[r]));
    }
}

// ---- the seesaw kernel: slices of 257..512 (slice 257..512, 64 heads a block)
// One 64 x 512 output is too large for one warpgroup's registers, so it is split by columns: O_L (0..255)
// lives in warpgroup 0, O_R (256..511) in warpgroup 1. The tiles go in pairs, two stages of shared memory:
// warpgroup 0 owns tile A = 2p (stage 0), warpgroup 1 tile B = 2p+1 (stage 1); each computes S of its own
// tile over all Dk columns and its own softmax, against one running maximum m kept in shared memory. Each
// multiplies its own P (registers) into its half of O, and the other's P (handed over in shared memory):
//   0: mA = max(m, rowmax S_A); a = 2^(m - mA); P_A = 2^(S_A - mA); O_L = O_L a + P_A V_A[L]     hands a
//   1: mB = max(mA, rowmax S_B); b = 2^(mA - mB); P_B = 2^(S_B - mB); O_R = O_R a b + P_B V_B[R]  hands b, P_B
//   0: P_A <- P_A b (hands it over); O_L = O_L b + P_B V_B[L]
//   1: O_R = O_R + P_A V_A[R]
// after which both halves of O and both running sums l (l_A in warpgroup 0, l_B in 1) are relative to
// m = mB. So one warpgroup's softmax runs while the other's products run: the two see-saw. A stage's tile
// is loaded in two halves, boxes 0-3 (V[L] and the first half of the key) and boxes 4-8 (V[R], the rest
// and the rope key), each refilled by the warpgroup that reads it last, as soon as it is done with it;
// every box has its own mbarrier, and S starts on each box as it lands (two stages in flight leave the
// products waiting on memory otherwise). O is rescaled only where a row's maximum moved.
// (The schedule is FlashMLA's, from DeepSeek's description of it; this is a separate implementation.)
enum { SEE_A = 1, SEE_B = 2, SEE_PA = 3, SEE_PB = 4, SEE_END = 5, SEE_WG = 6 };   // named barriers

// this thread's P (accumulator layout, each row times sc[row]) into a 64 x 64 swizzled bf16 matrix
__device__ __forceinline__ void store_p(bf16 *P, const float *sv, const float *sc, int r0, int lane) {
    #pragma unroll
    for (int q = 0; q < 8; q++)
        #pragma unroll
        for (int r = 0; r < 2; r++)
            *(uint32_t *)(P + swz(r0 + 8 * r, 8 * q + 2 * (lane & 3), 64)) = pack_bf16(sv[4 * q + 2 * r] * sc[r], sv[4 * q + 2 * r + 1] * sc[r]);
}

template <int NB>
__global__ void __launch_bounds__(256, 1)
decode_attention_seesaw(const bf16 *__restrict__ Q, const __grid_constant__ CUtensorMap cache, int row0,
                        const int *__restrict__ lens, const AttnOut out, int ha, int dcs,
                        int Dk, int stages, int max_len, int chunk, float scale_log2) {
    static_assert(NB == 9, "the seesaw kernel takes 576-column tiles");
    constexpr int HB = 64, DQ = 512, DKP = NB * 64;
    extern __shared__ __align__(1024) char smem[];
    bf16 *Qs = (bf16 *)smem;                     // HB x DQ, swizzled (Q's last box, the rope key's, in registers)
    bf16 *Ks = Qs + HB * DQ;                     // [2][TC x DKP], swizzled: stage 0 holds tiles A, stage 1 tiles B
    bf16 *Ps = Ks + 2 * TC * DKP;                // [2][HB x TC], swizzled: P_A b, P_B
    float *m_s = (float *)(Ps + 2 * HB * TC);    // [HB] the running maximum (log2 units)
    float *sc = m_s + HB;                        // [2][HB] a, b of the pair
    float *l_s = sc + 2 * HB;                    // [2][HB] l_A, l_B at the end
    uint64_t *full = (uint64_t *)(l_s + 2 * HB); // [2][NB]: stage s, box c has landed
    (void)stages;

    const int tid = threadIdx.x, wg = __shfl_sync(0xffffffff, tid >> 7, 0), t = tid & 127, lane = tid & 31, warp = t >> 5;
    const int h_base = blockIdx.x * HB, b = blockIdx.y, split = blockIdx.z;
    const int len = lens[b], t_begin = split * chunk, t_end = min(len, t_begin + chunk);
    const int ntiles = t_begin < t_end ? (t_end - t_begin + TC - 1) / TC : 0;
    const size_t so = (size_t)b * gridDim.z + split;
    if (ntiles == 0) { put_empty(out, so, b, ha, h_base, HB, dcs); return; }
    if (smem_u32(smem) & 1023) __trap();

    const int kbox = (Dk + 63) / 64;
    auto load_half = [&](int i, int h) {         // half h of tile i into stage i % 2; past the split, zeros
        int s = i & 1, c0 = h ? 4 : 0, c1 = h ? kbox : 4, y = i < ntiles ? row0 + b * max_len + t_begin + i * TC : -TC;
        for (int c = c0; c < c1; c++) {
            mbar_expect(&full[s * NB + c], TC * 128);
            tma_load(Ks + (s * DKP + c * 64) * TC, &cache, c * 64, y, &full[s * NB + c]);
        }
    };
    if (tid == 0) {                               // the first pair is on its way while Q comes in
        for (int k = 0; k < 2 * NB; k++) mbar_init(&full[k]);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        for (int i = 0; i < 2; i++) { load_half(i, 0); load_half(i, 1); }
    }
    block_start<HB, DQ, NB>(Qs, Ks, 2, kbox, Q, b, ha, h_base, Dk);
    for (int h = tid; h < HB; h += 256) m_s[h] = -INFINITY;
    cp_wait_all();
    fence_async();
    __syncthreads();
    uint32_t qr[4][4];                            // Q's box 8 (the rope key) as A operands of 4 k steps
    #pragma unroll
    for (int k = 0; k < 4; k++)
        #pragma unroll
        for (int e = 0; e < 4; e++) {
            int h = h_base + warp * 16 + lane / 4 + 8 * (e & 1), col = 8 * 64 + 16 * k + 8 * (e >> 1) + 2 * (lane & 3);
            qr[k][e] = h < ha && col < Dk ? *(const uint32_t *)(Q + ((size_t)b * ha + h) * Dk + col) : 0u;
        }

    const uint64_t dq = wg_desc(Qs, 16), dk = wg_desc(Ks, 16), dv = wg_desc(Ks, TC * 128);
    // half h of S(i) = Q K^T: boxes 0-3, or boxes 4-7 and the rope box 8 (Q from registers); issued box
    // by box as each lands (boxes past kbox are zeros, never loaded)
    auto issue_S = [&](float *d, int i, int h, int acc) {
        const int s = i & 1, parity = (i >> 1) & 1;
        uint64_t qb = dq, kb = dk + s * TC * DKP / 8;
        opaque(qb); opaque(kb);
        if (!acc) keep<32>(d);                    // (not between the halves: d is in flight)
        #pragma unroll
        for (int k = 16 * h; k < 16 * h + 16; k++) {
            if ((k & 3) == 0) {
                if (k / 4 < kbox) mbar_wait(&full[s * NB + k / 4], parity);
                wgmma_fence();
            }
            wgmma_ss(d, qb + (k >> 2) * HB * 8 + (k & 3) * 2, kb + (k >> 2) * TC * 8 + (k & 3) * 2, acc || k > 16 * h);
        }
        if (h) {
            if (8 < kbox) mbar_wait(&full[s * NB + 8], parity);
            wgmma_fence();
            #pragma unroll
            for (int k = 0; k < 4; k++) wgmma_rs(d, qr[k], kb + 8 * TC * 8 + k * 2, 1);
        }
        wgmma_commit();
    };
    // O (this warpgroup's half) += P V[half] of stage s: P from registers, or from shared memory
    const int cb = 4 * wg;                        // this warpgroup's first 64-column block of O
    auto pv_own = [&](float *o, const uint32_t (*pa)[4], int s) {
        uint64_t vb = dv + s * TC * DKP / 8 + cb * TC * 8;
        opaque(vb);
        keep<128>(o);
        wgmma_fence();
        #pragma unroll
        for (int k = 0; k < TC / 16; k++) wgmma_pv<4>(o, pa[k], vb + k * 128);
        wgmma_commit();
    };
    auto pv_other = [&](float *o, int s, bool chained = false) {   // P of the other's tile, handed over in Ps[s]
        uint64_t dp = wg_desc(Ps + s * HB * TC, 16), vb = dv + s * TC * DKP / 8 + cb * TC * 8;
        opaque(dp); opaque(vb);
        if (!chained) keep<128>(o);               // (chained: o is in flight, accumulating)
        wgmma_fence();
        #pragma unroll
        for (int k = 0; k < TC / 16; k++) wgmma_pv_ss(o, dp + k * 2, vb + k * 128);
        wgmma_commit();
    };
    // rows of tile i past the sequence's end are zeroed in all of V's columns (both warpgroups read them)
    auto zero_tail = [&](int i) {
        int valid = t_end - (t_begin + i * TC);
        if (valid >= TC || valid <= 0) return;    // (a tile past the end is zeros already)
        bf16 *tile = Ks + (i & 1) * TC * DKP;
        for (int k = t; k < (TC - valid) * 8 * 8; k += 128) {
            int r = valid + k / 64, c = k % 64 * 8;
            *(uint4 *)(tile + swz(r, c, TC)) = make_uint4(0, 0, 0, 0);
        }
        fence_async();
        bar_sync(SEE_WG + wg, 128);
    };

    const int r0 = warp * 16 + lane / 4;          // this thread's rows: r0 and r0 + 8 (the same in both warpgroups)
    float o[4][32], l_run[2] = {0, 0}, sv[32];
    uint32_t pa[TC / 16][4];                      // this warpgroup's P as the A operand of P V
    float mx[2], m[2], f[2];
    #pragma unroll
    for (int j = 0; j < 4; j++)
        #pragma unroll
        for (int k = 0; k < 32; k++) o[j][k] = 0;
    // Every pair is whole and is followed by another: a tile past the split's end is all zeros (the TMA
    // fills rows outside the cache with zeros) and all its scores are masked, so it adds nothing. So no
    // product is issued on one path and not on another (the compiler would serialise every product).
    if (wg == 0) {
        issue_S(sv, 0, 0, 0);
        issue_S(sv, 0, 1, 1);
        for (int iA = 0; iA < ntiles; iA += 2) {
            wgmma_wait();                                            // S_A
            keep<32>(sv);
            zero_tail(iA);
            mask_tail<0, 32>(sv, t_begin + iA * TC, t_end, lane);
            row_max<0, 32>(sv, mx);
            #pragma unroll
            for (int r = 0; r < 2; r++) {
                float m0 = m_s[r0 + 8 * r];
                m[r] = fmaxf(m0, mx[r] * scale_log2);                // finite: tile A has a valid token
                f[r] = ex2(m0 - m[r]);                               // a (0 on the first tile)
            }
            __syncwarp();
            if ((lane & 3) == 0)
                for (int r = 0; r < 2; r++) { m_s[r0 + 8 * r] = m[r]; sc[r0 + 8 * r] = f[r]; }
            exp_rows<0, 32>(sv, m, l_run, f, scale_log2);            // P_A; l_A = l_A a + sum
            scale_o<4>(&o[0][0], f);
            pack_p<0, 32>(sv, pa);
            bar_arrive(SEE_A, 256);
            pv_own(&o[0][0], pa, 0);                                 // O_L += P_A V_A[L]
            wgmma_wait();
            keep<128>(&o[0][0]);
            if (t == 0) load_half(iA + 2, 0);                        // stage 0's boxes 0-3 are read
            bar_sync(SEE_B, 256);
            f[0] = sc[HB + r0]; f[1] = sc[HB + r0 + 8];               // b
            store_p(Ps, sv, f, r0, lane);                            // P_A b, for warpgroup 1
            fence_async();
            bar_arrive(SEE_PA, 256);
            bar_sync(SEE_PB, 256);
            scale_o<4>(&o[0][0], f);
            l_run[0] *= f[0]; l_run[1] *= f[1];
            pv_other(&o[0][0], 1, false);                            // O_L += P_B V_B[L]
            issue_S(sv, iA + 2, 0, 0);
            wgmma_wait_n<1>();                                       // stage 1's boxes 0-3 are read
            if (t == 0) load_half(iA + 3, 0);
            issue_S(sv, iA + 2, 1, 1);
        }
    } else {
        issue_S(sv, 1, 1, 0);
        issue_S(sv, 1, 0, 1);
        for (int iA = 0; iA < ntiles; iA += 2) {
            const int iB = iA + 1;
            float ab[2];
            wgmma_wait();                                            // S_B
            keep<32>(sv);
            zero_tail(iB);
            mask_tail<0, 32>(sv, t_begin + iB * TC, t_end, lane);
            row_max<0, 32>(sv, mx);
            bar_sync(SEE_A, 256);
            #pragma unroll
            for (int r = 0; r < 2; r++) {
                float mA = m_s[r0 + 8 * r];
                m[r] = fmaxf(mA, mx[r] * scale_log2);
                f[r] = ex2(mA - m[r]);                               // b
                ab[r] = sc[r0 + 8 * r] * f[r];
            }
            __syncwarp();
            if ((lane & 3) == 0)
                for (int r = 0; r < 2; r++) { m_s[r0 + 8 * r] = m[r]; sc[HB + r0 + 8 * r] = f[r]; }
            exp_rows<0, 32>(sv, m, l_run, ab, scale_log2);           // P_B; l_B = l_B a b + sum
            scale_o<4>(&o[0][0], ab);
            bar_arrive(SEE_B, 256);
            const float one[2] = {1, 1};
            pack_p<0, 32>(sv, pa);
            store_p(Ps + HB * TC, sv, one, r0, lane);                // P_B, for warpgroup 0
            fence_async();
            bar_arrive(SEE_PB, 256);
            pv_own(&o[0][0], pa, 1);                                 // O_R += P_B V_B[R]
            bar_sync(SEE_PA, 256);
            pv_other(&o[0][0], 0, true);                             // O_R += P_A b V_A[R]
            wgmma_wait_n<1>();                                       // stage 1's boxes 4.. are read
            if (t == 0) load_half(iB + 2, 1);
            wgmma_wait();                                            // stage 0's boxes 4.. are read
            keep<128>(&o[0][0]);
            if (t == 0) load_half(iA + 2, 1);
            issue_S(sv, iB + 2, 1, 0);
            issue_S(sv, iB + 2, 0, 1);
        }
    }
    wgmma_wait();
    launch_dependents();

    // l = l_A + l_B (each over its quad first); O / l and lse = m + log2 l
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffff, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffff, l_run[r], 2);
        if ((lane & 3) == 0) l_s[wg * HB + r0 + 8 * r] = l_run[r];
    }
    bar_sync(SEE_END, 256);
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        int h = h_base + r0 + 8 * r;
        if (h >= ha) continue;
        float l = l_s[r0 + 8 * r] + l_s[HB + r0 + 8 * r], inv = 1.0f / l;
        #pragma unroll
        for (int j = 0; j < 4; j++)
            #pragma unroll
            for (int q = 0; q < 8; q++) {
                int col = (cb + j) * 64 + q * 8 + (lane & 3) * 2;
                if (col < dcs) put_o(out, so, b, ha, h, dcs, col, o[j][4 * q + 2 * r] * inv, o[j][4 * q + 2 * r + 1] * inv);
            }
        if (wg == 0 && (lane & 3) == 0) put_lse(out, so, b, ha, h, m_s[r0 + 8 * r] + log2f(l));
    }
}

// Combines the splits of each (sequence, head): O = sum_s 2^(lse_s - M) O_s / sum_s 2^(lse_s - M). A block
// takes hpb heads of a sequence: its warps first put each head's split weights in shared memory (a warp a
// head), then every thread sums one group of 4 columns over the splits, the splits' loads unrolled so that
// several are in flight (the merge reads all the partial outputs once, and is bound by how many loads are
// in flight). Splits with nothing cached come last (lse = -inf, their O never written) and are not read.
// lse_out (B, ha), if given: the merged lse = M + log2 sum_s 2^(lse_s - M) (log2 units; -inf, with O = 0,
// where nothing is cached), what DCP's combine weighs a rank by.
#define MERGE_THREADS 256
__global__ void attn_merge_kernel(const float *opart, const float *lse, bf16 *O, float *lse_out, int ha, int dcs, int nsplit, int hpb) {
    extern __shared__ float wsplit[];                   // [hpb][nsplit + 2]: weights, 1 / their sum, splits used
    const int b = blockIdx.x, h0 = blockIdx.y * hpb, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    wait_primary();                                     // the attention kernel's partial outputs
    for (int hh = warp; hh < hpb && h0 + hh < ha; hh += MERGE_THREADS / 32) {
        const int h = h0 + hh;
        float *w = wsplit + hh * (nsplit + 2), M = -INFINITY, den = 0;
        int used = 0;
        for (int s = lane; s < nsplit; s += 32) {
            float l = lse[((size_t)b * nsplit + s) * ha + h];
            M = fmaxf(M, l);
            if (l != -INFINITY) used = s + 1;
        }
        for (int o = 16; o; o >>= 1) {
            M = fmaxf(M, __shfl_xor_sync(0xffffffff, M, o));
            used = max(used, __shfl_xor_sync(0xffffffff, used, o));
        }
        for (int s = lane; s < nsplit; s += 32) {
            float l = lse[((size_t)b * nsplit + s) * ha + h];
            w[s] = l == -INFINITY ? 0.0f : exp2f(l - M);   // a split with nothing cached weighs 0
            den += w[s];
        }
        for (int o = 16; o; o >>= 1) den += __shfl_xor_sync(0xffffffff, den, o);
        if (lane == 0) {
            w[nsplit] = den > 0 ? 1.0f / den : 0.0f;        // 0: nothing cached, O = 0
            ((int *)w)[nsplit + 1] = used;
            if (lse_out) lse_out[(size_t)b * ha + h] = den > 0 ? M + log2f(den) : -INFINITY;
        }
    }
    __syncthreads();
    const int q = dcs / 4;                              // groups of 4 columns in a head
    for (int k = threadIdx.x; k < hpb * q && h0 + k / q < ha; k += MERGE_THREADS) {
        const int hh = k / q, h = h0 + hh, c = k % q * 4;
        const float *w = wsplit + hh * (nsplit + 2);
        const int used = ((const int *)w)[nsplit + 1];
        const float4 *src = (const float4 *)(opart + ((size_t)b * nsplit * ha + h) * dcs + c);
        const size_t step = (size_t)ha * dcs / 4;       // float4s from one split to the next
        float4 a = make_float4(0, 0, 0, 0);
        #pragma unroll 8
        for (int s = 0; s < used; s++) {
            float4 v = src[s * step];
            float ws = w[s];
            a.x += ws * v.x; a.y += ws * v.y; a.z += ws * v.z; a.w += ws * v.w;
        }
        const float inv = w[nsplit];
        __nv_bfloat162 lo = __floats2bfloat162_rn(a.x * inv, a.y * inv), hi = __floats2bfloat162_rn(a.z * inv, a.w * inv);
        uint2 pk = make_uint2(*(uint32_t *)&lo, *(uint32_t *)&hi);
        *(uint2 *)(O + ((size_t)b * ha + h) * dcs + c) = pk;
    }
}

// How the kernel is launched for ha heads and a dcs-wide slice: its instance <MODE, NJ, NB>, blocks per
// sequence split (head tiles), buffers (stages) and shared memory, from the instance's AttnTile.
typedef void (*AttnKernel)(const bf16 *, const CUtensorMap, int, const int *, const AttnOut, int, int, int, int, int, int, float);
typedef struct { AttnKernel k; int head_tiles, stages; size_t smem; } AttnShape;

template <int MODE, int NJ, int NB> static AttnShape attention_instance(int ha, int Dk) {
    typedef AttnTile<MODE, NJ, NB> Tile;
    AttnShape a;
    a.k = decode_attention_kernel<MODE, NJ, NB>;
    a.head_tiles = (ha + Tile::HB - 1) / Tile::HB;
    a.stages = (int)std::min<size_t>(8, (SMEM_BLOCK - Tile::fixed) / Tile::stage);
    if (a.stages < 2) die("decode attention: a %d-wide cached token does not fit the kernel's shared memory", Dk);
    a.smem = Tile::fixed + a.stages * Tile::stage;
    return a;
}

static AttnShape attention_shape(int ha, int dcs, int Dk) {
    if (dcs > 512 || dcs % 8 || Dk % 8 || Dk - dcs > 64)
        die("decode attention: no kernel for a %d-wide latent slice with a %d-wide rope key (at most 512 and 64, multiples of 8)", dcs, Dk - dcs);
    if (dcs > 256) return AttnShape{decode_attention_seesaw<9>, (ha + 63) / 64, 2, SEE_SMEM};
    int mode = ha > 64 ? ATT_HEADS : ATT_STREAM, NJ = dcs <= 64 ? 1 : dcs <= 128 ? 2 : 4, NB = (dcs + 63) / 64 + 1;
#define K_(md, nj, nb) if (mode == md && NJ == nj && NB == nb) return attention_instance<md, nj, nb>(ha, Dk);
    K_(ATT_HEADS, 1, 2) K_(ATT_HEADS, 2, 3) K_(ATT_HEADS, 4, 4) K_(ATT_HEADS, 4, 5)
    K_(ATT_STREAM, 1, 2) K_(ATT_STREAM, 2, 3) K_(ATT_STREAM, 4, 4) K_(ATT_STREAM, 4, 5)
#undef K_
    die("decode attention: no kernel instance for %d heads of a %d-wide slice", ha, dcs);
}

// Splits of the sequence. Blocks run one per SM, in waves; a split has at least MIN_TILES tiles (a block's
// start, its Q and its partial output cost about as much as that many). The count chosen (at most enough
// to fill the card WAVES times) makes the least of: waves x (the tiles of a split + two tiles of start and
// end), in bytes of cache read per SM, plus the partial outputs written and read again by the merge (none
// for one split: the kernel then writes O itself).
#define MIN_TILES 4
#define WAVES 8
static int nsplit_cap(int rows, int head_tiles, int max_len, int sms) {
    int tiles = (max_len + TC - 1) / TC;
    return std::max(1, std::min((tiles + MIN_TILES - 1) / MIN_TILES, (WAVES * sms + rows * head_tiles - 1) / (rows * head_tiles)));
}
static int nsplit_for(int rows, int head_tiles, int ha, int dcs, int Dk, int max_len, int sms, int *chunk) {
    int tiles = (max_len + TC - 1) / TC, cap = nsplit_cap(rows, head_tiles, max_len, sms), best = 1;
    if (tiles == 0) { *chunk = TC; return 1; }
    double best_cost = INFINITY, tile = (double)TC * Dk * 2;
    for (int s = 1; s <= cap; s++) {
        int per = (tiles + s - 1) / s, used = (tiles + per - 1) / per, blocks = rows * head_tiles * used;
        double cost = (double)((blocks + sms - 1) / sms) * (per + 2) * tile + (used > 1 ? (double)rows * used * ha * dcs * 8 / sms : 0);
        if (cost < best_cost * 0.999) { best_cost = cost; best = s; }
    }
    *chunk = (tiles + best - 1) / best * TC;
    return (max_len + *chunk - 1) / *chunk;
}

// The cache of a rank (rows of Dk bf16 values: layer, sequence, position) as a TMA tensor map read in
// boxes of 64 columns x TC rows with the 128-byte swizzle; the driver's encoder is fetched through the
// runtime, so no -lcuda is needed.
static CUtensorMap cache_map(const bf16 *base, size_t rows, int Dk) {
    static PFN_cuTensorMapEncodeTiled_v12000 encode = NULL;
    if (!encode) {
        cudaDriverEntryPointQueryResult q;
        CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", (void **)&encode, 12000, cudaEnableDefault, &q));
        if (q != cudaDriverEntryPointSuccess || !encode) die("the CUDA driver has no cuTensorMapEncodeTiled (a driver for CUDA 12 or later is needed)");
    }
    if (rows >= (1ull << 31)) die("the cache has %zu rows; the decode kernel addresses at most 2^31", rows);
    CUtensorMap m;
    cuuint64_t dims[2] = {(cuuint64_t)Dk, (cuuint64_t)rows}, stride[1] = {(cuuint64_t)Dk * 2};
    cuuint32_t box[2] = {64, TC}, step[2] = {1, 1};
    CUresult r = encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (void *)base, dims, stride, box, step, CU_TENSOR_MAP_INTERLEAVE_NONE,
                        CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    if (r != CUDA_SUCCESS) die("cuTensorMapEncodeTiled failed (error %d) for a cache of %zu rows of %d", (int)r, rows, Dk);
    return m;
}

// rows sequences, one new token each, already cached (the kernel's shared memory limit was raised
// once per GPU by init_rank); lens (device) = tokens cached per sequence; lse_out (rows, ha) may be NULL.
static void decode_attention(const bf16 *Q, const CUtensorMap *cache, int row0, const int *lens, float *opart, float *lse, bf16 *O,
                             float *lse_out, int rows, int ha, int dcs, int Dk, int max_len, int max_cached, float scale, int sms,
                             cudaStream_t st) {
    int chunk;
    AttnShape a = attention_shape(ha, dcs, Dk);
    int ns = nsplit_for(rows, a.head_tiles, ha, dcs, Dk, max_cached, sms, &chunk);
    a.k<<<dim3(a.head_tiles, rows, ns), 256, a.smem, st>>>(Q, *cache, row0, lens, AttnOut{opart, lse, O, lse_out}, ha, dcs, Dk,
                                                            a.stages, max_len, chunk, scale * LOG2E);
    LAUNCH_CHECK();
    if (ns == 1) return;   // one split: the kernel wrote O and lse_out
    // the merge as a programmatic dependent launch (it starts while the last blocks above finish)
    cudaLaunchAttribute pdl;
    pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    pdl.val.programmaticStreamSerializationAllowed = 1;
    // (heads a merge block: enough for one group of 4 columns a thread, within 48 KB of weights)
    int hpb = std::max(1, std::min({ha, MERGE_THREADS * 4 / dcs, 12000 / (ns + 2)}));
    cudaLaunchConfig_t mc = {dim3(rows, (ha + hpb - 1) / hpb), dim3(MERGE_THREADS), hpb * (ns + 2) * sizeof(float), st, &pdl, 1};
    CUDA_CHECK(cudaLaunchKernelEx(&mc, attn_merge_kernel, opart, lse, O, lse_out, ha, dcs, ns, hpb));
}
