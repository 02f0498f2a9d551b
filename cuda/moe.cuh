// cuda/moe.cuh: MoE in tpla.cu, only the routed experts: the kernels (routing, the plan, the grouped expert
// product, the combine) with their tile shapes and launchers. Included by tpla.cu after cuda/attention.cuh,
// whose cp.async helpers (smem_u32, cp_async16, cp_commit) the expert product uses.
//
// A MoE layer on `rows` tokens: y = sum_{e in topk(x)} w_e W2_e (silu(W1_e x) * (W3_e x)) + shared(x). The
// rows*topk entries (row, k) are sorted by expert into "slots"; each routed expert multiplies only its
// own slots' rows, so a step reads only the experts that some token chose (at decode batch 1 on
// DeepSeek-V2-Lite, 6 of 64) and does only their flops (a prefill: topk/E of the every-expert product).
// Five launches, no host synchronisation and no allocation (buffers are sized for rows*topk slots at
// build time), so a decode step stays one CUDA graph:
//   moe_route_kernel        row r: its experts topi[r][k] and weights topw[r][k] (route() in tpla.h)
//   moe_plan_kernel         one block: tokens per expert n_e, first slot off_e = sum_{e'<e} n_e' (a scan),
//                           token tiles per expert, the permutation perm[slot] = row, pos[r*topk+k] = slot
//   moe_gemm_kernel<UP>     eh[slot] = silu(W1_e x) * (W3_e x), x = xb[perm[slot]] gathered on the fly
//   moe_gemm_kernel<DOWN>   eout[slot] = W2_e eh[slot]
//   moe_combine_kernel      y[r] += sum_k topw[r][k] eout[pos[r*topk+k]]: the weighted scatter-add back to
//                           the rows, as a gather in a fixed order (deterministic, no atomics)
// The expert products are hand-written rather than cuBLAS: cublasGemmGroupedBatchedEx takes every
// expert's row count from host arrays, which a captured decode step cannot read without a host
// synchronisation; this kernel reads the counts on the device and skips empty experts by never
// numbering their tiles. One kernel serves decode and prefill, in tiles shaped for each (moe_tile).

// The launches in their order, each kernel with its launcher (which owns its grid and its launch check).
// First the router: logits (rows, E) of the float32 normalised x, in float32 (cuBLAS).
static void moe_router(GPU *G, Rank *R, const LayerW *L, int rows) {
    float one = 1.0f, zero = 0.0f;
    int E = G->c.n_experts, D = G->c.dim;
    CUBLAS_CHECK(cublasSgemm(R->blas, CUBLAS_OP_T, CUBLAS_OP_N, E, rows, D, &one, L->gate, D, R->xn, D, &zero, R->router, E));
}

// Row r: its topk experts and their weights.
__global__ void moe_route_kernel(Config c, const float *logits, const float *bias, int *topi, float *topw) {
    extern __shared__ float scratch[];   // 2E + n_group floats
    int row = blockIdx.x, idx[GPU_MAX_TOPK];
    float w[GPU_MAX_TOPK];
    route(&c, logits + (size_t)row * c.n_experts, bias, scratch, idx, w);
    for (int k = 0; k < c.topk; k++) { topi[row * c.topk + k] = idx[k]; topw[row * c.topk + k] = w[k]; }
}
static void moe_route(GPU *G, Rank *R, const LayerW *L, int rows) {
    const Config *c = &G->c;
    moe_route_kernel<<<rows, 1, (2 * c->n_experts + c->n_group + 1) * sizeof(float), R->st>>>(*c, R->router, L->bias, R->topi, R->topw);
    LAUNCH_CHECK();
}

// One block: n entries topi (rows*topk) -> off[0..E] first slot of each expert (off[E] = n), toff[0..E]
// = off + E + 1 first token tile of each expert (tiles of bn slots), perm (n): slot -> row, pos (n):
// entry -> slot, counts (E): tokens per expert. Within an expert the slots' order is the atomics' order;
// it does not matter, since each slot's result depends on its own row only.
__global__ void __launch_bounds__(1024) moe_plan_kernel(const int *topi, int n, int E, int topk, int bn, int *off, int *perm, int *pos,
                                                        int *counts) {
    __shared__ int cnt[GPU_MAX_EXPERTS], next[GPU_MAX_EXPERTS];
    const int tid = threadIdx.x, lane = tid & 31;
    for (int e = tid; e < E; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int i = tid; i < n; i += blockDim.x) atomicAdd(&cnt[topi[i]], 1);
    __syncthreads();
    if (tid < 32) {   // exclusive scans of the counts and of the tiles: lane l takes experts [e0, e1)
        int per = (E + 31) / 32, e0 = min(E, lane * per), e1 = min(E, e0 + per), a = 0, b = 0;
        for (int e = e0; e < e1; e++) { a += cnt[e]; b += (cnt[e] + bn - 1) / bn; }
        int sa = a, sb = b;   // inclusive scan over the lanes
        for (int o = 1; o < 32; o <<= 1) {
            int x = __shfl_up_sync(0xffffffff, sa, o), y = __shfl_up_sync(0xffffffff, sb, o);
            if (lane >= o) { sa += x; sb += y; }
        }
        sa -= a; sb -= b;     // exclusive: where this lane's experts start
        for (int e = e0; e < e1; e++) {
            off[e] = next[e] = sa; off[E + 1 + e] = sb; counts[e] = cnt[e];
            sa += cnt[e]; sb += (cnt[e] + bn - 1) / bn;
        }
        if (lane == 31) { off[E] = sa; off[E + 1 + E] = sb; }   // lane 31's range ends at E (or is empty)
    }
    __syncthreads();
    for (int i = tid; i < n; i += blockDim.x) {
        int s = atomicAdd(&next[topi[i]], 1);
        perm[s] = i / topk; pos[i] = s;
    }
}
static void moe_plan(GPU *G, Rank *R, int l, int rows, int bn) {
    const Config *c = &G->c;
    moe_plan_kernel<<<1, 1024, 0, R->st>>>(R->topi, rows * c->topk, c->n_experts, c->topk, bn, R->off, R->perm, R->pos,
                                           R->counts + (size_t)l * c->n_experts);
    LAUNCH_CHECK();
}

// Grouped expert product on tensor cores (mma.sync m16n8k16, bf16 in, f32 accumulate), A = weights,
// B = the expert's tokens, for the slots of each expert:
//   UP:   eh[s][f] = silu(W1_e[f] . x) * (W3_e[f] . x), x = X[perm[s]] (D), f < ik: W = ew13, Y = eh (bf16)
//   DOWN: eout[s][f] = W2_e[f] . eh[s] (ik), f < D: W = ew2 (row f of expert e at f*E*ik + e*ik), Y = eout (f32)
// A block tile is BM weight rows x BN slots, in k steps of 64 through a 4-stage cp.async pipeline; warp w
// of 4 computes rows BM/4 w.. against all BN slots, in m16 tiles. UP: an m16 tile holds the W1 rows of 8
// features, then their W3 rows, so SwiGLU pairs meet in one thread (a tile row block covers BM/2
// features). Shared tiles are rows of 128 bytes whose 16-byte chunk c sits at c ^ (row % 8)
// (conflict-free ldmatrix). Rows past the features, slots past the expert's count and k past the width
// are zero-filled and not stored.
// Work items (expert e, feature tile m, token tile t) are numbered over the non-empty experts only
// (item = mt * toff[e] + m * tiles_e + t: token tiles fastest, so blocks that share a weight tile run
// together and read it once from DRAM); a fixed grid strides over them, and reads the count on the device.
#define MOE_BK 64
#define MOE_ST 4
static size_t moe_smem(int bm, int bn) { return (size_t)MOE_ST * (bm + bn) * MOE_BK * 2; }
// the features of a block tile: BM weight rows are the W1 and W3 rows of BM/2 features (UP), else BM W2 rows
__host__ __device__ constexpr int moe_features(int bm, bool up) { return up ? bm / 2 : bm; }

// ldmatrix: four (two) 8x8 bf16 matrices from shared memory; lane l gives the row address of matrix l / 8
__device__ __forceinline__ void ldsm_x4(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)));
}
__device__ __forceinline__ void ldsm_x2(uint32_t *r, const void *p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(p)));
}
// d (16 x 8, f32) += A (16 x 16, row-major) B (16 x 8, column-major), bf16 in
__device__ __forceinline__ void mma_bf16(float *d, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]) : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <int N> __device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory"); }

template <int BM, int BN, bool UP>
__global__ void __launch_bounds__(128)
moe_gemm_kernel(const bf16 *__restrict__ W, const bf16 *__restrict__ X, const int *__restrict__ perm, const int *__restrict__ off,
                void *__restrict__ Y, int E, int D, int ik) {
    // MI m16 tiles per warp, NB n8 tiles, FB features per block tile
    constexpr int BK = MOE_BK, ST = MOE_ST, MI = BM / 64, NB = BN / 8, FB = moe_features(BM, UP);
    extern __shared__ __align__(16) char moe_smem_raw[];
    bf16 *As = (bf16 *)moe_smem_raw, *Bs = As + ST * BM * BK;   // [ST][BM][BK], [ST][BN][BK]
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, q = lane & 3, c = tid & 7;
    const int K = UP ? D : ik, F = UP ? ik : D, mt = (F + FB - 1) / FB, nk = (K + BK - 1) / BK;
    const int *toff = off + E + 1;
    const int items = mt * toff[E];
    for (int it = blockIdx.x; it < items; it += gridDim.x) {
        int lo = 0, hi = E - 1;   // the item's expert: the last e with mt * toff[e] <= it (never an empty one)
        while (lo < hi) { int mid = (lo + hi + 1) >> 1; if (mt * toff[mid] <= it) lo = mid; else hi = mid - 1; }
        const int e = lo, tiles = toff[e + 1] - toff[e], loc = it - mt * toff[e], m = loc / tiles, t = loc % tiles;
        const int s0 = off[e] + t * BN, ns = min(BN, off[e + 1] - s0);   // this tile's slots
        // sources of the rows this thread copies: chunk c of A rows tid/8 + 16i, of B rows tid/8 + 16j
        const bf16 *arow[BM / 16], *brow[(BN + 15) / 16];
        #pragma unroll
        for (int i = 0; i < BM / 16; i++) {
            int r = tid / 8 + 16 * i, f = m * FB + (UP ? (r >> 4) * 8 + (r & 7) : r);
            arow[i] = f >= F ? nullptr : UP ? W + ((size_t)e * 2 * ik + ((r >> 3) & 1) * ik + f) * D : W + ((size_t)f * E + e) * ik;
        }
        #pragma unroll
        for (int j = 0; j < (BN + 15) / 16; j++) {
            int n = tid / 8 + 16 * j;
            brow[j] = n >= ns ? nullptr : UP ? X + (size_t)perm[s0 + n] * D : X + (size_t)(s0 + n) * ik;
        }
        auto load = [&](int kt) {   // k step kt into stage kt % ST
            int k = kt * BK + c * 8, st = kt % ST;
            bf16 *as = As + st * BM * BK, *bs = Bs + st * BN * BK;
            #pragma unroll
            for (int i = 0; i < BM / 16; i++) {
                int r = tid / 8 + 16 * i;
                bool ok = arow[i] && k < K;
                cp_async16(as + r * BK + ((c ^ (r & 7)) << 3), ok ? arow[i] + k : W, ok ? 16 : 0);
            }
            #pragma unroll
            for (int j = 0; j < (BN + 15) / 16; j++) {
                int n = tid / 8 + 16 * j;
                bool ok = brow[j] && k < K;
                if (n < BN) cp_async16(bs + n * BK + ((c ^ (n & 7)) << 3), ok ? brow[j] + k : X, ok ? 16 : 0);
            }
        };
        float acc[MI][NB][4];
        #pragma unroll
        for (int i = 0; i < MI; i++)
            #pragma unroll
            for (int j = 0; j < NB; j++)
                #pragma unroll
                for (int v = 0; v < 4; v++) acc[i][j][v] = 0.0f;
        #pragma unroll
        for (int s = 0; s < ST - 1; s++) { if (s < nk) load(s); cp_commit(); }
        for (int kt = 0; kt < nk; kt++) {
            cp_wait<ST - 2>();   // k step kt has landed (this thread's copies) ...
            __syncthreads();     // ... everyone's, and every warp is done with step kt - 1, whose stage is refilled now
            if (kt + ST - 1 < nk) load(kt + ST - 1);
            cp_commit();
            const bf16 *as = As + (kt % ST) * BM * BK, *bs = Bs + (kt % ST) * BN * BK;
            #pragma unroll
            for (int kk = 0; kk < BK / 8; kk += 2) {   // 16 k at a time, in 16-byte chunks kk, kk + 1
                uint32_t a[MI][4], b[NB][2];
                #pragma unroll
                for (int i = 0; i < MI; i++) {   // rows 0-7 | 8-15 at chunk kk, then at kk + 1: a0..a3
                    int r = warp * (BM / 4) + i * 16 + (lane & 15), ch = kk + (lane >> 4);
                    ldsm_x4(a[i], as + r * BK + ((ch ^ (r & 7)) << 3));
                }
                #pragma unroll
                for (int j = 0; j < NB; j += 2) {   // slots j*8.. at chunks kk, kk+1, then slots j*8+8.. likewise
                    if (j + 1 < NB) {
                        int n = j * 8 + (lane & 7) + ((lane >> 4) << 3), ch = kk + ((lane >> 3) & 1);
                        uint32_t r4[4];
                        ldsm_x4(r4, bs + n * BK + ((ch ^ (n & 7)) << 3));
                        b[j][0] = r4[0]; b[j][1] = r4[1]; b[j + 1][0] = r4[2]; b[j + 1][1] = r4[3];
                    } else {
                        int n = j * 8 + (lane & 7), ch = kk + ((lane >> 3) & 1);
                        ldsm_x2(b[j], bs + n * BK + ((ch ^ (n & 7)) << 3));
                    }
                }
                #pragma unroll
                for (int i = 0; i < MI; i++)
                    #pragma unroll
                    for (int j = 0; j < NB; j++) mma_bf16(acc[i][j], a[i], b[j]);
            }
        }
        cp_wait<0>();
        __syncthreads();   // the stages are free for the next item
        // acc[i][j][v]: A row warp*BM/4 + i*16 + g + 8*(v/2), slot j*8 + 2q + v%2
        #pragma unroll
        for (int i = 0; i < MI; i++)
            #pragma unroll
            for (int j = 0; j < NB; j++)
                #pragma unroll
                for (int v = 0; v < (UP ? 2 : 4); v++) {
                    int n = j * 8 + 2 * q + (v & 1), r = warp * (BM / 4) + i * 16 + g + 8 * (v >> 1);
                    if (n >= ns) continue;
                    if (UP) {   // acc[i][j][v]: the W1 row of feature f, acc[i][j][v + 2]: its W3 row
                        int f = m * FB + (r >> 4) * 8 + g;
                        float a1 = acc[i][j][v];
                        if (f < F) ((bf16 *)Y)[(size_t)(s0 + n) * ik + f] = __float2bfloat16(a1 / (1.0f + expf(-a1)) * acc[i][j][v + 2]);
                    } else {
                        int f = m * FB + r;
                        if (f < F) ((float *)Y)[(size_t)(s0 + n) * D + f] = acc[i][j][v];
                    }
                }
    }
}

// Tile shapes of the expert products (weight rows x slots). moe_tile picks one for a step of `rows`
// tokens: 16 slots while experts get few tokens (decode: the product stays a read of the weights), 64
// once they average 32 or more (prefill, large batches).
typedef void (*MoeKernel)(const bf16 *, const bf16 *, const int *, const int *, void *, int, int, int);
typedef struct { int bm, bn; MoeKernel up, down; } MoeTile;
#define MOE_T(bm, bn) {bm, bn, moe_gemm_kernel<bm, bn, true>, moe_gemm_kernel<bm, bn, false>}
static const MoeTile moe_tiles[] = {MOE_T(128, 16), MOE_T(128, 64)};
#undef MOE_T
#define MOE_NTILES (int)(sizeof(moe_tiles) / sizeof(moe_tiles[0]))
static int moe_tile(const Config *c, int rows) { return rows * c->topk >= 32 * c->n_experts ? 1 : 0; }

// One expert product (up: W1/W3 and SwiGLU, else W2) of `rows` tokens planned in R->off for tile shape
// T, on a grid of at most the blocks that fit the card at once, each striding over the items.
static void moe_product(GPU *G, Rank *R, const LayerW *L, int rows, const MoeTile *T, int up) {
    const Config *c = &G->c;
    int E = c->n_experts, D = c->dim, n = rows * c->topk, per_sm = R->moe_blocks[T - moe_tiles][up];
    int tiles = (n + T->bn - 1) / T->bn + std::min(E, n), fb = moe_features(T->bm, up);   // tiles: at most
    int items = ((up ? L->ik : D) + fb - 1) / fb * tiles;
    (up ? T->up : T->down)<<<std::max(1, std::min(items, G->sms * per_sm)), 128, moe_smem(T->bm, T->bn), R->st>>>(
        up ? L->ew13 : L->ew2, up ? R->xb : R->eh, R->perm, R->off, up ? (void *)R->eh : (void *)R->eout, E, D, L->ik);
    LAUNCH_CHECK();
}

// y[r] = (add ? y[r] : 0) + sum_k topw[r][k] eout[pos[r][k]]: the weighted routed outputs back in row order.
__global__ void moe_combine_kernel(float *y, const float *eout, const float *topw, const int *pos, int topk, int D, int add) {
    int r = blockIdx.x;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float s = add ? y[(size_t)r * D + d] : 0.0f;
        for (int k = 0; k < topk; k++) s += topw[r * topk + k] * eout[(size_t)pos[r * topk + k] * D + d];
        y[(size_t)r * D + d] = s;
    }
}
static void moe_combine(GPU *G, Rank *R, int rows, int add) {
    moe_combine_kernel<<<rows, 256, 0, R->st>>>(R->y, R->eout, R->topw, R->pos, G->c.topk, G->c.dim, add);
    LAUNCH_CHECK();
}
