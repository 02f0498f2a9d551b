// run.c: tpla's command line, the CPU reference engine (MLA, simulated TPLA and DCP, in float32), the
// Hadamard and PCA transforms, the tokenizer and the sampler. The math is the README's "The math".
//   ./run model.bin -i "def fib(n):" -P tpla -g 2 -T hadamard
// The GPU engine lives in tpla.cu behind the API at the end of tpla.h.
#include <math.h>
#include <string.h>
#include <ctype.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include "tpla.h"

// ----------------------------------------------------------------------------
// small helpers

static void *xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) die("out of host memory: %.2f GB needed", n / 1e9);
    return p;
}
static void *xrealloc(void *p, size_t n) {
    p = realloc(p, n ? n : 1);
    if (!p) die("out of host memory: %.2f GB needed", n / 1e9);
    return p;
}

// xorshift64*: the next 64 random bits of the state s (the sampler, Hadamard's signs, the tests)
static unsigned long long xorshift(unsigned long long *s) {
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}
static float rand_f32(unsigned long long *s) { return (xorshift(s) >> 40) / 16777216.0f; }   // uniform in [0, 1)

// ----------------------------------------------------------------------------
// checkpoint: mmap the file, check it, expand the weights to float32

static void tensor_to_f32(const Model *m, const Tensor *t, float *dst) {
    const uint8_t *src = m->file + weights_offset(&m->c) + t->off;
    int64_t n = t->n0 * t->n1 * t->n2;
    if (t->f32) memcpy(dst, src, n * 4);
    else for (int64_t i = 0; i < n; i++) { uint16_t h; memcpy(&h, src + 2 * i, 2); dst[i] = bf16_to_f32(h); }
}

// Reads one tensor of the checkpoint again (the transforms re-fold the attention weights from the file).
static void reload_tensor(Model *m, int kind, int layer) {
    int n = tensor_layout(&m->c, NULL, NULL);
    Tensor *t = xmalloc(n * sizeof(Tensor));
    tensor_layout(&m->c, t, NULL);
    for (int i = 0; i < n; i++)
        if (t[i].kind == kind && t[i].layer == layer) tensor_to_f32(m, &t[i], *tensor_slot(m, kind, layer));
    free(t);
}

static void fold_latent(Model *m, const float *U);

static const char *model_path;   // the checkpoint last loaded, for the messages about its weights

static void build_model(Model *m, const char *path) {
    memset(m, 0, sizeof(*m));
    model_path = path;
    struct stat st;
    int fd = in_open(path, 0, &st);
    if (fd < 0) die("%s: cannot open (%s); make one with ./convert HF_DIR %s", path, strerror(errno), path);
    size_t size = st.st_size;
    if (size < TPLA_HEADER) die("%s: truncated: %zu bytes, smaller than the %d-byte header; re-run ./convert", path, size, TPLA_HEADER);
    const uint8_t *f = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (f == MAP_FAILED) die("%s: mmap failed (%s)", path, strerror(errno));
    uint32_t magic; int32_t version;
    memcpy(&magic, f, 4); memcpy(&version, f + 4, 4);
    if (magic != TPLA_MAGIC) die("%s: not a tpla checkpoint (magic 0x%08x); re-run ./convert", path, magic);
    if (version != TPLA_VERSION) die("%s: checkpoint version %d, this program reads %d; re-run ./convert", path, version, TPLA_VERSION);
    memcpy(&m->c, f + 8, sizeof(Config));
    const char *err = config_error(&m->c);
    if (err) die("%s: bad config: %s; re-run ./convert", path, err);
    uint64_t wbytes;   // below 2^60 for any config that passed config_error: the sum below cannot wrap
    int nt = tensor_layout(&m->c, NULL, &wbytes);
    if (size != weights_offset(&m->c) + wbytes)
        die("%s: %s: %zu bytes, the config needs %llu; re-run ./convert", path,
            size < weights_offset(&m->c) + wbytes ? "truncated or damaged" : "damaged (longer than its config says)", size,
            (unsigned long long)(weights_offset(&m->c) + wbytes));
    m->file = f; m->file_size = size;
    Tensor *t = xmalloc(nt * sizeof(Tensor));
    tensor_layout(&m->c, t, NULL);
    size_t total = 0;
    for (int i = 0; i < nt; i++) total += t[i].n0 * t[i].n1 * t[i].n2;
    m->arena = xmalloc(total * sizeof(float));
    m->layers = xmalloc(m->c.n_layers * sizeof(Layer));
    float *p = m->arena;
    for (int i = 0; i < nt; i++) {
        *tensor_slot(m, t[i].kind, t[i].layer) = p;
        tensor_to_f32(m, &t[i], p);
        for (int64_t j = 0; j < t[i].n0 * t[i].n1 * t[i].n2; j++)   // (convert refuses them: the file is damaged)
            if (!isfinite(p[j])) {
                char layer[32] = "";
                if (t[i].layer >= 0) snprintf(layer, sizeof(layer), " of layer %d", t[i].layer);
                die("%s: weight %lld of %s%s holds %g: the file is damaged; re-run ./convert", path, (long long)j,
                    T_FIELD[t[i].kind], layer, p[j]);
            }
        p += t[i].n0 * t[i].n1 * t[i].n2;
    }
    free(t);
    fold_latent(m, NULL);   // the cached latent is weightless: gamma lives in W_UK and W_UV
}

static void free_model(Model *m) {
    munmap((void *)m->file, m->file_size);
    free(m->arena); free(m->layers);
}

// ----------------------------------------------------------------------------
// the math of one token, in float32

static void rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
    float ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    float s = 1.0f / sqrtf(ss / n + eps);
    for (int i = 0; i < n; i++) o[i] = (w ? w[i] : 1.0f) * (x[i] * s);
}

// y (d) = W (d, n) x (n)
static void matmul(float *y, const float *x, const float *W, int n, int d) {
    #pragma omp parallel for if ((long)n * d >= 1 << 18)   // smaller products: a thread team costs more than it saves
    for (int i = 0; i < d; i++) {
        const float *w = W + (size_t)i * n;
        float s = 0;
        for (int j = 0; j < n; j++) s += w[j] * x[j];
        y[i] = s;
    }
}

static float silu(float x) { return x / (1.0f + expf(-x)); }

// Rotates the rope vector x (dr) to position pos.
static void rope(const Config *c, const float *inv, float *x, int pos) {
    for (int i = 0; i < c->dr / 2; i++) rope_pair(x, i, c->dr, pos, inv[i], c->rope_attn, c->rope_interleave);
}

// ----------------------------------------------------------------------------
// the CPU engine's state: activations and the latent cache

typedef struct {
    float *x;      // (D): the residual stream
    float *xb;     // (D): rmsnorm(x) times the norm's weight, the projections' input
    float *q;      // (H, dn+dr) then (q_lora): q of every head, then the q LoRA's latent
    float *kv;     // (dc+dr): W_DKV xb, the latent then the rope key (normalised, roped, then cached)
    float *qa;     // (dc): one head's absorbed query W_UK^h^T q_nope_h
    float *o;      // (dc): one head's attention output, each shard's slice S_i from its own softmax
    float *att;    // (max_len): one head's scores, then their softmax
    float *v;      // (H, dv): v_h = W_UV^h o of every head
    float *y;      // (D): W_O v; in the FFN, one SwiGLU MLP's output
    float *h1, *h3;// (the widest MLP: inter, or n_shared * moe_inter): W1 x and W3 x, then h1 = SwiGLU
    float *ffn;    // (D): the FFN's output, summed over its MLPs
    float *router; // (E): the router's logits
    float *logits; // (vocab)
    float *o_r;    // (max_len, dc): DCP rank r's partial o^r (a rank with a token: r < max_len)
    float *lse_r;  // (max_len): DCP rank r's lse^r
    float *lat;    // (n_layers, max_len, dc): the cached latent, transformed and normalised
    float *kpe;    // (n_layers, max_len, dr): the cached rope key
    float *inv_freq; // (dr/2): the rope's inverse frequencies
    int max_len;
} State;

static void build_state(State *s, const Config *c, int max_len) {
    int hid = c->moe_inter * (c->n_shared > 1 ? c->n_shared : 1);
    if (c->inter > hid) hid = c->inter;
    s->max_len = max_len;
    s->x = xmalloc(c->dim * 4); s->xb = xmalloc(c->dim * 4); s->y = xmalloc(c->dim * 4); s->ffn = xmalloc(c->dim * 4);
    s->q = xmalloc((size_t)c->n_heads * (c->dn + c->dr) * 4 + c->q_lora * 4);
    s->kv = xmalloc((c->dc + c->dr) * 4);
    s->qa = xmalloc(c->dc * 4); s->o = xmalloc(c->dc * 4);
    s->v = xmalloc((size_t)c->n_heads * c->dv * 4);
    s->h1 = xmalloc(hid * 4); s->h3 = xmalloc(hid * 4);
    s->router = xmalloc((c->n_experts + 1) * 4);
    s->logits = xmalloc((size_t)c->vocab * 4);
    s->att = xmalloc((size_t)max_len * 4);
    s->o_r = xmalloc((size_t)max_len * c->dc * 4); s->lse_r = xmalloc((size_t)max_len * 4);
    s->lat = xmalloc((size_t)c->n_layers * max_len * c->dc * 4);
    s->kpe = xmalloc((size_t)c->n_layers * max_len * c->dr * 4);
    s->inv_freq = xmalloc(c->dr / 2 * 4);
    rope_freqs(c, s->inv_freq);
}

static void free_state(State *s) {
    float *p[] = {s->x, s->xb, s->y, s->ffn, s->q, s->kv, s->qa, s->o, s->v, s->h1, s->h3, s->router,
                  s->logits, s->att, s->o_r, s->lse_r, s->lat, s->kpe, s->inv_freq};
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++) free(p[i]);
}

// SwiGLU MLP of width n, added into out with weight w: out += w * W2 (silu(W1 x) * W3 x)
static void mlp(State *s, float *out, const float *x, const float *w1, const float *w2, const float *w3, int D, int n, float w) {
    matmul(s->h1, x, w1, D, n);
    matmul(s->h3, x, w3, D, n);
    for (int i = 0; i < n; i++) s->h1[i] = silu(s->h1[i]) * s->h3[i];
    matmul(s->y, s->h1, w2, n, D);
    for (int i = 0; i < D; i++) out[i] += w * s->y[i];
}

#ifdef TESTING
static int *route_log;   // (n_layers, E): tokens routed to each expert, counted while not NULL
#endif

// The FFN of layer l on the residual s->x: dense SwiGLU, or routed experts plus shared experts.
static void ffn_block(const Model *m, State *s, int l) {
    const Config *c = &m->c;
    const Layer *L = &m->layers[l];
    int D = c->dim;
    rmsnorm(s->xb, s->x, L->ffn_norm, D, c->eps);
    memset(s->ffn, 0, D * sizeof(float));
    if (!layer_is_moe(c, l)) {
        mlp(s, s->ffn, s->xb, L->w1, L->w2, L->w3, D, c->inter, 1.0f);
    } else {
        int I = c->moe_inter, idx[c->topk];
        float wt[c->topk], scratch[2 * c->n_experts + c->n_group + 1];
        matmul(s->router, s->xb, L->gate, D, c->n_experts);
        route(c, s->router, L->bias, scratch, idx, wt);
#ifdef TESTING
        if (route_log) for (int k = 0; k < c->topk; k++) route_log[(size_t)l * c->n_experts + idx[k]]++;
#endif
        for (int k = 0; k < c->topk; k++) {
            size_t e = idx[k];
            mlp(s, s->ffn, s->xb, L->ew1 + e * I * D, L->ew2 + e * D * I, L->ew3 + e * I * D, D, I, wt[k]);
        }
        if (c->n_shared) mlp(s, s->ffn, s->xb, L->sw1, L->sw2, L->sw3, D, c->n_shared * I, 1.0f);
    }
    for (int i = 0; i < D; i++) s->x[i] += s->ffn[i];
}

// Normalises a new token's latent c (dc) in place (README "The rms of a decode token's latent").
// Exact (prefill, MLA, -r global): by the rms of the whole latent. TPLA -r local: shard i divides its
// slice S_i by the slice's own rms, corrected by fix[i] = sqrt(1 / (g e_i)) where PCA measured the
// shard's energy share e_i.
static void normalise_latent(float *c, int dc, int g, const float *fix, float eps) {
    int w = dc / g;
    for (int i = 0; i < g; i++) {
        float *sl = c + i * w;
        float ss = 0;
        for (int j = 0; j < w; j++) ss += sl[j] * sl[j];
        float r = latent_rms(ss, w, fix ? fix[i] : 1.0f, eps);
        for (int j = 0; j < w; j++) sl[j] /= r;
    }
}

// One shard's attention over its tokens T_r = {t <= pos : t mod K = r} (K = 1: every token) on the latent
// dims [j0, j1), from their scores in att (overwritten): o[j0, j1) = sum_{t in T_r} softmax(score)(t) c_t[j0, j1).
// Returns lse = log sum_{t in T_r} exp(score(t)), what DCP's combine weighs the shard by.
static float attend(float *o, float *att, const float *lat, int dc, int j0, int j1, int r, int K, int pos) {
    float mx = att[r], sum = 0;
    for (int t = r + K; t <= pos; t += K) if (att[t] > mx) mx = att[t];
    for (int t = r; t <= pos; t += K) { att[t] = expf(att[t] - mx); sum += att[t]; }
    for (int j = j0; j < j1; j++) o[j] = 0;
    for (int t = r; t <= pos; t += K)
        for (int j = j0; j < j1; j++) o[j] += att[t] / sum * lat[(size_t)t * dc + j];
    return mx + logf(sum);
}

#ifdef TESTING
static int dcp_unweighted;   // the tests' deliberately wrong DCP combine (w^r = 1 / ranks), to show their bound can fail
#endif

// One token at position pos through the whole model; returns the logits. exact: this token is
// prefilled as exact MLA (full latent, global rms, one softmax); else it is a decode step of scheme sc:
// g latent shards (TPLA) or K token shards (DCP, whose rms is exact).
static float *forward(const Model *m, State *s, const Scheme *sc, int token, int pos, int exact) {
    const Config *c = &m->c;
    int D = c->dim, H = c->n_heads, dc = c->dc, dr = c->dr, dn = c->dn, dv = c->dv, qd = dn + dr;
    int g = exact || sc->dcp ? 1 : sc->g, K = exact || !sc->dcp ? 1 : sc->g;
    int local = !exact && !sc->dcp && sc->rms == RMS_LOCAL;
    memcpy(s->x, m->embed + (size_t)token * D, D * sizeof(float));
    for (int l = 0; l < c->n_layers; l++) {
        const Layer *L = &m->layers[l];
        // --- attention: queries, the new latent and rope key
        rmsnorm(s->xb, s->x, L->attn_norm, D, c->eps);
        if (c->q_lora) {
            float *qlat = s->q + (size_t)H * qd;
            matmul(qlat, s->xb, L->wq_a, D, c->q_lora);
            rmsnorm(qlat, qlat, L->q_norm, c->q_lora, c->eps);
            matmul(s->q, qlat, L->wq_b, c->q_lora, H * qd);
        } else {
            matmul(s->q, s->xb, L->wq, D, H * qd);
        }
        matmul(s->kv, s->xb, L->wkv_a, D, dc + dr);
        float *lat = s->lat + (size_t)l * s->max_len * dc, *kpe = s->kpe + (size_t)l * s->max_len * dr;
        normalise_latent(s->kv, dc, local ? g : 1, local && sc->rms_fix ? sc->rms_fix + l * g : NULL, c->eps);
        rope(c, s->inv_freq, s->kv + dc, pos);
        memcpy(lat + (size_t)pos * dc, s->kv, dc * sizeof(float));
        memcpy(kpe + (size_t)pos * dr, s->kv + dc, dr * sizeof(float));
        // --- absorbed attention, per head h. The cache is split into g latent slices S_i (TPLA, README "The
        // TPLA step") or into K token sets T_r, the t with t mod K = r (DCP, README "The DCP step:
        // the tokens sliced instead"); g = K = 1 is MLA. Shard (i, r) computes on its own
        //   qa = W_UK^h^T q_nope;  score(t) = scale (qa[S_i] . c_t[S_i] + q_pe . kpe_t)
        //   o^r[S_i] = softmax_{t in T_r}(score) . c_t[S_i]   (its own softmax);  lse^r = log sum_{t in T_r} exp(score(t))
        //   v_h = W_UV^h o = sum_i W_UV^h[:, S_i] o[S_i]   (the sum is TPLA's all-reduce)
        int w = dc / g, nr = K < pos + 1 ? K : pos + 1;   // the ranks r > pos hold no token yet: weight 0, left out
        for (int h = 0; h < H; h++) {
            float *qh = s->q + (size_t)h * qd;
            const float *wuk = L->wkv_b + (size_t)h * (dn + dv) * dc, *wuv = wuk + (size_t)dn * dc;
            rope(c, s->inv_freq, qh + dn, pos);
            for (int j = 0; j < dc; j++) s->qa[j] = 0;
            for (int k = 0; k < dn; k++)
                for (int j = 0; j < dc; j++) s->qa[j] += wuk[(size_t)k * dc + j] * qh[k];
            for (int i = 0; i < g; i++) {
                for (int t = 0; t <= pos; t++) {
                    float sc_ = 0;
                    for (int j = i * w; j < (i + 1) * w; j++) sc_ += s->qa[j] * lat[(size_t)t * dc + j];
                    for (int j = 0; j < dr; j++) sc_ += qh[dn + j] * kpe[(size_t)t * dr + j];
                    s->att[t] = sc_ * c->softmax_scale;
                }
                for (int r = 0; r < nr; r++) s->lse_r[r] = attend(s->o_r + (size_t)r * dc, s->att, lat, dc, i * w, (i + 1) * w, r, K, pos);
                // DCP's combine, exact (K = 1: o = o^0):  lse = log sum_r exp(lse^r),  w^r = exp(lse^r - lse),
                //   o = sum_r w^r o^r = sum_r sum_{t in T_r} exp(score(t) - lse) c_t, MLA's softmax over every t
                float mx = s->lse_r[0], sum = 0;
                for (int r = 1; r < nr; r++) if (s->lse_r[r] > mx) mx = s->lse_r[r];
                for (int r = 0; r < nr; r++) sum += expf(s->lse_r[r] - mx);
                float lse = mx + logf(sum);
                for (int j = i * w; j < (i + 1) * w; j++) s->o[j] = 0;
                for (int r = 0; r < nr; r++) {
                    float wr = expf(s->lse_r[r] - lse);
#ifdef TESTING
                    if (dcp_unweighted) wr = 1.0f / nr;
#endif
                    for (int j = i * w; j < (i + 1) * w; j++) s->o[j] += wr * s->o_r[(size_t)r * dc + j];
                }
            }
            matmul(s->v + (size_t)h * dv, s->o, wuv, dc, dv);
        }
        matmul(s->y, s->v, L->wo, H * dv, D);
        for (int i = 0; i < D; i++) s->x[i] += s->y[i];
        ffn_block(m, s, l);
    }
    rmsnorm(s->x, s->x, m->norm, D, c->eps);
    matmul(s->logits, s->x, m->lm_head, D, c->vocab);
    return s->logits;
}

// ----------------------------------------------------------------------------
// orthogonal transforms of the latent (README "Orthogonal transforms of the latent"), folded into the weights at load

// Symmetric eigensolver (cyclic Jacobi): A (n, n) is destroyed; V gets the eigenvectors as columns,
// sorted by decreasing eigenvalue in ev.
static void eigen_sym(double *A, int n, double *V, double *ev) {
    for (int i = 0; i < n * n; i++) V[i] = 0;
    for (int i = 0; i < n; i++) V[i * n + i] = 1;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (int i = 0; i < n; i++) {
            diag += A[i * n + i] * A[i * n + i];
            for (int j = i + 1; j < n; j++) off += A[i * n + j] * A[i * n + j];
        }
        if (off <= 1e-30 * diag || off == 0) break;
        for (int p = 0; p < n; p++)
            for (int q = p + 1; q < n; q++) {
                double apq = A[p * n + q];
                if (fabs(apq) < 1e-300) continue;
                double th = (A[q * n + q] - A[p * n + p]) / (2 * apq);
                double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                double cs = 1 / sqrt(t * t + 1), sn = t * cs;
                for (int k = 0; k < n; k++) {   // A <- A J (columns p, q)
                    double akp = A[k * n + p], akq = A[k * n + q];
                    A[k * n + p] = cs * akp - sn * akq; A[k * n + q] = sn * akp + cs * akq;
                }
                for (int k = 0; k < n; k++) {   // A <- J^T A (rows p, q)
                    double apk = A[p * n + k], aqk = A[q * n + k];
                    A[p * n + k] = cs * apk - sn * aqk; A[q * n + k] = sn * apk + cs * aqk;
                }
                for (int k = 0; k < n; k++) {   // V <- V J
                    double vkp = V[k * n + p], vkq = V[k * n + q];
                    V[k * n + p] = cs * vkp - sn * vkq; V[k * n + q] = sn * vkp + cs * vkq;
                }
            }
    }
    for (int i = 0; i < n; i++) ev[i] = A[i * n + i];
    for (int i = 0; i < n; i++) {          // selection sort, decreasing
        int b = i;
        for (int j = i + 1; j < n; j++) if (ev[j] > ev[b]) b = j;
        if (b == i) continue;
        double t = ev[i]; ev[i] = ev[b]; ev[b] = t;
        for (int k = 0; k < n; k++) { t = V[k * n + i]; V[k * n + i] = V[k * n + b]; V[k * n + b] = t; }
    }
}

// Sylvester Hadamard matrix times a seeded random +-1 diagonal, over sqrt(n): U (n, n).
static int hadamard(float *U, int n, unsigned long long *rng) {
    if (n & (n - 1)) return 0;
    for (int j = 0; j < n; j++) {
        float sign = xorshift(rng) >> 63 ? -1.0f : 1.0f;
        for (int i = 0; i < n; i++) U[i * n + j] = (__builtin_popcount(i & j) & 1 ? -1.0f : 1.0f) * sign / sqrtf(n);
    }
    return 1;
}

// Re-reads the latent's weights from the checkpoint and folds into them the latent norm weight gamma
// and, if U is given, the orthogonal U (n_layers, dc, dc):
//   W_UK^h <- W_UK^h diag(gamma) U,  W_UV^h <- W_UV^h diag(gamma) U,  W_DKV[latent rows] <- U^T W_DKV.
// The cache then holds c' = U^T c_raw / rms(c_raw), and MLA's logits do not change.
static void fold_latent(Model *m, const float *U) {
    const Config *c = &m->c;
    int dc = c->dc, D = c->dim, rows = c->n_heads * (c->dn + c->dv);
    float *tmp = xmalloc((size_t)(dc > D ? dc : D) * dc * sizeof(float));
    for (int l = 0; l < c->n_layers; l++) {
        Layer *L = &m->layers[l];
        reload_tensor(m, T_WKV_A, l); reload_tensor(m, T_WKV_B, l); reload_tensor(m, T_KV_NORM, l);
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < dc; j++) L->wkv_b[(size_t)r * dc + j] *= L->kv_norm[j];
        for (int j = 0; j < dc; j++) L->kv_norm[j] = 1.0f;
        if (!U) continue;
        const float *Ul = U + (size_t)l * dc * dc;
        #pragma omp parallel for
        for (int r = 0; r < rows; r++) {      // row r of W_UK / W_UV times U
            float out[dc], *w = L->wkv_b + (size_t)r * dc;
            for (int j = 0; j < dc; j++) out[j] = 0;
            for (int k = 0; k < dc; k++) for (int j = 0; j < dc; j++) out[j] += w[k] * Ul[(size_t)k * dc + j];
            memcpy(w, out, sizeof(out));
        }
        for (int i = 0; i < dc; i++)          // tmp = U^T W_DKV[latent rows]
            for (int d = 0; d < D; d++) {
                float s = 0;
                for (int k = 0; k < dc; k++) s += Ul[(size_t)k * dc + i] * L->wkv_a[(size_t)k * D + d];
                tmp[(size_t)i * D + d] = s;
            }
        memcpy(L->wkv_a, tmp, (size_t)dc * D * sizeof(float));
    }
    free(tmp);
}

// PCA per layer: runs MLA over the calibration tokens, takes the uncentred second moment of the
// weightless latents, and returns its eigenvectors (n_layers, dc, dc) by decreasing eigenvalue;
// ev gets the eigenvalues (n_layers, dc). The model must hold gamma-folded weights without U.
static float *pca_calibrate(const Model *m, const int *tok, int n, int window, double *ev) {
    const Config *c = &m->c;
    int dc = c->dc;
    double *M = xmalloc((size_t)c->n_layers * dc * dc * sizeof(double)), *V = xmalloc((size_t)dc * dc * sizeof(double));
    float *U = xmalloc((size_t)c->n_layers * dc * dc * sizeof(float));
    State s;
    build_state(&s, c, window);
    double t0 = now_s();
    for (int t = 0; t < n; t++) {
        forward(m, &s, &MLA, tok[t], t % window, 1);
        progress("pca", t + 1, n, "tokens", t0);
        for (int l = 0; l < c->n_layers; l++) {
            const float *x = s.lat + ((size_t)l * window + t % window) * dc;
            double *Ml = M + (size_t)l * dc * dc;
            for (int i = 0; i < dc; i++) for (int j = 0; j < dc; j++) Ml[i * dc + j] += (double)x[i] * x[j] / n;
        }
    }
    for (int l = 0; l < c->n_layers; l++) {
        eigen_sym(M + (size_t)l * dc * dc, dc, V, ev + (size_t)l * dc);
        for (int i = 0; i < dc * dc; i++) U[(size_t)l * dc * dc + i] = (float)V[i];
    }
    free_state(&s); free(M); free(V);
    return U;
}

// The local-rms correction of each shard: sqrt(1 / (g e_i)), e_i = the shard's share of the eigenvalues.
static float *rms_fix_from_pca(const Config *c, const double *ev, int g) {
    float *fix = xmalloc((size_t)c->n_layers * g * sizeof(float));
    for (int l = 0; l < c->n_layers; l++) {
        double tot = 0, part[g];
        for (int i = 0; i < g; i++) part[i] = 0;
        for (int j = 0; j < c->dc; j++) { tot += ev[(size_t)l * c->dc + j]; part[j / (c->dc / g)] += ev[(size_t)l * c->dc + j]; }
        for (int i = 0; i < g; i++)   // a layer whose latents carry no energy (zero weights) keeps the plain rms
            fix[l * g + i] = tot > 0 ? (float)sqrt(tot / (g * (part[i] > 1e-30 * tot ? part[i] : 1e-30 * tot))) : 1.0f;
    }
    return fix;
}

// ----------------------------------------------------------------------------
// tokenizer: byte-level BPE exactly as HF tokenizers runs it, from the block convert.c writes.
// encode() takes three steps:
//   1. added tokens (special or not) are cut out of the text: at each position the longest one that
//      matches (found in a trie of their bytes); first those with HF's normalized: false, then, in the
//      gaps, those with normalized: true;
//   2. each gap is pre-tokenized by the checkpoint's patterns, each applied to the pieces of the one before:
//      PRETOK_GPT2 (ByteLevel with use_regex), one, matched by hand below:
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      PRETOK_DEEPSEEK_V3 (DeepSeek-V3/R1), three, matched by hand below:
//        \p{N}{1,3}      [一-龥぀-ゟ゠-ヿ]+
//        [!-/:-@[-`{-~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//      PRETOK_SPLITS (the DeepSeek-V2 family: V2, V2-Lite, V2.5, Coder, LLM, VL, Janus), a list of Split
//      patterns in a small grammar that convert compiles and match_pattern runs (tpla.h), e.g. V2's
//        [\r\n]   \s?[A-Za-zµÀ-ÖØ-öø-ƺ...]+   \s?[!-/:-~！-／：-～‘-‟　-。]+   \s+$   [一-龥ࠀ-一가-퟿]+   \p{N}
//      (the last one is HF's Digits with individual_digits). Every match and every gap between matches is a
//      piece ("Isolated"); a pattern sees only its piece;
//   3. the bytes of each piece are merged, the pair of lowest rank first (the leftmost of equals).
// The Unicode classes are Unicode 16.0's, as in the regex library HF tokenizers uses (unicode/classes.h).

#include "unicode/classes.h"

_Static_assert(PAT_L == 1 << U_L && PAT_M == 1 << U_M && PAT_N == 1 << U_N && PAT_P == 1 << U_P && PAT_S == 1 << U_S
               && PAT_WS == 1 << U_WS && PAT_N17 == 1 << U_N17, "a pattern element's class bits are 1 << U_* (tpla.h)");

typedef struct { int64_t *key; int *a, *b; size_t cap; } Table;   // open addressing: int64 key (-1: empty) -> two ints
typedef struct { PatElem e; int32_t *r; } Elem;   // a pattern element; r: its ranges, lo and hi of each
typedef struct { Elem *el; int n; } Pattern;

typedef struct {
    int n, n_merges, pretok, add_bos;  // add_bos: generate and ppl start with the config's bos
    char **str; int *len, *flags;      // the bytes of each token; TOK_* bits
    int byte_id[256];                  // the token of each byte
    int n_pat; Pattern *pat;           // the pre-tokenizer's patterns (PRETOK_SPLITS; else only n_pat)
    Table kid; int *node_tok;          // added tokens: a trie of their bytes (node 0 the root, the child of
                                       // node v by byte c at key v * 256 + c in kid); node_tok[2 v + pass / 4]:
                                       // the token of that pass (TOK_ADDED, TOK_ADDED_NORMALIZED) ending at v
    Table merge;                       // merges: key left * n + right -> rank, result
} Tokenizer;

static int rd32(const uint8_t **p) { int v; memcpy(&v, *p, 4); *p += 4; return v; }

static void table_init(Table *h, size_t n) {   // room for n keys, at most half full
    for (h->cap = 1; h->cap < 2 * (uint64_t)n + 2; h->cap *= 2) {}
    h->key = xmalloc(h->cap * sizeof(int64_t)); h->a = xmalloc(h->cap * sizeof(int)); h->b = xmalloc(h->cap * sizeof(int));
    for (size_t i = 0; i < h->cap; i++) h->key[i] = -1;
}
static size_t table_slot(const Table *h, int64_t key) {   // key's slot, or the empty one where it goes
    size_t i = (uint64_t)key * 0x9E3779B97F4A7C15ull & (h->cap - 1);
    while (h->key[i] >= 0 && h->key[i] != key) i = (i + 1) & (h->cap - 1);
    return i;
}
static void table_free(Table *h) { free(h->key); free(h->a); free(h->b); }

#define TOK_DAMAGED(...) die("tokenizer block: " __VA_ARGS__)

// PRETOK_SPLITS: int32 n, then n patterns, each int32 elements, then per element a PatElem and its ranges
static void read_patterns(Tokenizer *t, const uint8_t **pp, const uint8_t *end) {
    const uint8_t *p = *pp;
    if (end - p < 4 || (t->n_pat = rd32(&p)) < 1 || t->n_pat > PAT_MAX) TOK_DAMAGED("no pattern count in 1..%d; re-run ./convert", PAT_MAX);
    t->pat = calloc(t->n_pat, sizeof(Pattern));
    if (!t->pat) die("out of host memory");
    for (int k = 0; k < t->n_pat; k++) {
        Pattern *q = &t->pat[k];
        if (end - p < 4 || (q->n = rd32(&p)) < 1 || q->n > PAT_MAX) TOK_DAMAGED("pattern %d: no element count in 1..%d; re-run ./convert", k, PAT_MAX);
        q->el = xmalloc(q->n * sizeof(Elem));
        PatElem e[PAT_MAX];
        for (int j = 0; j < q->n; j++) {
            Elem *el = &q->el[j];
            if (end - p < (long)sizeof(PatElem)) TOK_DAMAGED("pattern %d: truncated; re-run ./convert", k);
            memcpy(&el->e, p, sizeof(PatElem)); p += sizeof(PatElem);
            e[j] = el->e;
            int nr = el->e.n_ranges;
            if (nr < 0 || (uint64_t)nr * 8 > (uint64_t)(end - p)) TOK_DAMAGED("pattern %d: %d ranges, %lld bytes are left; re-run ./convert", k, nr, (long long)(end - p));
            el->r = xmalloc((2 * (size_t)nr + 1) * sizeof(int32_t));
            memcpy(el->r, p, 8 * (size_t)nr); p += 8 * (size_t)nr;
            for (int i = 0; i < nr; i++)   // sorted and disjoint, for the binary search
                if (el->r[2 * i] < (i ? el->r[2 * i - 1] + 1 : 0) || el->r[2 * i + 1] < el->r[2 * i] || el->r[2 * i + 1] > 0x10FFFF)
                    TOK_DAMAGED("pattern %d: range %d is not sorted, disjoint and within U+10FFFF; re-run ./convert", k, i);
        }
        const char *why = pattern_error(e, q->n);
        if (why) TOK_DAMAGED("pattern %d: %s; re-run ./convert", k, why);
    }
    *pp = p;
}

static void build_tokenizer(Tokenizer *t, const Model *m) {
    memset(t, 0, sizeof(*t));
    if (!m->c.tok_bytes) return;
    const uint8_t *p = m->file + TPLA_HEADER, *end = p + m->c.tok_bytes;
    if (m->c.tok_bytes < 16) TOK_DAMAGED("%d bytes, too short; re-run ./convert", m->c.tok_bytes);
    t->n = rd32(&p); t->n_merges = rd32(&p); t->pretok = rd32(&p); t->add_bos = rd32(&p);
    if (t->n != m->c.vocab) TOK_DAMAGED("%d tokens for a vocab of %d; re-run ./convert", t->n, m->c.vocab);
    if (t->pretok < PRETOK_GPT2 || t->pretok > PRETOK_SPLITS) TOK_DAMAGED("unknown pre-tokenizer %d; re-run ./convert", t->pretok);
    if (t->pretok == PRETOK_SPLITS) read_patterns(t, &p, end);
    else t->n_pat = t->pretok == PRETOK_GPT2 ? 1 : 3;
    if ((uint64_t)t->n * 8 > (uint64_t)(end - p)) TOK_DAMAGED("%d tokens cannot fit in %d bytes; re-run ./convert", t->n, m->c.tok_bytes);
    if (t->add_bos != 0 && t->add_bos != 1) TOK_DAMAGED("add_bos is %d, not 0 or 1; re-run ./convert", t->add_bos);
    if (t->add_bos && (m->c.bos < 0 || m->c.bos >= t->n)) TOK_DAMAGED("BOS is to be added, but the bos id is %d; re-run ./convert", m->c.bos);
    t->str = xmalloc(t->n * sizeof(char *)); t->len = xmalloc(t->n * sizeof(int)); t->flags = xmalloc(t->n * sizeof(int));
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    size_t added_bytes = 0;
    for (int i = 0; i < t->n; i++) {
        if (end - p < 8) TOK_DAMAGED("truncated at token %d; re-run ./convert", i);
        int len = t->len[i] = rd32(&p), f = t->flags[i] = rd32(&p);
        if (len < 0 || len > end - p) TOK_DAMAGED("token %d has length %d, %lld bytes are left; re-run ./convert", i, len, (long long)(end - p));
        if (f & ~7 || (f & 6) == 6 || (f && !(f & 6)) || (f && !len)) TOK_DAMAGED("token %d has flags %d; re-run ./convert", i, f);
        t->str[i] = xmalloc(len + 1);
        memcpy(t->str[i], p, len); p += len;
        if (f) added_bytes += len;
        else if (len == 1 && t->byte_id[(uint8_t)t->str[i][0]] < 0) t->byte_id[(uint8_t)t->str[i][0]] = i;
    }
    for (int b = 0; b < 256; b++) if (t->byte_id[b] < 0 && utf8_byte(b)) TOK_DAMAGED("no token for byte 0x%02x: not a byte-level BPE; re-run ./convert", b);
    // the merges fill the rest of the block: 12 bytes each, so the count is bounded before anything is sized by it
    if (t->n_merges < 0 || (uint64_t)t->n_merges * 12 != (uint64_t)(end - p))
        TOK_DAMAGED("%d merges, but %lld bytes are left for them (12 each); re-run ./convert", t->n_merges, (long long)(end - p));
    table_init(&t->merge, t->n_merges);
    for (int r = 0; r < t->n_merges; r++) {
        int a = rd32(&p), b = rd32(&p), res = rd32(&p);
        if (a < 0 || a >= t->n || b < 0 || b >= t->n || res < 0 || res >= t->n)
            TOK_DAMAGED("merge %d joins tokens %d and %d into %d, outside the vocabulary [0, %d); re-run ./convert", r, a, b, res, t->n);
        if (t->len[res] != t->len[a] + t->len[b] || memcmp(t->str[res], t->str[a], t->len[a]) || memcmp(t->str[res] + t->len[a], t->str[b], t->len[b]))
            TOK_DAMAGED("merge %d: token %d is not token %d followed by token %d; re-run ./convert", r, res, a, b);
        size_t h = table_slot(&t->merge, (int64_t)a * t->n + b);
        t->merge.key[h] = (int64_t)a * t->n + b; t->merge.a[h] = r; t->merge.b[h] = res;   // a repeated pair: the last rank wins, as HF
    }
    // the trie of the added tokens: at most one node per byte, and the root
    table_init(&t->kid, added_bytes);
    t->node_tok = xmalloc(2 * (added_bytes + 1) * sizeof(int));
    t->node_tok[0] = t->node_tok[1] = -1;
    int nodes = 1;
    for (int i = 0; i < t->n; i++) {
        if (!t->flags[i]) continue;
        int v = 0;
        for (int k = 0; k < t->len[i]; k++) {
            size_t h = table_slot(&t->kid, (int64_t)v * 256 + (uint8_t)t->str[i][k]);
            if (t->kid.key[h] < 0) {
                t->kid.key[h] = (int64_t)v * 256 + (uint8_t)t->str[i][k]; t->kid.a[h] = nodes;
                t->node_tok[2 * nodes] = t->node_tok[2 * nodes + 1] = -1;
                nodes++;
            }
            v = t->kid.a[h];
        }
        int *end_tok = &t->node_tok[2 * v + t->flags[i] / TOK_ADDED_NORMALIZED];
        if (*end_tok < 0) *end_tok = i;   // two tokens of one text (HF cannot have that): the first
    }
}
#undef TOK_DAMAGED

static void free_tokenizer(Tokenizer *t) {
    for (int i = 0; i < t->n; i++) free(t->str[i]);
    for (int k = 0; t->pat && k < t->n_pat; k++) {
        for (int j = 0; t->pat[k].el && j < t->pat[k].n; j++) free(t->pat[k].el[j].r);
        free(t->pat[k].el);
    }
    free(t->str); free(t->len); free(t->flags); free(t->pat); free(t->node_tok);
    table_free(&t->kid); table_free(&t->merge);
}

static int unicode_class(unsigned cp) {   // U_* by binary search of the ranges
    int lo = 0, hi = sizeof(UNICODE_CLASSES) / sizeof(UNICODE_CLASSES[0]) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < UNICODE_CLASSES[mid].lo) hi = mid - 1;
        else if (cp > UNICODE_CLASSES[mid].hi) lo = mid + 1;
        else return UNICODE_CLASSES[mid].cls;
    }
    return U_OTHER;
}

// The text being encoded, decoded to characters: code point, class and byte offset of each (off[nc] = n);
// the ids go to out.
typedef struct {
    const Tokenizer *t;
    const uint8_t *s; int nc, *cp, *off; uint8_t *cl;
    int *out, count;
    int *next, *prev; int64_t *heap; size_t cap;   // bpe's scratch
} Enc;

// The length in characters of the pattern's match at character i of the piece that ends at e; 0: none.
typedef int (*Matcher)(const Enc *x, int i, int e);

static int run_of(const Enc *x, int i, int e, int c1, int c2) {   // end of the run of classes c1 or c2 from i
    while (i < e && (x->cl[i] == c1 || x->cl[i] == c2)) i++;
    return i;
}
static int is_crlf(int cp) { return cp == '\r' || cp == '\n'; }
static int is_ps(int cl) { return cl == U_P || cl == U_S; }
static int is_ascii_letter(int cp) { return (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z'); }

// \s+(?!\S)|\s+ at a space: the run of spaces, less the last one if a non-space follows the run
static int match_spaces(const Enc *x, int i, int e) {
    int k = run_of(x, i, e, U_WS, U_WS);
    return k == e || k - i == 1 ? k - i : k - i - 1;
}

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
static int match_gpt2(const Enc *x, int i, int e) {
    const int *c = x->cp;
    if (c[i] == '\'' && i + 1 < e) {
        int a = c[i + 1], b = i + 2 < e ? c[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    int j = i + (c[i] == ' ' && i + 1 < e && x->cl[i + 1] != U_WS);   // " ?" before a letter, number or other
    int k = j, cj = x->cl[j];
    if (cj == U_WS) return match_spaces(x, i, e);
    if (cj == U_L || cj == U_N) k = run_of(x, j, e, cj, cj);
    else while (k < e && x->cl[k] != U_WS && x->cl[k] != U_L && x->cl[k] != U_N) k++;
    return k - i;
}

static int match_digits(const Enc *x, int i, int e) {   // \p{N}{1,3}
    int k = i;
    while (k < e && k < i + 3 && x->cl[k] == U_N) k++;
    return k - i;
}

static int match_cjk(const Enc *x, int i, int e) {   // [一-龥぀-ゟ゠-ヿ]+: U+4E00..U+9FA5, U+3040..U+30FF
    int k = i;
    while (k < e && ((x->cp[k] >= 0x4E00 && x->cp[k] <= 0x9FA5) || (x->cp[k] >= 0x3040 && x->cp[k] <= 0x30FF))) k++;
    return k - i;
}

// [!-/:-@[-`{-~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
static int match_deepseek(const Enc *x, int i, int e) {
    const int *c = x->cp;
    const uint8_t *cl = x->cl;
    int k;
    if (c[i] < 128 && ispunct(c[i]) && i + 1 < e && is_ascii_letter(c[i + 1])) {
        for (k = i + 1; k < e && is_ascii_letter(c[k]); k++) {}
        return k - i;
    }
    int lm_next = i + 1 < e && (cl[i + 1] == U_L || cl[i + 1] == U_M);
    if (!is_crlf(c[i]) && cl[i] != U_L && !is_ps(cl[i]) && lm_next) return run_of(x, i + 1, e, U_L, U_M) - i;
    if (cl[i] == U_L || cl[i] == U_M) return run_of(x, i, e, U_L, U_M) - i;
    int j = i + (c[i] == ' ' && i + 1 < e && is_ps(cl[i + 1]));
    if (is_ps(cl[j])) {
        for (k = run_of(x, j, e, U_P, U_S); k < e && is_crlf(c[k]); k++) {}
        return k - i;
    }
    if (cl[i] != U_WS) return 0;
    int last = -1;   // \s*[\r\n]+: up to the last CR or LF of the run of spaces
    for (k = i; k < e && cl[k] == U_WS; k++) if (is_crlf(c[k])) last = k;
    return last >= 0 ? last + 1 - i : match_spaces(x, i, e);
}

static long tok_work;   // characters looked at by the added tokens' trie and the Split patterns (the tests bound it)

// A character of an element's class: one of its Unicode classes or in one of its ranges (or neither, PAT_NOT)
static int elem_takes(const Elem *el, int cp, int cl) {
    tok_work++;
    int in = el->e.flags >> cl & 1, lo = 0, hi = el->e.n_ranges - 1;
    while (!in && lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < el->r[2 * mid]) hi = mid - 1; else if (cp > el->r[2 * mid + 1]) lo = mid + 1; else in = 1;
    }
    return in != !!(el->e.flags & PAT_NOT);
}

// The end of a match of elements [k, n) of p from character i of the piece that ends at e, or -1. As Oniguruma
// does: each element takes all it can and gives back one character at a time while the rest fails; $ is the end
// of the piece or a "\n" next (Ruby syntax). pattern_error (tpla.h) keeps the tries few.
static int match_elems(const Enc *x, const Pattern *p, int k, int i, int e) {
    if (k == p->n) return i;
    const Elem *el = &p->el[k];
    if (el->e.flags & PAT_END) return i == e || x->cp[i] == '\n' ? match_elems(x, p, k + 1, i, e) : -1;
    int r = 0;
    while (i + r < e && r != el->e.max && elem_takes(el, x->cp[i + r], x->cl[i + r])) r++;
    for (; r >= el->e.min; r--) {
        int end = match_elems(x, p, k + 1, i + r, e);
        if (end >= 0) return end;
    }
    return -1;
}

// A pattern at character i: the length of its match; else minus the number of characters from i at which no
// match starts. When the first element repeats without limit, a failed try from i rules out the rest of its
// run too (a try from inside the run could only go on from places this one tried), so the work stays linear.
static int match_pattern(const Enc *x, const Pattern *p, int i, int e) {
    int end = match_elems(x, p, 0, i, e), k = i + 1;
    const Elem *first = &p->el[0];
    if (end > i) return end - i;
    if (first->e.max < 0 && elem_takes(first, x->cp[i], x->cl[i]))
        while (k < e && elem_takes(first, x->cp[k], x->cl[k])) k++;
    return i - k;
}

static int pair_rank(const Tokenizer *t, int a, int b, int *res) {   // INT32_MAX: no such merge
    size_t h = table_slot(&t->merge, (int64_t)a * t->n + b);
    if (t->merge.key[h] < 0) return INT32_MAX;
    *res = t->merge.b[h];
    return t->merge.a[h];
}

// A min-heap of candidate merges, key = rank << 32 | position of the left symbol.
static void heap_push(int64_t *h, int *n, int64_t key) {
    int i = (*n)++;
    for (; i > 0 && h[(i - 1) / 2] > key; i = (i - 1) / 2) h[i] = h[(i - 1) / 2];
    h[i] = key;
}
static int64_t heap_pop(int64_t *h, int *n) {
    int64_t top = h[0], last = h[--*n];
    int i = 0;
    for (int c; (c = 2 * i + 1) < *n; i = c) {
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= last) break;
        h[i] = h[c];
    }
    h[i] = last;
    return top;
}

// The bytes of characters [a, b), merged as HF's BPE does: the pair of lowest rank first, the leftmost
// of equals, until none is left (a heap of the candidate pairs: O(m log m) for m bytes; a popped pair
// whose symbols have changed since is skipped). The ids are appended to x->out.
static void bpe(Enc *x, int a, int b) {
    const Tokenizer *t = x->t;
    int *id = x->out + x->count, m = x->off[b] - x->off[a], nh = 0, res;
    if (!m) return;
    if ((size_t)m > x->cap) {   // scratch for the longest piece so far
        x->cap = m;
        x->next = realloc(x->next, m * sizeof(int)); x->prev = realloc(x->prev, m * sizeof(int));
        x->heap = realloc(x->heap, 3 * (size_t)m * sizeof(int64_t));
        if (!x->next || !x->prev || !x->heap) die("out of host memory: a piece of %d bytes", m);
    }
    int *nx = x->next, *pv = x->prev;
    int64_t *h = x->heap;
    for (int i = 0; i < m; i++) {
        id[i] = t->byte_id[x->s[x->off[a] + i]]; nx[i] = i + 1 < m ? i + 1 : -1; pv[i] = i - 1;
        int r = i ? pair_rank(t, id[i - 1], id[i], &res) : INT32_MAX;
        if (r != INT32_MAX) heap_push(h, &nh, (int64_t)r << 32 | (i - 1));
    }
    while (nh) {
        int64_t key = heap_pop(h, &nh);
        int i = key & 0xFFFFFFFF, j = id[i] >= 0 ? nx[i] : -1;
        if (j < 0 || pair_rank(t, id[i], id[j], &res) != key >> 32) continue;   // stale
        id[i] = res; id[j] = -1;   // j joins i
        nx[i] = nx[j];
        if (nx[i] >= 0) pv[nx[i]] = i;
        int r;
        if (pv[i] >= 0 && (r = pair_rank(t, id[pv[i]], id[i], &res)) != INT32_MAX) heap_push(h, &nh, (int64_t)r << 32 | pv[i]);
        if (nx[i] >= 0 && (r = pair_rank(t, id[i], id[nx[i]], &res)) != INT32_MAX) heap_push(h, &nh, (int64_t)r << 32 | i);
    }
    int k = 0;
    for (int i = 0; i >= 0; i = nx[i]) id[k++] = id[i];
    x->count += k;
}

// The length of the match of pattern s of the pre-tokenizer at character i of the piece that ends at e;
// <= 0: none (and none at the next -len - 1 characters)
static int match_step(const Enc *x, int s, int i, int e) {
    static const Matcher deepseek[] = {match_digits, match_cjk, match_deepseek};
    const Tokenizer *t = x->t;
    if (t->pretok == PRETOK_SPLITS) return match_pattern(x, &t->pat[s], i, e);
    return t->pretok == PRETOK_GPT2 ? match_gpt2(x, i, e) : deepseek[s](x, i, e);
}

// Splits characters [a, b) by pattern s (Isolated: every match and every gap is a piece) and hands each
// piece to the next pattern; after the last one, to bpe.
static void split(Enc *x, int a, int b, int s) {
    if (s == x->t->n_pat) { bpe(x, a, b); return; }
    int gap = a;
    for (int i = a; i < b;) {
        int len = match_step(x, s, i, b);
        if (len <= 0) { i += len < 0 ? -len : 1; continue; }
        if (gap < i) split(x, gap, i, s + 1);
        split(x, i, i + len, s + 1);
        gap = i += len;
    }
    if (gap < b) split(x, gap, b, s + 1);
}

// Cuts characters [a, b) at the added tokens of one pass (TOK_ADDED, then TOK_ADDED_NORMALIZED): at
// each position the longest that matches, found by walking the trie of their bytes as far as the text
// follows it. Tokens go to out; the gaps to the next pass, then to split.
static void cut_added(Enc *x, int a, int b, int pass) {
    const Tokenizer *t = x->t;
    if (pass > TOK_ADDED_NORMALIZED) { split(x, a, b, 0); return; }
    int gap = a, end = x->off[b];
    for (int i = a; i < b; i++) {
        int at = x->off[i], id = -1, len = 0;
        for (int v = 0, k = at; k < end; k++, tok_work++) {
            size_t h = table_slot(&t->kid, (int64_t)v * 256 + x->s[k]);
            if (t->kid.key[h] < 0) break;
            v = t->kid.a[h];
            if (t->node_tok[2 * v + pass / TOK_ADDED_NORMALIZED] >= 0) id = t->node_tok[2 * v + pass / TOK_ADDED_NORMALIZED], len = k + 1 - at;
        }
        if (id < 0) continue;
        if (gap < i) cut_added(x, gap, i, pass * 2);
        x->out[x->count++] = id;
        int j = i;
        while (x->off[j] < at + len) j++;
        gap = j; i = j - 1;
    }
    if (gap < b) cut_added(x, gap, b, pass * 2);
}

// Encodes n bytes of UTF-8 text (what: its name, for the error message) into out (room for n ids);
// returns the number of ids.
static int encode(const Tokenizer *t, const char *text, size_t n, int *out, const char *what) {
    const uint8_t *s = (const uint8_t *)text;
    long bad = utf8_invalid(s, n);
    if (bad >= 0)
        die("%s: invalid UTF-8 at byte %ld (0x%02x); the tokenizer, like HF's, takes UTF-8 text only: convert it first "
            "(e.g. iconv -f latin1 -t utf-8)", what, bad, s[bad]);
    if (n >= INT32_MAX / 2) die("%s: %zu bytes of text; at most 1 GB can be encoded at once", what, n);
    Enc x = {t, s, 0, xmalloc((n + 1) * sizeof(int)), xmalloc((n + 1) * sizeof(int)), xmalloc(n + 1), out, 0, NULL, NULL, NULL, 0};
    for (size_t i = 0; i < n; x.nc++) {
        int c = s[i], k = c < 0x80 ? 0 : c < 0xE0 ? 1 : c < 0xF0 ? 2 : 3;
        unsigned cp = k ? c & (0x3F >> k) : c;
        for (int j = 1; j <= k; j++) cp = cp << 6 | (s[i + j] & 0x3F);
        x.cp[x.nc] = cp; x.cl[x.nc] = unicode_class(cp); x.off[x.nc] = i;
        i += k + 1;
    }
    x.off[x.nc] = n;
    cut_added(&x, 0, x.nc, TOK_ADDED);
    free(x.cp); free(x.off); free(x.cl); free(x.next); free(x.prev); free(x.heap);
    return x.count;
}

// ----------------------------------------------------------------------------
// sampler: greedy at temperature 0, else top-p (nucleus) sampling, as llama2.c

typedef struct { float temp, topp; unsigned long long rng; } Sampler;

static int argmax(const float *x, int n) { int b = 0; for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i; return b; }

typedef struct { float p; int i; } ProbIndex;
static int cmp_prob(const void *a, const void *b) {
    float x = ((const ProbIndex *)a)->p, y = ((const ProbIndex *)b)->p;
    return x > y ? -1 : x < y ? 1 : 0;
}

// The probabilities are exp((x - max) / T): the exponent is at most 0 for any temperature, so a tiny T
// (1e-38) gives the argmax, not inf / inf. The logits are finite (check_logits).
static int sample(Sampler *sm, const float *logits, int n) {
    if (sm->temp == 0) return argmax(logits, n);
    float *p = xmalloc(n * sizeof(float)), mx = logits[argmax(logits, n)], sum = 0;
    ProbIndex *pi = xmalloc(n * sizeof(ProbIndex));
    for (int i = 0; i < n; i++) { p[i] = expf((logits[i] - mx) / sm->temp); sum += p[i]; }
    for (int i = 0; i < n; i++) p[i] /= sum;
    for (int i = 0; i < n; i++) { pi[i].p = p[i]; pi[i].i = i; }
    qsort(pi, n, sizeof(ProbIndex), cmp_prob);
    float cum = 0, r;
    int last = n - 1;
    for (int i = 0; i < n; i++) { cum += pi[i].p; if (cum > sm->topp) { last = i; break; } }
    r = rand_f32(&sm->rng) * cum;
    int tok = pi[last].i;
    for (int i = 0; i <= last; i++) { r -= pi[i].p; if (r <= 0) { tok = pi[i].i; break; } }
    free(p); free(pi);
    return tok;
}

// Fails, naming the position, if logits (rows of V, the first at position pos) hold NaN or an
// infinity: finite weights (checked at load) can still overflow float32, and no token, file or score
// may be made of that.
static void check_logits(const float *x, int rows, int V, int pos) {
    for (size_t i = 0; i < (size_t)rows * V; i++)
        if (!isfinite(x[i]))
            die("%s: the logits of position %zu hold %g: the weights overflow float32", model_path, pos + i / V, x[i]);
}

// ----------------------------------------------------------------------------
// engine: the CPU reference or the GPU engine behind the same three calls

typedef struct {
    const Model *m;
    Scheme s;
    State st;      // CPU
    GPU *gpu;      // or GPU
    float *logits;
    int pos;
} Engine;

static void build_engine(Engine *e, const Model *m, const Scheme *s, int use_gpu, int ngpu, int max_len) {
    memset(e, 0, sizeof(*e));
    e->m = m; e->s = *s;
    if (use_gpu) {
        e->gpu = gpu_build(m, &m->c, s, ngpu, 1, max_len, 1);
        e->logits = xmalloc((size_t)m->c.vocab * sizeof(float));
    } else {
        build_state(&e->st, &m->c, max_len);
    }
}

static void free_engine(Engine *e) {
    if (e->gpu) { gpu_free(e->gpu); free(e->logits); } else free_state(&e->st);
}

static void engine_reset(Engine *e) { e->pos = 0; if (e->gpu) gpu_reset(e->gpu); }

// Feeds n tokens; the first are exact prefill, the rest (if !exact) decode steps. Returns the logits
// of the last token; all (n, vocab) go to out if it is not NULL.
static float *engine_feed(Engine *e, const int *tok, int n, int exact, float *out) {
    const Config *c = &e->m->c;
    if (!e->gpu && e->pos + n > e->st.max_len) die("sequence longer than the %d positions allocated", e->st.max_len);
    float *lg = NULL;
    if (e->gpu && exact) {   // the GPU prefills a whole chunk at once
        gpu_prefill(e->gpu, 0, tok, n, out ? out : e->logits, out != NULL);
        e->pos += n;
        return out ? out + (size_t)(n - 1) * c->vocab : e->logits;
    }
    for (int i = 0; i < n; i++, e->pos++) {
        if (e->gpu) { gpu_decode(e->gpu, tok + i, e->logits); lg = e->logits; }
        else lg = forward(e->m, &e->st, &e->s, tok[i], e->pos, exact);
        if (out) memcpy(out + (size_t)i * c->vocab, lg, c->vocab * sizeof(float));
    }
    return lg;
}

#ifndef TPLA_CUDA
// a build without nvcc: the GPU engine is absent
int gpu_count(void) { return 0; }
GPU *gpu_build(const Model *m, const Config *c, const Scheme *s, int ngpu, int batch, int max_len, int ffn) {
    (void)m; (void)c; (void)s; (void)ngpu; (void)batch; (void)max_len; (void)ffn;
    die("this build has no GPU engine");
}
void gpu_prefill(GPU *G, int b, const int *t, int n, float *l, int all) { (void)G; (void)b; (void)t; (void)n; (void)l; (void)all; }
void gpu_decode(GPU *G, const int *t, float *l) { (void)G; (void)t; (void)l; }
void gpu_reset(GPU *G) { (void)G; }
void gpu_free(GPU *G) { (void)G; }
void gpu_attention(const uint16_t *Q, const uint16_t *c, const int *l, int B, int h, int dcs, int dr, int ml, int nt, float sc, float *O) {
    (void)Q; (void)c; (void)l; (void)B; (void)h; (void)dcs; (void)dr; (void)ml; (void)nt; (void)sc; (void)O;
}
void gpu_bench(const Config *c, const Scheme *s, int k, int o, int b, const int *x, int n, int d, int st, const char *nm, const char *csv) {
    (void)c; (void)s; (void)k; (void)o; (void)b; (void)x; (void)n; (void)d; (void)st; (void)nm; (void)csv;
}
void gpu_bench_prefill(const Config *c, const Scheme *s, int k, int n, int f, const char *nm) {
    (void)c; (void)s; (void)k; (void)n; (void)f; (void)nm;
}
#endif

// ----------------------------------------------------------------------------
// command line

enum { M_GENERATE, M_LOGITS, M_PPL, M_TOKENIZE, M_BENCH };
static const char *MODES[] = {"generate", "logits", "ppl", "tokenize", "bench"};
enum { P_MLA, P_TPLA, P_DCP };
static const char *P_NAMES[] = {"mla", "tpla", "dcp"}, *P_SHOWN[] = {"MLA", "TPLA", "DCP"};

typedef struct {
    const char *model, *prompt, *in, *out, *calib;
    int mode, gpu, ngpu, P, k, steps, batch, dense, seed, rank_of;   // P: P_MLA, P_TPLA or P_DCP
    int g[8], ng, T[3], nT, r[2], nr, split, ctx[16], nctx;
    float temp, topp;
} Args;

// The usage: asked for (-h), on stdout with exit 0; after a wrong call, on stderr with exit 1.
static void usage(FILE *f, int code) {
    fprintf(f,
        "usage: ./run MODEL [options]   MODEL: a .bin from ./convert, or dsv3 / kimik2 / dsv3-h16 / v2lite for -m bench\n"
        "  -m MODE   generate (default) | logits | ppl | tokenize | bench\n"
        "  -d DEV    cpu | gpu (default: gpu if one is present)\n"
        "  -K N      GPUs to use (default: all; 1 in a build without NCCL)\n"
        "  -P S      mla (default) | tpla (latent shards) | dcp (token shards)\n"
        "  -g N      shards: TPLA's latent slices g, DCP's token sets K (DCP on a GPU: one a GPU); a\n"
        "            list like 2,4 in ppl mode (default: the GPU count, 2 on the CPU; bench -R N: N)\n"
        "  -T X      orthogonal transform none (default) | hadamard | pca; a list in ppl mode\n"
        "  -r X      rms of a decode token's latent: local (default) | global; a list in ppl mode\n"
        "  -k P      the first P tokens are prefilled exactly (default: the whole prompt; ppl: n/4);\n"
        "            bench: time the prefill of one P-token prompt instead of decode steps\n"
        "  -c FILE   calibration text for -T pca (default: the model's calib.txt beside it)\n"
        "  -w W      GPU placement of W_UQ/W_O under TPLA and DCP: rep (replicated) | split (by head) (default split)\n"
        "  -i TEXT   prompt (default \"def \"); tokenize: the text\n"
        "  -n N      generate: new tokens (default 64); ppl: window (default 512); bench: timed steps (default 20)\n"
        "  -t T      temperature (default 0.8; 0: greedy, which takes no -p or -s)\n"
        "  -p P      top-p (default 0.9);  -s S  seed (default 1)\n"
        "  -f FILE   input: token ids (logits), text (ppl, tokenize);  -o FILE: logits output (float32)\n"
        "  -b B      bench batch (default 0: the largest that fits)\n"
        "  -l L,L..  bench contexts (default 1024,2048,4096,8192,16384,32768)\n"
        "  -R N      bench: one GPU runs rank 0 of an N-GPU layout, collectives left out (the rank bench)\n"
        "  -F        bench: keep the FFN (dsv3/kimik2: dense, 18432 wide; the paper removes it; v2lite: always)\n"
        "  -h        this help (also --help)\n"
        "A flag that would do nothing (not read by the mode, a TPLA flag under MLA or DCP, -p or -s with -t 0, a GPU\n"
        "flag on the CPU) is an error.\n");
    exit(code);
}

// A flag's value: all of it a number within [lo, hi], or an error naming the flag and the range.
static long parse_int(const char *v, const char *flag, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno == ERANGE || x < lo || x > hi) die("%s: '%s' is not an integer from %ld to %ld", flag, v, lo, hi);
    return x;
}
static float parse_float(const char *v, const char *flag, double lo, double hi) {
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !(x >= lo && x <= hi)) die("%s: '%s' is not a number from %g to %g", flag, v, lo, hi);
    return x;
}

// A comma-separated list: integers in [1, hi] (names NULL), or names (their indices).
static int parse_list(const char *s, const char *const *names, int nnames, int *out, int max, const char *flag, long hi) {
    int n = 0;
    for (const char *p = s;; p++) {
        const char *e = strchr(p, ',');
        char tok[32];
        int len = e ? (int)(e - p) : (int)strlen(p);
        if (n == max) die("%s: more than %d values", flag, max);
        if (len == 0 || len >= (int)sizeof(tok)) die("%s: '%s' is not a list like 2,4", flag, s);
        memcpy(tok, p, len); tok[len] = 0;
        if (!names) out[n++] = parse_int(tok, flag, 1, hi);
        else {
            int k = 0;
            while (k < nnames && strcmp(tok, names[k])) k++;
            if (k == nnames) {
                char all[128] = "";
                for (int j = 0; j < nnames; j++) snprintf(all + strlen(all), sizeof(all) - strlen(all), "%s%s", j ? " | " : "", names[j]);
                die("%s: unknown value '%s' (%s)", flag, tok, all);
            }
            out[n++] = k;
        }
        if (!e) return n;
        p = e;
    }
}

// Fails, naming the problem, unless path can be read as a file (reads nothing: a pipe stays whole).
static void check_input(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || access(path, R_OK) != 0) die("%s: cannot open (%s)", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) die("%s: is a directory; give a file", path);
}

// Reads a whole file (also a pipe or /dev/stdin: it is read to its end) and NUL-terminates it.
static char *read_file(const char *path, size_t *len) {
    struct stat st;
    int fd = in_open(path, 1, &st);
    FILE *f = fd < 0 ? NULL : fdopen(fd, "rb");
    if (!f) die("%s: cannot open (%s)", path, strerror(errno));
    size_t n = 0, cap = 1 << 16, k;
    char *buf = xmalloc(cap);
    while ((k = fread(buf + n, 1, cap - 1 - n, f)) > 0)
        if ((n += k) == cap - 1) {
            if (cap > (size_t)1 << 30) die("%s: larger than 1 GiB; give a smaller file", path);
            buf = xrealloc(buf, cap *= 2);
        }
    if (ferror(f)) die("%s: read failed (%s)", path, strerror(errno));
    fclose(f);
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static int *read_ids(const char *path, int vocab, int *n) {
    size_t len;
    char *txt = read_file(path, &len), *p = txt, *end, *nul = memchr(txt, 0, len);
    if (nul) die("%s: a NUL byte at byte %zu; not a list of token ids", path, (size_t)(nul - txt));
    int cap = 1024, *ids = xmalloc(cap * sizeof(int));
    *n = 0;
    for (;;) {
        long v = strtol(p, &end, 10);
        if (end == p) break;
        if (v < 0 || v >= vocab) die("%s: token id %ld outside the vocabulary [0, %d)", path, v, vocab);
        if (*n == cap) ids = xrealloc(ids, (cap *= 2) * sizeof(int));
        ids[(*n)++] = v; p = end;
    }
    while (*p && isspace((unsigned char)*p)) p++;
    if (*p) die("%s: not a list of token ids (at '%.10s')", path, p);
    free(txt);
    return ids;
}

// The text of a file as token ids, after bos if bos >= 0; *n gets their count.
static int *read_tokens(const Tokenizer *t, const char *path, int bos, int *n) {
    if (!t->n) die("%s: this checkpoint has no tokenizer to read a text with (./convert found no tokenizer.json)", path);
    size_t len;
    char *text = read_file(path, &len);
    int *ids = xmalloc((len + 2) * sizeof(int));
    *n = 0;
    if (bos >= 0) ids[(*n)++] = bos;
    *n += encode(t, text, len, ids + *n, path);
    free(text);
    return ids;
}

// The calibration text of -T pca as token ids, at most 8192 of them (*n gets their count); too few for PCA's
// estimate of a dc x dc second moment is an error. main reads it before any work, setup_transform to calibrate.
static int *calib_tokens(const Tokenizer *tok, const char *calib, int dc, int *n) {
    int *ids = read_tokens(tok, calib, -1, n);
    if (*n > 8192) *n = 8192;
    if (*n >= dc) return ids;
    free(ids);
    die("%s: %d calibration tokens, fewer than the %d latent dimensions PCA estimates; give a longer text with -c", calib, *n, dc);
}

// Sets up the latent transform T for the s->g shards of s: folds it into m, fills s->rms_fix for PCA
// (calibrated once: *U_pca and *ev are kept for the next call).
static void setup_transform(Model *m, Scheme *s, int T, const Tokenizer *tok, const char *calib, float **U_pca, double **ev) {
    const Config *c = &m->c;
    fold_latent(m, NULL);
    s->rms_fix = NULL;
    if (T == T_NONE) return;
    float *U;
    if (T == T_HADAMARD) {
        unsigned long long rng = 0x7f4a7c15ull;
        if (c->dc & (c->dc - 1)) die("-T hadamard needs kv_lora_rank a power of 2, not %d", c->dc);
        U = xmalloc((size_t)c->n_layers * c->dc * c->dc * sizeof(float));
        for (int l = 0; l < c->n_layers; l++) hadamard(U + (size_t)l * c->dc * c->dc, c->dc, &rng);
        fold_latent(m, U);
        free(U);
        return;
    }
    if (!*U_pca) {   // PCA: calibrate once, on MLA with gamma folded
        int n, *ids = calib_tokens(tok, calib, c->dc, &n), window = c->max_seq < 512 ? c->max_seq : 512;
        if (n < 2 * c->dc) fprintf(stderr, "note: only %d calibration tokens for a %d-wide latent\n", n, c->dc);
        fprintf(stderr, "pca: calibrating on %d tokens of %s (MLA on the CPU)...\n", n, calib);
        *ev = xmalloc((size_t)c->n_layers * c->dc * sizeof(double));
        *U_pca = pca_calibrate(m, ids, n, window, *ev);
        free(ids);
    }
    fold_latent(m, *U_pca);
    s->rms_fix = rms_fix_from_pca(c, *ev, s->g);
}

static const char *T_NAMES[] = {"none", "hadamard", "pca"}, *R_NAMES[] = {"local", "global"};

static void print_text(const Tokenizer *t, int id) {   // special tokens (BOS, EOS, ...) are not shown
    if (id >= 0 && id < t->n && !(t->flags[id] & TOK_SPECIAL)) fwrite(t->str[id], 1, t->len[id], stdout);
    fflush(stdout);
}

// The scheme -P asks for, with g shards and rms rule r (DCP's rms is exact, as MLA's).
static Scheme scheme_of(const Args *a, int g, int r) {
    if (a->P == P_MLA) return MLA;
    return (Scheme){g, a->P == P_DCP ? RMS_GLOBAL : r, NULL, a->split, a->P == P_DCP};
}

// bf16 cache bytes per token per GPU: TPLA holds dc/g + dr values of every token, DCP dc + dr of 1/K of them
static double cache_bytes_per_gpu(const Config *c, const Scheme *s) {
    return (s->dcp ? (double)(c->dc + c->dr) / s->g : c->dc / s->g + c->dr) * 2 * c->n_layers;
}

// generate: continue the prompt under MLA, and under TPLA or DCP too with -P, and compare the two
static void mode_generate(Model *m, Args *a, Tokenizer *tok, int use_gpu) {
    if (!tok->n) die("this checkpoint has no tokenizer; use -m logits with token ids");
    const Config *c = &m->c;
    int cap = strlen(a->prompt) + 1, *ids = xmalloc((cap + a->steps) * sizeof(int)), n = 0;
    if (tok->add_bos) ids[n++] = c->bos;   // as HF's tokenizer does for this checkpoint (convert decides)
    n += encode(tok, a->prompt, strlen(a->prompt), ids + n, "-i");
    if (n == 0) die("-i: an empty prompt, and this checkpoint adds no BOS (as HF's tokenizer); give some text");
    if (a->k > n) die("-k %d: the prompt has %d tokens; -k prefills at most all of them", a->k, n);
    int k = a->k < 0 ? n : a->k, len = n + a->steps;
    if (len > c->max_seq) die("prompt plus %d steps is %d tokens, more than max_position_embeddings %d", a->steps, len, c->max_seq);
    if (a->P != P_MLA && k == n && a->steps == 1)
        die("-n 1: the one new token follows the exact prefill of the whole prompt, so nothing is decoded as %s; "
            "give -n 2 or more, or -k smaller than the prompt's %d tokens", P_SHOWN[a->P], n);
    int nrun = a->P != P_MLA ? 2 : 1, *gen[2];
    float *U = NULL; double *ev = NULL;
    for (int run = 0; run < nrun; run++) {
        Scheme s = run ? scheme_of(a, a->g[0], a->r[0]) : MLA;
        setup_transform(m, &s, run ? a->T[0] : T_NONE, tok, a->calib, &U, &ev);
        Engine e;
        build_engine(&e, m, &s, use_gpu, a->ngpu, len);
        Sampler sm = {a->temp, a->topp, (unsigned long long)a->seed * 2654435761ull + 1};
        gen[run] = xmalloc(a->steps * sizeof(int));
        if (run) printf("\n");
        printf("--- %s", P_SHOWN[run ? a->P : P_MLA]);
        if (run && s.dcp) printf(" K=%d", s.g);
        else if (run) printf(" g=%d T=%s r=%s", s.g, T_NAMES[a->T[0]], R_NAMES[a->r[0]]);
        printf(" (%s), cache per token per GPU: %.0f bytes\n", use_gpu ? "gpu" : "cpu", cache_bytes_per_gpu(c, &s));
        for (int i = 0; i < n; i++) print_text(tok, ids[i]);
        double t0 = now_s();
        float *lg = engine_feed(&e, ids, k, 1, NULL);
        if (k < n) lg = engine_feed(&e, ids + k, n - k, 0, NULL);
        int i;
        for (i = 0; i < a->steps; i++) {
            check_logits(lg, 1, c->vocab, e.pos - 1);
            int next = sample(&sm, lg, c->vocab);
            gen[run][i] = next;
            if (next == c->eos) break;
            print_text(tok, next);
            if (i + 1 < a->steps) lg = engine_feed(&e, &next, 1, 0, NULL);
        }
        for (; i < a->steps; i++) gen[run][i] = -1;
        printf("\n(%.1f tok/s)\n", a->steps / (now_s() - t0));
        fflush(stdout);
        free_engine(&e);
        free((void *)s.rms_fix);
    }
    if (nrun == 2) {
        int same = 0;
        Scheme s = scheme_of(a, a->g[0], a->r[0]);
        while (same < a->steps && gen[0][same] == gen[1][same]) same++;
        printf("\nthe first %d of %d generated tokens agree; cache per token per GPU: MLA %.0f bytes, %s %.0f bytes (%.2fx less)\n",
               same, a->steps, cache_bytes_per_gpu(c, &MLA), P_SHOWN[a->P], cache_bytes_per_gpu(c, &s),
               cache_bytes_per_gpu(c, &MLA) / cache_bytes_per_gpu(c, &s));
        free(gen[1]);
    }
    free(gen[0]); free(U); free(ev); free(ids);
}

// logits: the first k ids prefilled exactly, the rest as decode steps; writes (T, vocab) float32
static void mode_logits(Model *m, Args *a, Tokenizer *tok, int use_gpu) {
    if (!a->in || !a->out) die("-m logits needs -f IDS and -o OUT.f32");
    FILE *f = out_open(a->out);   // before the work: an output that cannot be written fails now
    const Config *c = &m->c;
    int n, *ids = read_ids(a->in, c->vocab, &n);
    if (n == 0 || n > c->max_seq) die("%s: %d ids; need 1 to %d", a->in, n, c->max_seq);
    if (a->k > n) die("-k %d: %s holds %d ids; -k prefills at most all of them", a->k, a->in, n);
    int k = a->k < 0 ? n : a->k;
    if (a->P != P_MLA && k == n)
        die("-P %s: all %d ids are prefilled exactly (-k %s), so none is decoded as %s; give -k smaller than %d",
            P_NAMES[a->P], n, a->k < 0 ? "defaults to all" : "is not smaller", P_SHOWN[a->P], n);
    Scheme s = scheme_of(a, a->g[0], a->r[0]);
    float *U = NULL; double *ev = NULL;
    setup_transform(m, &s, a->P == P_TPLA ? a->T[0] : T_NONE, tok, a->calib, &U, &ev);
    Engine e;
    build_engine(&e, m, &s, use_gpu, a->ngpu, n);
    float *out = xmalloc((size_t)n * c->vocab * sizeof(float));
    if (k) engine_feed(&e, ids, k, 1, out);
    if (k < n) engine_feed(&e, ids + k, n - k, 0, out + (size_t)k * c->vocab);
    check_logits(out, n, c->vocab, 0);
    out_write(f, out, (size_t)n * c->vocab * sizeof(float));
    printf("wrote %s: %d positions x %d logits (%d prefilled exactly, %d decoded as %s)\n", a->out, n, c->vocab, k, n - k,
           P_SHOWN[a->P]);
    out_close(f, a->out);
    free_engine(&e); free(out); free(ids); free(U); free(ev); free((void *)s.rms_fix);
}

static float logsumexp(const float *x, int n) {   // log sum_i exp(x_i), taken from the largest term
    float mx = x[argmax(x, n)], s = 0;
    for (int i = 0; i < n; i++) s += expf(x[i] - mx);
    return mx + logf(s);
}
static void log_softmax(float *x, int n) { float lse = logsumexp(x, n); for (int i = 0; i < n; i++) x[i] -= lse; }

// ppl: decode-mode perplexity. The text is cut into windows of n tokens; in each, the first k are
// prefilled exactly and the rest are teacher-forced decode steps. One row per scheme, next to MLA,
// with the mean KL(MLA || scheme) per scored token, overall and by distance from the prefill.
#define NB 4
typedef struct { Engine e; Scheme s; double nll, kl, klb[NB], cnt, cntb[NB]; } PplRow;

static double kl_div(float *p, float *q, int V) {   // KL(p || q) of two logit rows, made log-softmax in place
    log_softmax(p, V); log_softmax(q, V);
    double d = 0;
    for (int i = 0; i < V; i++) d += expf(p[i]) * (p[i] - q[i]);
    return d;
}

static void mode_ppl(Model *m, Args *a, Tokenizer *tok, int use_gpu) {
    if (!a->in) die("-m ppl needs -f TEXT");
    const Config *c = &m->c;
    int n, V = c->vocab, *ids = read_tokens(tok, a->in, tok->add_bos ? c->bos : -1, &n);   // one BOS before the whole text, as HF's tokenizer would
    int W = a->steps > 0 ? a->steps : (c->max_seq < 512 ? c->max_seq : 512);
    if (W > c->max_seq) die("-n %d: windows longer than max_position_embeddings %d", W, c->max_seq);
    int k = a->k >= 0 ? a->k : W / 4, nwin = n / W;
    if (k >= W - 1) die("-k %d%s leaves nothing to score in windows of %d tokens", k, a->k < 0 ? " (n/4, the default)" : "", W);
    if (nwin == 0) die("%s: %d tokens, fewer than one window of %d", a->in, n, W);
    if (a->P != P_TPLA) { a->nT = a->nr = 1; a->T[0] = T_NONE; a->r[0] = RMS_GLOBAL; }   // DCP, or MLA as decode steps
    if (a->P == P_MLA) { a->ng = 1; a->g[0] = 1; }
    const int bound[NB + 1] = {0, 16, 64, 256, 1 << 30};
    printf("%s: %d tokens, %d windows of %d; the first %d of each prefilled exactly, the next %d scored (%s);\n"
           "KL(MLA||.) per scored token, overall and by its distance d from the prefill\n",
           a->in, n, nwin, W, k, W - k - 1, use_gpu ? "gpu" : "cpu");
    printf("%-34s %9s %12s %12s %12s %12s %12s\n", "scheme", "ppl", "KL(MLA||.)", "KL d<16", "KL 16<=d<64", "KL 64<=d<256", "KL d>=256");
    float *ref = xmalloc((size_t)W * V * sizeof(float)), *out = xmalloc((size_t)W * V * sizeof(float)), *U = NULL;
    float *pc = xmalloc((size_t)V * sizeof(float));
    double *ev = NULL, nll_mla = 0, cnt_mla = 0;
    int nrow = a->ng * a->nr;
    PplRow *rows = xmalloc(nrow * sizeof(PplRow));
    for (int ti = 0; ti < a->nT; ti++) {
        // the transform is folded once; MLA is the reference for every (g, r) of it
        Scheme mla = MLA;
        setup_transform(m, &mla, a->T[ti], tok, a->calib, &U, &ev);
        Engine em;
        build_engine(&em, m, &mla, use_gpu, a->ngpu, W);
        for (int i = 0; i < nrow; i++) {
            PplRow *r = &rows[i];
            memset(r, 0, sizeof(*r));
            r->s = scheme_of(a, a->g[i / a->nr], a->r[i % a->nr]);
            if (a->T[ti] == T_PCA) r->s.rms_fix = rms_fix_from_pca(c, ev, r->s.g);
            build_engine(&r->e, m, &r->s, use_gpu, a->ngpu, W);
        }
        char what[64];
        snprintf(what, sizeof(what), "ppl, T=%s", T_NAMES[a->T[ti]]);
        double t0 = now_s();
        for (int w = 0; w < nwin; w++) {
            progress(what, w, nwin, "windows", t0);
            const int *x = ids + (size_t)w * W;
            engine_reset(&em);
            engine_feed(&em, x, W, 1, ref);
            check_logits(ref, W, V, w * W);
            if (ti == 0)
                for (int t = k; t + 1 < W; t++) { nll_mla += logsumexp(ref + (size_t)t * V, V) - ref[(size_t)t * V + x[t + 1]]; cnt_mla++; }
            for (int i = 0; i < nrow; i++) {
                PplRow *r = &rows[i];
                engine_reset(&r->e);
                engine_feed(&r->e, x, k, 1, out);
                engine_feed(&r->e, x + k, W - k, 0, out + (size_t)k * V);
                check_logits(out, W, V, w * W);
                for (int t = k; t + 1 < W; t++) {
                    float *p = ref + (size_t)t * V, *q = out + (size_t)t * V;
                    memcpy(pc, p, V * sizeof(float));
                    double d = kl_div(pc, q, V);
                    int b = 0;
                    while (t - k >= bound[b + 1]) b++;
                    r->nll -= q[x[t + 1]]; r->kl += d; r->cnt++; r->klb[b] += d; r->cntb[b]++;
                }
            }
        }
        progress(what, nwin, nwin, "windows", t0);
        if (ti == 0) printf("%-34s %9.4f %12s\n", "MLA", exp(nll_mla / cnt_mla), "0");
        for (int i = 0; i < nrow; i++) {
            PplRow *r = &rows[i];
            char name[64];
            if (a->P == P_TPLA) snprintf(name, sizeof(name), "TPLA g=%d T=%s r=%s%s", r->s.g, T_NAMES[a->T[ti]], R_NAMES[r->s.rms], k ? "" : " k=0");
            else if (a->P == P_DCP) snprintf(name, sizeof(name), "DCP K=%d%s", r->s.g, k ? "" : " k=0");
            else snprintf(name, sizeof(name), "MLA as decode steps");
            printf("%-34s %9.4f %12.5g", name, exp(r->nll / r->cnt), r->kl / r->cnt);
            for (int b = 0; b < NB; b++) { if (r->cntb[b]) printf(" %12.5g", r->klb[b] / r->cntb[b]); else printf(" %12s", "-"); }
            printf("\n");
            free_engine(&r->e); free((void *)r->s.rms_fix);
        }
        fflush(stdout);
        free_engine(&em); free((void *)mla.rms_fix);
    }
    free(rows); free(ref); free(out); free(pc); free(ids); free(U); free(ev);
}

static const Config *bench_shape(const char *name) {
    // DeepSeek-V3's attention shape, as the paper measures it (README "Measured"); Kimi-K2 is the
    // same with 64 heads.
    static Config c;
    memset(&c, 0, sizeof(c));
    c.dim = 7168; c.n_layers = 61; c.n_heads = 128; c.vocab = 129280; c.q_lora = 1536; c.dc = 512;
    c.dn = 128; c.dr = 64; c.dv = 128; c.inter = 18432; c.first_dense = 61; c.max_seq = 163840;
    c.eps = 1e-6f; c.rope_theta = 10000; c.rope_attn = 1; c.softmax_scale = 1 / sqrtf(192); c.rope_interleave = 1;
    c.bos = c.eos = -1;
    if (!strcmp(name, "dsv3")) return &c;
    if (!strcmp(name, "kimik2")) { c.n_heads = 64; return &c; }
    if (!strcmp(name, "dsv3-h16")) { c.n_heads = 16; return &c; }   // DeepSeek-V3's heads per GPU at TP = 8
    if (!strcmp(name, "v2lite")) {   // DeepSeek-V2-Lite as its config.json: a dense first layer, then 64 experts
        c.dim = 2048; c.n_layers = 27; c.n_heads = 16; c.vocab = 102400; c.q_lora = 0; c.inter = 10944;
        c.moe_inter = 1408; c.n_experts = 64; c.n_shared = 2; c.topk = 6; c.first_dense = 1; c.n_group = c.topk_group = 1;
        c.routing = ROUTE_SOFTMAX_GREEDY; c.routed_scale = 1; c.bos = 100000; c.eos = 100001;
        c.rope_type = ROPE_YARN; c.yarn_factor = 40; c.yarn_orig_max = 4096; c.yarn_beta_fast = 32; c.yarn_beta_slow = 1;
        c.yarn_truncate = 1;   // mscale = mscale_all_dim = 0.707: rope_attn 1, softmax scale times mscale(40, 0.707)^2
        float ms = 0.1f * 0.707f * logf(40) + 1;
        c.softmax_scale *= ms * ms;
        return &c;
    }
    return NULL;
}

// A flag that would do nothing is refused, saying why: a flag the mode does not read, a list outside
// ppl mode, a TPLA flag under MLA or DCP, -c without -T pca, -p or -s when greedy, a GPU flag on the CPU.
// given[f]: flag -f was given.
#define FLAGS "mKPgTrkcwintpsfoblFRd"   // every flag (-F alone takes no value), in the order check_flags names them

static void check_flags(const Args *a, const char *given) {
    static const char *READS[] = {"dKPgTrkcwintps", "dKPgTrkcwfo", "dKPgTrkcwnf", "fi", "dKgwblnFRk"};   // -m: every mode
    for (const char *f = FLAGS; *f; f++) {
        if (*f == 'm' || !given[(int)*f] || strchr(READS[a->mode], *f)) continue;
        char users[80] = "";
        for (int m = 0; m < 5; m++)
            if (strchr(READS[m], *f)) snprintf(users + strlen(users), sizeof(users) - strlen(users), "%s-m %s", *users ? ", " : "", MODES[m]);
        die("-%c: -m %s does not use it (only %s)", *f, MODES[a->mode], users);
    }
    if (a->mode == M_BENCH && given['k'] && a->k < 1) die("-k 0: -m bench -k P times the prefill of a P-token prompt; give P >= 1");
    for (const char *f = "blnR"; a->mode == M_BENCH && given['k'] && *f; f++)
        if (given[(int)*f]) die("-%c: -m bench -k times one prefill, and does not use it (it is for the decode bench)", *f);
    if (a->mode == M_BENCH && a->rank_of && given['K']) die("-K: -R %d runs rank 0 of a %d-GPU layout on one GPU; leave -K out", a->rank_of, a->rank_of);
    const char *list = a->ng > 1 ? "-g" : a->nT > 1 ? "-T" : a->nr > 1 ? "-r" : NULL;
    if (list && a->mode != M_PPL) die("%s: a list is for -m ppl; -m %s takes one value", list, MODES[a->mode]);
    if (a->mode == M_TOKENIZE && given['i'] && given['f']) die("-i and -f: -m tokenize takes one text; give -i TEXT or -f FILE");
    if (a->mode == M_BENCH || a->mode == M_TOKENIZE) return;
    for (const char *f = "ps"; a->temp == 0 && *f; f++)
        if (given[(int)*f]) die("-%c: -t 0 is greedy (the most likely token) and does not use it", *f);
    if (a->P == P_MLA && given['g']) die("-g: the shard count of TPLA or DCP, and the scheme is MLA; add -P tpla or -P dcp");
    if (a->P == P_MLA && given['w']) die("-w: the placement of TPLA's and DCP's W_UQ/W_O, and the scheme is MLA; add -P tpla or -P dcp");
    for (const char *f = "Trc"; a->P != P_TPLA && *f; f++)
        if (given[(int)*f])
            die("-%c: a TPLA flag, and the scheme is %s; %s", *f, P_SHOWN[a->P], a->P == P_MLA ? "add -P tpla" : "DCP is exact: it has no transform, rms rule or calibration");
    int pca = 0;
    for (int i = 0; i < a->nT; i++) pca |= a->T[i] == T_PCA;
    if (given['c'] && !pca) die("-c: the calibration text is read for -T pca only");
    for (const char *f = "Kw"; !a->gpu && *f; f++)
        if (given[(int)*f]) die("-%c: a GPU flag, and the engine is the CPU's; %s", *f, given['d'] ? "leave it out, or give -d gpu" : "add -d gpu");
}

#ifndef TESTING
int main(int argc, char **argv) {
#ifdef _OPENMP
    // A thread waiting for work sleeps (OMP_WAIT_POLICY=passive) instead of spinning. On a busy machine
    // (make run next to a build) a spinning thread holds a core that the thread it waits for needs: on 2
    // cores next to 2 busy loops, generation fell from 240 to 10-25 tokens/s and make run took over 7
    // minutes instead of 67 s (passive, with matmul's threshold: 105 tokens/s, 102 s). libgomp reads the
    // policy once, when it is loaded, before main: so the program sets it and starts itself again. The
    // user's own setting wins.
    if (!getenv("OMP_WAIT_POLICY") && !setenv("OMP_WAIT_POLICY", "passive", 1)) execv("/proc/self/exe", argv);
#endif
    atexit(stdout_check);
    Args a = {0};
    a.mode = M_GENERATE; a.prompt = "def "; a.gpu = -1; a.k = -1; a.steps = -1; a.seed = 1;
    a.temp = 0.8f; a.topp = 0.9f; a.split = 1;
    a.T[0] = T_NONE; a.nT = 1; a.r[0] = RMS_LOCAL; a.nr = 1;
    a.nctx = parse_list("1024,2048,4096,8192,16384,32768", NULL, 0, a.ctx, 16, "-l", TPLA_MAX_SEQ);
    // -h or --help wherever a flag may stand (not as a flag's value: -i -h is the prompt "-h") prints the usage
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) usage(stdout, 0);
        if (i > 1 && argv[i][0] == '-' && strcmp(argv[i], "-F")) i++;   // past the flag's value
    }
    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2) fprintf(stderr, "error: %s: the model comes first, then the flags\n", argv[1]);
        usage(stderr, 1);
    }
    a.model = argv[1];
    char given[256] = {0};
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "-F")) { if (given['F']) die("-F: given twice"); a.dense = given['F'] = 1; continue; }
        if (argv[i][0] != '-' || strlen(argv[i]) != 2) die("'%s': expected a flag such as -n; ./run -h lists them", argv[i]);
        if (!strchr(FLAGS, argv[i][1])) die("%s: unknown flag; ./run -h lists them", argv[i]);
        if (given[(unsigned char)argv[i][1]]) die("%s: given twice (a list is one value: -g 2,4)", argv[i]);
        if (i + 1 >= argc) die("%s: needs a value", argv[i]);
        const char *v = argv[++i];
        given[(unsigned char)argv[i - 1][1]] = 1;
        switch (argv[i - 1][1]) {
        case 'm': parse_list(v, MODES, 5, &a.mode, 1, "-m", 0); break;
        case 'd': if (strcmp(v, "cpu") && strcmp(v, "gpu")) die("-d: cpu or gpu, not '%s'", v); a.gpu = !strcmp(v, "gpu"); break;
        case 'K': a.ngpu = parse_int(v, "-K", 1, 1024); break;
        case 'P': parse_list(v, P_NAMES, 3, &a.P, 1, "-P", 0); break;
        case 'g': a.ng = parse_list(v, NULL, 0, a.g, 8, "-g", TPLA_MAX_LATENT); break;
        case 'T': a.nT = parse_list(v, T_NAMES, 3, a.T, 3, "-T", 0); break;
        case 'r': a.nr = parse_list(v, R_NAMES, 2, a.r, 2, "-r", 0); break;
        case 'k': a.k = parse_int(v, "-k", 0, TPLA_MAX_SEQ); break;
        case 'c': a.calib = v; break;
        case 'w': if (strcmp(v, "rep") && strcmp(v, "split")) die("-w: rep or split, not '%s'", v); a.split = !strcmp(v, "split"); break;
        case 'i': a.prompt = v; break;
        case 'n': a.steps = parse_int(v, "-n", 1, TPLA_MAX_SEQ); break;
        case 't': a.temp = parse_float(v, "-t", 0, 100); break;
        case 'p': a.topp = parse_float(v, "-p", 0, 1); break;
        case 's': a.seed = parse_int(v, "-s", 0, 2147483647); break;
        case 'f': a.in = v; break;
        case 'o': if (!*v) die("-o: an empty path; give a file name"); a.out = v; break;
        case 'b': a.batch = parse_int(v, "-b", 0, 1 << 20); break;
        case 'l': a.nctx = parse_list(v, NULL, 0, a.ctx, 16, "-l", TPLA_MAX_SEQ); break;
        case 'R': a.rank_of = parse_int(v, "-R", 1, 1024); break;
        }
    }
    int have = gpu_count();
    if (a.gpu < 0) a.gpu = have > 0;
#ifdef TPLA_CUDA
    if (a.gpu && have == 0) die("-d gpu: no usable GPU found (the GPU engine needs Hopper GPUs, sm_90)");
#else
    if (a.gpu) die("-d gpu: this build has no GPU engine (it was built without nvcc, or with make NVCC=none)");
#endif
    check_flags(&a, given);
#ifdef TPLA_NO_NCCL   // built without NCCL (see the Makefile): the GPU engine runs on one GPU
    if (a.gpu && a.ngpu > 1)
        die("-K %d: this build has no NCCL, so its GPU engine runs on one GPU (or -R, the rank bench); install NCCL "
            "(or set NCCL_HOME) and run make again", a.ngpu);
    if (a.gpu) a.ngpu = 1;
#endif
    if (a.gpu && !a.ngpu) a.ngpu = have;
    if (a.gpu && a.ngpu > have) die("-K %d: only %d GPUs present", a.ngpu, have);
    if (!a.ng) { a.g[0] = a.rank_of ? a.rank_of : a.gpu ? a.ngpu : 2; a.ng = 1; }
    for (int i = 0; i < a.ng && a.gpu && a.P == P_DCP; i++)   // (the hybrid of latent and token shards is not built)
        if (a.g[i] != a.ngpu)
            die("-g %d: the GPU engine runs DCP with one token shard a GPU, on the %d GPUs used (-K); give -g %d", a.g[i], a.ngpu, a.ngpu);
    if (a.mode == M_BENCH) {
        if (!a.gpu) die("-m bench needs a GPU");
        const Config *shape = bench_shape(a.model);
        Model m;
        if (!shape) { build_model(&m, a.model); shape = &m.c; }
        int ffn = a.dense || !strcmp(a.model, "v2lite");
        Scheme s = {a.g[0], a.r[0], NULL, a.split, 0};
        int K = a.rank_of ? a.rank_of : a.ngpu;
        char csv[256];
        snprintf(csv, sizeof(csv), "bench_%s_%s%d_g%d.csv", shape == &m.c ? "model" : a.model, a.rank_of ? "R" : "K", K, s.g);
        if (given['k']) gpu_bench_prefill(shape, &s, a.ngpu, a.k, ffn, a.model);   // on all K GPUs
        else gpu_bench(shape, &s, K, a.rank_of > 0, a.batch, a.ctx, a.nctx, ffn, a.steps > 0 ? a.steps : 20, a.model, csv);
        return 0;
    }
    Model m;
    build_model(&m, a.model);
    for (int i = 0; i < a.ng && a.P == P_TPLA; i++)
        if (m.c.dc % a.g[i]) die("-g %d: the shard count must divide kv_lora_rank %d", a.g[i], m.c.dc);
    Tokenizer tok;
    build_tokenizer(&tok, &m);
    char calib[1024];
    if (!a.calib) {   // default calibration text: calib.txt beside the model
        const char *sl = strrchr(a.model, '/');
        if (snprintf(calib, sizeof(calib), "%.*scalib.txt", sl ? (int)(sl - a.model + 1) : 0, a.model) >= (int)sizeof(calib))
            die("%s: path too long to find calib.txt beside it; give -c", a.model);
        a.calib = calib;
    }
    int pca = 0;
    for (int i = 0; i < a.nT && a.P == P_TPLA; i++) {   // what the transforms need, checked before any work
        if (a.T[i] == T_HADAMARD && (m.c.dc & (m.c.dc - 1))) die("-T hadamard needs kv_lora_rank a power of 2, not %d", m.c.dc);
        if (a.T[i] == T_PCA && !tok.n) die("-T pca: this checkpoint has no tokenizer to read the calibration text with");
        pca |= a.T[i] == T_PCA;
    }
    if (pca) {   // the calibration text is there and long enough (a pipe is read once: its length is checked then)
        struct stat st;
        if (a.calib == calib && stat(calib, &st) != 0)
            die("%s: cannot open (%s); -T pca calibrates on calib.txt beside the model, or on the text -c FILE names", calib, strerror(errno));
        check_input(a.calib);
        int n;
        if (stat(a.calib, &st) == 0 && S_ISREG(st.st_mode)) free(calib_tokens(&tok, a.calib, m.c.dc, &n));
    }
    if (a.mode == M_TOKENIZE) {
        if (!a.in && !given['i']) die("-m tokenize needs a text: -f FILE or -i TEXT");
        int n, *ids;
        if (a.in) ids = read_tokens(&tok, a.in, -1, &n);
        else {
            if (!tok.n) die("-i: this checkpoint has no tokenizer to read a text with (./convert found no tokenizer.json)");
            ids = xmalloc((strlen(a.prompt) + 1) * sizeof(int));
            n = encode(&tok, a.prompt, strlen(a.prompt), ids, "-i");
        }
        for (int i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        free(ids);
    } else if (a.mode == M_GENERATE) {
        if (a.steps < 0) a.steps = 64;
        mode_generate(&m, &a, &tok, a.gpu);
    } else if (a.mode == M_LOGITS) {
        mode_logits(&m, &a, &tok, a.gpu);
    } else if (a.mode == M_PPL) {
        mode_ppl(&m, &a, &tok, a.gpu);
    }
    if (tok.n) free_tokenizer(&tok);
    free_model(&m);
    return 0;
}
#endif
