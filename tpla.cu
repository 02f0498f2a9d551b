// tpla.cu: the GPU engine. One process drives K GPUs: one host thread, one stream and one cuBLAS
// handle per GPU, one NCCL communicator. The same code runs MLA tensor parallelism (g = 1: heads split,
// the whole latent cached on every GPU) and TPLA (g latent shards: every GPU of shard i caches the
// slice S_i of the latent plus the rope key, and attends with the heads of its group on that slice).
// The math is in the README ("The math"); run.c holds the CPU reference every result is checked against.
#include <cuda_runtime.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <nccl.h>
#include <pthread.h>
#include <string.h>
#include <vector>
#include <algorithm>
#include "tpla.h"

typedef __nv_bfloat16 bf16;
#define LIB_RESERVE ((size_t)2 << 30)   // GPU memory left for the libraries' buffers (cuBLAS workspace, NCCL)
#define MAX_BATCH 4096                   // the largest batch -m bench tries
#define GPU_MAX_DR 64    // the widest rope key the GPU kernels take (checked when building)

// ----------------------------------------------------------------------------
// placement: what rank r of K holds (README "g shards on K GPUs, and where W_UQ and W_O live")
//   g shards, K GPUs, groups of m = K/g: rank r has latent slice i = r / m (dcs = dc/g wide) and
//   attends with the heads of its group slot j = r % m: ha = H/m heads starting at h0 = j*ha.
//   W_UQ and W_O: with the replicated placement the rank holds them for its ha heads; with the
//   split placement (and g > 1) only for hq = ha/g of them, and exchanges q and v with its g
//   "peers" (same j, every i): all-gather q, reduce-scatter v. g = 1 is MLA-TP either way.

typedef struct {
    int g, m, shard, j;
    int dcs, Dk;        // latent slice width; cached values per token = dcs + dr
    int ha, h0;         // attended heads
    int hq, hq0;        // heads whose q and W_O this rank holds
    int peers;          // g when q and v are exchanged, else 1
    int v0, nv;         // vocabulary rows of lm_head
} Part;

static Part make_part(const Config *c, int g, int K, int r, int split) {
    Part p;
    p.g = g; p.m = K / g; p.shard = r / p.m; p.j = r % p.m;
    p.dcs = c->dc / g; p.Dk = p.dcs + c->dr;
    p.ha = c->n_heads / p.m; p.h0 = p.j * p.ha;
    p.peers = split && g > 1 ? g : 1;
    p.hq = p.ha / p.peers; p.hq0 = p.h0 + (p.peers > 1 ? p.shard * p.hq : 0);
    int vs = (c->vocab + K - 1) / K;
    p.v0 = std::min(r * vs, c->vocab); p.nv = std::min(vs, c->vocab - p.v0);
    return p;
}

// ----------------------------------------------------------------------------
// weights of one rank, bf16 unless noted. Every FFN matrix is split over the K GPUs by its intermediate
// dimension: the dense FFN (fk = inter/K), the shared experts side by side as one FFN (fk = n_shared *
// moe_inter/K: SwiGLU acts elementwise, so shared experts summed are one wider FFN), each routed expert
// (ik = moe_inter/K).

typedef struct {
    float *attn_norm, *q_norm, *ffn_norm;   // f32
    bf16 *wq_a;    // (q_lora, D)                         replicated
    bf16 *wq;      // (hq*(dn+dr), q_lora or D)           split by head
    bf16 *wkv_a;   // (dc+dr, D)                          replicated
    bf16 *wkv_b;   // (ha, dn+dv, dcs): W_UK, W_UV        split by head and by latent slice
    bf16 *wo;      // (D, hq*dv)                          split by head
    float *gate, *bias;  // (E, D), (E) f32               replicated
    bf16 *w13;     // (2*fk, D): W1 rows then W3 rows     dense FFN or shared experts, split by intermediate
    bf16 *w2;      // (D, fk)                             dense FFN or shared experts, split by intermediate
    bf16 *ew13;    // (E, 2*ik, D): each routed expert's W1 rows then W3 rows, split by intermediate
    bf16 *ew2;     // (D, E*ik): routed expert e's W2 columns at e*ik, split by intermediate
    int fk, ik;    // 0: no such part (ik > 0: a MoE layer)
} LayerW;

typedef struct {
    int r, dev;
    Part p;
    cudaStream_t st;
    cublasHandle_t blas;
    ncclComm_t world, peer;
    char *arena; size_t used, cap, wbytes;   // wbytes: the weights at the start of the arena
    LayerW *lw;
    bf16 *embed, *lm_head; float *norm, *inv_freq;
    bf16 *cache;             // (L, B, max_len, Dk)
    CUtensorMap cmap;        // the cache, for the decode kernel's TMA
    // activations for up to `rows` tokens
    int *tok, *rpos, *rseq, *lens;
    float *x, *y, *xn, *qlat, *kv, *router, *h13, *S, *opart, *lse, *logits;
    bf16 *xb, *qlatb, *q, *qall, *Q, *O, *v, *vown, *h, *P;
    // routed experts (rows*topk entries (row, k), in "slots" ordered by expert): chosen experts and weights
    // (rows, topk); off (2(E+1)): first slot and first token tile of each expert; perm: slot -> row;
    // pos: entry -> slot; eh (slots, ik) bf16: SwiGLU; eout (slots, D): expert outputs; counts
    // (n_layers, E): tokens per expert in the last step of each layer (the bench's floor reads them)
    int *topi, *off, *perm, *pos, *counts;
    float *topw, *eout;
    bf16 *eh;
    int nsplit_max;
    int moe_blocks[2][2];    // blocks of each expert-product kernel (moe_tiles: down, up) that fit on one SM
} Rank;

struct GPU {
    Config c; Scheme s;
    int K, B, max_len, rows, chunk, ffn;   // ffn 0: the bench without FFN
    int nrank;               // ranks run here: K, or 1 for the rank bench (rank 0 of a K-GPU layout on one
                             // GPU, the collectives left out)
    float *rms_fix;
    Rank *rk;
    int *lens;               // host: tokens cached per sequence
    int sms;
};

// ----------------------------------------------------------------------------
// small kernels

__global__ void embed_kernel(const int *tok, const bf16 *emb, float *x, int D) {
    const bf16 *e = emb + (size_t)tok[blockIdx.x] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) x[(size_t)blockIdx.x * D + i] = __bfloat162float(e[i]);
}

__device__ float block_sum(float v) {
    __shared__ float red[32];
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0;
        for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    v = red[0];
    __syncthreads();
    return v;
}

// x += y (y may be NULL); out = rmsnorm(x) * w as bf16, and as f32 into outf if given. One block a row.
__global__ void add_rmsnorm_kernel(float *x, const float *y, const float *w, bf16 *out, float *outf, int D, float eps) {
    float *xr = x + (size_t)blockIdx.x * D;
    float ss = 0;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v = xr[i] + (y ? y[(size_t)blockIdx.x * D + i] : 0.0f);
        if (y) xr[i] = v;
        ss += v * v;
    }
    float s = rsqrtf(block_sum(ss) / D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v = w[i] * (xr[i] * s);
        out[(size_t)blockIdx.x * D + i] = __float2bfloat16(v);
        if (outf) outf[(size_t)blockIdx.x * D + i] = v;
    }
}

// Rotates a rope vector pe (dr, in shared memory, loaded by the block) to position pos, in place.
__device__ void rope_shared(float *pe, int dr, int pos, const float *inv_freq, float attn, int interleave) {
    __syncthreads();
    for (int i = threadIdx.x; i < dr / 2; i += blockDim.x) rope_pair(pe, i, dr, pos, inv_freq[i], attn, interleave);
    __syncthreads();
}

// Caches the new token of each row: its latent slice S_i, normalised by the rms of the whole
// latent (exact) or of the slice times the PCA correction (TPLA -r local), and its roped key.
__global__ void kv_append_kernel(const float *kv, bf16 *cache, const int *rseq, const int *rpos, int max_len,
                                 int dc, int dr, int shard, int dcs, int local, float fix, float eps,
                                 const float *inv_freq, float attn, int interleave) {
    const float *k = kv + (size_t)blockIdx.x * (dc + dr);
    float ss_all = 0, ss_mine = 0;
    for (int i = threadIdx.x; i < dc; i += blockDim.x) {
        float v = k[i] * k[i];
        ss_all += v;
        if (i / dcs == shard) ss_mine += v;
    }
    ss_all = block_sum(ss_all); ss_mine = block_sum(ss_mine);
    float r = local ? latent_rms(ss_mine, dcs, fix, eps) : latent_rms(ss_all, dc, 1.0f, eps);
    bf16 *dst = cache + ((size_t)rseq[blockIdx.x] * max_len + rpos[blockIdx.x]) * (dcs + dr);
    for (int i = threadIdx.x; i < dcs; i += blockDim.x) dst[i] = __float2bfloat16(k[shard * dcs + i] / r);
    __shared__ float pe[GPU_MAX_DR];
    for (int i = threadIdx.x; i < dr; i += blockDim.x) pe[i] = k[dc + i];
    rope_shared(pe, dr, rpos[blockIdx.x], inv_freq, attn, interleave);
    for (int i = threadIdx.x; i < dr; i += blockDim.x) dst[dcs + i] = __float2bfloat16(pe[i]);
}

// Ropes q_pe of every attended head into Q (rows, ha, Dk) at [dcs, dcs+dr). q comes in `peers`
// chunks (peers, rows, hq, dn+dr) (one chunk when q was computed here). Grid (rows, ha).
__global__ void q_rope_kernel(const bf16 *q, bf16 *Q, const int *rpos, int rows, int ha, int hq, int dn, int dr, int dcs,
                              const float *inv_freq, float attn, int interleave) {
    int row = blockIdx.x, h = blockIdx.y, p = h / hq, hh = h % hq;
    const bf16 *src = q + (((size_t)p * rows + row) * hq + hh) * (dn + dr) + dn;
    __shared__ float pe[GPU_MAX_DR];
    for (int i = threadIdx.x; i < dr; i += blockDim.x) pe[i] = __bfloat162float(src[i]);
    rope_shared(pe, dr, rpos[row], inv_freq, attn, interleave);
    bf16 *dst = Q + ((size_t)row * ha + h) * (dcs + dr) + dcs;
    for (int i = threadIdx.x; i < dr; i += blockDim.x) dst[i] = __float2bfloat16(pe[i]);
}

// h (rows, f) = silu(W1 x) * (W3 x), from h13 (rows, 2f): W1 x then W3 x.
__global__ void swiglu_kernel(const float *h13, bf16 *h, int rows, int f) {
    size_t n = (size_t)rows * f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float *src = h13 + i / f * 2 * f;
        float a = src[i % f], b = src[f + i % f];
        h[i] = __float2bfloat16(a / (1.0f + expf(-a)) * b);
    }
}

// Prefill: causal softmax over S (ha, rows, T) of one sequence whose chunk starts at p0 -> P bf16.
__global__ void prefill_softmax_kernel(const float *S, bf16 *P, int rows, int T, int p0, float scale) {
    const float *s = S + (size_t)blockIdx.x * T;
    bf16 *p = P + (size_t)blockIdx.x * T;
    int last = p0 + blockIdx.x % rows;   // the row's own position: it attends to [0, last]
    float mx = -INFINITY;
    for (int t = threadIdx.x; t <= last; t += blockDim.x) mx = fmaxf(mx, s[t] * scale);
    __shared__ float red[32];
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = red[0];
    for (int i = 1; i < (int)(blockDim.x >> 5); i++) mx = fmaxf(mx, red[i]);
    __syncthreads();
    float sum = 0;
    for (int t = threadIdx.x; t <= last; t += blockDim.x) sum += expf(s[t] * scale - mx);
    sum = block_sum(sum);
    for (int t = threadIdx.x; t < T; t += blockDim.x)
        p[t] = __float2bfloat16(t <= last ? expf(s[t] * scale - mx) / sum : 0.0f);
}

__device__ uint32_t hash32(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdull; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ull; x ^= x >> 33;
    return (uint32_t)x;
}
// Uniform random values in [-scale, scale) (never all zero), for the bench's weights (bf16; the router f32) and caches.
template <class T> __global__ void fill_random_kernel(T *w, size_t n, float scale, uint64_t seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        w[i] = (T)(scale * (hash32(seed * 0x9E3779B97F4A7C15ull + i) * (2.0f / 4294967296.0f) - 1.0f));
}
__global__ void fill_kernel(float *w, size_t n, float v) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) w[i] = v;
}

// ----------------------------------------------------------------------------
// launchers of the small kernels: each owns its grid and its launch check

static unsigned grid_for(size_t n) { return (unsigned)std::min<size_t>((n + 255) / 256, 8192); }
static void embed(Rank *R, int rows, int D) {
    embed_kernel<<<rows, 256, 0, R->st>>>(R->tok, R->embed, R->x, D);
    LAUNCH_CHECK();
}
static void add_rmsnorm(Rank *R, float *x, const float *y, const float *w, bf16 *out, float *outf, int rows, int D, float eps) {
    add_rmsnorm_kernel<<<rows, 256, 0, R->st>>>(x, y, w, out, outf, D, eps);
    LAUNCH_CHECK();
}
static void kv_append(GPU *G, Rank *R, bf16 *cache, int l, int rows, int local) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    kv_append_kernel<<<rows, 256, 0, R->st>>>(R->kv, cache, R->rseq, R->rpos, G->max_len, c->dc, c->dr, p->shard, p->dcs, local,
                                                 G->rms_fix ? G->rms_fix[l * p->g + p->shard] : 1.0f, c->eps, R->inv_freq,
                                                 c->rope_attn, c->rope_interleave);
    LAUNCH_CHECK();
}
static void q_rope(GPU *G, Rank *R, int rows) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    q_rope_kernel<<<dim3(rows, p->ha), 64, 0, R->st>>>(R->qall, R->Q, R->rpos, rows, p->ha, p->hq, c->dn, c->dr, p->dcs,
                                                      R->inv_freq, c->rope_attn, c->rope_interleave);
    LAUNCH_CHECK();
}
static void prefill_softmax(Rank *R, int rows, int T, int p0, float scale) {
    prefill_softmax_kernel<<<R->p.ha * rows, 256, 0, R->st>>>(R->S, R->P, rows, T, p0, scale);
    LAUNCH_CHECK();
}
static void swiglu(Rank *R, int rows, int f) {
    swiglu_kernel<<<grid_for((size_t)rows * f), 256, 0, R->st>>>(R->h13, R->h, rows, f);
    LAUNCH_CHECK();
}
template <class T> static void fill_random(T *w, size_t n, float scale, uint64_t seed, cudaStream_t st) {
    if (n) fill_random_kernel<<<grid_for(n), 256, 0, st>>>(w, n, scale, seed);
    LAUNCH_CHECK();
}
static void fill(float *w, size_t n, float v, cudaStream_t st) {
    if (n) fill_kernel<<<grid_for(n), 256, 0, st>>>(w, n, v);
    LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// cuBLAS: Y (n, out) = X (n, in) W^T with W (out, in) row-major bf16, f32 accumulate

static void gemm(Rank *R, const bf16 *X, const void *W, void *Y, cudaDataType yt, int n, int in, int out) {
    float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(R->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, W, CUDA_R_16BF, in, X, CUDA_R_16BF, in,
                              &beta, Y, yt, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// column-major batched product C_i = op(A_i) B_i, bf16 in, f32 accumulate
static void gemm_batched(Rank *R, cublasOperation_t ta, int m, int n, int k, const void *A, int lda, long long sa,
                         const void *B, int ldb, long long sb, void *C, cudaDataType ct, int ldc, long long sc, int batch) {
    float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(R->blas, ta, CUBLAS_OP_N, m, n, k, &alpha, A, CUDA_R_16BF, lda, sa, B, CUDA_R_16BF,
                                            ldb, sb, &beta, C, ct, ldc, sc, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// ----------------------------------------------------------------------------
// the collectives (NCCL, on the rank's stream); the rank bench leaves them out

static void all_reduce(GPU *G, Rank *R, float *x, size_t n, ncclComm_t comm) {
    if (G->nrank > 1) NCCL_CHECK(ncclAllReduce(x, x, n, ncclFloat, ncclSum, comm, R->st));
}
static void all_gather(GPU *G, Rank *R, const bf16 *x, bf16 *out, size_t n, ncclComm_t comm) {
    if (G->nrank > 1) NCCL_CHECK(ncclAllGather(x, out, n, ncclBfloat16, comm, R->st));
}
static void reduce_scatter(GPU *G, Rank *R, const bf16 *x, bf16 *out, size_t n, ncclComm_t comm) {
    if (G->nrank > 1) NCCL_CHECK(ncclReduceScatter(x, out, n, ncclBfloat16, ncclSum, comm, R->st));
}

// ----------------------------------------------------------------------------
// the decode attention kernel (flash-decoding on Hopper tensor cores; README "The decode attention kernel")
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
// Two warpgroups of 128 threads, in one of three modes:
//   HEADS  (slice <= 256, more than 64 heads): warpgroup w owns heads 64w.. of a 128-head tile; both
//          read every cached tile.
//   STREAM (slice <= 256, 64 heads or fewer): both own the same heads; warpgroup w takes tiles w, w+2,
//          .. with its own softmax, and the two results are merged at the end through shared memory.
//   SPLITK (slice 257..512, 64 heads): one 64 x 512 output is too large for one warpgroup's registers,
//          so warpgroup w owns output columns 256w..256w+255. Both compute half of S for every tile
//          (columns 0..287 and 288..575 of the cached token; the last 64 of Q from registers, since
//          Q, two tiles and the exchange buffer fill shared memory); warpgroup 1 hands its half to 0
//          through shared memory, 0 adds, takes the softmax and hands P back. (Splitting the softmax
//          between the two, with three exchanges a tile, measured 4-10% slower.)
// In HEADS mode each warpgroup issues the S of its next tile before the softmax of the current one, so
// the tensor cores work on S(i+1) while the softmax of tile i runs.
// Cache slots past a sequence's length never count: their scores are -inf, and the rows of the last
// tile past the length are zeroed in shared memory before P V (they may hold anything, NaN too).
// Each split writes O / l and lse = m + log2(l) (log2 units); attn_merge_kernel combines the splits.

#define TC 64                      // cached tokens per tile
#define SMEM_BLOCK (227 * 1024)    // the shared memory one block may use on Hopper
#define LOG2E 1.4426950408889634f
enum { ATT_HEADS, ATT_STREAM, ATT_SPLITK };
enum { BAR_SREADY = 1, BAR_PREADY = 2, BAR_WG = 3, BAR_END = 5 };   // named barriers (0 is __syncthreads)

// The kernel's shape for ha heads and a dcs-wide slice: mode, O's 64-column blocks per warpgroup (NJ),
// the tile's 64-column boxes (NB), heads per block, blocks per sequence split, buffers, shared memory.
typedef void (*AttnKernel)(const bf16 *, const CUtensorMap, int, const int *, float *, float *, int, int, int, int, int, int, float);
typedef struct { AttnKernel k; int mode, NJ, NB, HB, DQ, head_tiles, stages; size_t smem, tile_bytes; } AttnShape;

template <int MODE, int NJ, int NB>
__global__ void __launch_bounds__(256, 1)
decode_attention_kernel(const bf16 *__restrict__ Q, const __grid_constant__ CUtensorMap cache, int row0,
                        const int *__restrict__ lens, float *__restrict__ opart, float *__restrict__ lse, int ha, int dcs,
                        int Dk, int stages, int max_len, int chunk, float scale_log2);

// Splits of the sequence. Blocks run one per SM, in waves; a split has at least MIN_TILES tiles (a block's
// start, its Q and its partial output cost about as much as that many). The count chosen (at most enough
// to fill the card WAVES times) makes the least of: waves x (the tiles of a split + two tiles of start and
// end), in bytes of cache read per SM, plus the partial outputs written and read again by the merge.
#define MIN_TILES 4
#define WAVES 8
#define MERGE_HEADS 8                 // heads per block of the merge (a warp each)

// defined with the kernel, after the engine
static AttnShape attention_shape(int ha, int dcs, int Dk);
static int nsplit_cap(int rows, int head_tiles, int max_len, int sms);
static int nsplit_for(int rows, int head_tiles, int ha, int dcs, int Dk, int max_len, int sms, int *chunk);
static CUtensorMap cache_map(const bf16 *base, size_t rows, int Dk);
__global__ void attn_merge_kernel(const float *opart, const float *lse, bf16 *O, int ha, int dcs, int nsplit);

// rows sequences, one new token each, already cached (the kernel's shared memory limit was raised
// once per GPU by init_rank); lens (device) = tokens cached per sequence.
static void decode_attention(const bf16 *Q, const CUtensorMap *cache, int row0, const int *lens, float *opart, float *lse, bf16 *O,
                             int rows, int ha, int dcs, int Dk, int max_len, int max_cached, float scale, int sms, cudaStream_t st) {
    int chunk;
    AttnShape a = attention_shape(ha, dcs, Dk);
    int ns = nsplit_for(rows, a.head_tiles, ha, dcs, Dk, max_cached, sms, &chunk);
    a.k<<<dim3(a.head_tiles, rows, ns), 256, a.smem, st>>>(Q, *cache, row0, lens, opart, lse, ha, dcs, Dk, a.stages, max_len,
                                                            chunk, scale * LOG2E);
    LAUNCH_CHECK();
    attn_merge_kernel<<<dim3(rows, (ha + MERGE_HEADS - 1) / MERGE_HEADS), 32 * MERGE_HEADS, MERGE_HEADS * ns * sizeof(float), st>>>(
        opart, lse, O, ha, dcs, ns);
    LAUNCH_CHECK();
}

// ----------------------------------------------------------------------------
// the attention block of layer l on one rank (README "The TPLA step"; run.c's forward is the same step on
// the CPU). Decode, for each of the ha heads h this rank attends with, on its latent slice S_i:
//   xb = rmsnorm(x + y)                              (y: the last block's output, added to the residual x)
//   q = W_UQ xb (split placement: this rank's hq heads, then all-gathered from the g peers)
//   [c | k_pe] = W_DKV xb; cache c[S_i] / rms and rope(k_pe)        (kv_append; rms: latent_rms)
//   Q_h = [W_UK^h[:, S_i]^T q_nope_h | rope(q_pe_h)]                   (the absorbed query)
//   o_h = softmax_t(scale Q_h . cache_t) . cache_t[S_i]               (decode_attention: its own softmax)
//   v_h = W_UV^h[:, S_i] o_h     (split placement: reduce-scattered by head over the g peers)
//   y = W_O v, then the one all-reduce over every rank: it sums the heads and the latent shards.
// Prefill (rows = tokens p0.. of sequence seq) is exact MLA instead: the g shards add their partial
// scores (an all-reduce of S over the peers), take one softmax and multiply by their own slice.
// Inputs tok, rpos, rseq, lens are on the device.

static void attention_rank(GPU *G, Rank *R, const LayerW *L, int l, int rows, int prefill, int seq, int p0, int max_cached) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    int D = c->dim, qd = c->dn + c->dr, dn = c->dn, dv = c->dv, dcs = p->dcs, Dk = p->Dk;
    bf16 *cache = R->cache + (size_t)l * G->B * G->max_len * Dk;
    add_rmsnorm(R, R->x, l ? R->y : NULL, L->attn_norm, R->xb, NULL, rows, D, c->eps);
    bf16 *q = p->peers > 1 ? R->q : R->qall;
    if (c->q_lora) {
        gemm(R, R->xb, L->wq_a, R->qlat, CUDA_R_32F, rows, D, c->q_lora);
        add_rmsnorm(R, R->qlat, NULL, L->q_norm, R->qlatb, NULL, rows, c->q_lora, c->eps);
        gemm(R, R->qlatb, L->wq, q, CUDA_R_16BF, rows, c->q_lora, p->hq * qd);
    } else {
        gemm(R, R->xb, L->wq, q, CUDA_R_16BF, rows, D, p->hq * qd);
    }
    if (p->peers > 1) all_gather(G, R, q, R->qall, (size_t)rows * p->hq * qd, R->peer);
    gemm(R, R->xb, L->wkv_a, R->kv, CUDA_R_32F, rows, D, c->dc + c->dr);
    kv_append(G, R, cache, l, rows, !prefill && G->s.rms == RMS_LOCAL);
    // Q = [W_UK^h[:, S_i]^T q_nope | rope(q_pe)] for the ha heads, chunk by chunk of hq heads
    q_rope(G, R, rows);
    for (int k = 0; k < p->peers; k++)
        gemm_batched(R, CUBLAS_OP_N, dcs, rows, dn, L->wkv_b + (size_t)k * p->hq * (dn + dv) * dcs, dcs, (long long)(dn + dv) * dcs,
                     R->qall + (size_t)k * rows * p->hq * qd, p->hq * qd, qd, R->Q + (size_t)k * p->hq * Dk, CUDA_R_16BF,
                     p->ha * Dk, Dk, p->hq);
    if (!prefill) {
        decode_attention(R->Q, &R->cmap, l * G->B * G->max_len, R->lens, R->opart, R->lse, R->O, rows, p->ha, dcs, Dk, G->max_len,
                         max_cached, c->softmax_scale, G->sms, R->st);
    } else {   // S = Q K^T per head over [0, p0 + rows); the rope part counted on shard 0 only
        int T = p0 + rows;
        const bf16 *kb = cache + (size_t)seq * G->max_len * Dk;
        gemm_batched(R, CUBLAS_OP_T, T, rows, p->shard == 0 ? Dk : dcs, kb, Dk, 0, R->Q, p->ha * Dk, Dk,
                     R->S, CUDA_R_32F, T, (long long)rows * T, p->ha);
        if (p->g > 1) all_reduce(G, R, R->S, (size_t)p->ha * rows * T, R->peer);
        prefill_softmax(R, rows, T, p0, c->softmax_scale);
        gemm_batched(R, CUBLAS_OP_N, dcs, rows, T, kb, Dk, 0, R->P, T, (long long)rows * T, R->O, CUDA_R_16BF,
                     p->ha * dcs, dcs, p->ha);
    }
    // v_h = W_UV^h[:, S_i] o_h, chunk k of hq heads to v + k*rows*hq*dv
    bf16 *vdst = p->peers > 1 ? R->v : R->vown;
    for (int k = 0; k < p->peers; k++)
        gemm_batched(R, CUBLAS_OP_T, dv, rows, dcs, L->wkv_b + (size_t)k * p->hq * (dn + dv) * dcs + (size_t)dn * dcs, dcs,
                     (long long)(dn + dv) * dcs, R->O + (size_t)k * p->hq * dcs, p->ha * dcs, dcs,
                     vdst + (size_t)k * rows * p->hq * dv, CUDA_R_16BF, p->hq * dv, dv, p->hq);
    if (p->peers > 1) reduce_scatter(G, R, R->v, R->vown, (size_t)rows * p->hq * dv, R->peer);
    gemm(R, R->vown, L->wo, R->y, CUDA_R_32F, rows, p->hq * dv, D);
    all_reduce(G, R, R->y, (size_t)rows * D, R->world);   // the one all-reduce: heads and latent shards summed
}

// ----------------------------------------------------------------------------
// MoE: only the routed experts
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

// Row r: its topk experts and their weights.
__global__ void moe_route_kernel(Config c, const float *logits, const float *bias, int *topi, float *topw) {
    extern __shared__ float scratch[];   // 2E + n_group floats
    int row = blockIdx.x, idx[GPU_MAX_TOPK];
    float w[GPU_MAX_TOPK];
    route(&c, logits + (size_t)row * c.n_experts, bias, scratch, idx, w);
    for (int k = 0; k < c.topk; k++) { topi[row * c.topk + k] = idx[k]; topw[row * c.topk + k] = w[k]; }
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

template <int BM, int BN, bool UP>
__global__ void moe_gemm_kernel(const bf16 *__restrict__ W, const bf16 *__restrict__ X, const int *__restrict__ perm,
                                const int *__restrict__ off, void *__restrict__ Y, int E, int D, int ik);   // at the end

// y[r] = (add ? y[r] : 0) + sum_k topw[r][k] eout[pos[r][k]]: the weighted routed outputs back in row order.
__global__ void moe_combine_kernel(float *y, const float *eout, const float *topw, const int *pos, int topk, int D, int add) {
    int r = blockIdx.x;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float s = add ? y[(size_t)r * D + d] : 0.0f;
        for (int k = 0; k < topk; k++) s += topw[r * topk + k] * eout[(size_t)pos[r * topk + k] * D + d];
        y[(size_t)r * D + d] = s;
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
    int tiles = (n + T->bn - 1) / T->bn + std::min(E, n), fb = up ? T->bm / 2 : T->bm;   // tiles: at most
    int items = ((up ? L->ik : D) + fb - 1) / fb * tiles;
    (up ? T->up : T->down)<<<std::max(1, std::min(items, G->sms * per_sm)), 128, moe_smem(T->bm, T->bn), R->st>>>(
        up ? L->ew13 : L->ew2, up ? R->xb : R->eh, R->perm, R->off, up ? (void *)R->eh : (void *)R->eout, E, D, L->ik);
    LAUNCH_CHECK();
}

// --- FFN of layer l on one rank: x += y; y = FFN(rmsnorm(x)), with one all-reduce. Every matrix is split
// by its intermediate dimension, so each rank's y is a partial sum and the all-reduce completes it:
//   dense:  y = W2 (silu(W1 x) * (W3 x))                                      (cuBLAS)
//   MoE:    y = sum_{e in topk(x)} w_e W2_e (silu(W1_e x) * (W3_e x))        (routed: the kernels above)
//             + W2_s (silu(W1_s x) * (W3_s x))                                 (shared experts as one FFN: cuBLAS)
// the launches of a MoE layer (each owns its grid and its launch check)
static void moe_router(GPU *G, Rank *R, const LayerW *L, int rows) {   // float32 router on the float32 normalised x
    float one = 1.0f, zero = 0.0f;
    int E = G->c.n_experts, D = G->c.dim;
    CUBLAS_CHECK(cublasSgemm(R->blas, CUBLAS_OP_T, CUBLAS_OP_N, E, rows, D, &one, L->gate, D, R->xn, D, &zero, R->router, E));
}
static void moe_route(GPU *G, Rank *R, const LayerW *L, int rows) {
    const Config *c = &G->c;
    moe_route_kernel<<<rows, 1, (2 * c->n_experts + c->n_group + 1) * sizeof(float), R->st>>>(*c, R->router, L->bias, R->topi, R->topw);
    LAUNCH_CHECK();
}
static void moe_plan(GPU *G, Rank *R, int l, int rows, int bn) {
    const Config *c = &G->c;
    moe_plan_kernel<<<1, 1024, 0, R->st>>>(R->topi, rows * c->topk, c->n_experts, c->topk, bn, R->off, R->perm, R->pos,
                                           R->counts + (size_t)l * c->n_experts);
    LAUNCH_CHECK();
}
static void moe_combine(GPU *G, Rank *R, int rows, int add) {
    moe_combine_kernel<<<rows, 256, 0, R->st>>>(R->y, R->eout, R->topw, R->pos, G->c.topk, G->c.dim, add);
    LAUNCH_CHECK();
}
// y = W2 (silu(W1 xb) * (W3 xb)): the dense FFN, or the shared experts side by side (cuBLAS)
static void dense_ffn(Rank *R, const LayerW *L, int rows, int D) {
    gemm(R, R->xb, L->w13, R->h13, CUDA_R_32F, rows, D, 2 * L->fk);
    swiglu(R, rows, L->fk);
    gemm(R, R->h, L->w2, R->y, CUDA_R_32F, rows, L->fk, D);
}

static void ffn_rank(GPU *G, Rank *R, const LayerW *L, int l, int rows) {
    const Config *c = &G->c;
    add_rmsnorm(R, R->x, R->y, L->ffn_norm, R->xb, R->xn, rows, c->dim, c->eps);
    if (L->ik) {   // routing, then the routed experts
        const MoeTile *T = &moe_tiles[moe_tile(c, rows)];
        moe_router(G, R, L, rows);
        moe_route(G, R, L, rows);
        moe_plan(G, R, l, rows, T->bn);
        moe_product(G, R, L, rows, T, 1);
        moe_product(G, R, L, rows, T, 0);
    }
    if (L->fk) dense_ffn(R, L, rows, c->dim);
    if (L->ik) moe_combine(G, R, rows, L->fk > 0);
    all_reduce(G, R, R->y, (size_t)rows * c->dim, R->world);
}

// ----------------------------------------------------------------------------
// one forward pass of `rows` tokens on one rank: embedding, the layers (attention, then the FFN unless
// the bench leaves it out, as the paper does), the final norm, and this rank's slice of the vocabulary
// for the last logit_rows rows. Decode: row b is sequence b. Prefill: the rows are tokens p0.. of `seq`.

static void forward_rank(GPU *G, Rank *R, int rows, int prefill, int seq, int p0, int max_cached, int logit_rows) {
    const Config *c = &G->c;
    embed(R, rows, c->dim);
    for (int l = 0; l < c->n_layers; l++) {
        attention_rank(G, R, &R->lw[l], l, rows, prefill, seq, p0, max_cached);
        if (G->ffn) ffn_rank(G, R, &R->lw[l], l, rows);
    }
    add_rmsnorm(R, R->x, R->y, R->norm, R->xb, NULL, rows, c->dim, c->eps);
    if (logit_rows && R->p.nv)
        gemm(R, R->xb + (size_t)(rows - logit_rows) * c->dim, R->lm_head, R->logits, CUDA_R_32F, logit_rows, c->dim, R->p.nv);
}

// ----------------------------------------------------------------------------
// building: sizes, the memory check, weights (from the host model, or random), buffers

// walks every device allocation of a rank; with R->arena NULL it only counts the bytes
static void *take(Rank *R, size_t bytes) {
    size_t at = (R->used + 255) & ~(size_t)255;
    R->used = at + bytes;
    return R->arena ? R->arena + at : NULL;
}

static void layout_rank(GPU *G, Rank *R) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    int D = c->dim, qd = c->dn + c->dr, K = G->K, rows = G->rows, fk = 0, ik = 0;
    R->used = 0;
    R->lw = R->lw ? R->lw : (LayerW *)calloc(c->n_layers, sizeof(LayerW));
    for (int l = 0; l < c->n_layers; l++) {
        LayerW *L = &R->lw[l];
        L->attn_norm = (float *)take(R, D * 4); L->ffn_norm = (float *)take(R, D * 4);
        if (c->q_lora) { L->wq_a = (bf16 *)take(R, (size_t)c->q_lora * D * 2); L->q_norm = (float *)take(R, c->q_lora * 4); }
        L->wq = (bf16 *)take(R, (size_t)p->hq * qd * (c->q_lora ? c->q_lora : D) * 2);
        L->wkv_a = (bf16 *)take(R, (size_t)(c->dc + c->dr) * D * 2);
        L->wkv_b = (bf16 *)take(R, (size_t)p->ha * (c->dn + c->dv) * p->dcs * 2);
        L->wo = (bf16 *)take(R, (size_t)D * p->hq * c->dv * 2);
        int moe = G->ffn && layer_is_moe(c, l), E = moe ? c->n_experts : 0;
        L->fk = !G->ffn ? 0 : moe ? c->n_shared * c->moe_inter / K : c->inter / K;
        L->ik = moe ? c->moe_inter / K : 0;
        L->gate = moe ? (float *)take(R, (size_t)E * D * 4) : NULL;
        L->bias = moe ? (float *)take(R, E * 4) : NULL;
        L->w13 = (bf16 *)take(R, (size_t)2 * L->fk * D * 2);
        L->w2 = (bf16 *)take(R, (size_t)D * L->fk * 2);
        L->ew13 = (bf16 *)take(R, (size_t)E * 2 * L->ik * D * 2);
        L->ew2 = (bf16 *)take(R, (size_t)D * E * L->ik * 2);
        fk = std::max(fk, L->fk); ik = std::max(ik, L->ik);
    }
    R->embed = (bf16 *)take(R, (size_t)c->vocab * D * 2);
    R->lm_head = (bf16 *)take(R, (size_t)p->nv * D * 2);
    R->norm = (float *)take(R, D * 4);
    R->wbytes = R->used;
    R->inv_freq = (float *)take(R, c->dr / 2 * 4);
    R->cache = (bf16 *)take(R, (size_t)c->n_layers * G->B * G->max_len * p->Dk * 2);
    R->tok = (int *)take(R, rows * 4); R->rpos = (int *)take(R, rows * 4); R->rseq = (int *)take(R, rows * 4);
    R->lens = (int *)take(R, G->B * 4);
    int hid = std::max(c->q_lora, 1), E = ik ? c->n_experts : 0, tk = ik ? c->topk : 0;
    R->x = (float *)take(R, (size_t)rows * D * 4); R->y = (float *)take(R, (size_t)rows * D * 4);
    R->xn = (float *)take(R, (size_t)rows * D * 4); R->xb = (bf16 *)take(R, (size_t)rows * D * 2);
    R->qlat = (float *)take(R, (size_t)rows * hid * 4); R->qlatb = (bf16 *)take(R, (size_t)rows * hid * 2);
    R->q = (bf16 *)take(R, (size_t)rows * p->hq * qd * 2);
    R->qall = (bf16 *)take(R, (size_t)rows * p->ha * qd * 2);
    R->kv = (float *)take(R, (size_t)rows * (c->dc + c->dr) * 4);
    R->Q = (bf16 *)take(R, (size_t)rows * p->ha * p->Dk * 2);
    R->O = (bf16 *)take(R, (size_t)rows * p->ha * p->dcs * 2);
    R->v = (bf16 *)take(R, (size_t)rows * p->ha * c->dv * 2);
    R->vown = (bf16 *)take(R, (size_t)rows * p->ha * c->dv * 2);
    // FFN: the dense FFN and shared experts (h13, h), the routed experts
    R->router = (float *)take(R, (size_t)rows * E * 4);
    R->h13 = (float *)take(R, (size_t)rows * 2 * fk * 4);
    R->h = (bf16 *)take(R, (size_t)rows * fk * 2);
    R->topi = (int *)take(R, (size_t)rows * tk * 4); R->topw = (float *)take(R, (size_t)rows * tk * 4);
    R->perm = (int *)take(R, (size_t)rows * tk * 4); R->pos = (int *)take(R, (size_t)rows * tk * 4);
    R->off = (int *)take(R, (size_t)2 * (E + 1) * 4);
    R->counts = (int *)take(R, (size_t)c->n_layers * E * 4);
    R->eh = (bf16 *)take(R, (size_t)rows * tk * ik * 2);
    R->eout = (float *)take(R, (size_t)rows * tk * D * 4);
    R->logits = (float *)take(R, (size_t)rows * (p->nv + 1) * 4);
    // decode attention partials, and the prefill score matrix of one chunk
    AttnShape a = attention_shape(p->ha, p->dcs, p->Dk);
    R->nsplit_max = nsplit_cap(G->B, a.head_tiles, G->max_len, G->sms);
    R->opart = (float *)take(R, (size_t)G->B * R->nsplit_max * p->ha * p->dcs * 4);
    R->lse = (float *)take(R, (size_t)G->B * R->nsplit_max * p->ha * 4);
    size_t sc = (size_t)p->ha * G->chunk * G->max_len;
    R->S = (float *)take(R, sc * 4); R->P = (bf16 *)take(R, sc * 2);
}

// copies a (rows, cols) block of a host f32 matrix (leading dimension ld) to the device as bf16 or f32
static void put(void *dst, const float *src, size_t rows, size_t cols, size_t ld, int as_f32) {
    std::vector<uint16_t> hb;
    std::vector<float> hf;
    if (as_f32) hf.resize(rows * cols); else hb.resize(rows * cols);
    for (size_t r = 0; r < rows; r++)
        for (size_t k = 0; k < cols; k++) {
            float v = src[r * ld + k];
            if (as_f32) { hf[r * cols + k] = v; continue; }
            hb[r * cols + k] = f32_to_bf16(v);
        }
    CUDA_CHECK(cudaMemcpy(dst, as_f32 ? (void *)hf.data() : (void *)hb.data(), rows * cols * (as_f32 ? 4 : 2), cudaMemcpyHostToDevice));
}

static void upload_rank(GPU *G, Rank *R, const Model *m) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    int D = c->dim, qd = c->dn + c->dr, dn = c->dn, dv = c->dv, r = R->r;
    for (int l = 0; l < c->n_layers; l++) {
        LayerW *L = &R->lw[l];
        const Layer *H = &m->layers[l];
        put(L->attn_norm, H->attn_norm, 1, D, D, 1);
        put(L->ffn_norm, H->ffn_norm, 1, D, D, 1);
        if (c->q_lora) {
            put(L->wq_a, H->wq_a, c->q_lora, D, D, 0);
            put(L->q_norm, H->q_norm, 1, c->q_lora, c->q_lora, 1);
            put(L->wq, H->wq_b + (size_t)p->hq0 * qd * c->q_lora, (size_t)p->hq * qd, c->q_lora, c->q_lora, 0);
        } else {
            put(L->wq, H->wq + (size_t)p->hq0 * qd * D, (size_t)p->hq * qd, D, D, 0);
        }
        put(L->wkv_a, H->wkv_a, c->dc + c->dr, D, D, 0);
        for (int h = 0; h < p->ha; h++)   // head h0+h, columns of latent slice S_i
            put(L->wkv_b + (size_t)h * (dn + dv) * p->dcs, H->wkv_b + (size_t)(p->h0 + h) * (dn + dv) * c->dc + p->shard * p->dcs,
                dn + dv, p->dcs, c->dc, 0);
        put(L->wo, H->wo + (size_t)p->hq0 * dv, D, (size_t)p->hq * dv, (size_t)c->n_heads * dv, 0);
        // np blocks of width I side by side (dense: 1 of inter; shared experts: n_shared of moe_inter), or
        // E routed experts; of each, this rank's slice [r*w, (r+1)*w): those rows of W1 and W3, columns of W2
        auto put_ffn = [&](bf16 *w13, bf16 *w2, const float *w1s, const float *w2s, const float *w3s, int np, int I, int w, int experts) {
            std::vector<float> w2cat((size_t)D * np * w);   // (D, np*w): the slices' columns side by side
            for (int k = 0; k < np; k++) {
                size_t row = (size_t)k * I + (size_t)r * w;   // the slice's first row of W1, W3 ((np*I, D) either way)
                bf16 *dst = w13 + (size_t)k * (experts ? 2 : 1) * w * D;   // experts: (E, 2w, D); else (2*np*w, D)
                put(dst, w1s + row * D, w, D, D, 0);
                put(dst + (size_t)(experts ? 1 : np) * w * D, w3s + row * D, w, D, D, 0);
                for (int d = 0; d < D; d++)   // W2: experts (E, D, I); else (D, np*I)
                    memcpy(&w2cat[((size_t)d * np + k) * w], experts ? w2s + ((size_t)k * D + d) * I + (size_t)r * w
                                                                     : w2s + (size_t)d * np * I + row, w * 4);
            }
            put(w2, w2cat.data(), D, (size_t)np * w, (size_t)np * w, 0);
        };
        if (L->ik) {
            put(L->gate, H->gate, c->n_experts, D, D, 1);
            put(L->bias, H->bias, 1, c->n_experts, c->n_experts, 1);
            put_ffn(L->ew13, L->ew2, H->ew1, H->ew2, H->ew3, c->n_experts, c->moe_inter, L->ik, 1);
            if (L->fk) put_ffn(L->w13, L->w2, H->sw1, H->sw2, H->sw3, c->n_shared, c->moe_inter, L->ik, 0);
        } else if (L->fk) {
            put_ffn(L->w13, L->w2, H->w1, H->w2, H->w3, 1, c->inter, L->fk, 0);
        }
    }
    put(R->embed, m->embed, c->vocab, D, D, 0);
    put(R->lm_head, m->lm_head + (size_t)p->v0 * D, p->nv, D, D, 0);
    put(R->norm, m->norm, 1, D, D, 1);
}

// random weights for the bench: matrices uniform in +-1/sqrt(fan in), norms 1
static void randomize_rank(GPU *G, Rank *R) {
    const Config *c = &G->c;
    uint64_t seed = 1000 + R->r;
    auto rnd = [&](bf16 *w, size_t n, int fan_in) { fill_random(w, n, 1.0f / sqrtf((float)fan_in), seed++, R->st); };
    auto one = [&](float *w, size_t n, float v) { fill(w, n, v, R->st); };
    const Part *p = &R->p;
    int D = c->dim, qd = c->dn + c->dr;
    for (int l = 0; l < c->n_layers; l++) {
        LayerW *L = &R->lw[l];
        one(L->attn_norm, D, 1); one(L->ffn_norm, D, 1);
        if (c->q_lora) { rnd(L->wq_a, (size_t)c->q_lora * D, D); one(L->q_norm, c->q_lora, 1); }
        rnd(L->wq, (size_t)p->hq * qd * (c->q_lora ? c->q_lora : D), c->q_lora ? c->q_lora : D);
        rnd(L->wkv_a, (size_t)(c->dc + c->dr) * D, D);
        rnd(L->wkv_b, (size_t)p->ha * (c->dn + c->dv) * p->dcs, c->dc);
        rnd(L->wo, (size_t)D * p->hq * c->dv, c->n_heads * c->dv);
        rnd(L->w13, (size_t)2 * L->fk * D, D);
        rnd(L->w2, (size_t)D * L->fk, L->fk * G->K);
        if (!L->ik) continue;
        rnd(L->ew13, (size_t)c->n_experts * 2 * L->ik * D, D);
        rnd(L->ew2, (size_t)D * c->n_experts * L->ik, L->ik * G->K);
        // the router: the same on every rank (as replicated weights are), so that the ranks route alike
        fill_random(L->gate, (size_t)c->n_experts * D, 1.0f / sqrtf((float)D), 77 + l, R->st);
        one(L->bias, c->n_experts, 0);
    }
    rnd(R->embed, (size_t)c->vocab * D, 1);
    rnd(R->lm_head, (size_t)p->nv * D, D);
    one(R->norm, D, 1);
}

// ----------------------------------------------------------------------------
// threads: every call runs fn on all ranks at once, one host thread per GPU

typedef void (*RankFn)(GPU *G, Rank *R, void *arg);
typedef struct { GPU *G; Rank *R; RankFn fn; void *arg; } Job;
static void *job_main(void *p) {
    Job *j = (Job *)p;
    CUDA_CHECK(cudaSetDevice(j->R->dev));
    j->fn(j->G, j->R, j->arg);
    return NULL;
}
static void on_ranks(GPU *G, RankFn fn, void *arg) {
    std::vector<pthread_t> t(G->nrank);
    std::vector<Job> jobs(G->nrank);
    for (int r = 0; r < G->nrank; r++) {
        jobs[r] = Job{G, &G->rk[r], fn, arg};
        if (pthread_create(&t[r], NULL, job_main, &jobs[r])) die("pthread_create failed");
    }
    for (int r = 0; r < G->nrank; r++) pthread_join(t[r], NULL);
}

// The GPUs tpla can use: the first ones that are Hopper (sm_90; the decode kernel is built for sm_90a).
int gpu_count(void) {
    int n = 0, k = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
    for (cudaDeviceProp pr; k < n && cudaGetDeviceProperties(&pr, k) == cudaSuccess && pr.major == 9;) k++;
    return k;
}

// One world communicator per GPU count, made once per process (NCCL's start-up is slow).
static ncclComm_t *g_world[65];

static void init_rank(GPU *G, Rank *R, void *model) {
    const Config *c = &G->c;
    CUDA_CHECK(cudaStreamCreateWithFlags(&R->st, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&R->blas));
    CUBLAS_CHECK(cublasSetStream(R->blas, R->st));
    R->world = G->nrank > 1 ? g_world[G->K][R->r] : NULL;
    R->peer = NULL;
    if (R->p.g > 1 && G->nrank > 1)   // the g ranks of the same group slot j, ordered by shard
        NCCL_CHECK(ncclCommSplit(R->world, R->p.j, R->p.shard, &R->peer, NULL));
    CUDA_CHECK(cudaMalloc(&R->arena, R->cap));
    layout_rank(G, R);
    void *ws;   // cuBLAS gets a fixed workspace, so that a decode step can be captured in a graph
    CUDA_CHECK(cudaMalloc(&ws, 32 << 20));
    CUBLAS_CHECK(cublasSetWorkspace(R->blas, ws, 32 << 20));
    if (model) upload_rank(G, R, (const Model *)model); else randomize_rank(G, R);
    std::vector<float> inv(c->dr / 2);
    rope_freqs(c, inv.data());
    CUDA_CHECK(cudaMemcpy(R->inv_freq, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));
    for (int i = 0; G->ffn && i < MOE_NTILES; i++)   // the expert products' shared memory (over the default 48 KB), blocks per SM
        for (int up = 0; up < 2; up++) {
            MoeKernel k = up ? moe_tiles[i].up : moe_tiles[i].down;
            int smem = (int)moe_smem(moe_tiles[i].bm, moe_tiles[i].bn);
            CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
            CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&R->moe_blocks[i][up], k, 128, smem));
            R->moe_blocks[i][up] = std::max(1, R->moe_blocks[i][up]);
        }
    AttnShape a = attention_shape(R->p.ha, R->p.dcs, R->p.Dk);
    CUDA_CHECK(cudaFuncSetAttribute(a.k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)a.smem));
    R->cmap = cache_map(R->cache, (size_t)c->n_layers * G->B * G->max_len, R->p.Dk);
    CUDA_CHECK(cudaStreamSynchronize(R->st));
}

// Prefill chunk: up to 2048 tokens (a long prompt's expert products need many rows per expert to run at
// the tensor cores' rate), fewer while the score matrix of one chunk (heads x chunk x max_len, f32 and
// bf16) would pass 1 GiB.
static int prefill_chunk(const Config *c, int max_len) {
    int chunk = std::min(2048, max_len);
    while (chunk > 1 && (size_t)c->n_heads * chunk * max_len * 6 > (1u << 30)) chunk /= 2;
    return chunk;
}

// K GPUs in the layout; nrank of them run here (K, or 1 for the rank bench: rank 0 on GPU 0); chunk: the
// most tokens a forward pass takes (prefill chunks; 1: decode only)
static GPU *build(const Model *m, const Config *c, const Scheme *s, int K, int nrank, int batch, int max_len, int ffn, int chunk) {
    int have = gpu_count(), g = s->g;
    if (K < 1 || nrank > have) die("%d GPUs asked for, %d present", nrank, have);
    if (K > 64) die("at most 64 GPUs");
    if (g < 1 || K % g) die("TPLA: the GPU count %d must be a multiple of the shard count g = %d", K, g);
    if (c->dc % g || (c->dc / g) % 16) die("TPLA: kv_lora_rank %d must split into g = %d slices of a multiple of 16", c->dc, g);
    if (c->dr % 16) die("qk_rope_head_dim %d: the GPU engine needs a multiple of 16", c->dr);
    int m_ = K / g;
    if (c->n_heads % m_ || (s->split && c->n_heads % K))
        die("%d heads do not split over %d GPUs (%d per group of shard)", c->n_heads, s->split ? K : m_, m_);
    if (ffn && ((c->inter && c->inter % K) || (c->n_experts && c->moe_inter % K)))
        die("the FFN intermediate sizes (%d, %d) must divide by the GPU count %d", c->inter, c->moe_inter, K);
    const char *moe = ffn ? gpu_moe_error(c, K) : NULL;
    if (moe) die("%s (this model: %d experts of %d, top-%d, hidden %d, on %d GPUs)", moe, c->n_experts, c->moe_inter, c->topk, c->dim, K);
    GPU *G = (GPU *)calloc(1, sizeof(GPU));
    G->c = *c; G->s = *s; G->K = K; G->nrank = nrank; G->B = batch; G->max_len = max_len; G->ffn = ffn;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    G->sms = prop.multiProcessorCount;
    G->chunk = chunk;
    G->rows = std::max(batch, G->chunk);
    if (s->rms_fix) {
        G->rms_fix = (float *)malloc((size_t)c->n_layers * g * sizeof(float));
        memcpy(G->rms_fix, s->rms_fix, (size_t)c->n_layers * g * sizeof(float));
    }
    G->lens = (int *)calloc(batch, sizeof(int));
    G->rk = (Rank *)calloc(nrank, sizeof(Rank));
    for (int r = 0; r < nrank; r++) {   // count each rank's bytes and check they fit before allocating
        Rank *R = &G->rk[r];
        R->r = r; R->dev = r; R->p = make_part(c, g, K, r, s->split);
        layout_rank(G, R);
        R->cap = R->used + (1 << 20);
        size_t free_b, total_b;
        CUDA_CHECK(cudaSetDevice(r));
        CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        size_t need = R->cap + LIB_RESERVE;
        if (need > free_b)
            die("GPU %d: this model, batch %d and %d positions need %.2f GiB (weights and cache %.2f GiB), but only %.2f GiB of %.2f GiB are free",
                r, batch, max_len, need / 1073741824.0, R->cap / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0);
    }
    if (nrank > 1 && !g_world[K]) {
        int devs[64];
        for (int r = 0; r < K; r++) devs[r] = r;
        g_world[K] = (ncclComm_t *)calloc(K, sizeof(ncclComm_t));
        NCCL_CHECK(ncclCommInitAll(g_world[K], K, devs));
    }
    on_ranks(G, init_rank, (void *)m);
    return G;
}

GPU *gpu_build(const Model *m, const Config *c, const Scheme *s, int K, int batch, int max_len, int ffn) {
    return build(m, c, s, K, K, batch, max_len, ffn, m ? prefill_chunk(c, max_len) : 1);
}

static void free_rank(GPU *G, Rank *R, void *arg) {
    (void)G; (void)arg;
    CUDA_CHECK(cudaStreamSynchronize(R->st));
    if (R->peer) ncclCommDestroy(R->peer);
    CUBLAS_CHECK(cublasDestroy(R->blas));
    CUDA_CHECK(cudaFree(R->arena));
    CUDA_CHECK(cudaStreamDestroy(R->st));
    free(R->lw);
}

void gpu_free(GPU *G) {
    on_ranks(G, free_rank, NULL);
    free(G->rk); free(G->lens); free(G->rms_fix); free(G);
}

void gpu_reset(GPU *G) { memset(G->lens, 0, G->B * sizeof(int)); }

// ----------------------------------------------------------------------------
// prefill and decode: the host fills the row tables, every rank runs the same forward

typedef struct {
    const int *tok, *rpos, *rseq, *lens;
    int rows, prefill, seq, p0, max_cached, logit_rows, nlens;
    float *logits;      // host (logit_rows, vocab), or NULL
} Step;

static void step_rank(GPU *G, Rank *R, void *arg) {
    Step *s = (Step *)arg;
    cudaStream_t st = R->st;
    CUDA_CHECK(cudaMemcpyAsync(R->tok, s->tok, s->rows * 4, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(R->rpos, s->rpos, s->rows * 4, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(R->rseq, s->rseq, s->rows * 4, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(R->lens, s->lens, s->nlens * 4, cudaMemcpyHostToDevice, st));
    forward_rank(G, R, s->rows, s->prefill, s->seq, s->p0, s->max_cached, s->logit_rows);
    if (s->logits && s->logit_rows && R->p.nv)
        CUDA_CHECK(cudaMemcpy2DAsync(s->logits + R->p.v0, (size_t)G->c.vocab * 4, R->logits, (size_t)R->p.nv * 4,
                                     (size_t)R->p.nv * 4, s->logit_rows, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
}

void gpu_prefill(GPU *G, int b, const int *tokens, int n, float *logits, int all) {
    if (b < 0 || b >= G->B) die("gpu_prefill: sequence %d of %d", b, G->B);
    if (G->lens[b] + n > G->max_len) die("sequence %d: %d tokens, more than the %d positions allocated", b, G->lens[b] + n, G->max_len);
    std::vector<int> pos(G->chunk), seq(G->chunk, b);
    for (int done = 0; done < n;) {
        int rows = std::min(G->chunk, n - done), last = done + rows == n;
        for (int i = 0; i < rows; i++) pos[i] = G->lens[b] + i;
        Step s = {tokens + done, pos.data(), seq.data(), G->lens, rows, 1, b, G->lens[b], G->lens[b] + rows,
                  all ? rows : last, G->B, all ? logits + (size_t)done * G->c.vocab : (last ? logits : NULL)};
        on_ranks(G, step_rank, &s);
        G->lens[b] += rows;
        done += rows;
    }
}

void gpu_decode(GPU *G, const int *tokens, float *logits) {
    std::vector<int> pos(G->B), seq(G->B), lens(G->B);
    int mx = 0;
    for (int b = 0; b < G->B; b++) {
        if (G->lens[b] >= G->max_len) die("sequence %d is full (%d positions)", b, G->max_len);
        pos[b] = G->lens[b]; seq[b] = b; lens[b] = G->lens[b] + 1; mx = std::max(mx, lens[b]);
    }
    Step s = {tokens, pos.data(), seq.data(), lens.data(), G->B, 0, 0, 0, mx, G->B, G->B, logits};
    on_ranks(G, step_rank, &s);
    for (int b = 0; b < G->B; b++) G->lens[b]++;
}

// ----------------------------------------------------------------------------
// -m bench: decode steps at a fixed context on random weights and a random cache (README "Measured")

typedef struct {
    int B, ctx, steps, breakdown;   // breakdown: also time the MoE layer's pieces (moe_breakdown)
    double step_s, attn_s, idle;    // idle: see bench_rank
    char moe[2048];
} BenchRun;

// bytes of one routed expert on one rank (its slice of W1, W3 and W2), and the MoE layers
static double expert_bytes(const Config *c, int K) { return 3.0 * (c->moe_inter / K) * c->dim * 2; }
static int moe_layers(const Config *c) { int n = 0; for (int l = 0; l < c->n_layers; l++) n += layer_is_moe(c, l); return n; }

// seconds per call of body(), timed with CUDA events on the rank's stream over reps calls after one
// untimed call; graph_time: the same for body() captured once in a CUDA graph and replayed
#define GRAPH_REPS 3
template <class F> static double event_time(Rank *R, F body, int reps) {
    cudaEvent_t e0, e1;
    body();
    CUDA_CHECK(cudaEventCreate(&e0)); CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaEventRecord(e0, R->st));
    for (int i = 0; i < reps; i++) body();
    CUDA_CHECK(cudaEventRecord(e1, R->st));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    CUDA_CHECK(cudaEventDestroy(e0)); CUDA_CHECK(cudaEventDestroy(e1));
    return ms / 1e3 / reps;
}
template <class F> static double graph_time(Rank *R, F body, int reps = GRAPH_REPS) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_CHECK(cudaStreamBeginCapture(R->st, cudaStreamCaptureModeThreadLocal));
    body();
    CUDA_CHECK(cudaStreamEndCapture(R->st, &graph));
    CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    double t = event_time(R, [&] { CUDA_CHECK(cudaGraphLaunch(exec, R->st)); }, reps);
    CUDA_CHECK(cudaGraphExecDestroy(exec)); CUDA_CHECK(cudaGraphDestroy(graph));
    return t;
}

// Where a MoE layer's time goes, for `rows` tokens on one GPU (x holds the last step's residual): the FFN
// and each of its launches alone, per layer (each timed over all MoE layers, so that no layer's weights
// are still in L2 when its turn comes), then the two expert products in both tile shapes, with the
// experts' weight bytes per second and the products' flop rate. Text into out.
static void moe_breakdown(GPU *G, Rank *R, int rows, char *out, size_t cap) {
    const Config *c = &G->c;
    int E = c->n_experts, D = c->dim, tk = c->topk, l0 = c->first_dense, nl = c->n_layers - l0, def = moe_tile(c, rows);
    size_t len = 0;
    auto each = [&](auto body) { return graph_time(R, [&] { for (int l = l0; l < c->n_layers; l++) body(&R->lw[l], l); }) / nl * 1e6; };
    double ffn = each([&](const LayerW *L, int l) { ffn_rank(G, R, L, l, rows); });
    double norm = each([&](const LayerW *L, int) { add_rmsnorm(R, R->x, NULL, L->ffn_norm, R->xb, R->xn, rows, D, c->eps); });
    double router = each([&](const LayerW *L, int) { moe_router(G, R, L, rows); });
    double route = each([&](const LayerW *L, int) { moe_route(G, R, L, rows); });
    double planned = each([&](const LayerW *, int l) { moe_plan(G, R, l, rows, moe_tiles[def].bn); });
    double shared = each([&](const LayerW *L, int) { if (L->fk) dense_ffn(R, L, rows, D); });
    double combine = each([&](const LayerW *L, int) { moe_combine(G, R, rows, L->fk > 0); });
    std::vector<int> cnt(E);
    CUDA_CHECK(cudaMemcpy(cnt.data(), R->counts + (size_t)(c->n_layers - 1) * E, E * 4, cudaMemcpyDeviceToHost));
    int used = 0;
    for (int e = 0; e < E; e++) used += cnt[e] > 0;
    double wb = used * expert_bytes(c, G->K), fl = 2.0 * rows * tk * 3 * (c->moe_inter / G->K) * D;
    len += snprintf(out + len, cap - len, "    MoE layer alone, %d rows (us per layer): FFN %.1f = norm %.1f + router %.1f + route %.1f + plan %.1f"
                    " + experts + shared %.1f + combine %.1f; %d of %d experts used\n", rows, ffn, norm, router, route, planned, shared,
                    combine, used, E);
    for (int i = 0; i < MOE_NTILES; i++) {
        const MoeTile *T = &moe_tiles[i];
        moe_plan(G, R, c->n_layers - 1, rows, T->bn);   // the routing of the last layer, planned for this shape
        double up = each([&](const LayerW *L, int) { moe_product(G, R, L, rows, T, 1); });
        double down = each([&](const LayerW *L, int) { moe_product(G, R, L, rows, T, 0); });
        len += snprintf(out + len, cap - std::min(cap, len), "    experts in %3dx%-3d tiles: up %7.1f us, down %7.1f us: %5.0f GB/s, %5.1f TFLOP/s%s\n",
                        T->bm, T->bn, up, down, wb / (up + down) / 1e3, fl / (up + down) / 1e6, i == def ? "; the one used" : "");
    }
}

// one rank: `steps` decode steps (captured once in a CUDA graph), then the attention kernels alone
static void bench_rank(GPU *G, Rank *R, void *arg) {
    BenchRun *b = (BenchRun *)arg;
    const Config *c = &G->c;
    const Part *p = &R->p;
    size_t cache_n = (size_t)c->n_layers * G->B * G->max_len * p->Dk;
    fill_random(R->cache, cache_n, 1.0f, 7 + R->r, R->st);
    if (G->nrank < G->K) {   // rank bench: what the left-out collectives would bring, as random values
        size_t nq = (size_t)G->rows * p->ha * (c->dn + c->dr), nv = (size_t)G->rows * p->ha * c->dv;
        fill_random(R->qall, nq, 1.0f, 11, R->st);
        fill_random(R->vown, nv, 1.0f, 12, R->st);
    }
    std::vector<int> tok(G->B), pos(G->B, b->ctx), seq(G->B), lens(G->B, b->ctx + 1);
    for (int i = 0; i < G->B; i++) { tok[i] = (i * 7919) % c->vocab; seq[i] = i; }
    CUDA_CHECK(cudaMemcpy(R->tok, tok.data(), G->B * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(R->rpos, pos.data(), G->B * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(R->rseq, seq.data(), G->B * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(R->lens, lens.data(), G->B * 4, cudaMemcpyHostToDevice));
    forward_rank(G, R, G->B, 0, 0, 0, b->ctx + 1, G->B);   // warm-up, outside the graph
    double t = graph_time(R, [&] { forward_rank(G, R, G->B, 0, 0, 0, b->ctx + 1, G->B); }, b->steps);
    // the attention kernels of every layer, timed alone (Q holds the last step's queries)
    double attn = event_time(R, [&] {
        for (int l = 0; l < c->n_layers; l++)
            decode_attention(R->Q, &R->cmap, l * G->B * G->max_len, R->lens, R->opart, R->lse, R->O, G->B,
                             p->ha, p->dcs, p->Dk, G->max_len, b->ctx + 1, c->softmax_scale, G->sms, R->st);
    }, GRAPH_REPS);
    if (R->r == 0) { b->step_s = t; b->attn_s = attn; }
    if (R->r == 0 && G->ffn && moe_layers(c)) {   // the step's routing (every step routes alike): experts no token chose
        std::vector<int> cnt((size_t)c->n_layers * c->n_experts);
        CUDA_CHECK(cudaMemcpy(cnt.data(), R->counts, cnt.size() * sizeof(int), cudaMemcpyDeviceToHost));
        int idle = 0;
        for (int l = 0; l < c->n_layers; l++)
            for (int e = 0; e < c->n_experts && layer_is_moe(c, l); e++) idle += cnt[(size_t)l * c->n_experts + e] == 0;
        b->idle = idle * expert_bytes(c, G->K);
        if (b->breakdown && G->nrank == 1) moe_breakdown(G, R, G->B, b->moe, sizeof(b->moe));
    }
}

// bytes a rank must hold: weights + cache for batch B at `len` positions (and the buffers)
static size_t rank_bytes(const Config *c, const Scheme *s, int K, int r, int B, int len, int dense, size_t *wbytes = NULL) {
    GPU G;
    memset(&G, 0, sizeof(G));
    G.c = *c; G.s = *s; G.K = K; G.B = B; G.max_len = len; G.ffn = dense; G.chunk = 1; G.rows = B;
    CUDA_CHECK(cudaDeviceGetAttribute(&G.sms, cudaDevAttrMultiProcessorCount, 0));
    Rank R;
    memset(&R, 0, sizeof(R));
    R.r = r; R.p = make_part(c, s->g, K, r, s->split);
    layout_rank(&G, &R);
    free(R.lw);
    if (wbytes) *wbytes = R.wbytes;
    return R.used;
}

static int largest_batch(const Config *c, const Scheme *s, int K, int nrank, int len, int dense) {
    size_t free_min = (size_t)-1;
    for (int r = 0; r < nrank; r++) {
        size_t f, t;
        CUDA_CHECK(cudaSetDevice(r));
        CUDA_CHECK(cudaMemGetInfo(&f, &t));
        free_min = std::min(free_min, f);
    }
    size_t avail = free_min - std::min(free_min, LIB_RESERVE);
    int lo = 0, hi = MAX_BATCH;
    while (lo < hi) {   // the largest B whose every rank fits
        int mid = (lo + hi + 1) / 2, ok = 1;
        for (int r = 0; r < K && ok; r++) ok = rank_bytes(c, s, K, r, mid, len, dense) <= avail;
        if (ok) lo = mid; else hi = mid - 1;
    }
    if (!lo) die("bench: not even one sequence of %d tokens fits next to the weights (%.1f GiB free per GPU)", len, free_min / 1073741824.0);
    return lo;
}

static BenchRun bench_one(const Config *c, const Scheme *s, int K, int nrank, int B, int ctx, int dense, int steps, int breakdown) {
    GPU *G = build(NULL, c, s, K, nrank, B, ctx + 1, dense, 1);
    BenchRun b;
    memset(&b, 0, sizeof(b));
    b.B = B; b.ctx = ctx; b.steps = steps; b.breakdown = breakdown;
    on_ranks(G, bench_rank, &b);
    gpu_free(G);
    return b;
}

// the card's ceilings: device-to-device copy (bytes read + written) and a large bf16 matrix product
static void measure_roofs(double *copy_bps, double *mm_flops) {
    CUDA_CHECK(cudaSetDevice(0));
    size_t n = 1ull << 30;
    bf16 *a, *b;
    CUDA_CHECK(cudaMalloc(&a, n)); CUDA_CHECK(cudaMalloc(&b, n));
    fill_random(a, n / 2, 1.0f, 1, 0);
    std::vector<double> t;
    for (int i = 0; i < 12; i++) {
        CUDA_CHECK(cudaDeviceSynchronize());
        double t0 = now_s();
        CUDA_CHECK(cudaMemcpy(b, a, n, cudaMemcpyDeviceToDevice));
        CUDA_CHECK(cudaDeviceSynchronize());
        if (i >= 2) t.push_back(now_s() - t0);
    }
    std::sort(t.begin(), t.end());
    *copy_bps = 2.0 * n / t[t.size() / 2];
    int N = 8192;
    cublasHandle_t h;
    CUBLAS_CHECK(cublasCreate(&h));
    float *cc;
    CUDA_CHECK(cudaMalloc(&cc, (size_t)N * N * 4));
    fill_random(b, (size_t)N * N, 1.0f, 2, 0);
    float al = 1, be = 0;
    t.clear();
    for (int i = 0; i < 8; i++) {
        CUDA_CHECK(cudaDeviceSynchronize());
        double t0 = now_s();
        CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, N, N, N, &al, a, CUDA_R_16BF, N, b, CUDA_R_16BF, N, &be, cc,
                                  CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        CUDA_CHECK(cudaDeviceSynchronize());
        if (i >= 2) t.push_back(now_s() - t0);
    }
    std::sort(t.begin(), t.end());
    *mm_flops = 2.0 * N * N * N / t[t.size() / 2];
    CUBLAS_CHECK(cublasDestroy(h));
    CUDA_CHECK(cudaFree(a)); CUDA_CHECK(cudaFree(b)); CUDA_CHECK(cudaFree(cc));
}

// The step's floor on one GPU: the larger of its memory time (weights read + cache read, at the copy
// bandwidth) and its tensor time (projection and attention flops, at the matrix rate). MoE: the weights
// read leave out the `idle` bytes of experts that no token of the step chose (from its routing), and
// each token's flops count only its topk routed experts.
// *rest gets the floor of the step without its attention kernel (weights only, projection flops only).
static double step_floor(const Config *c, const Scheme *s, int K, int B, int ctx, int dense, double idle, double bw, double fl,
                         double *cache_bytes, double *rest) {
    Part p = make_part(c, s->g, K, 0, s->split);
    size_t w;
    rank_bytes(c, s, K, 0, 1, 1, dense, &w);
    double wbytes = (double)w - (double)c->vocab * c->dim * 2;   // a step reads B rows of the embedding, not all
    double ex = dense ? moe_layers(c) * expert_bytes(c, K) : 0;   // one routed expert of every MoE layer
    *cache_bytes = (double)c->n_layers * B * (ctx + 1) * p.Dk * 2;
    double proj = 2.0 * B * ((wbytes - (c->n_experts - c->topk) * ex) / 2);
    double flops = proj + 2.0 * B * p.ha * (double)(ctx + 1) * (p.Dk + p.dcs) * c->n_layers;
    *rest = std::max((wbytes - idle) / bw, proj / fl);
    return std::max((wbytes - idle + *cache_bytes) / bw, flops / fl);
}

static const char *ffn_name(const Config *c, int ffn) {
    return !ffn ? "no" : !moe_layers(c) ? "dense" : "MoE (routed experts)";
}

// The paper's TPLA/MLA decode throughput (2 x H800, TP = 2, g = 2, MoE removed, largest batch), 0 elsewhere.
static double paper_ratio(const char *name, int K, int g, int ctx) {
    static const double v3[6] = {1.33, 1.38, 1.45, 1.57, 1.65, 1.79}, k2[6] = {1.28, 1.35, 1.51, 1.55, 1.76, 1.93};
    const double *r = !strcmp(name, "dsv3") ? v3 : !strcmp(name, "kimik2") ? k2 : NULL;
    for (int j = 0; r && K == 2 && g == 2 && j < 6; j++) if (ctx == 1024 << j) return r[j];
    return 0;
}

void gpu_bench(const Config *c, const Scheme *tpla, int K, int one_rank, int batch, const int *ctx, int nctx, int dense, int steps,
               const char *name, const char *csv) {
    int nrank = one_rank ? 1 : K;
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    double bw, fl;
    measure_roofs(&bw, &fl);
    printf("bench %s on %d x %s: D %d, H %d, dc %d + dr %d, %d layers, %s FFN; TPLA g = %d (%s W_UQ/W_O)\n", name, nrank, prop.name,
           c->dim, c->n_heads, c->dc, c->dr, c->n_layers, ffn_name(c, dense), tpla->g, tpla->split ? "split" : "replicated");
    if (one_rank)
        printf("rank bench: one GPU runs rank 0 of a %d-GPU layout (its weights, cache slice and batch), collectives left out\n", K);
    printf("card: copy %.0f GB/s (read + write), bf16 matmul %.0f TFLOP/s; a step decodes one token per sequence (CUDA graph)\n",
           bw / 1e9, fl / 1e12);
    FILE *f = fopen(csv, "w");
    if (!f) die("%s: cannot write", csv);
    fprintf(f, "shape,gpus,gpus_run,card,ctx,scheme,g,batch,step_ms,tok_s,attn_ms,attn_share,attn_GBs,attn_copy_frac,attn_TFLOPs,cache_GB_per_gpu,floor_ms,step_over_floor,rest_over_floor,ratio,ratio_equal_batch,paper\n");
    printf("%6s %-9s %5s %9s %10s %8s %6s %9s %6s %8s %7s %7s %9s\n", "ctx", "scheme", "batch", "step ms", "tok/s", "attn ms",
           "share", "attn GB/s", "%copy", "TFLOP/s", "x floor", "rest x", "cache GB");
    for (int i = 0; i < nctx; i++) {
        int bm = batch ? batch : largest_batch(c, &MLA, K, nrank, ctx[i] + 1, dense);
        int bt = batch ? batch : largest_batch(c, tpla, K, nrank, ctx[i] + 1, dense);
        BenchRun r[3];
        const Scheme *sc[3] = {&MLA, tpla, tpla};
        int bs[3] = {bm, bt, bm};
        double tps[3];
        double pr = paper_ratio(name, K, tpla->g, ctx[i]);
        for (int k = 0; k < (bt == bm ? 2 : 3); k++) {
            r[k] = bench_one(c, sc[k], K, nrank, bs[k], ctx[i], dense, steps, k == 0);
            Part p = make_part(c, sc[k]->g, K, 0, sc[k]->split);
            double cb, rest, floor = step_floor(c, sc[k], K, bs[k], ctx[i], dense, r[k].idle, bw, fl, &cb, &rest);
            double rest_x = (r[k].step_s - r[k].attn_s) / rest;   // the step without attention, over its floor
            double abw = cb / r[k].attn_s, atf = 2.0 * bs[k] * p.ha * (double)(ctx[i] + 1) * (p.Dk + p.dcs) * c->n_layers / r[k].attn_s;
            tps[k] = bs[k] / r[k].step_s;
            const char *nm = k == 0 ? "MLA-TP" : k == 1 ? "TPLA" : "TPLA@=B";
            printf("%6d %-9s %5d %9.3f %10.0f %8.3f %5.0f%% %9.0f %5.0f%% %8.1f %7.2f %7.2f %9.2f\n", ctx[i], nm, bs[k], r[k].step_s * 1e3,
                   tps[k], r[k].attn_s * 1e3, 100 * r[k].attn_s / r[k].step_s, abw / 1e9, 100 * abw / bw, atf / 1e12,
                   r[k].step_s / floor, rest_x, cb / 1e9);
            if (k == 0) printf("%s", r[0].moe);   // the MoE layer's breakdown (empty without MoE)
            fprintf(f, "%s,%d,%d,%s,%d,%s,%d,%d,%.4f,%.1f,%.4f,%.3f,%.1f,%.3f,%.2f,%.3f,%.4f,%.3f,%.3f,%.3f,%.3f,%.2f\n", name, K, nrank, prop.name,
                    ctx[i], nm, sc[k]->g, bs[k], r[k].step_s * 1e3, tps[k], r[k].attn_s * 1e3, r[k].attn_s / r[k].step_s, abw / 1e9,
                    abw / bw, atf / 1e12, cb / 1e9, floor * 1e3, r[k].step_s / floor, rest_x, k ? tps[1] / tps[0] : 1.0,
                    k == 2 ? tps[2] / tps[0] : 0.0, pr);
        }
        if (bt == bm) tps[2] = tps[1];
        printf("%6d TPLA/MLA throughput %.2fx (largest batch each), %.2fx at equal batch%s", ctx[i], tps[1] / tps[0], tps[2] / tps[0],
               pr ? "" : "\n");
        if (pr) printf("; paper %.2fx\n", pr);
        fflush(stdout);
    }
    fclose(f);
    printf("wrote %s\n", csv);
}

// -m bench -k N: the prefill of one N-token prompt (random ids, random weights), timed after one untimed
// run, in the prefill chunks of the real path. Its floor on one GPU: every matrix product's flops at the
// card's matmul rate (each token's projections and its topk routed experts, the causal half of the
// attention scores and outputs, lm_head for the last token), or the weights read once at the copy
// bandwidth, whichever is larger.
void gpu_bench_prefill(const Config *c, const Scheme *s, int K, int n, int ffn, const char *name) {
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    double bw, fl;
    measure_roofs(&bw, &fl);
    GPU *G = build(NULL, c, s, K, K, 1, n, ffn, prefill_chunk(c, n));
    std::vector<int> tok(n);
    for (int i = 0; i < n; i++) tok[i] = (int)(((long long)i * 7919 + 13) % c->vocab);
    std::vector<float> logits(c->vocab);
    gpu_prefill(G, 0, tok.data(), n, logits.data(), 0);   // warm-up
    double t = 1e30;
    for (int rep = 0; rep < 2; rep++) {
        gpu_reset(G);
        double t0 = now_s();
        gpu_prefill(G, 0, tok.data(), n, logits.data(), 0);
        t = std::min(t, now_s() - t0);
    }
    int chunk = G->chunk;
    char moe[2048] = "";
    if (ffn && moe_layers(c) && G->nrank == 1) {
        on_ranks(G, [](GPU *G2, Rank *R, void *out) { moe_breakdown(G2, R, G2->chunk, (char *)out, 2048); }, moe);
    }
    gpu_free(G);
    Part p = make_part(c, s->g, K, 0, s->split);
    size_t w;
    rank_bytes(c, s, K, 0, 1, 1, ffn, &w);
    double wbytes = (double)w - (double)c->vocab * c->dim * 2, lm = (double)p.nv * c->dim * 2;
    double ex = ffn ? moe_layers(c) * expert_bytes(c, K) : 0;
    double flops = n * (wbytes - lm - (c->n_experts - c->topk) * ex) + lm             // 2 flops per bf16 weight (2 bytes) per token
                 + (double)n * (n + 1) * p.ha * (p.Dk + p.dcs) * c->n_layers;   // sum over t of 2 (t+1) (Dk + dcs) per head
    double floor = std::max(flops / fl, wbytes / bw);
    printf("bench %s prefill on %d x %s: %d tokens in chunks of %d, %s FFN; card: copy %.0f GB/s, bf16 matmul %.0f TFLOP/s\n", name,
           K, prop.name, n, chunk, ffn_name(c, ffn), bw / 1e9, fl / 1e12);
    printf("prefill %d tokens: %.2f ms, %.0f tok/s, %.1f TFLOP/s; floor %.2f ms (%.0f tok/s, %.1f TFLOP of products): %.2f x floor\n%s", n,
           t * 1e3, n / t, flops / t / 1e12, floor * 1e3, n / floor, flops / 1e12, t / floor, moe);
}

void gpu_attention(const uint16_t *Q, const uint16_t *cache, const int *lens, int B, int ha, int dcs, int dr, int max_len,
                   float scale, float *O) {
    CUDA_CHECK(cudaSetDevice(0));
    int Dk = dcs + dr, chunk, mx = 0, sms;
    for (int b = 0; b < B; b++) mx = std::max(mx, lens[b]);
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    AttnShape a = attention_shape(ha, dcs, Dk);
    CUDA_CHECK(cudaFuncSetAttribute(a.k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)a.smem));
    int ns = nsplit_for(B, a.head_tiles, ha, dcs, Dk, mx, sms, &chunk);
    bf16 *dQ, *dC, *dO;
    float *op, *lse;
    int *dl;
    CUDA_CHECK(cudaMalloc(&dQ, (size_t)B * ha * Dk * 2)); CUDA_CHECK(cudaMalloc(&dC, (size_t)B * max_len * Dk * 2));
    CUDA_CHECK(cudaMalloc(&dO, (size_t)B * ha * dcs * 2)); CUDA_CHECK(cudaMalloc(&dl, B * 4));
    CUDA_CHECK(cudaMalloc(&op, (size_t)B * ns * ha * dcs * 4)); CUDA_CHECK(cudaMalloc(&lse, (size_t)B * ns * ha * 4));
    CUDA_CHECK(cudaMemcpy(dQ, Q, (size_t)B * ha * Dk * 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dC, cache, (size_t)B * max_len * Dk * 2, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dl, lens, B * 4, cudaMemcpyHostToDevice));
    CUtensorMap map = cache_map(dC, (size_t)B * max_len, Dk);
    decode_attention(dQ, &map, 0, dl, op, lse, dO, B, ha, dcs, Dk, max_len, mx, scale, sms, 0);
    std::vector<uint16_t> o((size_t)B * ha * dcs);
    CUDA_CHECK(cudaMemcpy(o.data(), dO, o.size() * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < o.size(); i++) { uint32_t u = (uint32_t)o[i] << 16; memcpy(&O[i], &u, 4); }
    CUDA_CHECK(cudaFree(dQ)); CUDA_CHECK(cudaFree(dC)); CUDA_CHECK(cudaFree(dO)); CUDA_CHECK(cudaFree(dl));
    CUDA_CHECK(cudaFree(op)); CUDA_CHECK(cudaFree(lse));
}

// ----------------------------------------------------------------------------
// the decode attention kernel: PTX helpers, the softmax pieces, the kernel, the merge, its shape
// (its description is above, with its launcher decode_attention)

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
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
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
// P as the A operand of P V: k step j (tokens 16j..16j+15) is elements 8j..8j+7, two bf16 a register
template <int K0, int K1> __device__ __forceinline__ void pack_p(const float *sv, uint32_t (*p)[4]) {
    #pragma unroll
    for (int j = K0 / 8; j < K1 / 8; j++) {
        const float *x = sv + 8 * j;
        p[j][0] = pack_bf16(x[0], x[1]); p[j][1] = pack_bf16(x[2], x[3]);
        p[j][2] = pack_bf16(x[4], x[5]); p[j][3] = pack_bf16(x[6], x[7]);
    }
}

// ---- the kernel
// Accumulator layout of a 64 x 64 wgmma tile (warp w of the warpgroup, lane l): element d[4j + e] is row
// 16w + l/4 + 8(e/2), column 8j + 2(l%4) + e%2. Thread t of either warpgroup owns the same rows.

template <int MODE, int NJ, int NB>
__global__ void __launch_bounds__(256, 1)
decode_attention_kernel(const bf16 *__restrict__ Q, const __grid_constant__ CUtensorMap cache, int row0,
                        const int *__restrict__ lens, float *__restrict__ opart, float *__restrict__ lse, int ha, int dcs,
                        int Dk, int stages, int max_len, int chunk, float scale_log2) {
    constexpr int HB = MODE == ATT_HEADS ? 128 : 64;        // heads (rows of Q) per block
    constexpr int QB = MODE == ATT_SPLITK ? 8 : NB - 1;     // Q's last 64-column box (the rope key's) ..
    constexpr bool QR = MODE != ATT_STREAM;                 // .. is held in registers (HEADS, SPLITK)
    constexpr int DQ = QR ? QB * 64 : NB * 64;              // columns of Q in shared memory
    constexpr int DKP = NB * 64;                            // columns of a tile
    extern __shared__ __align__(1024) char smem[];
    bf16 *Qs = (bf16 *)smem;                                 // HB x DQ, swizzled
    bf16 *Ks = Qs + HB * DQ;                                 // [stages][TC x DKP], swizzled
    float *X = (float *)(Ks + stages * TC * DKP);            // SPLITK: S of warpgroup 1, then P, [32][128]
    float *Xm = X + (MODE == ATT_SPLITK ? 32 * 128 : 0);     // SPLITK: final m and l, [4][128]
    uint64_t *full = (uint64_t *)(Xm + (MODE == ATT_SPLITK ? 512 : 0));   // [stages]: the stage's tile has landed
    int *freed = (int *)(full + stages);                     // [stages]: warpgroups done with the stage's tile

    // (the warpgroup index through a shuffle: the compiler then knows it is the same in a warp)
    const int tid = threadIdx.x, wg = __shfl_sync(0xffffffff, tid >> 7, 0), t = tid & 127, lane = tid & 31, warp = t >> 5;
    const int h_base = blockIdx.x * HB, b = blockIdx.y, split = blockIdx.z;
    const int len = lens[b], t_begin = split * chunk, t_end = min(len, t_begin + chunk);
    const int ntiles = t_begin < t_end ? (t_end - t_begin + TC - 1) / TC : 0;
    const size_t so = (size_t)b * gridDim.z + split;         // this split's output slot
    if (ntiles == 0) {                       // nothing to attend to: weight zero in the merge
        for (int h = tid; h < HB; h += 256) if (h_base + h < ha) lse[so * ha + h_base + h] = -INFINITY;
        return;
    }
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
    if (tid == 0) {
        for (int s = 0; s < stages; s++) { mbar_init(&full[s]); freed[s] = 0; }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");   // seen by the TMA
    }
    // tile columns past the boxes (read by wgmma, never written by the TMA) are zeros
    for (int k = tid; k < stages * (NB - kbox) * TC * 8; k += 256) {
        int per = (NB - kbox) * TC * 8, st = k / per, c = kbox + k % per / (TC * 8);
        *(uint4 *)(Ks + st * TC * DKP + c * TC * 64 + k % (TC * 8) * 8) = make_uint4(0, 0, 0, 0);
    }
    // Q (zero rows past ha, zero columns past Dk), by every thread
    for (int r = tid >> 5; r < HB; r += 8)
        for (int c = lane; c < DQ / 8; c += 32) {
            int ok = h_base + r < ha && c < Dk / 8;
            cp_async16(Qs + swz(r, c * 8, HB), Q + ((size_t)b * ha + (ok ? h_base + r : 0)) * Dk + (ok ? c * 8 : 0), ok ? 16 : 0);
        }
    cp_commit();
    cp_wait_all();
    fence_async();
    __syncthreads();
    if (tid == 0)
        for (int i = 0; i < min(stages, ntiles); i++) load_tile(i);

    // Q's box QB as A operands of 4 k steps (accumulator layout, two bf16 a register), straight from
    // global memory: it leaves room for one more tile (HEADS) or the exchange buffer (SPLITK)
    const int qrow = MODE == ATT_HEADS ? 64 * wg : 0;        // this warpgroup's first row of Q
    uint32_t qr[4][4];
    if (QR) {
        #pragma unroll
        for (int k = 0; k < 4; k++)
            #pragma unroll
            for (int e = 0; e < 4; e++) {
                int h = h_base + qrow + warp * 16 + lane / 4 + 8 * (e & 1), col = QB * 64 + 16 * k + 8 * (e >> 1) + 2 * (lane & 3);
                bool use = (MODE == ATT_HEADS || wg == 1) && h < ha && col < Dk;
                qr[k][e] = use ? *(const uint32_t *)(Q + ((size_t)b * ha + h) * Dk + col) : 0u;
            }
    }

    // S(i) = Q K^T over this warpgroup's columns, issued (it completes at the next wgmma_wait)
    const uint64_t dq = wg_desc(Qs + qrow * 64, 16), dk = wg_desc(Ks, 16), dv = wg_desc(Ks, TC * 128);
    auto issue_S = [&](float *d, int i) {
        int s = i % stages;
        mbar_wait(&full[s], (i / stages) & 1);
        const uint64_t kb = dk + s * TC * DKP / 8;           // descriptors advance in units of 16 bytes
        keep<32>(d);
        if (MODE != ATT_SPLITK) {
            wgmma_fence();
            #pragma unroll
            for (int k = 0; k < DQ / 16; k++) wgmma_ss(d, dq + (k >> 2) * HB * 8 + (k & 3) * 2, kb + (k >> 2) * TC * 8 + (k & 3) * 2, k > 0);
            if (QR)
                #pragma unroll
                for (int k = 0; k < 4; k++) wgmma_rs(d, qr[k], kb + QB * TC * 8 + k * 2, 1);
            wgmma_commit();
        } else if (wg == 0) {                                // columns 0..287
            wgmma_fence();
            #pragma unroll
            for (int k = 0; k < 18; k++) wgmma_ss(d, dq + (k >> 2) * HB * 8 + (k & 3) * 2, kb + (k >> 2) * TC * 8 + (k & 3) * 2, k > 0);
            wgmma_commit();
        } else {                                             // columns 288..575, the last 64 with Q from registers
            wgmma_fence();
            #pragma unroll
            for (int k = 18; k < 32; k++) wgmma_ss(d, dq + (k >> 2) * HB * 8 + (k & 3) * 2, kb + (k >> 2) * TC * 8 + (k & 3) * 2, k > 18);
            #pragma unroll
            for (int k = 0; k < 4; k++) wgmma_rs(d, qr[k], kb + QB * TC * 8 + k * 2, 1);
            wgmma_commit();
        }
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
    const int cb0 = MODE == ATT_SPLITK ? 4 * wg : 0;         // this warpgroup's first 64-column block of O
    auto zero_tail = [&](int i) {
        int valid = t_end - (t_begin + i * TC);
        if (valid >= TC) return;
        bf16 *tile = Ks + (i % stages) * TC * DKP;
        for (int k = t; k < (TC - valid) * NJ * 8; k += 128) {
            int r = valid + k / (NJ * 8), c = (cb0 + k % (NJ * 8) / 8) * 64 + k % 8 * 8;
            *(uint4 *)(tile + swz(r, c, TC)) = make_uint4(0, 0, 0, 0);
        }
        fence_async();
        bar_sync(BAR_WG + wg, 128);
    };

    // LA: S(i+1) is issued before the softmax of tile i (HEADS, where the tensor cores are the limit and
    // two tiles can stay in shared memory); elsewhere a tile's S is issued when the tile comes up
    constexpr bool LA = MODE == ATT_HEADS;
    float o[NJ][32], m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0, 0}, s_cur[32], s_nxt[32];
    #pragma unroll
    for (int j = 0; j < NJ; j++)
        #pragma unroll
        for (int k = 0; k < 32; k++) o[j][k] = 0;
    if (LA && first < ntiles) issue_S(s_cur, first);
    for (int i = first; i < ntiles; i += step) {
        const int t0 = t_begin + i * TC, s = i % stages;
        if (!LA) issue_S(s_cur, i);
        wgmma_wait();                                        // S(i)
        keep<32>(s_cur);
        if (LA && i + step < ntiles) issue_S(s_nxt, i + step);   // runs on the tensor cores during the softmax
        uint32_t pa[TC / 16][4];                             // P as the A operand of P V: 16 tokens per k step
        float alpha[2];                                      // rows lane/4 and lane/4 + 8 of this warp's 16
        if (MODE == ATT_SPLITK && wg == 1) {                 // hand S to warpgroup 0, take P back
            #pragma unroll
            for (int k = 0; k < 32; k++) X[k * 128 + t] = s_cur[k];
            bar_arrive(BAR_SREADY, 256);
            bar_sync(BAR_PREADY, 256);
            #pragma unroll
            for (int k = 0; k < TC / 4; k++) pa[k >> 2][k & 3] = __float_as_uint(X[k * 128 + t]);
            alpha[0] = X[(TC / 4) * 128 + t]; alpha[1] = X[(TC / 4 + 1) * 128 + t];
        } else {
            if (MODE == ATT_SPLITK) {
                bar_sync(BAR_SREADY, 256);
                #pragma unroll
                for (int k = 0; k < 32; k++) s_cur[k] += X[k * 128 + t];
            }
            // online softmax of this tile's scores (log2 units)
            mask_tail<0, 32>(s_cur, t0, t_end, lane);
            float mx[2];
            row_max<0, 32>(s_cur, mx);
            new_max(mx, m_run, alpha, scale_log2);
            exp_rows<0, 32>(s_cur, m_run, l_run, alpha, scale_log2);
            pack_p<0, 32>(s_cur, pa);
            if (MODE == ATT_SPLITK) {               // the same thread of warpgroup 1 owns the same rows
                #pragma unroll
                for (int k = 0; k < TC / 4; k++) X[k * 128 + t] = __uint_as_float(pa[k >> 2][k & 3]);
                X[(TC / 4) * 128 + t] = alpha[0]; X[(TC / 4 + 1) * 128 + t] = alpha[1];
                bar_arrive(BAR_PREADY, 256);
            }
        }
        // O = O * alpha + P V over this warpgroup's column blocks (the rescale is skipped when no row of
        // the warp has a new maximum)
        if (__any_sync(0xffffffff, alpha[0] != 1.0f || alpha[1] != 1.0f))
            #pragma unroll
            for (int j = 0; j < NJ; j++)
                #pragma unroll
                for (int k = 0; k < 32; k++) o[j][k] *= alpha[(k >> 1) & 1];
        zero_tail(i);
        #pragma unroll
        for (int j = 0; j < NJ; j++) keep<32>(o[j]);
        wgmma_fence();
        const uint64_t vb = dv + s * TC * DKP / 8;
        #pragma unroll
        for (int k = 0; k < TC / 16; k++) wgmma_pv<NJ>(&o[0][0], pa[k], vb + cb0 * TC * 8 + k * 128);
        wgmma_commit();
        wgmma_wait();                                        // (and S(i+1))
        #pragma unroll
        for (int j = 0; j < NJ; j++) keep<32>(o[j]);
        release(i);
        if (LA)
            #pragma unroll
            for (int k = 0; k < 32; k++) s_cur[k] = s_nxt[k];
    }
    wgmma_wait();                                            // (nothing is in flight; the compiler cannot tell)

    // the row sums of this thread's rows, over the quad
    #pragma unroll
    for (int r = 0; r < 2; r++) {
        l_run[r] += __shfl_xor_sync(0xffffffff, l_run[r], 1);
        l_run[r] += __shfl_xor_sync(0xffffffff, l_run[r], 2);
    }
    if (MODE == ATT_SPLITK) {                   // warpgroup 1 takes m and l of warpgroup 0
        if (wg == 0)
            for (int r = 0; r < 2; r++) { Xm[r * 128 + t] = m_run[r]; Xm[(2 + r) * 128 + t] = l_run[r]; }
        bar_sync(BAR_END, 256);
        if (wg == 1)
            for (int r = 0; r < 2; r++) { m_run[r] = Xm[r * 128 + t]; l_run[r] = Xm[(2 + r) * 128 + t]; }
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
        float inv = 1.0f / l_run[r], *out = opart + (so * ha + h) * dcs;
        #pragma unroll
        for (int j = 0; j < NJ; j++)
            #pragma unroll
            for (int q = 0; q < 8; q++) {
                int col = (cb0 + j) * 64 + q * 8 + (lane & 3) * 2;
                if (col < dcs) *(float2 *)(out + col) = make_float2(o[j][4 * q + 2 * r] * inv, o[j][4 * q + 2 * r + 1] * inv);
            }
        if ((MODE != ATT_SPLITK || wg == 0) && (lane & 3) == 0) lse[so * ha + h] = m_run[r] + log2f(l_run[r]);
    }
}

// Combines the splits of each (sequence, head): O = sum_s 2^(lse_s - M) O_s / sum_s 2^(lse_s - M). A block
// takes 8 heads of a sequence, a warp one head; the splits' weights are computed once, in shared memory.
__global__ void attn_merge_kernel(const float *opart, const float *lse, bf16 *O, int ha, int dcs, int nsplit) {
    extern __shared__ float wsplit[];                   // [MERGE_HEADS][nsplit]
    int b = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, h = blockIdx.y * MERGE_HEADS + warp;
    float *w = wsplit + warp * nsplit;
    if (h >= ha) return;
    float M = -INFINITY, den = 0;
    for (int s = lane; s < nsplit; s += 32) M = fmaxf(M, lse[((size_t)b * nsplit + s) * ha + h]);
    for (int o = 16; o; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffff, M, o));
    for (int s = lane; s < nsplit; s += 32) {
        float l = lse[((size_t)b * nsplit + s) * ha + h];
        w[s] = l == -INFINITY ? 0.0f : exp2f(l - M);   // a split with nothing cached weighs 0
        den += w[s];
    }
    for (int o = 16; o; o >>= 1) den += __shfl_xor_sync(0xffffffff, den, o);
    __syncwarp();
    for (int c = lane; c < dcs; c += 32) {
        float num = 0;
        for (int s = 0; s < nsplit; s++) num += w[s] * opart[(((size_t)b * nsplit + s) * ha + h) * dcs + c];
        O[((size_t)b * ha + h) * dcs + c] = __float2bfloat16(den > 0 ? num / den : 0.0f);   // 0: nothing cached
    }
}

static AttnShape attention_shape(int ha, int dcs, int Dk) {
    AttnShape a;
    if (dcs > 512 || dcs % 8 || Dk % 8 || Dk - dcs > 64)
        die("decode attention: no kernel for a %d-wide latent slice with a %d-wide rope key (at most 512 and 64, multiples of 8)", dcs, Dk - dcs);
    if (dcs > 256) { a.mode = ATT_SPLITK; a.NJ = 4; a.NB = 9; a.HB = 64; a.DQ = 512; }
    else {
        a.NJ = dcs <= 64 ? 1 : dcs <= 128 ? 2 : 4; a.NB = (dcs + 63) / 64 + 1; a.mode = ha > 64 ? ATT_HEADS : ATT_STREAM;
        a.HB = ha > 64 ? 128 : 64; a.DQ = (a.mode == ATT_HEADS ? a.NB - 1 : a.NB) * 64;   // (as the kernel's QB, QR)
    }
    a.head_tiles = (ha + a.HB - 1) / a.HB;
    // shared memory: Q, (SPLITK) the hand-over of S and P and the final m and l, then per stage a tile,
    // an mbarrier and a counter
    size_t fixed = (size_t)a.HB * a.DQ * 2 + (a.mode == ATT_SPLITK ? (32 * 128 + 512) * 4 : 0);
    a.tile_bytes = (size_t)TC * a.NB * 64 * 2;
    a.stages = (int)std::min<size_t>(8, (SMEM_BLOCK - fixed) / (a.tile_bytes + 16));
    if (a.stages < 2) die("decode attention: a %d-wide cached token does not fit the kernel's shared memory", Dk);
    a.smem = fixed + a.stages * (a.tile_bytes + 16);
    a.k = NULL;
#define K_(md, nj, nb) if (a.mode == md && a.NJ == nj && a.NB == nb) a.k = decode_attention_kernel<md, nj, nb>;
    K_(ATT_HEADS, 1, 2) K_(ATT_HEADS, 2, 3) K_(ATT_HEADS, 4, 4) K_(ATT_HEADS, 4, 5)
    K_(ATT_STREAM, 1, 2) K_(ATT_STREAM, 2, 3) K_(ATT_STREAM, 4, 4) K_(ATT_STREAM, 4, 5) K_(ATT_SPLITK, 4, 9)
#undef K_
    return a;
}

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
        double cost = (double)((blocks + sms - 1) / sms) * (per + 2) * tile + (double)rows * used * ha * dcs * 8 / sms;
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

// ----------------------------------------------------------------------------
// the grouped expert product (MoE): mma.sync on ldmatrix fragments (described with the MoE section)

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
    constexpr int BK = MOE_BK, ST = MOE_ST, MI = BM / 64, NB = BN / 8, FB = UP ? BM / 2 : BM;
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
