// tpla.h: the model config, the checkpoint layout, the weights, the GPU engine's API, check macros.
// Shared by run.c (CPU reference engine and CLI), convert.c (HF -> tpla) and tpla.cu (GPU engine).
#ifndef TPLA_H
#define TPLA_H

#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// checkpoint file:
//   header (TPLA_HEADER bytes): uint32 magic, int32 version, Config, zero padding
//   tokenizer block (cfg.tok_bytes bytes, may be 0)
//   weights, starting at weights_offset(); every tensor 64-byte aligned, in tensor_layout() order.
//   Matrices are bf16 (uint16 holding the top half of a float32), vectors (norms, router) float32.

#define TPLA_MAGIC 0x414C5054u  // "TPLA" little-endian
#define TPLA_VERSION 2
#define TPLA_HEADER 512
enum { PRETOK_GPT2 = 0, PRETOK_DEEPSEEK_V3 = 1, PRETOK_SPLITS = 2 };  // tokenizer block: the pre-tokenizer
enum { TOK_SPECIAL = 1, TOK_ADDED = 2, TOK_ADDED_NORMALIZED = 4 };  // tokenizer block: a token's flags
// The bytes that UTF-8 text can hold (all but C0, C1, F5..FF): a byte-level BPE has a token for each of them.
static inline int utf8_byte(int b) { return b < 0xC0 || (b >= 0xC2 && b < 0xF5); }

// PRETOK_SPLITS: Split patterns, as convert compiles them and run matches them. A pattern is a sequence of
// elements: a class of characters taken min..max times (max -1: without limit), or $ (PAT_END). A class is
// the Unicode classes whose bits it has (1 << U_*, unicode/classes.h) and its code point ranges; PAT_NOT
// negates it. In the block each element is a PatElem followed by n_ranges x {int32 lo, hi}, sorted, disjoint.
enum { PAT_L = 1 << 1, PAT_M = 1 << 2, PAT_N = 1 << 3, PAT_P = 1 << 4, PAT_S = 1 << 5, PAT_WS = 1 << 6, PAT_N17 = 1 << 7,
       PAT_END = 1 << 8, PAT_NOT = 1 << 9, PAT_MAX = 16 };   // PAT_MAX: patterns, and elements in one
typedef struct { int32_t min, max, flags, n_ranges; } PatElem;

// Why a pattern is one that run does not match (NULL: it is one). run backtracks as Oniguruma does, which
// could take time quadratic in the text, or worse; these rules keep it linear: an element without limit
// only first (a failed try skips its whole run) or last with no $ after it (it never gives anything back),
// the others together at most 64 ways to try; and something to match (HF skips empty matches).
static inline const char *pattern_error(const PatElem *e, int n) {
    int ways = 1, takes = 0;
    if (n < 1 || n > PAT_MAX) return "no elements, or too many";
    for (int k = 0; k < n; k++) {
        if (e[k].flags & ~(PAT_NOT | PAT_END | 255) || e[k].n_ranges < 0) return "an element of unknown kind";
        if (e[k].flags & PAT_END) {
            if (k != n - 1 || e[k].flags != PAT_END || e[k].min || e[k].max || e[k].n_ranges) return "$ not at the end";
            continue;
        }
        if (e[k].min < 0 || e[k].min > 1024 || e[k].max < -1 || e[k].max > 1024 || (e[k].max >= 0 && e[k].max < e[k].min))
            return "a repeat count outside 0..1024";
        if (e[k].max < 0 && k && k != n - 1) return "an element repeated without limit in the middle, or before $";
        if (e[k].max > e[k].min && (ways *= e[k].max - e[k].min + 1) > 64) return "more than 64 ways to try";
        takes |= e[k].min > 0;
    }
    return takes ? NULL : "it can match nothing (every element optional)";
}

enum { ROPE_DEFAULT = 0, ROPE_YARN = 1 };
enum { ROUTE_SOFTMAX_GREEDY = 0, ROUTE_SOFTMAX_GROUP = 1, ROUTE_SIGMOID_GROUP = 2 };

typedef struct {
    int dim;           // D, hidden size
    int n_layers;
    int n_heads;       // H
    int vocab;
    int q_lora;        // q_lora_rank; 0 = a plain q_proj
    int dc;            // kv_lora_rank: width of the cached latent
    int dn, dr, dv;    // qk_nope_head_dim, qk_rope_head_dim, v_head_dim
    int inter;         // intermediate size of the dense FFN layers
    int moe_inter;     // intermediate size of one expert
    int n_experts;     // routed experts (0 = every layer dense)
    int n_shared;      // shared experts (each of moe_inter)
    int topk;          // experts per token
    int n_group, topk_group;
    int first_dense;   // first_k_dense_replace: layers [0, first_dense) are dense
    int routing;       // ROUTE_*: V2 softmax greedy / group_limited_greedy, V3 sigmoid + bias + groups
    int norm_topk;     // normalise the chosen weights (V3 only; HF's V2 never does)
    int rope_type;     // ROPE_DEFAULT or ROPE_YARN
    int rope_interleave; // 1: rotate pairs (x0,x1),(x2,x3).. (DeepSeek); 0: pairs (x_i, x_i+dr/2)
    int yarn_orig_max; // yarn: original_max_position_embeddings
    int yarn_truncate; // yarn: floor/ceil the correction range (HF default 1)
    int max_seq;       // max_position_embeddings
    int bos, eos;      // token ids, -1 if none
    int tok_bytes;     // size of the tokenizer block after the header, 0 = no tokenizer
    float eps;         // rms_norm_eps
    float routed_scale;   // routed_scaling_factor
    float rope_theta;
    float yarn_factor, yarn_beta_fast, yarn_beta_slow;
    float rope_attn;   // yarn attention factor: cos and sin are multiplied by it (1 without yarn)
    float softmax_scale; // 1/sqrt(dn+dr) times yarn's mscale(factor, mscale_all_dim)^2
} Config;

// ----------------------------------------------------------------------------
// the weights: one table that the checkpoint's layout (tensor_layout), the CPU loader (tensor_slot) and the
// GPU engine's placement (a rank's layout, upload and random fill) all read. A row is a tensor, in the
// checkpoint's order: its kind; where it is, FIRST (before the layers), LAYER (in every layer that has it)
// or LAST (after them); its field in Model or Layer; f32: 1 if stored as float32, 0 as bf16; its shape
// (n0, n1, n2), from c and D, H, E, I, S = n_shared * I; has: whether layer l has it (moe: l is a MoE
// layer); on the GPU, ON_GPU(holder, field, split): the field of the rank (R) or of its layer (L) that
// holds a GPU's piece of it, and how the GPUs split it (rank_piece in tpla.cu), or HOST_ONLY.
#define TPLA_TENSORS(X) \
    X(T_EMBED,     FIRST, embed,     0, 1, c->vocab,            D,         1,          ON_GPU(R, embed, REPLICATED))     \
    X(T_ATTN_NORM, LAYER, attn_norm, 1, 1, 1,                   D,         1,          ON_GPU(L, attn_norm, REPLICATED)) \
    X(T_WQ_A,      LAYER, wq_a,      0, 1, c->q_lora,           D,         c->q_lora,  ON_GPU(L, wa, DQ_ROWS))           \
    X(T_Q_NORM,    LAYER, q_norm,    1, 1, 1,                   c->q_lora, c->q_lora,  ON_GPU(L, q_norm, REPLICATED))    \
    X(T_WQ_B,      LAYER, wq_b,      0, 1, H * (c->dn + c->dr), c->q_lora, c->q_lora,  ON_GPU(L, wq, HEAD_ROWS))         \
    X(T_WQ,        LAYER, wq,        0, 1, H * (c->dn + c->dr), D,         !c->q_lora, ON_GPU(L, wq, HEAD_ROWS))         \
    X(T_WKV_A,     LAYER, wkv_a,     0, 1, c->dc + c->dr,       D,         1,          ON_GPU(L, wa, DKV_ROWS))          \
    X(T_KV_NORM,   LAYER, kv_norm,   1, 1, 1,                   c->dc,     1,          HOST_ONLY)                        \
    X(T_WKV_B,     LAYER, wkv_b,     0, H, c->dn + c->dv,       c->dc,     1,          ON_GPU(L, wkv_b, HEAD_SLICE))     \
    X(T_WO,        LAYER, wo,        0, 1, D,                   H * c->dv, 1,          ON_GPU(L, wo, HEAD_COLUMNS))      \
    X(T_FFN_NORM,  LAYER, ffn_norm,  1, 1, 1,                   D,         1,          ON_GPU(L, ffn_norm, REPLICATED))  \
    X(T_W1,        LAYER, w1,        0, 1, c->inter,            D,         !moe,       ON_GPU(L, w13, W1_ROWS))          \
    X(T_W2,        LAYER, w2,        0, 1, D,                   c->inter,  !moe,       ON_GPU(L, w2, W2_COLUMNS))        \
    X(T_W3,        LAYER, w3,        0, 1, c->inter,            D,         !moe,       ON_GPU(L, w13, W3_ROWS))          \
    X(T_GATE,      LAYER, gate,      1, 1, E,                   D,         moe,        ON_GPU(L, gate, ROUTER))          \
    X(T_BIAS,      LAYER, bias,      1, 1, 1,                   E,         moe,        ON_GPU(L, bias, ROUTER))          \
    X(T_EW1,       LAYER, ew1,       0, E, I,                   D,         moe,        ON_GPU(L, ew13, W1_ROWS))         \
    X(T_EW2,       LAYER, ew2,       0, E, D,                   I,         moe,        ON_GPU(L, ew2, W2_COLUMNS))       \
    X(T_EW3,       LAYER, ew3,       0, E, I,                   D,         moe,        ON_GPU(L, ew13, W3_ROWS))         \
    X(T_SW1,       LAYER, sw1,       0, 1, S,                   D,         moe && S,   ON_GPU(L, w13, W1_ROWS))          \
    X(T_SW2,       LAYER, sw2,       0, 1, D,                   S,         moe && S,   ON_GPU(L, w2, W2_COLUMNS))        \
    X(T_SW3,       LAYER, sw3,       0, 1, S,                   D,         moe && S,   ON_GPU(L, w13, W3_ROWS))          \
    X(T_NORM,      LAST,  norm,      1, 1, 1,                   D,         1,          ON_GPU(R, norm, REPLICATED))      \
    X(T_LM_HEAD,   LAST,  lm_head,   0, 1, c->vocab,            D,         1,          ON_GPU(R, lm_head, VOCAB_ROWS))

#define TPLA_KIND(kind, ...) kind,
enum { TPLA_TENSORS(TPLA_KIND) T_KINDS };
#undef TPLA_KIND
enum { AT_FIRST, AT_LAYER, AT_LAST };
#define TPLA_FIELD(kind, at, field, ...) #field,
static const char *const T_FIELD[] = {TPLA_TENSORS(TPLA_FIELD)};   // the tensors' names, for messages
#undef TPLA_FIELD

typedef struct {
    int kind, layer;      // T_*, layer index (-1 for embed, norm, lm_head)
    int f32;              // 1: float32, 0: bf16
    int64_t n0, n1, n2;   // shape (n0, n1, n2); n0 = 1 and n1 = 1 for matrices and vectors
    uint64_t off;         // byte offset from the start of the weights
} Tensor;

static inline int layer_is_moe(const Config *c, int l) { return c->n_experts > 0 && l >= c->first_dense; }

// Fills t (may be NULL to count) and returns the number of tensors; *bytes gets the total size.
static inline int tensor_layout(const Config *c, Tensor *t, uint64_t *bytes) {
    int n = 0;
    uint64_t off = 0;
    int64_t D = c->dim, H = c->n_heads, E = c->n_experts, I = c->moe_inter, S = c->n_shared * I;
    for (int l = -1; l <= c->n_layers; l++) {   // -1: the tensors before the layers; n_layers: those after
        int at = l < 0 ? AT_FIRST : l < c->n_layers ? AT_LAYER : AT_LAST, moe = at == AT_LAYER && layer_is_moe(c, l);
#define ADD(k, where, field, isf32, a, b, cc, has, gpu) \
        if (AT_##where == at && (has)) { \
            if (t) { t[n].kind = k; t[n].layer = at == AT_LAYER ? l : -1; t[n].f32 = isf32; t[n].n0 = a; t[n].n1 = b; t[n].n2 = cc; t[n].off = off; } \
            off += (((uint64_t)(a) * (b) * (cc) * ((isf32) ? 4 : 2)) + 63) & ~(uint64_t)63; n++; }
        TPLA_TENSORS(ADD)
#undef ADD
    }
    if (bytes) *bytes = off;
    return n;
}

static inline uint64_t weights_offset(const Config *c) {
    return ((uint64_t)TPLA_HEADER + (uint64_t)c->tok_bytes + 63) & ~(uint64_t)63;
}

// Limits on every field that sizes something, checked by config_error for run and convert alike.
// Generous for real models (DeepSeek-V3: dim 7168, 61 layers, 128 heads, vocab 129280, kv_lora 512,
// 256 experts of 2048) and small enough that every size is exact: each tensor is below 2^48 bytes,
// all the weights below 2^60, so the 64-bit sums in tensor_layout cannot wrap, and every count the
// engines compute in int (H * (dn + dr), vocab * 4, n_shared * moe_inter * 4, dc * dc) fits.
#define TPLA_MAX_DIM     (1 << 16)   // hidden_size, q_lora_rank
#define TPLA_MAX_LAYERS  1024
#define TPLA_MAX_HEADS   1024
#define TPLA_MAX_VOCAB   (1 << 22)
#define TPLA_MAX_LATENT  (1 << 13)   // kv_lora_rank
#define TPLA_MAX_HEAD    1024        // qk_nope_head_dim, qk_rope_head_dim, v_head_dim
#define TPLA_MAX_INTER   (1 << 18)   // intermediate_size, moe_intermediate_size
#define TPLA_MAX_EXPERTS 1024        // n_routed_experts (also bounds n_group, num_experts_per_tok)
#define TPLA_MAX_SHARED  64          // n_shared_experts
#define TPLA_MAX_SEQ     (1 << 24)   // max_position_embeddings, original_max_position_embeddings
#define TPLA_MAX_TOK     (1 << 30)   // bytes of the tokenizer block

// A config every engine can run, or a message naming the field, its value and what is allowed (NULL
// when fine). Fields are checked in order, so a bound may use a field checked before it.
static inline const char *config_error(const Config *c) {
    static char msg[200];
    int moe = c->n_experts > 0 && c->first_dense < c->n_layers, dense = c->first_dense > 0 || c->n_experts == 0;
    int group = c->routing != ROUTE_SOFTMAX_GREEDY;
    const struct { const char *name; int v; long lo, hi; } ints[] = {
        {"hidden_size", c->dim, 1, TPLA_MAX_DIM},
        {"num_hidden_layers", c->n_layers, 1, TPLA_MAX_LAYERS},
        {"num_attention_heads", c->n_heads, 1, TPLA_MAX_HEADS},
        {"vocab_size", c->vocab, 1, TPLA_MAX_VOCAB},
        {"q_lora_rank", c->q_lora, 0, TPLA_MAX_DIM},
        {"kv_lora_rank", c->dc, 1, TPLA_MAX_LATENT},
        {"qk_nope_head_dim", c->dn, 1, TPLA_MAX_HEAD},
        {"qk_rope_head_dim", c->dr, 2, TPLA_MAX_HEAD},
        {"v_head_dim", c->dv, 1, TPLA_MAX_HEAD},
        {"n_routed_experts", c->n_experts, 0, TPLA_MAX_EXPERTS},
        {"first_k_dense_replace", c->first_dense, 0, c->n_layers},
        {"intermediate_size", c->inter, dense, TPLA_MAX_INTER},
        {"moe_intermediate_size", c->moe_inter, moe, TPLA_MAX_INTER},
        {"n_shared_experts", c->n_shared, 0, TPLA_MAX_SHARED},
        {"num_experts_per_tok", c->topk, moe, c->n_experts},
        {"n_group", c->n_group, moe && group, c->n_experts},
        {"topk_group", c->topk_group, moe && group, c->n_group},
        {"routing (topk_method)", c->routing, 0, 2},
        {"norm_topk_prob", c->norm_topk, 0, 1},
        {"rope type", c->rope_type, 0, 1},
        {"rope_interleave", c->rope_interleave, 0, 1},
        {"rope truncate", c->yarn_truncate, 0, 1},
        {"max_position_embeddings", c->max_seq, 1, TPLA_MAX_SEQ},
        {"original_max_position_embeddings", c->yarn_orig_max, 1, TPLA_MAX_SEQ},
        {"bos_token_id", c->bos, -1, (long)c->vocab - 1},   // (long): the table is built before vocab is checked
        {"eos_token_id", c->eos, -1, (long)c->vocab - 1},
        {"tokenizer block size", c->tok_bytes, 0, TPLA_MAX_TOK},
    };
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if (ints[i].v < ints[i].lo || ints[i].v > ints[i].hi) {
            snprintf(msg, sizeof(msg), "%s = %d; allowed: %ld to %ld%s", ints[i].name, ints[i].v, ints[i].lo, ints[i].hi,
                     ints[i].lo < 0 ? " (-1: none)" : "");
            return msg;
        }
    if (c->dr % 2) return "qk_rope_head_dim must be even";
    if (moe && group && c->n_experts % c->n_group) return "n_group must divide n_routed_experts";
    if (moe && c->routing == ROUTE_SIGMOID_GROUP && c->n_experts / c->n_group < 2) return "noaux_tc routing needs 2+ experts per group";
    // floats: finite and in a range where the math stays finite (!(x >= lo && x <= hi) also catches NaN)
    const struct { const char *name; float v; double lo, hi; } fl[] = {
        {"rms_norm_eps", c->eps, 0, 1},
        {"routed_scaling_factor", c->routed_scale, 0, 1e3},
        {"rope_theta", c->rope_theta, 2, 1e12},
        {"rope factor", c->yarn_factor, 1e-3, 1e6},
        {"beta_fast", c->yarn_beta_fast, 1e-3, 1e6},
        {"beta_slow", c->yarn_beta_slow, 1e-3, 1e6},
        {"rope attention factor", c->rope_attn, 1e-3, 1e3},
        {"softmax scale", c->softmax_scale, 1e-6, 1e3},
    };
    for (size_t i = 0; i < sizeof(fl) / sizeof(fl[0]); i++)
        if (!(fl[i].v >= fl[i].lo && fl[i].v <= fl[i].hi)) {
            snprintf(msg, sizeof(msg), "%s = %g; allowed: %g to %g", fl[i].name, fl[i].v, fl[i].lo, fl[i].hi);
            return msg;
        }
    return NULL;
}

// ----------------------------------------------------------------------------
// math that the CPU engine and the GPU kernels share, written once

#ifdef __CUDACC__
#define HD __host__ __device__
#else
#define HD
#endif
#include <math.h>

// Inverse frequencies of the rope key (dr/2 of them): plain, or YaRN's blend of interpolated and
// extrapolated frequencies, as HF's _compute_yarn_parameters.
static inline void rope_freqs(const Config *c, float *inv) {
    int d = c->dr;
    double lo = 0, hi = 0;
    if (c->rope_type == ROPE_YARN) {
        double k = d / (2 * log(c->rope_theta));
        lo = k * log(c->yarn_orig_max / (c->yarn_beta_fast * 2 * M_PI));
        hi = k * log(c->yarn_orig_max / (c->yarn_beta_slow * 2 * M_PI));
        if (c->yarn_truncate) { lo = floor(lo); hi = ceil(hi); }
        if (lo < 0) lo = 0;
        if (hi > d - 1) hi = d - 1;
        if (lo == hi) hi += 0.001;
    }
    for (int i = 0; i < d / 2; i++) {
        double f = 1.0 / pow(c->rope_theta, 2.0 * i / d);
        if (c->rope_type == ROPE_YARN) {
            double ramp = (i - lo) / (hi - lo), extra = 1 - (ramp < 0 ? 0 : ramp > 1 ? 1 : ramp);
            f = f / c->yarn_factor * (1 - extra) + f * extra;
        }
        inv[i] = (float)f;
    }
}

// Rope pair i of a vector of dr values: its entries (2i, 2i+1) in DeepSeek's interleaved layout, else the
// halves (i, i + dr/2). rope_rotate turns a pair (x0, x1) by the angle a = pos inv; cos and sin carry
// YaRN's attention factor.
HD static inline void rope_index(int i, int dr, int interleave, int *i0, int *i1) {
    *i0 = interleave ? 2 * i : i;
    *i1 = interleave ? 2 * i + 1 : i + dr / 2;
}
HD static inline void rope_rotate(float *x0, float *x1, float a, float attn) {
    float co = cosf(a) * attn, si = sinf(a) * attn, v0 = *x0, v1 = *x1;
    *x0 = v0 * co - v1 * si;
    *x1 = v1 * co + v0 * si;
}
// Rotates pair i of a rope vector x (dr) to position pos.
HD static inline void rope_pair(float *x, int i, int dr, int pos, float inv, float attn, int interleave) {
    int i0, i1;
    rope_index(i, dr, interleave, &i0, &i1);
    rope_rotate(&x[i0], &x[i1], (float)pos * inv, attn);
}

// The rms a new token's latent (or its slice of n values, sum of squares ss) is divided by before it is
// cached (README "The rms of a decode token's latent"): sqrt(ss / n + eps) times fix, where fix =
// sqrt(1 / (g e_i)) for shard i's slice under -r local (since mean(slice^2) ~ g e_i mean(c^2)), else 1.
HD static inline float latent_rms(float ss, int n, float fix, float eps) { return sqrtf(ss / n + eps) * fix; }

// bf16 as the top half of a float32: rounded to nearest even (NaN stays NaN), and back
HD static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
}
HD static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }

// MoE routing (README "The model and its MoE routing") of one token: logits (E) -> topk expert ids and weights.
// V2: s = softmax; greedy, or keep the topk_group groups with the largest max first.
// V3: s = sigmoid; choose by s + bias, groups ranked by the sum of their top 2; weights are s.
// scratch: 2E + n_group floats.
HD static inline void route(const Config *c, const float *logits, const float *bias, float *scratch, int *idx, float *w) {
    int E = c->n_experts, G = c->n_group > 0 ? c->n_group : 1, per = E / G;
    float *s = scratch, *choice = scratch + E, *gscore = scratch + 2 * E;
    if (c->routing == ROUTE_SIGMOID_GROUP) {
        for (int e = 0; e < E; e++) { s[e] = 1.0f / (1.0f + expf(-logits[e])); choice[e] = s[e] + bias[e]; }
    } else {
        float mx = logits[0], sum = 0;
        for (int e = 1; e < E; e++) mx = logits[e] > mx ? logits[e] : mx;
        for (int e = 0; e < E; e++) { s[e] = expf(logits[e] - mx); sum += s[e]; }
        for (int e = 0; e < E; e++) { s[e] /= sum; choice[e] = s[e]; }
    }
    // Non-finite scores (damaged weights, or a bias near FLT_MAX) are a defined choice: NaN ranks as
    // -inf, and +inf is a score like any other; the index chosen is always one of the experts.
    for (int e = 0; e < E; e++) if (choice[e] != choice[e]) choice[e] = -INFINITY;
    if (c->routing != ROUTE_SOFTMAX_GREEDY) {
        for (int g = 0; g < G; g++) {
            float a = -INFINITY, b = -INFINITY;   // the two largest of the group
            for (int e = g * per; e < (g + 1) * per; e++) {
                if (choice[e] > a) { b = a; a = choice[e]; } else if (choice[e] > b) b = choice[e];
            }
            gscore[g] = c->routing == ROUTE_SIGMOID_GROUP ? a + b : a;
            if (gscore[g] != gscore[g]) gscore[g] = -INFINITY;   // inf + -inf
        }
        for (int k = 0; k < c->topk_group; k++) {   // the kept groups, largest first (of equal ones the lowest index), become NaN
            int best = -1;
            for (int g = 0; g < G; g++) if (gscore[g] == gscore[g] && (best < 0 || gscore[g] > gscore[best])) best = g;
            gscore[best] = NAN;
        }
        // a dropped group's experts are out of the choice: -inf, as DeepSeek's inference code and vLLM
        // (HF's DeepseekV3 writes 0.0; README "The model and its MoE routing")
        for (int e = 0; e < E; e++)
            if (gscore[e / per] == gscore[e / per]) choice[e] = c->routing == ROUTE_SIGMOID_GROUP ? -INFINITY : 0.0f;
    }
    // the topk largest choices, largest first (of equal ones the lowest index); a chosen one becomes NaN
    float sum = 0;
    for (int k = 0; k < c->topk; k++) {
        int best = -1;
        float top = -INFINITY;
        for (int e = 0; e < E; e++) if (choice[e] > top) { top = choice[e]; best = e; }
        for (int e = 0; best < 0; e++) if (choice[e] == choice[e]) best = e;   // only -inf left: the first not chosen
        idx[k] = best; w[k] = s[best]; sum += s[best];
        choice[best] = NAN;
    }
    for (int k = 0; k < c->topk; k++)
        w[k] = (c->norm_topk ? w[k] / (sum + 1e-20f) : w[k]) * c->routed_scale;
}

// ----------------------------------------------------------------------------
// weights in float32 on the host (the CPU engine computes with them; the GPU engine uploads them as bf16).
// Shapes are (rows, cols) with y = W x; "per head" tensors are (H, rows, cols).

typedef struct {
    float *attn_norm;           // (D)
    float *wq_a, *q_norm, *wq_b; // (q_lora, D), (q_lora), (H*(dn+dr), q_lora); NULL without q LoRA
    float *wq;                  // (H*(dn+dr), D); NULL with q LoRA
    float *wkv_a;               // (dc+dr, D): latent rows, then the rope key rows
    float *kv_norm;             // (dc): folded into wkv_b at load, then all ones
    float *wkv_b;               // (H, dn+dv, dc): per head W_UK (dn, dc) then W_UV (dv, dc)
    float *wo;                  // (D, H*dv)
    float *ffn_norm;            // (D)
    float *w1, *w2, *w3;        // dense FFN: (inter, D), (D, inter), (inter, D)
    float *gate, *bias;         // router: (E, D), (E) (bias: V3's e_score_correction_bias, else 0)
    float *ew1, *ew2, *ew3;     // routed experts: (E, I, D), (E, D, I), (E, I, D)
    float *sw1, *sw2, *sw3;     // shared experts: (ns*I, D), (D, ns*I), (ns*I, D); NULL if none
} Layer;

typedef struct {
    Config c;
    float *embed;               // (vocab, D)
    Layer *layers;              // (n_layers)
    float *norm;                // (D)
    float *lm_head;             // (vocab, D)
    float *arena;               // the one allocation all the pointers above point into
    const uint8_t *file;        // the mmapped checkpoint
    size_t file_size;
} Model;

// The field that holds tensor `kind` of `layer` (-1: the model's own) on the host.
static inline float **tensor_slot(Model *m, int kind, int layer) {
    Layer *L = layer >= 0 ? &m->layers[layer] : NULL;
#define HOLDER_FIRST m
#define HOLDER_LAYER L
#define HOLDER_LAST m
#define SLOT(k, where, field, ...) case k: return &HOLDER_##where->field;
    switch (kind) { TPLA_TENSORS(SLOT) }
#undef SLOT
#undef HOLDER_FIRST
#undef HOLDER_LAYER
#undef HOLDER_LAST
    return NULL;
}

// ----------------------------------------------------------------------------
// how to decode: MLA, TPLA with g latent shards (README "The TPLA step") or DCP with K token shards
// (README "The DCP step: the tokens sliced instead")

enum { T_NONE = 0, T_HADAMARD = 1, T_PCA = 2 };
enum { RMS_LOCAL = 0, RMS_GLOBAL = 1 };

typedef struct {
    int g;          // shards: TPLA's latent slices g, or DCP's token sets K; 1 = MLA
    int rms;        // RMS_LOCAL or RMS_GLOBAL: how a decode token's latent slice is normalised (TPLA)
    const float *rms_fix; // (n_layers, g): local rms correction sqrt(1/(g e_i)); NULL = all 1
    int split;      // GPU only: TPLA and DCP keep W_UQ and W_O split by head (all-gather q, reduce-scatter v)
    int dcp;        // 0: the g shards split the latent (TPLA); 1: they split the tokens, t mod g (DCP)
} Scheme;

static const Scheme MLA = {1, RMS_GLOBAL, NULL, 0, 0};   // plain MLA (g = 1): the reference of every scheme

#include <time.h>
static inline double now_s(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

// ----------------------------------------------------------------------------
// GPU engine (tpla.cu). One process drives every GPU: one thread and one stream per GPU, one NCCL
// communicator. TPLA: K GPUs form g groups of K/g; inside a group the heads are split as in MLA-TP.
// DCP: K token shards, one a GPU, each attending with every head.

// The GPU engine's MoE path: its limits, checked by gpu_build before it allocates anything (NULL: fine).
#define GPU_MAX_TOPK 16       // experts per token (the routing kernel keeps them in registers)
#define GPU_MAX_EXPERTS 1024  // routed experts (the plan kernel counts them in shared memory)
static inline const char *gpu_moe_error(const Config *c, int K) {
    if (c->n_experts == 0 || c->first_dense >= c->n_layers) return NULL;
    if (c->topk > GPU_MAX_TOPK) return "num_experts_per_tok: the GPU engine routes at most 16 experts per token";
    if (c->n_experts > GPU_MAX_EXPERTS) return "n_routed_experts: the GPU engine handles at most 1024 routed experts";
    if (c->dim % 8 || c->moe_inter % K || (c->moe_inter / K) % 8)
        return "the GPU expert kernel needs hidden_size and moe_intermediate_size / (GPU count) to be multiples of 8";
    return NULL;
}

#ifdef __cplusplus
extern "C" {
#endif
typedef struct GPU GPU;
int gpu_count(void);   // usable (Hopper) GPUs; 0 when there is none (or the build has no CUDA)
// m may be NULL (then c gives the shape and the weights are random, for -m bench); ffn 0 leaves the
// FFN out (the paper's bench setup).
GPU *gpu_build(const Model *m, const Config *c, const Scheme *s, int ngpu, int batch, int max_len, int ffn);
// Prefills n tokens of sequence b as exact MLA; logits gets (n, vocab) if all, else the last (vocab).
void gpu_prefill(GPU *G, int b, const int *tokens, int n, float *logits, int all);
void gpu_decode(GPU *G, const int *tokens, float *logits);                  // one token per sequence; logits (B, vocab)
void gpu_reset(GPU *G);                                                     // empty every sequence
void gpu_free(GPU *G);
// The decode attention kernel alone on host arrays (for the tests): Q (B, ha, dcs+dr) and cache
// (B, max_len, dcs+dr) bf16, lens (B); O (B, ha, dcs) float32. ntok > 1: as DCP's ntok ranks would, each
// over its own tokens (t mod ntok = r, dealt out here), with the merge's lse, DCP's combine, and O summed.
void gpu_attention(const uint16_t *Q, const uint16_t *cache, const int *lens, int B, int ha, int dcs, int dr,
                   int max_len, int ntok, float scale, float *O);
// -m bench: decode steps at each context in ctx[0..nctx), MLA-TP against TPLA (and DCP with one token shard a
// GPU) on the same weights. one_rank: GPU 0 runs only rank 0 of the ngpu-GPU layout, with the collectives
// left out (the rank bench).
void gpu_bench(const Config *c, const Scheme *tpla, int ngpu, int one_rank, int batch, const int *ctx, int nctx,
               int dense_ffn, int steps, const char *name, const char *csv);
// -m bench -k N: the prefill of one N-token prompt on random weights, against its floor.
void gpu_bench_prefill(const Config *c, const Scheme *s, int ngpu, int n, int ffn, const char *name);
#ifdef __cplusplus
}
#endif

// ----------------------------------------------------------------------------
// errors: every check prints where and why, then exits non-zero

#define die(...) do { fprintf(stderr, "error: " __VA_ARGS__); fputc('\n', stderr); exit(1); } while (0)

#ifndef __CUDACC__
// ----------------------------------------------------------------------------
// files: every input is opened by in_open, the one output written by out_open, out_write, out_close
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>
#include <sys/stat.h>

// The byte offset of the first invalid UTF-8 sequence in s (overlong, surrogate, above U+10FFFF or cut
// short), or -1 if there is none.
static inline long utf8_invalid(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int c = s[i], k = c < 0x80 ? 0 : c >= 0xC2 && c < 0xE0 ? 1 : c >= 0xE0 && c < 0xF0 ? 2 : c >= 0xF0 && c < 0xF5 ? 3 : -1;
        if (k < 0 || (k && i + k >= n)) return i;
        unsigned cp = k ? c & (0x3F >> k) : c;
        for (int j = 1; j <= k; j++) { if ((s[i + j] & 0xC0) != 0x80) return i; cp = cp << 6 | (s[i + j] & 0x3F); }
        if ((k == 2 && (cp < 0x800 || (cp >= 0xD800 && cp < 0xE000))) || (k == 3 && (cp < 0x10000 || cp > 0x10FFFF))) return i;
        i += k + 1;
    }
    return -1;
}

// The output OUT is written to a temporary beside it, OUT.tmp.XXXXXX, created exclusively (so no file
// that is already there is touched, and two runs writing one OUT each have their own), and renamed over
// OUT at the end. The temporary is removed at exit and on every signal whose default action ends the
// process, so that a run that fails or is killed (but by SIGKILL) leaves no file. A signal ignored
// when the program starts (nohup) stays ignored; SIGXFSZ is ignored, so that a file size limit fails
// the write, as a full disk does. An OUT that is one of the inputs (the same device and inode, whatever
// the spelling or link) is refused, whichever of the two is opened first.
static const char *out_path = "";            // OUT, once out_open has run
static char out_tmp[4096];                   // its temporary
static volatile sig_atomic_t out_live;       // 1 while out_tmp is a file this program created
static struct stat out_st;                   // OUT as it was at out_open,
static int out_exists;                       // if it existed
static struct { dev_t dev; ino_t ino; char *path; } *in_seen;   // every input opened so far
static int n_in;
static struct sigaction out_prev[NSIG];      // what each signal did before out_open

static inline void out_cleanup(void) { if (out_live) unlink(out_tmp); out_live = 0; }

// Only async-signal-safe calls: unlink, sigaction, raise. The signal then does what it did before (ends
// the process, or reaches a sanitizer's handler): sent again, or, for a fault, by the faulting
// instruction, which runs again when the handler returns.
static inline void out_on_signal(int sig, siginfo_t *info, void *ctx) {
    (void)ctx;
    out_cleanup();
    sigaction(sig, &out_prev[sig], NULL);
    int fault = sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL;
    if (!fault || info->si_code <= 0) raise(sig);
}

// Opens an input for reading (*st gets its fstat), or returns -1 with errno set (the caller says what
// the file is for). Refuses a directory, the output, and anything but a regular file unless stream:
// text that may come through a pipe (-f /dev/stdin), whose open waits for a FIFO's writer as cat's
// does. A FIFO that should be a file is opened without blocking, so that it is refused, not waited on.
static inline int in_open(const char *path, int stream, struct stat *st) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | (stream ? 0 : O_NONBLOCK));
    if (fd < 0) return -1;
    if (fstat(fd, st) != 0) die("%s: cannot stat (%s)", path, strerror(errno));
    if (S_ISDIR(st->st_mode)) die("%s: is a directory; give a file", path);
    if (!stream && !S_ISREG(st->st_mode))
        die("%s: %s, not a regular file; give a file", path, S_ISFIFO(st->st_mode) ? "a FIFO" : S_ISSOCK(st->st_mode) ? "a socket" : "a device");
    if (!stream && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0) die("%s: fcntl failed (%s)", path, strerror(errno));
    if (out_exists && st->st_dev == out_st.st_dev && st->st_ino == out_st.st_ino)
        die("%s: this input is also the output %s; give another output path", path, out_path);
    void *p = realloc(in_seen, (n_in + 1) * sizeof(*in_seen));
    if (!p || !(in_seen = p, in_seen[n_in].path = strdup(path))) die("out of host memory");
    in_seen[n_in].dev = st->st_dev; in_seen[n_in++].ino = st->st_ino;
    return fd;
}

// Standard output, flushed and checked: a result that could not be written (a full disk, /dev/full)
// is an error, not an exit 0. Called by out_close before the rename and at exit (atexit, in main).
static inline void stdout_check(void) {
    int e = fflush(stdout) != 0 ? errno : 0;   // 0 after an earlier failure: its reason is gone
    if (!e && !ferror(stdout)) return;
    out_cleanup();
    fprintf(stderr, "error: standard output: write failed%s%s%s; the output is lost\n", e ? " (" : "", e ? strerror(e) : "", e ? ")" : "");
    _exit(1);   // also from an atexit handler, where exit() may not be called
}

// Refuses an empty OUT, one that exists and is not a regular file and one that is an input; creates the
// temporary (so call it before the long work: a path that cannot be written fails at once).
static inline FILE *out_open(const char *out) {
    if (!*out) die("the output path is empty; give a file name");
    if ((out_exists = stat(out, &out_st) == 0)) {
        if (!S_ISREG(out_st.st_mode)) die("%s: exists and is not a regular file; give the path of a file", out);
        for (int i = 0; i < n_in; i++)
            if (in_seen[i].dev == out_st.st_dev && in_seen[i].ino == out_st.st_ino)
                die("%s: the output is also an input (%s); give another output path", out, in_seen[i].path);
    }
    out_path = out;
    if (snprintf(out_tmp, sizeof(out_tmp), "%s.tmp.XXXXXX", out) >= (int)sizeof(out_tmp)) die("%s: path too long", out);
    static const int keep[] = {SIGKILL, SIGSTOP, SIGCHLD, SIGCONT, SIGTSTP, SIGTTIN, SIGTTOU, SIGURG, SIGWINCH, SIGXFSZ};
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = out_on_signal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigfillset(&sa.sa_mask);
    for (int s = 1; s < NSIG; s++) {   // the signals whose default action ends the process
        int k = 0, nk = (int)(sizeof(keep) / sizeof(keep[0]));
        while (k < nk && keep[k] != s) k++;
        if (k == nk && sigaction(s, NULL, &out_prev[s]) == 0 && out_prev[s].sa_handler != SIG_IGN) sigaction(s, &sa, NULL);
    }
    signal(SIGXFSZ, SIG_IGN);
    atexit(out_cleanup);
    sigset_t all, old;   // no signal between the file's creation and out_live
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    int fd = mkstemp(out_tmp), e = errno;
    if (fd >= 0) out_live = 1;
    sigprocmask(SIG_SETMASK, &old, NULL);
    if (fd < 0) die("%s: cannot create its temporary %s.tmp.XXXXXX (%s)", out, out, strerror(e));
    mode_t mask = umask(0);   // mkstemp makes the file 0600; the output gets the usual 0666 less the umask
    umask(mask);
    FILE *f = fchmod(fd, 0666 & ~mask) == 0 ? fdopen(fd, "wb") : NULL;
    if (!f) die("%s: cannot open (%s)", out_tmp, strerror(errno));   // removed at exit
    return f;
}

static inline void out_write(FILE *f, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, f) != n) die("%s: write failed (%s); is the disk full?", out_path, strerror(errno));
}

// Flushes and closes the temporary (a write that fails only here fails the run too), checks standard
// output (the result printed so far), then renames the temporary to OUT.
static inline void out_close(FILE *f, const char *out) {
    errno = 0;
    int e = fflush(f) != 0 || ferror(f) ? (errno ? errno : EIO) : 0;
    if (fclose(f) != 0 && !e) e = errno;
    if (e) die("%s: write failed (%s); is the disk full?", out, strerror(e));
    stdout_check();
    if (rename(out_tmp, out) != 0) die("cannot rename %s to %s (%s)", out_tmp, out, strerror(errno));
    out_live = 0;
}

// A long run's progress (ppl windows, calibration tokens, convert's bytes): one line on stderr, rewritten
// in place at most 5 times a second, when stderr is a terminal; nothing otherwise. done of total units
// since t0 (now_s() at the start), the rate and the time left; the line ends when done reaches total.
static inline void progress(const char *what, long done, long total, const char *unit, double t0) {
    static double last;
    double now = now_s(), rate = done / (now - t0 > 1e-9 ? now - t0 : 1e-9);
    if (!isatty(2) || (done < total && (done == 0 || now - last < 0.2))) return;
    last = now;
    fprintf(stderr, "\r%s: %ld/%ld %s, %.4g %s/s, %.0f s left\033[K%s", what, done, total, unit, rate, unit,
            done < total && rate > 0 ? (total - done) / rate : 0.0, done < total ? "" : "\n");
}
#endif

#ifdef __CUDACC__
#define CUDA_CHECK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) \
    die("%s:%d: CUDA: %s (%s)", __FILE__, __LINE__, cudaGetErrorString(e_), #x); } while (0)
#define CUBLAS_CHECK(x) do { cublasStatus_t e_ = (x); if (e_ != CUBLAS_STATUS_SUCCESS) \
    die("%s:%d: cuBLAS: %s (%s)", __FILE__, __LINE__, cublasGetStatusString(e_), #x); } while (0)
#define NCCL_CHECK(x) do { ncclResult_t e_ = (x); if (e_ != ncclSuccess) \
    die("%s:%d: NCCL: %s (%s)", __FILE__, __LINE__, ncclGetErrorString(e_), #x); } while (0)
#define LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
#endif

#endif // TPLA_H
