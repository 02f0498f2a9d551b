// tpla.cu: the GPU engine. One process drives K GPUs: one host thread, one stream and one cuBLAS
// handle per GPU, one NCCL communicator. The same code runs MLA tensor parallelism (g = 1: heads split,
// the whole latent cached on every GPU), TPLA (g latent shards: every GPU of shard i caches the
// slice S_i of the latent plus the rope key, and attends with the heads of its group on that slice) and
// DCP (K token shards: GPU r caches the whole latent and rope key of the tokens t with t mod K = r, and
// attends with every head over them): a rank slices either the latent or the tokens.
// The math is in the README ("The math"); run.c holds the CPU reference every result is checked against.
// Top-down: what a rank holds (its part and its pieces of the weights), the hand-written kernels of cuda/,
// the layer step (attention, then the FFN), the forward pass, and the API: prefill and decode, building,
// the attention kernel alone (for the tests). The bench (-m bench) is in cuda/bench.cuh.
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
#define LIB_RESERVE ((size_t)2 << 30)   // GPU memory left for the libraries' own buffers (NCCL, cuBLAS)
#define BLAS_WS ((size_t)32 << 20)       // cuBLAS' fixed workspace, so that a decode step can be captured in a graph
// What a rank whose arena holds `used` bytes needs free on its GPU: the one rule that the fit check and
// the bench's batch search share, so that the largest batch the search finds always fits.
static size_t device_need(size_t used) { return used + (1 << 20) + BLAS_WS + LIB_RESERVE; }

// ----------------------------------------------------------------------------
// placement: what rank r of K holds (README "g shards on K GPUs, and where W_UQ and W_O live", and
// "TPLA and context parallelism")
//   TPLA, g shards, K GPUs, groups of m = K/g: rank r has latent slice i = r / m (dcs = dc/g wide) and
//   attends with the heads of its group slot j = r % m: ha = H/m heads starting at h0 = j*ha, over every
//   token. g = 1 is MLA-TP.
//   DCP, K token shards (Scheme.g = K): rank r has the whole latent (dcs = dc, slice 0) of the tokens t
//   with t mod K = r (tok = r, ntok = K), and attends with every head (m = 1), as TPLA does at g = K.
//   The K/m ranks of the same group slot j are "peers" (TPLA: every slice i; DCP: every token shard).
//   W_UQ and W_O: with the replicated placement the rank holds them for its ha heads; with the split
//   placement (and more than one peer) only for hq = ha/(K/m) of them, and exchanges q and v with its
//   peers: all-gather q, reduce-scatter v. MLA-TP is the same either way.

typedef struct {
    int g, m, shard, j; // latent slices g, ranks a group m (the heads split over them); this rank's slice and slot
    int ntok, tok;      // token shards: this rank caches the tokens t with t mod ntok = tok (MLA, TPLA: 1, 0)
    int dcs, Dk;        // latent slice width; cached values per token = dcs + dr
    int ha, h0;         // attended heads
    int peer;           // this rank's index among the K/m ranks of its group slot j (TPLA: shard; DCP: tok)
    int hq, hq0;        // heads whose q and W_O this rank holds
    int peers;          // K/m when q and v are exchanged, else 1
    int v0, nv;         // vocabulary rows of lm_head
} Part;

static Part make_part(const Config *c, const Scheme *s, int K, int r) {
    Part p;
    p.g = s->dcp ? 1 : s->g; p.ntok = s->dcp ? K : 1;
    p.m = K / (p.g * p.ntok); p.j = r % p.m; p.peer = r / p.m;
    p.shard = s->dcp ? 0 : p.peer; p.tok = s->dcp ? p.peer : 0;
    p.dcs = c->dc / p.g; p.Dk = p.dcs + c->dr;
    p.ha = c->n_heads / p.m; p.h0 = p.j * p.ha;
    p.peers = s->split && K / p.m > 1 ? K / p.m : 1;
    p.hq = p.ha / p.peers; p.hq0 = p.h0 + (p.peers > 1 ? p.peer * p.hq : 0);
    int vs = (c->vocab + K - 1) / K;
    p.v0 = std::min(r * vs, c->vocab); p.nv = std::min(vs, c->vocab - p.v0);
    return p;
}

// The tokens among positions [0, len) that the rank caches: those at t mod ntok = tok (all of them when ntok = 1).
static int own_tokens(const Part *p, int len) { return len > p->tok ? (len - p->tok + p->ntok - 1) / p->ntok : 0; }

// ----------------------------------------------------------------------------
// weights of one rank, bf16 unless noted. Every FFN matrix is split over the K GPUs by its intermediate
// dimension: the dense FFN (fk = inter/K), the shared experts side by side as one FFN (fk = n_shared *
// moe_inter/K: SwiGLU acts elementwise, so shared experts summed are one wider FFN), each routed expert
// (ik = moe_inter/K).

typedef struct {
    float *attn_norm, *q_norm, *ffn_norm;   // f32
    bf16 *wa;      // (q_lora+dc+dr, D): W_DQ rows then W_DKV rows (W_DKV alone without a q LoRA)   replicated
    bf16 *wq;      // (hq*(dn+dr), q_lora or D)           split by head
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
    void *blas_ws;           // its fixed workspace (BLAS_WS bytes)
    ncclComm_t world, peer;
    char *arena; size_t used, cap, wbytes;   // wbytes: the weights at the start of the arena
    LayerW *lw;
    bf16 *embed, *lm_head; float *norm, *inv_freq;
    int cache_len;           // positions of a sequence in the cache: max_len, or DCP's own ceil(max_len / ntok)
    bf16 *cache;             // (L, B, cache_len, Dk); DCP: the token at position t at row t / ntok
    CUtensorMap cmap;        // the cache, for the decode kernel's TMA
    // activations of up to `rows` token rows (decode: row b is sequence b; prefill: a chunk of one sequence)
    int *tok, *rpos, *rseq;  // (rows): each row's token, position and sequence
    int *lens;               // (B): tokens cached per sequence, this step's included
    float *x;                // (rows, D): the residual stream
    float *y;                // (rows, D): the last block's output, this rank's part until the all-reduce sums it
    bf16 *xb; float *xn;     // (rows, D): rmsnorm(x) times the norm's weight; xn: the same in f32 (the router's input)
    float *a;                // (rows, q_lora+dc+dr): W_A xb = [W_DQ xb | W_DKV xb], the down projections of xb
    bf16 *qlatb;             // (rows, q_lora): the rmsnorm of W_DQ xb (the q LoRA's latent)
    bf16 *q;                 // (rows, hq, dn+dr): q of this rank's hq heads (split placement: before the all-gather)
    bf16 *qall;              // (peers, rows, hq, dn+dr): q of the ha attended heads, a chunk per peer
    bf16 *Q;                 // (rows, ha, Dk): the absorbed queries [W_UK^h[:, S_i]^T q_nope_h | rope(q_pe_h)]
    bf16 *O;                 // (rows, ha, dcs): o_h, attention over the cached slice S_i
    float *opart, *lse;      // (B, nsplit_max, ha, dcs), (B, nsplit_max, ha): decode attention per split, O/l and m + log2 l
    float *lse_r;            // DCP (ntok, rows, ha): lse_h^r of every token shard r, for each row and head (log2 units);
                             // this rank's is chunk tok, the others come by the all-gather
    float *S; bf16 *P;       // (ha, rows, T): a prefill chunk's scores over the T cached tokens it sees (T <= cache_len), softmax
    bf16 *v;                 // (peers, rows, hq, dv): v_h = W_UV^h[:, S_i] o_h, a chunk per peer (split placement)
    bf16 *vown;              // (rows, hq, dv): v of this rank's hq heads, summed over the shards (W_O's input)
    float *router;           // (rows, E): the router's logits
    float *h13; bf16 *h;     // (rows, 2*fk): W1 x then W3 x; h (rows, fk): SwiGLU (dense FFN or shared experts)
    float *logits;           // (logit rows, nv): this rank's slice of the vocabulary
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
// a rank's pieces of the weights: of each tensor of the table in tpla.h (TPLA_TENSORS), the piece its row's
// split gives the rank (rank_piece), held in the field the row names (rank_weight)

enum { SPLIT_NONE, SPLIT_REPLICATED, SPLIT_DQ_ROWS, SPLIT_DKV_ROWS, SPLIT_HEAD_ROWS, SPLIT_HEAD_SLICE, SPLIT_HEAD_COLUMNS,
       SPLIT_VOCAB_ROWS, SPLIT_ROUTER, SPLIT_W1_ROWS, SPLIT_W3_ROWS, SPLIT_W2_COLUMNS };   // from SPLIT_ROUTER on: the FFN's
#define ON_GPU(holder, field, split) SPLIT_##split
#define HOST_ONLY SPLIT_NONE
#define SPLIT_OF(kind, where, field, f32, n0, n1, n2, has, gpu) gpu,
static const int gpu_split[T_KINDS] = {TPLA_TENSORS(SPLIT_OF)};
#undef SPLIT_OF
#undef ON_GPU
#undef HOST_ONLY

// The field of rank R (R's own, or its layer's: L) that holds its piece of tensor t; set: point it there first.
static void *rank_weight(Rank *R, const Tensor *t, void *set) {
    LayerW *L = t->layer >= 0 ? &R->lw[t->layer] : NULL;
#define ON_GPU(holder, field, split) { if (set) holder->field = (decltype(holder->field))set; return holder->field; }
#define HOST_ONLY return NULL;
#define FIELD_OF(k, where, field, f32, n0, n1, n2, has, gpu) case k: gpu
    switch (t->kind) { TPLA_TENSORS(FIELD_OF) }
#undef FIELD_OF
#undef ON_GPU
#undef HOST_ONLY
    return NULL;
}

// The tensors a rank holds a piece of, in the checkpoint's order: those the GPU engine uses, the FFN's
// only with the FFN (the bench may leave it out).
static std::vector<Tensor> rank_tensors(const GPU *G) {
    std::vector<Tensor> all(tensor_layout(&G->c, NULL, NULL)), mine;
    tensor_layout(&G->c, all.data(), NULL);
    for (const Tensor &t : all)
        if (gpu_split[t.kind] != SPLIT_NONE && (G->ffn || gpu_split[t.kind] < SPLIT_ROUTER)) mine.push_back(t);
    return mine;
}

// The FFN's features come in blocks of f = ffn_width: moe_inter in a MoE layer (an expert; the shared
// experts are n_shared blocks side by side), inter in a dense one.
static int ffn_width(const Config *c, int l) { return layer_is_moe(c, l) ? c->moe_inter : c->inter; }

// The elements of rank R's piece of tensor t, by the tensor's split:
//   REPLICATED, ROUTER  all of it (the router only with the FFN)
//   DQ_ROWS, DKV_ROWS   W_DQ (q_lora, D) and W_DKV (dc+dr, D), all of both, stacked as one matrix wa (W_DKV's
//                       rows after W_DQ's, in W_DQ's piece; alone without a q LoRA): one product for both
//   HEAD_ROWS           W_UQ (H*(dn+dr), q_lora or D): the rows of heads hq0 .. hq0+hq
//   HEAD_SLICE          W_UKV (H, dn+dv, dc): heads h0 .. h0+ha, the columns of latent slice S_i
//   HEAD_COLUMNS        W_O (D, H*dv): the columns of heads hq0 .. hq0+hq
//   VOCAB_ROWS          lm_head (vocab, D): rows v0 .. v0+nv
//   W1_ROWS, W3_ROWS, W2_COLUMNS: the FFN, split by its intermediate dimension. A tensor is n0 matrices
//     (the routed experts, else 1) of blocks of f features (ffn_width); the rank holds features
//     [r f/K, (r+1) f/K) of every block. Each matrix's W1 rows, then its W3 rows, make w13 (2*fk, D) or an
//     expert's (2*ik, D) of ew13 (W3's rows count in W1's piece); the W2 columns side by side make w2
//     (D, fk) or ew2 (D, E*ik).
static size_t rank_piece(const GPU *G, const Rank *R, const Tensor *t) {
    const Part *p = &R->p;
    size_t all = t->n0 * t->n1 * t->n2, H = G->c.n_heads;
    switch (gpu_split[t->kind]) {
    case SPLIT_HEAD_ROWS: case SPLIT_HEAD_COLUMNS: return all / H * p->hq;
    case SPLIT_HEAD_SLICE: return (size_t)p->ha * t->n1 * p->dcs;
    case SPLIT_VOCAB_ROWS: return (size_t)p->nv * t->n2;
    case SPLIT_W1_ROWS: return 2 * all / G->K;
    case SPLIT_W3_ROWS: return 0;
    case SPLIT_DQ_ROWS: return (size_t)(G->c.q_lora + G->c.dc + G->c.dr) * t->n2;
    case SPLIT_DKV_ROWS: return G->c.q_lora ? 0 : all;
    case SPLIT_W2_COLUMNS: return all / G->K;
    default: return all;
    }
}

// Whether tensor t's rows are in the piece of the tensor before it (W3's in W1's, W_DKV's in W_DQ's).
static int in_piece_before(const GPU *G, const Tensor *t) {
    return gpu_split[t->kind] == SPLIT_W3_ROWS || (gpu_split[t->kind] == SPLIT_DKV_ROWS && G->c.q_lora);
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

// Copies rank R's piece of tensor t from src, the host's float32 tensor, to dst (matrices are bf16).
static void put_piece(GPU *G, Rank *R, const Tensor *t, const float *src, void *dst) {
    const Part *p = &R->p;
    size_t n1 = t->n1, n2 = t->n2, H = G->c.n_heads, D = G->c.dim, f = ffn_width(&G->c, t->layer);
    size_t w = f / G->K, f0 = (size_t)R->r * w, blocks;   // the FFN: w features of each block from f0
    switch (gpu_split[t->kind]) {
    case SPLIT_HEAD_ROWS: put(dst, src + p->hq0 * (n1 / H) * n2, p->hq * (n1 / H), n2, n2, t->f32); break;
    case SPLIT_HEAD_SLICE:
        for (int h = 0; h < p->ha; h++)
            put((bf16 *)dst + h * n1 * p->dcs, src + (p->h0 + h) * n1 * n2 + p->shard * p->dcs, n1, p->dcs, n2, t->f32);
        break;
    case SPLIT_HEAD_COLUMNS: put(dst, src + p->hq0 * (n2 / H), n1, p->hq * (n2 / H), n2, t->f32); break;
    case SPLIT_VOCAB_ROWS: put(dst, src + p->v0 * n2, p->nv, n2, n2, t->f32); break;
    case SPLIT_DKV_ROWS: put((bf16 *)dst + (size_t)G->c.q_lora * n2, src, n1, n2, n2, 0); break;
    case SPLIT_W1_ROWS: case SPLIT_W3_ROWS:   // matrix a, block k: rows ((2a + 1 for W3) blocks + k) w of the piece
        blocks = n1 / f;
        for (int64_t a = 0; a < t->n0; a++)
            for (size_t k = 0; k < blocks; k++)
                put((bf16 *)dst + ((2 * a + (gpu_split[t->kind] == SPLIT_W3_ROWS)) * blocks + k) * w * D,
                    src + (a * n1 + k * f + f0) * D, w, D, D, 0);
        break;
    case SPLIT_W2_COLUMNS: {   // matrix a (D, blocks*f), block k: columns (a blocks + k) w of the piece (D, n0*blocks*w)
        blocks = n2 / f;
        size_t cols = t->n0 * blocks * w;
        std::vector<float> cat(D * cols);
        for (int64_t a = 0; a < t->n0; a++)
            for (size_t k = 0; k < blocks; k++)
                for (size_t d = 0; d < D; d++) memcpy(&cat[d * cols + (a * blocks + k) * w], src + (a * D + d) * n2 + k * f + f0, w * 4);
        put(dst, cat.data(), D, cols, cols, 0);
        break;
    }
    default: put(dst, src, t->n0 * n1, n2, n2, t->f32);
    }
}

// ----------------------------------------------------------------------------
// the hand-written kernels, each whole with its shape and launcher: the decode attention kernel, and the
// routed experts of MoE
#include "cuda/attention.cuh"
#include "cuda/moe.cuh"

// ----------------------------------------------------------------------------
// what the layer step shares: the residual add and rmsnorm, cuBLAS, the collectives

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

// x += y (y may be NULL); out = rmsnorm(x) * w as bf16, and as f32 into outf if given; x's rows are ldx
// apart, the others' D. One block a row, of a thread for every 8 values (up to 1024): a decode step
// has few rows, and each row's loads go out at once.
__global__ void add_rmsnorm_kernel(float *x, int ldx, const float *y, const float *w, bf16 *out, float *outf, int D, float eps) {
    float *xr = x + (size_t)blockIdx.x * ldx;
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
// (x's rows D apart unless ldx says otherwise)
static void add_rmsnorm(Rank *R, float *x, const float *y, const float *w, bf16 *out, float *outf, int rows, int D, float eps,
                        int ldx = 0) {
    int threads = std::min(1024, (D / 8 + 31) / 32 * 32);
    add_rmsnorm_kernel<<<rows, std::max(32, threads), 0, R->st>>>(x, ldx ? ldx : D, y, w, out, outf, D, eps);
    LAUNCH_CHECK();
}

// Y (n, out) = X (n, in) W^T with W (out, in) row-major bf16, f32 accumulate, Y as yt (cuBLAS is column-major:
// Y^T = W X^T)
static void gemm(Rank *R, const bf16 *X, const void *W, void *Y, cudaDataType yt, int n, int in, int out) {
    float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmEx(R->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &alpha, W, CUDA_R_16BF, in, X, CUDA_R_16BF, in,
                              &beta, Y, yt, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// One row-major matrix per head in a buffer: head 0's at p, its rows ld elements apart, the heads stride apart.
typedef struct { const void *p; int ld; long long stride; } PerHead;

// Y_h (rows, m) = X_h (rows, k) W_h, or X_h W_h^T if wt (W_h (m, k), as a projection's), for `heads` heads
// at once: bf16 in, f32 accumulate, Y as yt. (cuBLAS is column-major: it computes Y_h^T = op(W_h) X_h^T.)
static void per_head(Rank *R, int heads, int rows, int k, int m, PerHead X, PerHead W, int wt, PerHead Y, cudaDataType yt) {
    float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(R->blas, wt ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, m, rows, k, &alpha, W.p, CUDA_R_16BF,
                                            W.ld, W.stride, X.p, CUDA_R_16BF, X.ld, X.stride, &beta, (void *)Y.p, yt, Y.ld, Y.stride,
                                            heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// the collectives (NCCL, on the rank's stream); the rank bench leaves them out

static void all_reduce(GPU *G, Rank *R, float *x, size_t n, ncclComm_t comm) {
    if (G->nrank > 1) NCCL_CHECK(ncclAllReduce(x, x, n, ncclFloat, ncclSum, comm, R->st));
}
static void all_gather(GPU *G, Rank *R, const void *x, void *out, size_t n, ncclDataType_t type, ncclComm_t comm) {
    if (G->nrank > 1) NCCL_CHECK(ncclAllGather(x, out, n, type, comm, R->st));
}
static void reduce_scatter(GPU *G, Rank *R, const bf16 *x, bf16 *out, size_t n, ncclComm_t comm) {
    if (G->nrank > 1) NCCL_CHECK(ncclReduceScatter(x, out, n, ncclBfloat16, ncclSum, comm, R->st));
}

// ----------------------------------------------------------------------------
// the attention step of one rank: its kernels and products, each with its launcher, then attention_rank

// One launch for the new tokens' rope work, a row (token) per blockIdx.x, thread t on rope pair t mod dr/2:
// - blockIdx.y = 0 caches the row's new token from kv = W_DKV xb (rows ldkv apart): its latent slice S_i,
//   normalised by the rms of the whole latent (exact) or of the slice times the PCA correction (TPLA -r
//   local), and its roped key. DCP: only the rows whose position t has t mod ntok = tok, each at row
//   t / ntok of its sequence.
// - blockIdx.y = 1.. ropes q_pe of ROPE_HEADS attended heads each into Q (rows, ha, Dk) at [dcs, dcs+dr),
//   thread t in heads t / (dr/2), + blockDim / (dr/2), ... q comes in `peers` chunks (peers, rows, hq,
//   dn+dr) (one chunk when q was computed here).
#define ROPE_HEADS 32
__global__ void kv_rope_kernel(const float *kv, int ldkv, bf16 *cache, const bf16 *q, bf16 *Q, const int *rseq, const int *rpos,
                               int rows, int cache_len, int ntok, int tok, int ha, int hq, int dn, int dc, int dr, int shard, int dcs,
                               int local, float fix, float eps, const float *inv_freq, float attn, int interleave) {
    int row = blockIdx.x, pos = rpos[row], half = dr / 2, i = threadIdx.x % half, i0, i1;
    rope_index(i, dr, interleave, &i0, &i1);
    float a = (float)pos * inv_freq[i];
    if (blockIdx.y > 0) {   // the queries
        int per = blockDim.x / half, h1 = min(ha, (int)blockIdx.y * ROPE_HEADS);
        if (threadIdx.x >= per * half) return;
        for (int h = (blockIdx.y - 1) * ROPE_HEADS + threadIdx.x / half; h < h1; h += per) {
            const bf16 *src = q + (((size_t)(h / hq) * rows + row) * hq + h % hq) * (dn + dr) + dn;
            bf16 *dst = Q + ((size_t)row * ha + h) * (dcs + dr) + dcs;
            float x0 = __bfloat162float(src[i0]), x1 = __bfloat162float(src[i1]);
            rope_rotate(&x0, &x1, a, attn);
            dst[i0] = __float2bfloat16(x0);
            dst[i1] = __float2bfloat16(x1);
        }
        return;
    }
    if (pos % ntok != tok) return;   // another rank's token (the whole block leaves)
    const float *k = kv + (size_t)row * ldkv;
    float ss_all = 0, ss_mine = 0;
    for (int j = threadIdx.x; j < dc; j += blockDim.x) {
        float v = k[j] * k[j];
        ss_all += v;
        if (j / dcs == shard) ss_mine += v;
    }
    ss_all = block_sum(ss_all); ss_mine = block_sum(ss_mine);
    float r = local ? latent_rms(ss_mine, dcs, fix, eps) : latent_rms(ss_all, dc, 1.0f, eps);
    bf16 *out = cache + ((size_t)rseq[row] * cache_len + pos / ntok) * (dcs + dr);
    for (int j = threadIdx.x; j < dcs; j += blockDim.x) out[j] = __float2bfloat16(k[shard * dcs + j] / r);
    if (threadIdx.x < half) {   // the key
        float x0 = k[dc + i0], x1 = k[dc + i1];
        rope_rotate(&x0, &x1, a, attn);
        out[dcs + i0] = __float2bfloat16(x0);
        out[dcs + i1] = __float2bfloat16(x1);
    }
}
static void kv_rope(GPU *G, Rank *R, int l, int rows, int local) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    bf16 *cache = R->cache + (size_t)l * G->B * R->cache_len * p->Dk;
    dim3 grid(rows, 1 + (p->ha + ROPE_HEADS - 1) / ROPE_HEADS);
    kv_rope_kernel<<<grid, 256, 0, R->st>>>(R->a + c->q_lora, c->q_lora + c->dc + c->dr, cache, R->qall, R->Q, R->rseq, R->rpos,
                                            rows, R->cache_len, p->ntok, p->tok, p->ha, p->hq, c->dn, c->dc, c->dr, p->shard, p->dcs, local,
                                            G->rms_fix ? G->rms_fix[l * p->g + p->shard] : 1.0f, c->eps, R->inv_freq,
                                            c->rope_attn, c->rope_interleave);
    LAUNCH_CHECK();
}

// a = W_A xb = [W_DQ xb | W_DKV xb] (one product for both down projections; W_DKV xb alone without a q
// LoRA), then q (rows, hq, dn + dr) = W_UQ RMSNorm(W_DQ xb) for the rank's hq heads (without a q LoRA:
// W_UQ xb); into q, or into qall when no peer sends its heads' (split placement gathers them after)
static void project_q(GPU *G, Rank *R, const LayerW *L, int rows) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    bf16 *q = p->peers > 1 ? R->q : R->qall;
    int D = c->dim, qd = c->dn + c->dr, na = c->q_lora + c->dc + c->dr;
    gemm(R, R->xb, L->wa, R->a, CUDA_R_32F, rows, D, na);
    if (c->q_lora) {
        add_rmsnorm(R, R->a, NULL, L->q_norm, R->qlatb, NULL, rows, c->q_lora, c->eps, na);
        gemm(R, R->qlatb, L->wq, q, CUDA_R_16BF, rows, c->q_lora, p->hq * qd);
    } else {
        gemm(R, R->xb, L->wq, q, CUDA_R_16BF, rows, D, p->hq * qd);
    }
}

// Q_h = [W_UK^h[:, S_i]^T q_nope_h | .] for the ha attended heads: per row, q_nope_h (dn) times the rank's
// W_UK^h[:, S_i] (dn, dcs; the first dn rows of head h in wkv_b), one batched product per chunk of hq heads
// (q comes in `peers` chunks, as kv_rope reads it).
static void absorb_q(GPU *G, Rank *R, const LayerW *L, int rows) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    int dn = c->dn, qd = c->dn + c->dr, wb = (dn + c->dv) * p->dcs, hq = p->hq;
    for (int k = 0; k < p->peers; k++) {   // chunk k: heads k hq ..
        PerHead q_nope = {R->qall + (size_t)k * rows * hq * qd, hq * qd, qd};
        PerHead w_uk = {L->wkv_b + (size_t)k * hq * wb, p->dcs, wb};
        PerHead Q = {R->Q + (size_t)k * hq * p->Dk, p->ha * p->Dk, p->Dk};
        per_head(R, hq, rows, dn, p->dcs, q_nope, w_uk, 0, Q, CUDA_R_16BF);
    }
}

// v_h = W_UV^h[:, S_i] o_h for the ha attended heads: per row, o_h (dcs) times the rank's W_UV^h[:, S_i]^T
// (W_UV^h[:, S_i]: dv x dcs, the last dv rows of head h in wkv_b). Chunk k of hq heads goes to v at
// k rows hq dv, for the reduce-scatter (split placement), else straight to vown.
static void up_v(GPU *G, Rank *R, const LayerW *L, int rows) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    int dn = c->dn, dv = c->dv, wb = (dn + dv) * p->dcs, hq = p->hq;
    bf16 *v = p->peers > 1 ? R->v : R->vown;
    for (int k = 0; k < p->peers; k++) {
        PerHead o = {R->O + (size_t)k * hq * p->dcs, p->ha * p->dcs, p->dcs};
        PerHead w_uv = {L->wkv_b + (size_t)k * hq * wb + (size_t)dn * p->dcs, p->dcs, wb};
        PerHead vk = {v + (size_t)k * rows * hq * dv, hq * dv, dv};
        per_head(R, hq, rows, p->dcs, dv, o, w_uv, 1, vk, CUDA_R_16BF);
    }
}

// Prefill: causal softmax over S (ha, rows, T) of one sequence whose chunk starts at p0 -> P bf16. Column c
// of S is the rank's c-th cached token, at position c ntok + tok (every token when ntok = 1); the row at
// position p0 + i sees those at positions <= p0 + i. lse (rows, ha), if given: log2 of the sum of exp(score)
// over them (DCP's lse_h^r), -inf (and P = 0) where the row sees none.
__global__ void prefill_softmax_kernel(const float *S, bf16 *P, float *lse, int rows, int T, int p0, int ntok, int tok, float scale) {
    const float *s = S + (size_t)blockIdx.x * T;
    bf16 *p = P + (size_t)blockIdx.x * T;
    int h = blockIdx.x / rows, row = blockIdx.x % rows, pos = p0 + row;
    int last = pos < tok ? -1 : (pos - tok) / ntok;   // the row's last visible column: it attends to [0, last]
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
    if (lse && threadIdx.x == 0) lse[(size_t)row * (gridDim.x / rows) + h] = last < 0 ? -INFINITY : (mx + logf(sum)) * LOG2E;
}
static void prefill_softmax(Rank *R, float *lse, int rows, int T, int p0, float scale) {
    prefill_softmax_kernel<<<R->p.ha * rows, 256, 0, R->st>>>(R->S, R->P, lse, rows, T, p0, R->p.ntok, R->p.tok, scale);
    LAUNCH_CHECK();
}

// Prefill attention of `rows` tokens p0.. of sequence seq, exact MLA: S_h = Q_h K^T over the T cached tokens
// of positions [0, p0 + rows) (the rope part counted on shard 0 only), summed over the g shards (an
// all-reduce over the peers), one causal softmax P_h, then O_h = P_h V, V the shard's slice of the same
// cached tokens. DCP: the T are the rank's own tokens, and its softmax over them gives lse_h^r too (into
// lse; DCP's combine follows in attention_rank). A rank with none of them yet has O = 0 and lse = -inf.
static void prefill_attention(GPU *G, Rank *R, const bf16 *cache, float *lse, int rows, int seq, int p0) {
    const Part *p = &R->p;
    int T = own_tokens(p, p0 + rows), Dk = p->Dk, dcs = p->dcs;
    if (T == 0) {   // (the softmax of no token only writes lse = -inf)
        CUDA_CHECK(cudaMemsetAsync(R->O, 0, (size_t)rows * p->ha * dcs * sizeof(bf16), R->st));
        prefill_softmax(R, lse, rows, 0, p0, G->c.softmax_scale);
        return;
    }
    const bf16 *kb = cache + (size_t)seq * R->cache_len * Dk;
    PerHead Q = {R->Q, p->ha * Dk, Dk}, K = {kb, Dk, 0}, S = {R->S, T, (long long)rows * T};   // K, V: every head's
    per_head(R, p->ha, rows, p->shard == 0 ? Dk : dcs, T, Q, K, 1, S, CUDA_R_32F);
    if (p->g > 1) all_reduce(G, R, R->S, (size_t)p->ha * rows * T, R->peer);
    prefill_softmax(R, lse, rows, T, p0, G->c.softmax_scale);
    PerHead P = {R->P, T, (long long)rows * T}, O = {R->O, p->ha * dcs, dcs};
    per_head(R, p->ha, rows, T, dcs, P, K, 0, O, CUDA_R_16BF);
}

// DCP's exact combine on rank tok of ntok (the math: attention_rank's comment): O (rows, ha, dcs) holds the
// rank's o_h^r, lse_r (ntok, rows, ha) every rank's lse_h^r (log2 units); o_h^r becomes w_h^r o_h^r, with
// w_h^r = 2^(lse_h^r - lse_h), lse_h = log2 sum_r 2^(lse_h^r). A rank at -inf (no token) weighs 0. A warp a head.
__global__ void dcp_combine_kernel(bf16 *O, const float *lse_r, int rows, int ha, int dcs, int ntok, int tok) {
    int row = blockIdx.x, h = blockIdx.y * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (h >= ha) return;
    size_t n = (size_t)rows * ha, i = (size_t)row * ha + h;
    float M = -INFINITY, den = 0;
    for (int r = 0; r < ntok; r++) M = fmaxf(M, lse_r[r * n + i]);
    for (int r = 0; r < ntok; r++) den += M == -INFINITY ? 0.0f : exp2f(lse_r[r * n + i] - M);
    float mine = lse_r[tok * n + i], w = mine == -INFINITY ? 0.0f : exp2f(mine - (M + log2f(den)));   // (mine finite: den >= 1)
    bf16 *o = O + i * dcs;
    for (int k = lane; k < dcs; k += 32) o[k] = __float2bfloat16(w * __bfloat162float(o[k]));
}
static void dcp_combine(bf16 *O, const float *lse_r, int rows, int ha, int dcs, int ntok, int tok, cudaStream_t st) {
    dcp_combine_kernel<<<dim3(rows, (ha + 7) / 8), 256, 0, st>>>(O, lse_r, rows, ha, dcs, ntok, tok);
    LAUNCH_CHECK();
}

// the attention block of layer l on one rank (README "The TPLA step" and "The DCP step";
// run.c's forward is the same step on the CPU). Decode, for each of the ha heads h this rank attends with,
// on its latent slice S_i (DCP: the whole latent) of its tokens T_r (TPLA: every t; DCP: the t with t mod K = r):
//   xb = rmsnorm(x + y)                              (y: the last block's output, added to the residual x)
//   [q_lat | c | k_pe] = [W_DQ; W_DKV] xb                           (one product; no q_lat without a q LoRA)
//   q = W_UQ rmsnorm(q_lat), or W_UQ xb      (split placement: this rank's hq heads, then all-gathered from its peers)
//   cache c[S_i] / rms and rope(k_pe)                 (kv_rope; rms: latent_rms; DCP: on rank t mod K)
//   Q_h = [W_UK^h[:, S_i]^T q_nope_h | rope(q_pe_h)]                          (the absorbed query)
//   o_h^r = softmax_{t in T_r}(scale Q_h . cache_t) . cache_t[S_i]           (decode_attention: its own softmax)
// DCP's exact combine: the softmax over T_r also gives lse_h^r = log sum_{t in T_r} exp(scale Q_h . cache_t)
// (the kernels keep it in log2 units); after one all-gather of every rank's (rows x ha floats each),
//   lse_h = log sum_r exp(lse_h^r),   w_h^r = exp(lse_h^r - lse_h),   o_h^r <- w_h^r o_h^r   (dcp_combine)
// and sum_r o_h^r = sum_t softmax_t(scale Q_h . cache_t) c_t is MLA's o_h exactly. The sum over r is left to
// the collectives below, since W_UV and W_O are linear: sum_r W_O W_UV^h w_h^r o_h^r = W_O W_UV^h o_h.
//   v_h = W_UV^h[:, S_i] o_h^r     (split placement: reduce-scattered by head over the peers, which sums them)
//   y = W_O v, then the one all-reduce over every rank: it sums the heads, the latent shards and the token shards.
// Prefill (rows = tokens p0.. of sequence seq) is exact MLA instead: the g shards add their partial
// scores (an all-reduce of S over the peers), take one softmax and multiply by their own slice; DCP's
// ranks take the softmax over their own tokens and combine as in decode.
// Inputs tok, rpos, rseq, lens (the rank's own counts) are on the device; max_cached: the most tokens a
// sequence has, over every rank.

static void attention_rank(GPU *G, Rank *R, const LayerW *L, int l, int rows, int prefill, int seq, int p0, int max_cached) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    int D = c->dim, qd = c->dn + c->dr, dv = c->dv, Dk = p->Dk;
    bf16 *cache = R->cache + (size_t)l * G->B * R->cache_len * Dk;
    add_rmsnorm(R, R->x, l ? R->y : NULL, L->attn_norm, R->xb, NULL, rows, D, c->eps);
    project_q(G, R, L, rows);
    if (p->peers > 1) all_gather(G, R, R->q, R->qall, (size_t)rows * p->hq * qd, ncclBfloat16, R->peer);
    kv_rope(G, R, l, rows, !prefill && !G->s.dcp && G->s.rms == RMS_LOCAL);   // the new token cached, Q_h = [. | rope(q_pe_h)]
    absorb_q(G, R, L, rows);   // Q_h = [W_UK^h[:, S_i]^T q_nope_h | .]
    float *lse = p->ntok > 1 ? R->lse_r + (size_t)p->tok * rows * p->ha : NULL;   // DCP: lse_h^r, this rank's chunk
    if (!prefill)
        decode_attention(R->Q, &R->cmap, l * G->B * R->cache_len, R->lens, R->opart, R->lse, R->O, lse, rows, p->ha, p->dcs, Dk,
                         R->cache_len, own_tokens(p, max_cached), c->softmax_scale, G->sms, R->st);
    else
        prefill_attention(G, R, cache, lse, rows, seq, p0);
    if (lse) {   // DCP: the all-gather (in place; world's K ranks are the token shards in order), then w_h^r o_h^r
        all_gather(G, R, lse, R->lse_r, (size_t)rows * p->ha, ncclFloat, R->world);
        dcp_combine(R->O, R->lse_r, rows, p->ha, p->dcs, p->ntok, p->tok, R->st);
    }
    up_v(G, R, L, rows);       // v_h = W_UV^h[:, S_i] o_h
    if (p->peers > 1) reduce_scatter(G, R, R->v, R->vown, (size_t)rows * p->hq * dv, R->peer);
    gemm(R, R->vown, L->wo, R->y, CUDA_R_32F, rows, p->hq * dv, D);
    all_reduce(G, R, R->y, (size_t)rows * D, R->world);   // the one all-reduce: heads, latent and token shards summed
}

// ----------------------------------------------------------------------------
// the FFN of layer l on one rank: x += y; y = FFN(rmsnorm(x)), with one all-reduce. Every matrix is split
// by its intermediate dimension, so each rank's y is a partial sum and the all-reduce completes it:
//   dense:  y = W2 (silu(W1 x) * (W3 x))                                      (cuBLAS)
//   MoE:    y = sum_{e in topk(x)} w_e W2_e (silu(W1_e x) * (W3_e x))        (routed: cuda/moe.cuh)
//             + W2_s (silu(W1_s x) * (W3_s x))                                 (shared experts as one FFN: cuBLAS)

// h (rows, f) = silu(W1 x) * (W3 x), from h13 (rows, 2f): W1 x then W3 x.
__global__ void swiglu_kernel(const float *h13, bf16 *h, int rows, int f) {
    size_t n = (size_t)rows * f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float *src = h13 + i / f * 2 * f;
        float a = src[i % f], b = src[f + i % f];
        h[i] = __float2bfloat16(a / (1.0f + expf(-a)) * b);
    }
}
static unsigned grid_for(size_t n) { return (unsigned)std::min<size_t>((n + 255) / 256, 8192); }
static void swiglu(Rank *R, int rows, int f) {
    swiglu_kernel<<<grid_for((size_t)rows * f), 256, 0, R->st>>>(R->h13, R->h, rows, f);
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

__global__ void embed_kernel(const int *tok, const bf16 *emb, float *x, int D) {
    const bf16 *e = emb + (size_t)tok[blockIdx.x] * D;
    for (int i = threadIdx.x; i < D; i += blockDim.x) x[(size_t)blockIdx.x * D + i] = __bfloat162float(e[i]);
}
static void embed(Rank *R, int rows, int D) {
    embed_kernel<<<rows, 256, 0, R->st>>>(R->tok, R->embed, R->x, D);
    LAUNCH_CHECK();
}

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

// ----------------------------------------------------------------------------
// prefill and decode: the host fills the row tables, every rank runs the same forward

typedef struct {
    const int *tok, *rpos, *rseq, *lens;   // lens: tokens of each sequence (on every rank together)
    int rows, prefill, seq, p0, max_cached, logit_rows, nlens;
    float *logits;      // host (logit_rows, vocab), or NULL
} Step;

static void step_rank(GPU *G, Rank *R, void *arg) {
    Step *s = (Step *)arg;
    cudaStream_t st = R->st;
    std::vector<int> lens(s->nlens);   // the rank's own: DCP's rank tok holds the tokens t mod ntok = tok
    for (int b = 0; b < s->nlens; b++) lens[b] = own_tokens(&R->p, s->lens[b]);
    CUDA_CHECK(cudaMemcpyAsync(R->tok, s->tok, s->rows * 4, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(R->rpos, s->rpos, s->rows * 4, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(R->rseq, s->rseq, s->rows * 4, cudaMemcpyHostToDevice, st));
    CUDA_CHECK(cudaMemcpyAsync(R->lens, lens.data(), s->nlens * 4, cudaMemcpyHostToDevice, st));
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
    for (int l = 0; l < c->n_layers; l++) {   // the FFN's widths on this rank
        LayerW *L = &R->lw[l];
        int moe = G->ffn && layer_is_moe(c, l);
        L->fk = !G->ffn ? 0 : moe ? c->n_shared * c->moe_inter / K : c->inter / K;
        L->ik = moe ? c->moe_inter / K : 0;
        fk = std::max(fk, L->fk); ik = std::max(ik, L->ik);
    }
    for (const Tensor &t : rank_tensors(G))   // the weights, in the checkpoint's order
        if (!in_piece_before(G, &t)) rank_weight(R, &t, take(R, rank_piece(G, R, &t) * (t.f32 ? 4 : 2)));
    R->wbytes = R->used;
    R->inv_freq = (float *)take(R, c->dr / 2 * 4);
    R->cache_len = (G->max_len + p->ntok - 1) / p->ntok;   // the most any rank holds of max_len positions (rank 0's)
    R->cache = (bf16 *)take(R, (size_t)c->n_layers * G->B * R->cache_len * p->Dk * 2);
    R->tok = (int *)take(R, rows * 4); R->rpos = (int *)take(R, rows * 4); R->rseq = (int *)take(R, rows * 4);
    R->lens = (int *)take(R, G->B * 4);
    int hid = std::max(c->q_lora, 1), E = ik ? c->n_experts : 0, tk = ik ? c->topk : 0;
    R->x = (float *)take(R, (size_t)rows * D * 4); R->y = (float *)take(R, (size_t)rows * D * 4);
    R->xn = (float *)take(R, (size_t)rows * D * 4); R->xb = (bf16 *)take(R, (size_t)rows * D * 2);
    R->a = (float *)take(R, (size_t)rows * (c->q_lora + c->dc + c->dr) * 4); R->qlatb = (bf16 *)take(R, (size_t)rows * hid * 2);
    R->q = (bf16 *)take(R, (size_t)rows * p->hq * qd * 2);
    R->qall = (bf16 *)take(R, (size_t)rows * p->ha * qd * 2);
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
    // decode attention partials, DCP's lse of every rank, and the prefill score matrix of one chunk
    AttnShape a = attention_shape(p->ha, p->dcs, p->Dk);
    R->nsplit_max = nsplit_cap(G->B, a.head_tiles, R->cache_len, G->sms);
    R->opart = (float *)take(R, (size_t)G->B * R->nsplit_max * p->ha * p->dcs * 4);
    R->lse = (float *)take(R, (size_t)G->B * R->nsplit_max * p->ha * 4);
    R->lse_r = (float *)take(R, (size_t)(p->ntok > 1 ? p->ntok : 0) * rows * p->ha * 4);
    size_t sc = (size_t)p->ha * G->chunk * R->cache_len;
    R->S = (float *)take(R, sc * 4); R->P = (bf16 *)take(R, sc * 2);
}

static void upload_rank(GPU *G, Rank *R, const Model *m) {
    for (const Tensor &t : rank_tensors(G)) put_piece(G, R, &t, *tensor_slot((Model *)m, t.kind, t.layer), rank_weight(R, &t, NULL));
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
template <class T> static void fill_random(T *w, size_t n, float scale, uint64_t seed, cudaStream_t st) {
    if (n) fill_random_kernel<<<grid_for(n), 256, 0, st>>>(w, n, scale, seed);
    LAUNCH_CHECK();
}
static void fill(float *w, size_t n, float v, cudaStream_t st) {
    if (n) fill_kernel<<<grid_for(n), 256, 0, st>>>(w, n, v);
    LAUNCH_CHECK();
}

// random weights for the bench: matrices uniform in +-1/sqrt(fan in) (the columns of the whole matrix), the
// embedding in +-1, norms 1; the router the same on every rank (as replicated weights are), so that the
// ranks route alike, and its bias 0
static void randomize_rank(GPU *G, Rank *R) {
    uint64_t seed = 1000 + R->r;
    for (const Tensor &t : rank_tensors(G)) {
        if (in_piece_before(G, &t)) continue;   // filled with the piece before
        void *w = rank_weight(R, &t, NULL);
        size_t n = rank_piece(G, R, &t);
        if (t.kind == T_GATE) fill_random((float *)w, n, 1.0f / sqrtf((float)t.n2), 77 + t.layer, R->st);
        else if (t.f32) fill((float *)w, n, t.kind == T_BIAS ? 0.0f : 1.0f, R->st);
        else fill_random((bf16 *)w, n, 1.0f / sqrtf(t.kind == T_EMBED ? 1.0f : (float)t.n2), seed++, R->st);
    }
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
    if ((R->p.g > 1 || R->p.peers > 1) && G->nrank > 1)   // the ranks of the same group slot j, in peer order
        NCCL_CHECK(ncclCommSplit(R->world, R->p.j, R->p.peer, &R->peer, NULL));
    CUDA_CHECK(cudaMalloc(&R->arena, R->cap));
    layout_rank(G, R);
    CUDA_CHECK(cudaMalloc(&R->blas_ws, BLAS_WS));
    CUBLAS_CHECK(cublasSetWorkspace(R->blas, R->blas_ws, BLAS_WS));
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
    R->cmap = cache_map(R->cache, (size_t)c->n_layers * G->B * R->cache_len, R->p.Dk);
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
    int have = gpu_count(), g = s->dcp ? 1 : s->g;   // g: latent slices (DCP: one, the whole latent)
    if (K < 1 || nrank > have) die("%d GPUs asked for, %d present", nrank, have);
    if (K > 64) die("at most 64 GPUs");
    if (s->dcp && s->g != K)
        die("DCP: %d token shards on %d GPUs; the GPU engine runs one token shard per GPU (-g %d), not a hybrid", s->g, K, K);
    if (g < 1 || K % g) die("TPLA: the GPU count %d must be a multiple of the shard count g = %d", K, g);
    if (c->dc % g || (c->dc / g) % 16) die("kv_lora_rank %d must split into g = %d slices of a multiple of 16", c->dc, g);
    if (c->dr % 16) die("qk_rope_head_dim %d: the GPU engine needs a multiple of 16", c->dr);
    int m_ = make_part(c, s, K, 0).m;   // the ranks the heads are split over (TPLA: K/g; DCP: 1, every head on each)
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
        R->r = r; R->dev = r; R->p = make_part(c, s, K, r);
        layout_rank(G, R);
        R->cap = R->used + (1 << 20);
        size_t free_b, total_b;
        CUDA_CHECK(cudaSetDevice(r));
        CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
        size_t need = device_need(R->used);
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
    CUDA_CHECK(cudaFree(R->blas_ws));
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
// the decode attention kernel alone, on host arrays (for the tests); ntok > 1: DCP's ntok token shards one
// after the other on one GPU, then its combine, as ntok ranks would do it

void gpu_attention(const uint16_t *Q, const uint16_t *cache, const int *lens, int B, int ha, int dcs, int dr, int max_len, int ntok,
                   float scale, float *O) {
    CUDA_CHECK(cudaSetDevice(0));
    int Dk = dcs + dr, cl = (max_len + ntok - 1) / ntok, sms;   // cl: positions of a shard, as a rank's cache_len
    CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    AttnShape a = attention_shape(ha, dcs, Dk);
    CUDA_CHECK(cudaFuncSetAttribute(a.k, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)a.smem));
    int ns = nsplit_cap(B, a.head_tiles, cl, sms);   // the most splits a shard's launch takes (as layout_rank sizes them)
    size_t no = (size_t)B * ha * dcs;
    bf16 *dQ, *dC, *dO;
    float *op, *lse, *lse_r;
    int *dl;
    CUDA_CHECK(cudaMalloc(&dQ, (size_t)B * ha * Dk * 2)); CUDA_CHECK(cudaMalloc(&dC, (size_t)B * cl * Dk * 2));
    CUDA_CHECK(cudaMalloc(&dO, ntok * no * 2)); CUDA_CHECK(cudaMalloc(&dl, B * 4));
    CUDA_CHECK(cudaMalloc(&op, (size_t)ns * no * 4)); CUDA_CHECK(cudaMalloc(&lse, (size_t)B * ns * ha * 4));
    CUDA_CHECK(cudaMalloc(&lse_r, (size_t)ntok * B * ha * 4));
    CUDA_CHECK(cudaMemcpy(dQ, Q, (size_t)B * ha * Dk * 2, cudaMemcpyHostToDevice));
    CUtensorMap map = cache_map(dC, (size_t)B * cl, Dk);
    std::vector<uint16_t> shard((size_t)B * cl * Dk), o(ntok * no);
    std::vector<int> own(B);
    for (int r = 0; r < ntok; r++) {   // shard r: the tokens t with t mod ntok = r, at row t / ntok, as kv_rope puts them
        Part p = {};
        p.ntok = ntok; p.tok = r;
        int mx = 0;
        for (int b = 0; b < B; b++) {
            for (int t = r; t < max_len; t += ntok)
                memcpy(&shard[((size_t)b * cl + t / ntok) * Dk], &cache[((size_t)b * max_len + t) * Dk], Dk * 2);
            own[b] = own_tokens(&p, lens[b]); mx = std::max(mx, own[b]);
        }
        CUDA_CHECK(cudaMemcpy(dC, shard.data(), shard.size() * 2, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(dl, own.data(), B * 4, cudaMemcpyHostToDevice));
        decode_attention(dQ, &map, 0, dl, op, lse, dO + r * no, ntok > 1 ? lse_r + (size_t)r * B * ha : NULL, B, ha, dcs, Dk, cl, mx,
                         scale, sms, 0);
    }
    for (int r = 0; ntok > 1 && r < ntok; r++) dcp_combine(dO + r * no, lse_r, B, ha, dcs, ntok, r, 0);
    CUDA_CHECK(cudaMemcpy(o.data(), dO, o.size() * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < no; i++) {   // sum_r w^r o^r (in the engine: the reduce-scatter of v, or the all-reduce)
        O[i] = 0;
        for (int r = 0; r < ntok; r++) { uint32_t u = (uint32_t)o[r * no + i] << 16; float f; memcpy(&f, &u, 4); O[i] += f; }
    }
    CUDA_CHECK(cudaFree(dQ)); CUDA_CHECK(cudaFree(dC)); CUDA_CHECK(cudaFree(dO)); CUDA_CHECK(cudaFree(dl));
    CUDA_CHECK(cudaFree(op)); CUDA_CHECK(cudaFree(lse)); CUDA_CHECK(cudaFree(lse_r));
}

// ----------------------------------------------------------------------------
// -m bench (README "Measured"), apart from the engine it times
#include "cuda/bench.cuh"
