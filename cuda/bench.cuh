// cuda/bench.cuh: -m bench, decode steps (gpu_bench) or one prompt's prefill (gpu_bench_prefill) on random
// weights, timed against the card's floors. Apart from the engine it times: included at the end of tpla.cu,
// it builds GPUs with build(), runs forward_rank and the kernels' launchers, and reads a rank's layout.

#define MAX_BATCH 4096   // the largest batch -m bench tries

// -m bench: decode steps at a fixed context on random weights and a random cache (README "Measured")
typedef struct {
    int B, ctx, steps, breakdown;   // breakdown: also time the MoE layer's pieces (moe_breakdown)
    double bw, fl;                  // the card's copy bandwidth and matmul rate, for the pieces' floors (step_pieces)
    double step_s, attn_s, idle;    // idle: see bench_rank
    double gather_s;                // DCP on several GPUs: its all-gathers of lse alone, a step
    char moe[2048], pieces[512];
} BenchRun;

// bytes of one routed expert on one rank (its slice of W1, W3 and W2), and the MoE layers
static double expert_bytes(const Config *c, int K) { return 3.0 * (c->moe_inter / K) * c->dim * 2; }
static int moe_layers(const Config *c) { int n = 0; for (int l = 0; l < c->n_layers; l++) n += layer_is_moe(c, l); return n; }

// A floor: the larger of moving `bytes` at the copy bandwidth bw and doing `flops` at the matmul rate fl.
static double floor_s(double bytes, double flops, double bw, double fl) { return std::max(bytes / bw, flops / fl); }

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

// Where a decode step's time goes on one rank, the attention block's launches in groups as attention_rank
// makes them (collectives left out), each group timed alone over all layers: us per layer, and over its
// floor (below). Text into out.
static void step_pieces(GPU *G, Rank *R, int rows, int own, float *lse, double bw, double fl, char *out, size_t cap) {
    const Config *c = &G->c;
    const Part *p = &R->p;
    int D = c->dim, qd = c->dn + c->dr, n = c->n_layers;
    auto each = [&](auto body) { return graph_time(R, [&] { for (int l = 0; l < n; l++) body(&R->lw[l], l); }) / n * 1e6; };
    double proj = each([&](const LayerW *L, int) {
        add_rmsnorm(R, R->x, R->y, L->attn_norm, R->xb, NULL, rows, D, c->eps);
        project_q(G, R, L, rows);
    });
    double rope = each([&](const LayerW *, int l) { kv_rope(G, R, l, rows, !G->s.dcp && G->s.rms == RMS_LOCAL); });
    double absorb = each([&](const LayerW *L, int) { absorb_q(G, R, L, rows); });
    double attn = each([&](const LayerW *, int l) {
        decode_attention(R->Q, &R->cmap, l * G->B * R->cache_len, R->lens, R->opart, R->lse, R->O, lse, rows, p->ha, p->dcs, p->Dk,
                         R->cache_len, own, c->softmax_scale, G->sms, R->st);
        if (lse) dcp_combine(R->O, R->lse_r, rows, p->ha, p->dcs, p->ntok, p->tok, R->st);
    });
    double outp = each([&](const LayerW *L, int) {
        up_v(G, R, L, rows);
        gemm(R, R->vown, L->wo, R->y, CUDA_R_32F, rows, p->hq * c->dv, D);
    });
    double ffn = G->ffn ? each([&](const LayerW *L, int l) { ffn_rank(G, R, L, l, rows); }) : 0;
    // floors (us a layer): each group's bytes (weights bf16, activations as stored) at the copy bandwidth, or its
    // flops at the matmul rate fl, whichever is larger (attention: the cache and its flops)
    double B = rows, hq = p->hq, ha = p->ha, dcs = p->dcs, dkv = c->dc + c->dr;
    auto fl_us = [&](double bytes, double flops) { return floor_s(bytes, flops, bw, fl) * 1e6; };
    double wp = (c->q_lora ? (double)c->q_lora * D + hq * qd * c->q_lora : hq * qd * D) + dkv * D;   // W_DQ, W_UQ, W_DKV
    double fproj = fl_us(2 * wp + B * D * 14 + B * (c->q_lora + dkv) * 4 + B * (c->q_lora ? c->q_lora * 6.0 : 0) + B * hq * qd * 2,
                         2 * B * wp);
    double frope = fl_us(B * dkv * 4 + B * p->Dk * 2 + B * ha * c->dr * 4, 0);
    double fab = fl_us(2 * ha * c->dn * dcs + B * ha * (c->dn + dcs) * 2, 2 * B * ha * c->dn * dcs);
    double fout = fl_us(2 * ha * c->dv * dcs + 2.0 * D * hq * c->dv + B * ha * (dcs + c->dv) * 2 + B * hq * c->dv * 2 + B * D * 4,
                        2 * B * (ha * c->dv * dcs + D * hq * c->dv));
    double fat = fl_us(2 * B * own * p->Dk, 2 * B * own * ha * (p->Dk + dcs));
    size_t len = snprintf(out, cap, "    pieces alone, us a layer (x their floor): norm+q,kv proj %.1f (%.1fx), rope+cache %.1f (%.1fx), "
                          "absorb %.1f (%.1fx), attention %.1f (%.2fx), up_v+W_O %.1f (%.1fx)", proj, proj / fproj, rope, rope / frope,
                          absorb, absorb / fab, attn, attn / fat, outp, outp / fout);
    if (G->ffn) len += snprintf(out + len, cap - std::min(cap, len), ", FFN %.1f", ffn);
    snprintf(out + len, cap - std::min(cap, len), "; sum %.1f\n", proj + rope + absorb + attn + outp + ffn);
}

// one rank: `steps` decode steps (captured once in a CUDA graph), then the attention kernels alone (and
// DCP's all-gathers of lse alone, where they run)
static void bench_rank(GPU *G, Rank *R, void *arg) {
    BenchRun *b = (BenchRun *)arg;
    const Config *c = &G->c;
    const Part *p = &R->p;
    size_t cache_n = (size_t)c->n_layers * G->B * R->cache_len * p->Dk;
    fill_random(R->cache, cache_n, 1.0f, 7 + R->r, R->st);
    if (G->nrank < G->K) {   // rank bench: what the left-out collectives would bring, as random values
        size_t nq = (size_t)G->rows * p->ha * (c->dn + c->dr), nv = (size_t)G->rows * p->ha * c->dv;
        fill_random(R->qall, nq, 1.0f, 11, R->st);
        fill_random(R->vown, nv, 1.0f, 12, R->st);
        fill_random(R->lse_r, (size_t)(p->ntok > 1 ? p->ntok : 0) * G->rows * p->ha, 1.0f, 13, R->st);   // DCP: the others' lse
    }
    int own = own_tokens(p, b->ctx + 1);   // a sequence's cached tokens on this rank (DCP: 1 in ntok)
    float *lse = p->ntok > 1 ? R->lse_r + (size_t)p->tok * G->B * p->ha : NULL;   // as attention_rank passes it
    std::vector<int> tok(G->B), pos(G->B, b->ctx), seq(G->B), lens(G->B, own);
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
            decode_attention(R->Q, &R->cmap, l * G->B * R->cache_len, R->lens, R->opart, R->lse, R->O, lse, G->B,
                             p->ha, p->dcs, p->Dk, R->cache_len, own, c->softmax_scale, G->sms, R->st);
    }, GRAPH_REPS);
    double gather = 0;   // (every rank takes this branch alike: the all-gathers meet)
    if (lse && G->nrank > 1)
        gather = event_time(R, [&] {
            for (int l = 0; l < c->n_layers; l++) all_gather(G, R, lse, R->lse_r, (size_t)G->B * p->ha, ncclFloat, R->world);
        }, GRAPH_REPS);
    if (R->r == 0) { b->step_s = t; b->attn_s = attn; b->gather_s = gather; }
    if (R->r == 0 && G->nrank == 1) step_pieces(G, R, G->B, own, lse, b->bw, b->fl, b->pieces, sizeof(b->pieces));
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
    R.r = r; R.p = make_part(c, s, K, r);
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
    int lo = 0, hi = MAX_BATCH;
    while (lo < hi) {   // the largest B whose every rank fits, by the fit check's own rule
        int mid = (lo + hi + 1) / 2, ok = 1;
        for (int r = 0; r < K && ok; r++) ok = device_need(rank_bytes(c, s, K, r, mid, len, dense)) <= free_min;
        if (ok) lo = mid; else hi = mid - 1;
    }
    if (!lo) die("bench: not even one sequence of %d tokens fits next to the weights (%.1f GiB free per GPU)", len, free_min / 1073741824.0);
    if (lo == MAX_BATCH) printf("(batch capped at %d: more would fit)\n", MAX_BATCH);
    return lo;
}

static BenchRun bench_one(const Config *c, const Scheme *s, int K, int nrank, int B, int ctx, int dense, int steps, int breakdown, double bw, double fl) {
    GPU *G = build(NULL, c, s, K, nrank, B, ctx + 1, dense, 1);
    BenchRun b;
    memset(&b, 0, sizeof(b));
    b.B = B; b.ctx = ctx; b.steps = steps; b.breakdown = breakdown; b.bw = bw; b.fl = fl;
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

// What one forward pass of rank 0 reads and computes, for the floors of the decode and the prefill bench:
// wbytes, the weights it reads (all but the embedding, of which it reads only its tokens' rows); lm,
// lm_head's bytes; per token, tok_flops in the products with the weights (2 flops per bf16 weight of 2
// bytes; of each MoE layer's routed experts, only the topk the token chose); per cached token it holds,
// pos_bytes of cache read (Dk bf16 values a layer) and pos_flops in attention (2 (Dk + dcs) per head and
// layer). A sequence of n tokens has own_tokens(n) cached on the rank: n, or DCP's ceil(n / K) on rank 0.
typedef struct { double wbytes, lm, tok_flops, pos_bytes, pos_flops; } StepWork;
static StepWork step_work(const Config *c, const Scheme *s, int K, int ffn) {
    Part p = make_part(c, s, K, 0);
    size_t w;
    rank_bytes(c, s, K, 0, 1, 1, ffn, &w);
    StepWork f;
    f.wbytes = (double)w - (double)c->vocab * c->dim * 2;
    f.lm = (double)p.nv * c->dim * 2;
    double ex = ffn ? moe_layers(c) * expert_bytes(c, K) : 0;   // one routed expert of every MoE layer
    f.tok_flops = f.wbytes - (c->n_experts - c->topk) * ex;
    f.pos_bytes = 2.0 * p.Dk * c->n_layers;
    f.pos_flops = 2.0 * p.ha * (p.Dk + p.dcs) * c->n_layers;
    return f;
}

// The decode step's floor on one GPU: the weights read and the cache read (B sequences of ctx + 1
// tokens, the rank's own of them), against the products' and the attention's flops. MoE: the weights read
// leave out the `idle` bytes of experts that no token of the step chose (from its routing). *cache_bytes
// and *attn_flops get the attention's share; *rest the floor of the step without its attention kernel
// (weights only, projection flops only).
static double step_floor(const Config *c, const Scheme *s, int K, int B, int ctx, int dense, double idle, double bw, double fl,
                         double *cache_bytes, double *attn_flops, double *rest) {
    StepWork w = step_work(c, s, K, dense);
    Part p = make_part(c, s, K, 0);
    double cached = (double)B * own_tokens(&p, ctx + 1);
    *cache_bytes = cached * w.pos_bytes;
    *attn_flops = cached * w.pos_flops;
    double proj = B * w.tok_flops;
    *rest = floor_s(w.wbytes - idle, proj, bw, fl);
    return floor_s(w.wbytes - idle + *cache_bytes, proj + *attn_flops, bw, fl);
}

// The collectives of one layer of a decode step on rank p of K (the FFN's all-reduce too, with the FFN), per
// sequence of the batch: their count, their bytes into *bytes (an all-reduce's buffer, an all-gather's
// result, a reduce-scatter's input), and each one's name and bytes into what.
static int layer_collectives(const Config *c, const Part *p, int K, int ffn, double *bytes, char *what, size_t cap) {
    const struct { const char *name; double b; int on; } all[] = {
        {"all-gather q", p->ha * (c->dn + c->dr) * 2.0, p->peers > 1},
        {"all-gather lse", p->ntok * p->ha * 4.0, p->ntok > 1},
        {"reduce-scatter v", p->ha * c->dv * 2.0, p->peers > 1},
        {"all-reduce y", c->dim * 4.0, K > 1},
        {"FFN all-reduce", c->dim * 4.0, K > 1 && ffn},
    };
    int n = 0;
    size_t len = 0;
    *bytes = 0;
    snprintf(what, cap, "none");
    for (const auto &x : all)
        if (x.on) {
            len += snprintf(what + len, cap - std::min(cap, len), "%s%s %.0f B", n++ ? ", " : "", x.name, x.b);
            *bytes += x.b;
        }
    return n;
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
    // The rows: MLA-TP, TPLA and DCP (one token shard a GPU, W_UQ and W_O placed as TPLA's; on one GPU it is
    // MLA, and left out), each at its largest batch, and TPLA at MLA-TP's batch (the kernel's gain apart
    // from the batch's), where the two batches differ.
    Scheme dcp = {K, RMS_GLOBAL, NULL, tpla->split, 1};
    const Scheme *sc[4] = {&MLA, tpla, tpla, &dcp};
    const char *nm[4] = {"MLA-TP", "TPLA", "TPLA@=B", "DCP"};
    int nrow = K > 1 ? 4 : 3;
    printf("bench %s on %d x %s: D %d, H %d, dc %d + dr %d, %d layers, %s FFN; TPLA g = %d", name, nrank, prop.name, c->dim,
           c->n_heads, c->dc, c->dr, c->n_layers, ffn_name(c, dense), tpla->g);
    if (nrow > 3) printf(", DCP K = %d", K);
    printf(" (%s W_UQ/W_O)\n", tpla->split ? "split" : "replicated");
    if (one_rank)
        printf("rank bench: one GPU runs rank 0 of a %d-GPU layout (its weights, cache slice and batch), collectives left out%s\n", K,
               nrow > 3 ? " (DCP's all-gather of lse too)" : "");
    printf("card: copy %.0f GB/s (read + write), bf16 matmul %.0f TFLOP/s; a step decodes one token per sequence (CUDA graph)\n",
           bw / 1e9, fl / 1e12);
    printf("per GPU (rank 0), per token of context and layer: the cache read and the attention flops; the collectives of a layer,\n"
           "in bytes per sequence of the batch (coll MB: at the row's batch)%s:\n", one_rank && K > 1 ? ", left out here" : "");
    double coll[4];   // the collectives' bytes of a layer, per sequence
    for (int k = 0; k < nrow; k++) {
        Part p = make_part(c, sc[k], K, 0);
        StepWork w = step_work(c, sc[k], K, dense);
        char what[256], toks[32];
        int n = layer_collectives(c, &p, K, dense, &coll[k], what, sizeof(what));
        if (k == 2) continue;   // (TPLA's, again)
        if (p.ntok > 1) snprintf(toks, sizeof(toks), "1 token in %d", p.ntok); else snprintf(toks, sizeof(toks), "every token");
        printf("  %-6s %3d heads over %3d + %d of %s: cache %4.0f B, attention %6.0f flop; %d collective%s: %s\n", nm[k], p.ha,
               p.dcs, c->dr, toks, w.pos_bytes / c->n_layers / p.ntok, w.pos_flops / c->n_layers / p.ntok, n, n == 1 ? "" : "s", what);
    }
    FILE *f = fopen(csv, "w");
    if (!f) die("%s: cannot write", csv);
    fprintf(f, "shape,gpus,gpus_run,card,ctx,scheme,g,batch,step_ms,tok_s,attn_ms,attn_share,attn_GBs,attn_copy_frac,attn_TFLOPs,cache_GB_per_gpu,floor_ms,step_over_floor,rest_over_floor,ratio,ratio_equal_batch,paper,coll_MB_per_layer,lse_gather_ms\n");
    printf("%6s %-9s %5s %9s %10s %8s %6s %9s %6s %8s %7s %7s %9s %8s\n", "ctx", "scheme", "batch", "step ms", "tok/s", "attn ms",
           "share", "attn GB/s", "%copy", "TFLOP/s", "x floor", "rest x", "cache GB", "coll MB");
    for (int i = 0; i < nctx; i++) {
        int bs[4];
        BenchRun r[4];
        double tps[4] = {0, 0, 0, 0};
        double pr = paper_ratio(name, K, tpla->g, ctx[i]);
        for (int k = 0; k < nrow; k++) {
            // each row's largest batch is found just before it runs, on the memory the runs before it left free
            bs[k] = batch ? batch : k == 2 ? bs[0] : largest_batch(c, sc[k], K, nrank, ctx[i] + 1, dense);
            if (k == 2 && bs[1] == bs[0]) { tps[2] = tps[1]; continue; }   // TPLA's own row is at MLA-TP's batch
            r[k] = bench_one(c, sc[k], K, nrank, bs[k], ctx[i], dense, steps, k == 0, bw, fl);
            double cb, af, rest, floor = step_floor(c, sc[k], K, bs[k], ctx[i], dense, r[k].idle, bw, fl, &cb, &af, &rest);
            double rest_x = (r[k].step_s - r[k].attn_s) / rest;   // the step without attention, over its floor
            double abw = cb / r[k].attn_s, atf = af / r[k].attn_s, cmb = bs[k] * coll[k] / 1e6;
            tps[k] = bs[k] / r[k].step_s;
            printf("%6d %-9s %5d %9.3f %10.0f %8.3f %5.0f%% %9.0f %5.0f%% %8.1f %7.2f %7.2f %9.2f %8.2f\n", ctx[i], nm[k], bs[k],
                   r[k].step_s * 1e3, tps[k], r[k].attn_s * 1e3, 100 * r[k].attn_s / r[k].step_s, abw / 1e9, 100 * abw / bw, atf / 1e12,
                   r[k].step_s / floor, rest_x, cb / 1e9, cmb);
            printf("%s", r[k].pieces);
            if (k == 0) printf("%s", r[0].moe);   // the MoE layer's breakdown (empty without MoE)
            fprintf(f, "%s,%d,%d,%s,%d,%s,%d,%d,%.4f,%.1f,%.4f,%.3f,%.1f,%.3f,%.2f,%.3f,%.4f,%.3f,%.3f,%.3f,%.3f,%.2f,%.3f,%.4f\n", name, K,
                    nrank, prop.name, ctx[i], nm[k], sc[k]->g, bs[k], r[k].step_s * 1e3, tps[k], r[k].attn_s * 1e3,
                    r[k].attn_s / r[k].step_s, abw / 1e9, abw / bw, atf / 1e12, cb / 1e9, floor * 1e3, r[k].step_s / floor, rest_x,
                    k == 3 ? tps[3] / tps[0] : k ? tps[1] / tps[0] : 1.0, k == 2 ? tps[2] / tps[0] : 0.0, pr, cmb, r[k].gather_s * 1e3);
        }
        printf("%6d TPLA/MLA throughput %.2fx (largest batch each", ctx[i], tps[1] / tps[0]);
        if (pr) printf("; paper %.2fx", pr);
        printf("), %.2fx at equal batch", tps[2] / tps[0]);
        if (nrow > 3) printf("; DCP/MLA %.2fx (largest batch each)", tps[3] / tps[0]);
        if (nrow > 3 && r[3].gather_s > 0)
            printf(", its all-gathers of lse alone %.3f ms a step (%.1f%%)", r[3].gather_s * 1e3, 100 * r[3].gather_s / r[3].step_s);
        printf("\n");
        fflush(stdout);
    }
    fclose(f);
    printf("wrote %s\n", csv);
}

// -m bench -k N: the prefill of one N-token prompt (random ids, random weights), timed after one untimed
// run, in the prefill chunks of the real path. Its floor on one GPU: the weights read once, against every
// product's flops (each token's projections and its topk routed experts, the causal half of the attention
// scores and outputs, lm_head for the last token).
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
    StepWork w = step_work(c, s, K, ffn);
    double flops = n * (w.tok_flops - w.lm) + w.lm       // lm_head for the last token only
                 + n * (n + 1.0) / 2 * w.pos_flops;       // token t attends to t + 1 cached tokens
    double floor = floor_s(w.wbytes, flops, bw, fl);
    printf("bench %s prefill on %d x %s: %d tokens in chunks of %d, %s FFN; card: copy %.0f GB/s, bf16 matmul %.0f TFLOP/s\n", name,
           K, prop.name, n, chunk, ffn_name(c, ffn), bw / 1e9, fl / 1e12);
    printf("prefill %d tokens: %.2f ms, %.0f tok/s, %.1f TFLOP/s; floor %.2f ms (%.0f tok/s, %.1f TFLOP of products): %.2f x floor\n%s", n,
           t * 1e3, n / t, flops / t / 1e12, floor * 1e3, n / floor, flops / 1e12, t / floor, moe);
}
