// convert.c: a Hugging Face DeepSeek-V2/V3 checkpoint (config.json + safetensors) -> one tpla checkpoint.
//
//   ./convert HF_DIR OUT.bin
//
// Reads BF16, F16, F32 and F8_E4M3 with 128x128 block scales (the DeepSeek-V3 and Kimi-K2 releases);
// writes the header, the tokenizer block and the weights in tensor_layout() order (tpla.h): matrices
// bf16, vectors float32. The config is checked first (config_error, the rules run applies). The output
// goes to a temporary beside it, renamed at the end, so a run that fails or is interrupted leaves no file.
// Assumes a little-endian host, as safetensors files are little-endian. Build: make convert

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "tpla.h"

_Static_assert(8 + sizeof(Config) <= TPLA_HEADER, "Config does not fit the header");

// ----------------------------------------------------------------------------
// small helpers

static void *xmalloc(size_t n) { void *p = malloc(n ? n : 1); if (!p) die("out of memory (%zu bytes)", n); return p; }
static void *xrealloc(void *p, size_t n) { p = realloc(p, n ? n : 1); if (!p) die("out of memory (%zu bytes)", n); return p; }

static char *cat(const char *fmt, ...) {  // printf into a fresh string
    va_list ap;
    va_start(ap, fmt); int n = vsnprintf(NULL, 0, fmt, ap); va_end(ap);
    char *s = xmalloc(n + 1);
    va_start(ap, fmt); vsnprintf(s, n + 1, fmt, ap); va_end(ap);
    return s;
}

static void note(const char *fmt, ...) {
    va_list ap; va_start(ap, fmt);
    fputs("note: ", stderr); vfprintf(stderr, fmt, ap); fputc('\n', stderr);
    va_end(ap);
}

// ----------------------------------------------------------------------------
// JSON: a tree of values; strings are decoded to UTF-8. Read strictly, so that nothing is read otherwise
// than Python reads it: a key twice in one object (Python keeps the last), a string with invalid UTF-8
// (which Python and HF refuse), a raw control character or \u0000, a number outside JSON's grammar and
// a file larger than MAX_JSON are refused, with a message that names the file and the place.

#define MAX_JSON 100000000   // bytes of a JSON file read whole, or of a safetensors header (the safetensors library's limit)

enum { J_NULL, J_FALSE, J_TRUE, J_NUM, J_STR, J_ARR, J_OBJ };

typedef struct Json {
    int type, n;        // n: bytes of a string, or number of children of an array / object
    double num;
    char *str;          // J_STR: NUL-terminated
    char *key;          // the member name, when this value is an object member
    struct Json *kid;   // J_ARR, J_OBJ: the n children
} Json;

typedef struct { const char *p, *start, *end, *file; int depth; } Parser;

static void jfail(Parser *ps, const char *fmt, ...) {  // at byte ps->p
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s: bad JSON at byte %ld: ", ps->file, (long)(ps->p - ps->start));
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

// A string from a file, for a message: at most its first 60 bytes (cut between characters), control
// characters shown as '?'. Four buffers in turn, for one message.
static const char *shown(const char *s) {
    static char buf[4][72];
    static int k;
    char *o = buf[k++ % 4];
    int n = 0;
    for (; s[n] && n < 60; n++) o[n] = (unsigned char)s[n] < 0x20 || s[n] == 0x7f ? '?' : s[n];
    if (!s[n]) { o[n] = 0; return o; }
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
    memcpy(o + n, "...", 4);
    return o;
}

static int next_is(Parser *ps, char ch) {  // skips white space; consumes ch if it comes next
    while (ps->p < ps->end && strchr(" \t\r\n", *ps->p) && *ps->p) ps->p++;
    return ps->p < ps->end && *ps->p == ch ? (ps->p++, 1) : 0;
}

static unsigned hex4(Parser *ps, const char *limit) {  // the XXXX of \uXXXX
    static const char digits[] = "0123456789abcdef";
    unsigned v = 0;
    for (int i = 0; i < 4; i++, ps->p++) {
        const char *d = ps->p < limit && *ps->p ? strchr(digits, tolower((unsigned char)*ps->p)) : NULL;
        if (!d) jfail(ps, "bad \\u escape");
        v = v << 4 | (unsigned)(d - digits);
    }
    return v;
}

static char *put_utf8(char *o, unsigned cp) {
    int n = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    static const unsigned char lead[] = { 0, 0, 0xC0, 0xE0, 0xF0 };
    for (int i = n - 1; i > 0; i--, cp >>= 6) o[i] = 0x80 | (cp & 63);
    o[0] = lead[n] | cp;
    return o + n;
}

static char *parse_string(Parser *ps, int *len) {  // just after the opening quote
    const char *q = ps->p;
    while (q < ps->end && *q != '"') q += *q == '\\' ? 2 : 1;
    if (q >= ps->end) jfail(ps, "unterminated string");
    long bad = utf8_invalid((const uint8_t *)ps->p, q - ps->p);
    if (bad >= 0) ps->p += bad, jfail(ps, "invalid UTF-8 (0x%02x) in a string; Python and HF refuse the file", (uint8_t)*ps->p);
    char *s = xmalloc(q - ps->p + 1), *o = s;  // decoding never makes a string longer
    while (ps->p < q) {
        char ch = *ps->p++;
        if ((uint8_t)ch < 0x20) ps->p--, jfail(ps, "a control character (0x%02x) in a string; JSON writes it as an escape (\\n, \\u001f)", ch);
        if (ch != '\\') { *o++ = ch; continue; }
        if (*ps->p != 'u') {  // a one-letter escape
            static const char pairs[] = "\"\"\\\\//b\bf\fn\nr\rt\t";  // the letter after '\', then what it stands for
            const char *e = pairs;
            while (*e && *e != *ps->p) e += 2;
            if (!*e) jfail(ps, "bad escape");
            *o++ = e[1], ps->p++;
            continue;
        }
        ps->p++;
        unsigned cp = hex4(ps, q);
        if (cp >= 0xD800 && cp < 0xDC00 && q - ps->p >= 6 && ps->p[0] == '\\' && ps->p[1] == 'u') {  // a surrogate pair
            const char *back = ps->p;
            ps->p += 2;
            unsigned lo = hex4(ps, q);
            if (lo >= 0xDC00 && lo < 0xE000) cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            else ps->p = back, cp = 0xFFFD;
        } else if (cp >= 0xD800 && cp < 0xE000) cp = 0xFFFD;  // a lone surrogate
        if (!cp) ps->p -= 6, jfail(ps, "\\u0000 in a string; convert reads no NUL characters");
        o = put_utf8(o, cp);
    }
    ps->p = q + 1;
    *o = 0;
    *len = (int)(o - s);
    return s;
}

static const char *digits(const char *p, const char *e) { while (p < e && isdigit((unsigned char)*p)) p++; return p; }

static int key_order(const void *a, const void *b) { return strcmp((*(Json *const *)a)->key, (*(Json *const *)b)->key); }

static void parse_value(Parser *ps, Json *v) {
    static const char *lit[] = { "null", "false", "true" };  // J_NULL, J_FALSE, J_TRUE
    memset(v, 0, sizeof *v);
    if (next_is(ps, '{') || next_is(ps, '[')) {
        char close = ps->p[-1] == '{' ? '}' : ']';
        int cap = 0;
        v->type = close == '}' ? J_OBJ : J_ARR;
        if (++ps->depth > 200) jfail(ps, "nested too deep");
        if (next_is(ps, close)) { ps->depth--; return; }
        do {
            if (v->n == cap) v->kid = xrealloc(v->kid, (cap = cap ? 2 * cap : 4) * sizeof(Json));
            char *key = NULL;
            int klen;
            if (v->type == J_OBJ && !next_is(ps, '"')) jfail(ps, "expected a member name");
            if (v->type == J_OBJ && (key = parse_string(ps, &klen), !next_is(ps, ':'))) jfail(ps, "expected ':'");
            parse_value(ps, &v->kid[v->n]);
            v->kid[v->n++].key = key;
        } while (next_is(ps, ','));
        if (!next_is(ps, close)) jfail(ps, close == '}' ? "expected ',' or '}'" : "expected ',' or ']'");
        ps->depth--;
        if (v->type == J_OBJ && v->n > 1) {  // a key twice: sort the keys, compare neighbours
            Json **by = xmalloc(v->n * sizeof *by);
            for (int i = 0; i < v->n; i++) by[i] = &v->kid[i];
            qsort(by, v->n, sizeof *by, key_order);
            for (int i = 1; i < v->n; i++)
                if (!strcmp(by[i - 1]->key, by[i]->key))
                    die("%s: bad JSON: the key \"%s\" appears twice in one object (Python would keep the last); remove one",
                        ps->file, shown(by[i]->key));
            free(by);
        }
    } else if (next_is(ps, '"')) {
        v->type = J_STR;
        v->str = parse_string(ps, &v->n);
    } else if (ps->p < ps->end && (*ps->p == '-' || isdigit((unsigned char)*ps->p))) {
        // JSON's grammar, of any length: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?; strtod rounds as Python does
        const char *p = ps->p + (*ps->p == '-'), *e = ps->end, *d = digits(p, e);
        int ok = d > p && (*p != '0' || d == p + 1);  // no leading zero
        if (ok && (p = d) < e && *p == '.') d = digits(++p, e), ok = d > p, p = d;
        if (ok && p < e && (*p == 'e' || *p == 'E')) {
            p += 1 + (p + 1 < e && (p[1] == '+' || p[1] == '-'));
            d = digits(p, e), ok = d > p, p = d;
        }
        if (!ok) jfail(ps, "bad number");
        size_t n = p - ps->p;
        char small[64], *buf = n < sizeof small ? small : xmalloc(n + 1);
        memcpy(buf, ps->p, n), buf[n] = 0;
        v->type = J_NUM;
        v->num = strtod(buf, NULL);
        if (buf != small) free(buf);
        ps->p = p;
    } else {
        for (v->type = J_NULL; v->type <= J_TRUE; v->type++) {
            size_t n = strlen(lit[v->type]);
            if ((size_t)(ps->end - ps->p) >= n && !memcmp(ps->p, lit[v->type], n)) { ps->p += n; return; }
        }
        jfail(ps, ps->p < ps->end ? "unexpected character" : "unexpected end");
    }
}

static Json *json_parse(const char *text, size_t len, const char *file) {
    Parser ps = { text, text, text + len, file, 0 };
    Json *v = xmalloc(sizeof *v);
    parse_value(&ps, v);
    if (next_is(&ps, 0) || ps.p != ps.end) jfail(&ps, "trailing characters");
    return v;
}

static void json_clear(Json *v) {  // frees what v holds
    if (v->type == J_ARR || v->type == J_OBJ)
        for (int i = 0; i < v->n; i++) json_clear(&v->kid[i]), free(v->kid[i].key);
    free(v->kid);
    free(v->str);
}
static void json_free(const Json *v) { if (v) json_clear((Json *)v), free((void *)v); }

static const Json *read_json(const char *path) {  // NULL if the file cannot be opened
    struct stat st;
    int fd = in_open(path, 0, &st);
    if (fd < 0) return NULL;
    if (st.st_size > MAX_JSON)
        die("%s: %lld bytes, more than the %d a JSON file may have (the safetensors library's limit for a header); "
            "is it the right file?", path, (long long)st.st_size, MAX_JSON);
    FILE *f = fdopen(fd, "rb");
    char *s = xmalloc(st.st_size + 1);
    size_t n = f ? fread(s, 1, st.st_size, f) : 0;  // a file that shrank meanwhile: what is there
    if (!f || ferror(f)) die("%s: read failed (%s)", path, strerror(errno));
    fclose(f);
    const Json *v = json_parse(s, n, path);
    free(s);
    return v;
}

static const Json *jget(const Json *o, const char *key) {  // NULL if o is not an object or has no such member
    if (!o || o->type != J_OBJ) return NULL;
    for (int i = 0; i < o->n; i++) if (!strcmp(o->kid[i].key, key)) return &o->kid[i];
    return NULL;
}

static const char *jstr(const Json *o, const char *key) {  // NULL unless a string
    const Json *v = jget(o, key);
    return v && v->type == J_STR ? v->str : NULL;
}

// ----------------------------------------------------------------------------
// a string -> int64 hash map (open addressing; the keys are not copied)

typedef struct { const char *key; int64_t val; } Slot;
typedef struct { Slot *slot; size_t cap, n; } Map;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    while (*s) h = (h ^ (uint8_t)*s++) * 1099511628211ull;
    return h;
}

static void map_put(Map *m, const char *key, int64_t val) {
    if (2 * (m->n + 1) > m->cap) {  // keep the table at most half full
        Map g = { calloc(m->cap ? 2 * m->cap : 1024, sizeof(Slot)), m->cap ? 2 * m->cap : 1024, 0 };
        if (!g.slot) die("out of memory");
        for (size_t i = 0; i < m->cap; i++) if (m->slot[i].key) map_put(&g, m->slot[i].key, m->slot[i].val);
        free(m->slot);
        *m = g;
    }
    size_t i = hash_str(key) & (m->cap - 1);
    while (m->slot[i].key && strcmp(m->slot[i].key, key)) i = (i + 1) & (m->cap - 1);
    if (!m->slot[i].key) m->n++;
    m->slot[i].key = key;
    m->slot[i].val = val;
}

static int64_t map_get(const Map *m, const char *key) {  // -1 if absent
    if (!m->cap) return -1;
    size_t i = hash_str(key) & (m->cap - 1);
    for (; m->slot[i].key; i = (i + 1) & (m->cap - 1)) if (!strcmp(m->slot[i].key, key)) return m->slot[i].val;
    return -1;
}

// ----------------------------------------------------------------------------
// safetensors: 8-byte little-endian header length, a JSON header, then the data. Files are mmapped.

enum { DT_BF16, DT_F16, DT_F32, DT_F8, DT_OTHER };
static const char *dt_names[] = { "BF16", "F16", "F32", "F8_E4M3" };
static const int dt_size[] = { 2, 2, 4, 1 };

typedef struct {
    const char *name, *file, *dtname;
    int dtype, ndim;
    int64_t shape[8];
    int64_t rows, cols;     // as a matrix: cols = the last dim, rows = the product of the others
    const uint8_t *data;
} STensor;

static STensor *tens;   // every tensor of every file
static int ntens;
static Map tmap;        // name -> index in tens
typedef struct { char *path; const uint8_t *map; size_t size; const Json *header; } SFile;
static SFile *files;    // every file opened: the tensors point into their paths, mappings and headers
static int nfiles;

typedef struct { uint64_t b, e; const char *name; } Span;  // a tensor's data_offsets
static int span_order(const void *x, const void *y) {
    const Span *a = x, *b = y;
    return a->b != b->b ? (a->b > b->b) - (a->b < b->b) : (a->e > b->e) - (a->e < b->e);
}

static void open_safetensors(char *path) {  // path: a fresh string, freed with the file at the end
    struct stat st;
    int fd = in_open(path, 0, &st);
    if (fd < 0) die("%s: cannot open (%s)", path, strerror(errno));
    size_t size = st.st_size;
    if (size < 8) die("%s: truncated (%zu bytes); re-download or re-save it", path, size);
    const uint8_t *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) die("%s: mmap failed (%s)", path, strerror(errno));
    close(fd);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | map[i];
    if (hlen > size - 8) die("%s: truncated: the header says %llu bytes of JSON, the file has %zu; re-download it", path, (unsigned long long)hlen, size);
    if (hlen > MAX_JSON) die("%s: a header of %llu bytes, more than the safetensors library's limit of %d; re-save it", path, (unsigned long long)hlen, MAX_JSON);
    const Json *h = json_parse((const char *)map + 8, hlen, path);
    files = xrealloc(files, (nfiles + 1) * sizeof *files);
    files[nfiles++] = (SFile){ path, map, size, h };
    if (h->type != J_OBJ) die("%s: not a safetensors file (the header is not a JSON object)", path);
    uint64_t dsize = size - 8 - hlen;
    Span *sp = xmalloc((h->n + 1) * sizeof *sp);
    int ns = 0;
    for (int i = 0; i < h->n; i++) {
        const Json *e = &h->kid[i], *dt = jget(e, "dtype"), *sh = jget(e, "shape"), *of = jget(e, "data_offsets");
        if (!strcmp(e->key, "__metadata__")) continue;
        if (!dt || dt->type != J_STR || !sh || sh->type != J_ARR || sh->n > 8 || !of || of->type != J_ARR || of->n != 2
            || of->kid[0].type != J_NUM || of->kid[1].type != J_NUM)
            die("%s: tensor %s: bad header entry (dtype, shape, data_offsets)", path, shown(e->key));
        STensor t = { .name = e->key, .file = path, .dtname = dt->str, .ndim = sh->n };
        for (t.dtype = 0; t.dtype < DT_OTHER && strcmp(dt_names[t.dtype], dt->str); t.dtype++) {}
        double numel = 1, b = of->kid[0].num, end = of->kid[1].num;
        for (int d = 0; d < sh->n; d++) {
            double x = sh->kid[d].num;
            if (sh->kid[d].type != J_NUM || x < 0 || x != floor(x) || x > 1e12) die("%s: tensor %s: bad shape", path, shown(e->key));
            numel *= (t.shape[d] = (int64_t)x);
        }
        if (numel > 1e15) die("%s: tensor %s: bad shape", path, shown(e->key));
        if (!(b >= 0 && b <= end) || b != floor(b) || end != floor(end))
            die("%s: tensor %s: data_offsets [%.17g, %.17g] are not a range of bytes; re-download it", path, shown(e->key), b, end);
        if (end > (double)dsize)
            die("%s: truncated: tensor %s ends at byte %.0f of the data, the file holds %llu; re-download it", path, shown(e->key), end, (unsigned long long)dsize);
        if (t.dtype != DT_OTHER && end - b != numel * dt_size[t.dtype])
            die("%s: tensor %s: %.0f bytes for %.0f values of %s", path, shown(e->key), end - b, numel, shown(dt->str));
        sp[ns++] = (Span){ (uint64_t)b, (uint64_t)end, e->key };
        t.cols = t.ndim ? t.shape[t.ndim - 1] : 1;
        t.rows = t.cols ? (int64_t)numel / t.cols : 0;
        t.data = map + 8 + hlen + (uint64_t)b;
        if (ntens % 256 == 0) tens = xrealloc(tens, (ntens + 256) * sizeof *tens);
        tens[ntens] = t;
        map_put(&tmap, t.name, ntens++);
    }
    // The data is every tensor's bytes once, in order, and nothing else, as the safetensors library
    // checks: sorted by start, each tensor begins where the one before ends, and the last ends the file.
    qsort(sp, ns, sizeof *sp, span_order);
    uint64_t at = 0;
    for (int i = 0; i < ns; at = sp[i++].e)
        if (sp[i].b != at)
            die("%s: tensor %s: data_offsets [%llu, %llu] %s %llu; the safetensors library refuses such a file: re-download or "
                "re-save it", path, shown(sp[i].name), (unsigned long long)sp[i].b, (unsigned long long)sp[i].e,
                sp[i].b < at ? "overlap the tensor before it, which ends at byte" : "leave a gap in the data after byte", (unsigned long long)at);
    if (at != dsize)
        die("%s: bytes %llu to %llu of the data belong to no tensor; the safetensors library refuses such a file: re-download "
            "or re-save it", path, (unsigned long long)at, (unsigned long long)dsize);
    free(sp);
}

// model.safetensors, or every shard named in model.safetensors.index.json
static void open_weights(const char *dir) {
    char *single = cat("%s/model.safetensors", dir), *index = cat("%s/model.safetensors.index.json", dir);
    if (access(single, F_OK) == 0) { open_safetensors(single); free(index); return; }
    free(single);
    const Json *idx = read_json(index), *wm = jget(idx, "weight_map");
    if (!idx) die("%s: no model.safetensors and no model.safetensors.index.json; convert reads safetensors "
                  "(re-save a pytorch_model.bin with save_pretrained)", dir);
    if (!wm || wm->type != J_OBJ) die("%s: no \"weight_map\" object", index);
    Map seen = {0};
    for (int i = 0; i < wm->n; i++) {
        const char *file = wm->kid[i].str;
        if (wm->kid[i].type != J_STR) die("%s: weight_map.%s is not a file name", index, shown(wm->kid[i].key));
        if (!*file || strchr(file, '/') || strlen(file) > 255)   // a shard is a file of the folder, named as a file can be
            die("%s: weight_map.%s names the shard \"%s\", not a file name of the folder", index, shown(wm->kid[i].key), shown(file));
        if (map_get(&seen, file) >= 0) continue;
        map_put(&seen, file, 1);
        open_safetensors(cat("%s/%s", dir, file));
    }
    free(seen.slot);
    json_free(idx);
    free(index);
}

// ----------------------------------------------------------------------------
// reading a tensor as rows of float32, and writing it as bf16 or float32

typedef struct {
    const STensor *t;       // NULL: zeros
    const STensor *scale;   // F8_E4M3 only: the block scales (weight_scale_inv)
    int64_t row0, rows, cols;  // rows [row0, row0 + rows) of t as a matrix
} Src;

static int blk_r = 128, blk_c = 128;  // FP8 scale blocks (quantization_config.weight_block_size)
static const char *hf_dir;

static float f16_to_f32(uint16_t h) {
    int e = h >> 10 & 31, m = h & 1023;
    float v = e == 0 ? ldexpf(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf(m + 1024, e - 25);
    return h >> 15 ? -v : v;
}

static float f8_to_f32(uint8_t b) {  // E4M3FN: exponent bias 7, no infinities, S.1111.111 is NaN
    int e = b >> 3 & 15, m = b & 7;
    float v = e == 0 ? ldexpf(m, -9) : (e == 15 && m == 7) ? NAN : ldexpf(m + 8, e - 10);
    return b >> 7 ? -v : v;
}

static void to_f32(const STensor *t, int64_t i, int64_t n, float *out) {  // elements [i, i + n) of t
    const uint8_t *p = t->data + (uint64_t)i * dt_size[t->dtype];
    uint16_t h;
    uint32_t u;
    for (int64_t j = 0; j < n; j++) switch (t->dtype) {
        case DT_BF16: memcpy(&h, p + 2 * j, 2); u = (uint32_t)h << 16; memcpy(&out[j], &u, 4); break;
        case DT_F16: memcpy(&h, p + 2 * j, 2); out[j] = f16_to_f32(h); break;
        case DT_F32: memcpy(&out[j], p + 4 * j, 4); break;
        case DT_F8: out[j] = f8_to_f32(p[j]); break;
        }
}

static void load_row(const Src *s, int64_t r, float *out) {
    int64_t R = s->row0 + r;
    if (!s->t) { memset(out, 0, s->cols * sizeof(float)); return; }
    to_f32(s->t, R * s->t->cols, s->cols, out);
    if (s->scale)  // value = fp8(w[i][j]) * scale_inv[i / 128][j / 128]
        for (int64_t j0 = 0; j0 < s->cols; j0 += blk_c) {
            float sc;
            to_f32(s->scale, (R / blk_r) * s->scale->cols + j0 / blk_c, 1, &sc);
            for (int64_t j = j0; j < s->cols && j < j0 + blk_c; j++) out[j] *= sc;
        }
}

static const STensor *find(const char *name) {
    int64_t i = map_get(&tmap, name);
    return i < 0 ? NULL : &tens[i];
}

static const char *shape_str(int n, const int64_t *d) {  // "(a, b)"; three buffers in turn, for one message
    static char buf[3][160];
    static int k;
    char *s = buf[k++ % 3];
    int at = snprintf(s, 160, "(");
    for (int i = 0; i < n; i++) at += snprintf(s + at, 160 - at, "%s%lld", i ? ", " : "", (long long)d[i]);
    snprintf(s + at, 160 - at, ")");
    return s;
}

// The tensor `name`, which must have the shape (a), (a, b) or (a, b, c): the first ndim of them.
static Src src(const char *name, int ndim, int64_t a, int64_t b, int64_t c) {
    const STensor *t = find(name);
    int64_t want[3] = { a, b, c };
    if (!t) die("%s: tensor %s is missing; is the checkpoint complete (every shard present)?", hf_dir, name);
    int ok = t->ndim == ndim;
    for (int d = 0; ok && d < ndim; d++) ok = t->shape[d] == want[d];
    if (!ok) die("%s: tensor %s has shape %s, but config.json says %s", t->file, name, shape_str(t->ndim, t->shape), shape_str(ndim, want));
    if (t->dtype == DT_OTHER) die("%s: tensor %s is %s; convert reads BF16, F16, F32 and F8_E4M3", t->file, name, shown(t->dtname));
    Src s = { t, NULL, 0, t->rows, t->cols };
    if (t->dtype == DT_F8) {
        char *sn = cat("%s_scale_inv", name);
        const STensor *sc = s.scale = find(sn);
        int64_t nb[2] = { (t->rows + blk_r - 1) / blk_r, (t->cols + blk_c - 1) / blk_c };
        if (!sc) die("%s: tensor %s is F8_E4M3 but its block scales %s are missing", t->file, name, sn);
        if (ndim != 2) die("%s: tensor %s: F8_E4M3 is supported for matrices only", t->file, name);
        if (sc->ndim != 2 || sc->shape[0] != nb[0] || sc->shape[1] != nb[1] || sc->dtype == DT_OTHER || sc->dtype == DT_F8)
            die("%s: %s is %s %s; for %s %s in %dx%d blocks it should be float %s", sc->file, sn, shown(sc->dtname),
                shape_str(sc->ndim, sc->shape), name, shape_str(2, t->shape), blk_r, blk_c, shape_str(2, nb));
        free(sn);
    }
    return s;
}

static uint64_t written;  // bytes written to the output so far

static void put(FILE *f, const void *p, size_t n) {
    out_write(f, p, n);
    written += n;
}

static void pad_to(FILE *f, uint64_t pos) {
    static const uint8_t zero[4096];
    while (written < pos) put(f, zero, pos - written < sizeof zero ? pos - written : sizeof zero);
}

static void emit(FILE *f, const Src *s, int f32) {  // f NULL: a dry run, which only checks the sources
    if (!f) return;
    float *row = xmalloc(s->cols * sizeof(float));
    uint16_t *h = xmalloc(s->cols * sizeof(uint16_t));
    for (int64_t r = 0; r < s->rows; r++) {
        load_row(s, r, row);
        for (int64_t j = 0; j < s->cols; j++) {  // every value written is finite: a NaN or an infinity is damage
            h[j] = f32_to_bf16(row[j]);
            if (!isfinite(f32 ? row[j] : bf16_to_f32(h[j])))
                die("%s: tensor %s holds %g at row %lld, column %lld%s; the checkpoint is damaged: re-download it", s->t->file,
                    s->t->name, row[j], (long long)(s->row0 + r), (long long)j, isfinite(row[j]) ? ", beyond bfloat16's range"
                    : s->scale ? " (the F8 value times its block scale)" : "");
        }
        if (f32) put(f, row, s->cols * sizeof(float));
        else put(f, h, s->cols * sizeof(uint16_t));
    }
    free(row);
    free(h);
}

// ----------------------------------------------------------------------------
// the HF tensors behind each tpla tensor

static int is_v3, tie_embed;

static void write_tensor(FILE *f, const Config *c, const Tensor *t) {
    int64_t D = c->dim, H = c->n_heads, E = c->n_experts, I = c->moe_inter, S = (int64_t)c->n_shared * I;
    int64_t QK = H * (c->dn + c->dr);
    char nm[256], en[96];
#define L(suffix) (snprintf(nm, sizeof nm, "model.layers.%d.%s", t->layer, suffix), nm)
    Src s;
    switch (t->kind) {
    case T_EMBED:     s = src("model.embed_tokens.weight", 2, c->vocab, D, 0); break;
    case T_ATTN_NORM: s = src(L("input_layernorm.weight"), 1, D, 0, 0); break;
    case T_WQ_A:      s = src(L("self_attn.q_a_proj.weight"), 2, c->q_lora, D, 0); break;
    case T_Q_NORM:    s = src(L("self_attn.q_a_layernorm.weight"), 1, c->q_lora, 0, 0); break;
    case T_WQ_B:      s = src(L("self_attn.q_b_proj.weight"), 2, QK, c->q_lora, 0); break;
    case T_WQ:        s = src(L("self_attn.q_proj.weight"), 2, QK, D, 0); break;
    case T_WKV_A:     s = src(L("self_attn.kv_a_proj_with_mqa.weight"), 2, c->dc + c->dr, D, 0); break;
    case T_KV_NORM:   s = src(L("self_attn.kv_a_layernorm.weight"), 1, c->dc, 0, 0); break;
    case T_WKV_B:     s = src(L("self_attn.kv_b_proj.weight"), 2, H * (c->dn + c->dv), c->dc, 0); break;  // = (H, dn+dv, dc)
    case T_WO:        s = src(L("self_attn.o_proj.weight"), 2, D, H * c->dv, 0); break;
    case T_FFN_NORM:  s = src(L("post_attention_layernorm.weight"), 1, D, 0, 0); break;
    case T_W1:        s = src(L("mlp.gate_proj.weight"), 2, c->inter, D, 0); break;
    case T_W2:        s = src(L("mlp.down_proj.weight"), 2, D, c->inter, 0); break;
    case T_W3:        s = src(L("mlp.up_proj.weight"), 2, c->inter, D, 0); break;
    case T_GATE:      s = src(L("mlp.gate.weight"), 2, E, D, 0); break;
    case T_BIAS:      // V3's e_score_correction_bias; V2 has none: zeros
        s = is_v3 ? src(L("mlp.gate.e_score_correction_bias"), 1, E, 0, 0) : (Src){ NULL, NULL, 0, 1, E };
        break;
    case T_EW1: case T_EW2: case T_EW3: {  // per expert, or the fused form transformers 5 uses in memory
        int down = t->kind == T_EW2;
        const char *part = t->kind == T_EW1 ? "gate_proj" : down ? "down_proj" : "up_proj";
        int fused = !find(L("mlp.experts.0.gate_proj.weight")) && find(L("mlp.experts.gate_up_proj"));
        for (int e = 0; e < E; e++) {
            if (!fused) {
                snprintf(en, sizeof en, "mlp.experts.%d.%s.weight", e, part);
                s = src(L(en), 2, down ? D : I, down ? I : D, 0);
            } else if (down) {  // down_proj (E, D, I)
                s = src(L("mlp.experts.down_proj"), 3, E, D, I);
                s.row0 = e * D, s.rows = D;
            } else {            // gate_up_proj (E, 2I, D): gate rows, then up rows
                s = src(L("mlp.experts.gate_up_proj"), 3, E, 2 * I, D);
                s.row0 = e * 2 * I + (t->kind == T_EW3 ? I : 0), s.rows = I;
            }
            emit(f, &s, 0);
        }
        return;
    }
    case T_SW1:       s = src(L("mlp.shared_experts.gate_proj.weight"), 2, S, D, 0); break;
    case T_SW2:       s = src(L("mlp.shared_experts.down_proj.weight"), 2, D, S, 0); break;
    case T_SW3:       s = src(L("mlp.shared_experts.up_proj.weight"), 2, S, D, 0); break;
    case T_NORM:      s = src("model.norm.weight", 1, D, 0, 0); break;
    case T_LM_HEAD:   s = src(tie_embed ? "model.embed_tokens.weight" : "lm_head.weight", 2, c->vocab, D, 0); break;
    default: die("tensor kind %d unknown to convert.c", t->kind);
    }
#undef L
    emit(f, &s, t->f32);
}

// ----------------------------------------------------------------------------
// config.json -> Config, with HF's semantics (DeepseekV2Config / DeepseekV3Config, modeling_rope_utils.py)

static const Json *cfg;

static int has(const Json *o, const char *k) { const Json *v = jget(o, k); return v && v->type != J_NULL; }

static double num(const Json *o, const char *k, double def) {  // def NAN: required
    const Json *v = jget(o, k);
    if (!v || v->type == J_NULL) {
        if (isnan(def)) die("config.json: %s is missing; is this the config of a DeepSeek-V2/V3 model?", k);
        return def;
    }
    if (v->type == J_TRUE || v->type == J_FALSE) return v->type == J_TRUE;
    if (v->type != J_NUM) die("config.json: %s should be a number", k);
    return v->num;
}

static int inum(const Json *o, const char *k, double def) {
    double v = num(o, k, def);
    if (v != floor(v) || fabs(v) > 1e9) die("config.json: %s = %g should be an integer", k, v);
    return (int)v;
}

static int token_id(const char *k, int def) {  // a number, the first of a list, or null (-1)
    const Json *v = jget(cfg, k);
    if (!v) return def;
    if (v->type == J_ARR) v = v->n ? &v->kid[0] : NULL;
    if (!v || v->type == J_NULL) return -1;
    if (v->type != J_NUM || fabs(v->num) > 1e9) die("config.json: %s should be a token id", k);
    return (int)v->num;
}

static double get_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0; }

static const char *parse_config(Config *c) {  // returns the architecture
    const Json *arch = jget(cfg, "architectures");
    const char *a = arch && arch->type == J_ARR && arch->n && arch->kid[0].type == J_STR ? arch->kid[0].str : NULL;
    if (!a) die("config.json: no \"architectures\"; convert needs DeepseekV2ForCausalLM or DeepseekV3ForCausalLM");
    is_v3 = !strcmp(a, "DeepseekV3ForCausalLM");
    if (!is_v3 && strcmp(a, "DeepseekV2ForCausalLM"))
        die("config.json: architecture %s is not supported; convert knows DeepseekV2ForCausalLM and "
            "DeepseekV3ForCausalLM (DeepSeek-V2/V3, Kimi-K2, Moonlight)", shown(a));
    const char *act = jstr(cfg, "hidden_act");
    if (act && strcmp(act, "silu")) die("config.json: hidden_act %s is not supported (only silu)", shown(act));
    if (num(cfg, "attention_bias", 0)) die("config.json: attention_bias true is not supported (DeepSeek has no biases)");
    if (num(cfg, "mlp_bias", 0)) die("config.json: mlp_bias true is not supported (DeepSeek has no biases)");

    memset(c, 0, sizeof *c);
    c->dim = inum(cfg, "hidden_size", NAN);
    c->n_layers = inum(cfg, "num_hidden_layers", NAN);
    c->n_heads = inum(cfg, "num_attention_heads", NAN);
    c->vocab = inum(cfg, "vocab_size", NAN);
    if (!jget(cfg, "q_lora_rank")) die("config.json: q_lora_rank is missing (null means a plain q_proj)");
    c->q_lora = inum(cfg, "q_lora_rank", 0);
    c->dc = inum(cfg, "kv_lora_rank", NAN);
    c->dn = inum(cfg, "qk_nope_head_dim", NAN);
    c->dr = inum(cfg, "qk_rope_head_dim", NAN);
    c->dv = inum(cfg, "v_head_dim", NAN);
    if (!jget(cfg, "n_routed_experts")) die("config.json: n_routed_experts is missing (null or 0 means all layers dense)");
    c->n_experts = inum(cfg, "n_routed_experts", 0);
    c->first_dense = c->n_experts ? inum(cfg, "first_k_dense_replace", is_v3 ? 3 : 0) : c->n_layers;
    if (c->first_dense > c->n_layers) c->first_dense = c->n_layers;  // every layer dense, as in HF
    if (num(cfg, "moe_layer_freq", 1) != 1) die("config.json: moe_layer_freq %g is not supported (only 1)", num(cfg, "moe_layer_freq", 1));
    if (c->first_dense > 0) c->inter = inum(cfg, "intermediate_size", NAN);
    if (c->n_experts && c->first_dense < c->n_layers) {  // defaults: the HF config classes'
        c->moe_inter = inum(cfg, "moe_intermediate_size", NAN);
        c->n_shared = inum(cfg, "n_shared_experts", is_v3 ? 1 : 2);
        c->topk = inum(cfg, "num_experts_per_tok", is_v3 ? 8 : NAN);
        c->n_group = inum(cfg, "n_group", is_v3 ? 8 : 0);
        c->topk_group = inum(cfg, "topk_group", is_v3 ? 4 : 0);
        c->routed_scale = num(cfg, "routed_scaling_factor", is_v3 ? 2.5 : 1.0);
        const char *m = jstr(cfg, "topk_method");
        if (is_v3) {  // HF's V3 router is always sigmoid + bias + groups ranked by their top-2 sum
            c->routing = ROUTE_SIGMOID_GROUP;
            c->norm_topk = num(cfg, "norm_topk_prob", 1) != 0;
            if (m && strcmp(m, "noaux_tc")) note("topk_method %s: HF's DeepseekV3 ignores it and routes as noaux_tc", shown(m));
        } else {       // HF's V2 router is softmax, and never normalises the chosen weights
            if (!m || !strcmp(m, "greedy")) c->routing = ROUTE_SOFTMAX_GREEDY;
            else if (!strcmp(m, "group_limited_greedy")) c->routing = ROUTE_SOFTMAX_GROUP;
            else die("config.json: topk_method %s is not supported for DeepseekV2 (greedy, group_limited_greedy)", shown(m));
            if (num(cfg, "norm_topk_prob", 0)) note("norm_topk_prob is true, but HF's DeepseekV2 never normalises: ignored");
        }
    }
    c->eps = num(cfg, "rms_norm_eps", 1e-6);
    c->max_seq = inum(cfg, "max_position_embeddings", is_v3 ? 4096 : 2048);
    c->bos = token_id("bos_token_id", is_v3 ? 0 : 1);
    c->eos = token_id("eos_token_id", is_v3 ? 1 : 2);
    c->rope_interleave = is_v3 ? num(cfg, "rope_interleave", 1) != 0 : 1;  // V2 always rotates complex pairs
    tie_embed = num(cfg, "tie_word_embeddings", 0) != 0;
    const Json *q = jget(jget(cfg, "quantization_config"), "weight_block_size");
    for (int i = 0; q && i < 2; i++)
        if (q->type != J_ARR || q->n != 2 || q->kid[i].type != J_NUM || !(q->kid[i].num >= 1 && q->kid[i].num <= 1 << 20))
            die("config.json: quantization_config.weight_block_size should be [rows, cols]");
    if (q) blk_r = (int)q->kid[0].num, blk_c = (int)q->kid[1].num;

    // RoPE: the old rope_scaling (+ top-level rope_theta) or transformers 5's rope_parameters
    const Json *rp = jget(cfg, "rope_scaling");
    if (!rp || rp->type != J_OBJ || !rp->n) rp = jget(cfg, "rope_parameters");
    if (rp && rp->type != J_OBJ) rp = NULL;
    const char *type = jstr(rp, "rope_type") ? jstr(rp, "rope_type") : jstr(rp, "type") ? jstr(rp, "type") : "default";
    c->rope_theta = num(rp, "rope_theta", num(cfg, "rope_theta", 10000));
    c->softmax_scale = 1 / sqrt((double)c->dn + c->dr);
    c->rope_type = ROPE_DEFAULT;
    c->rope_attn = c->yarn_factor = 1;
    c->yarn_beta_fast = 32, c->yarn_beta_slow = 1, c->yarn_truncate = 1, c->yarn_orig_max = c->max_seq;
    if (!strcmp(type, "yarn")) {  // as _compute_yarn_parameters
        c->rope_type = ROPE_YARN;
        // a top-level original_max_position_embeddings wins, as in HF's standardize_rope_params
        c->yarn_orig_max = inum(cfg, "original_max_position_embeddings", inum(rp, "original_max_position_embeddings", c->max_seq));
        double factor = num(rp, "factor", (double)c->max_seq / c->yarn_orig_max);
        double ms = num(rp, "mscale", 0), msad = num(rp, "mscale_all_dim", 0);
        c->yarn_factor = factor;
        c->rope_attn = has(rp, "attention_factor") ? num(rp, "attention_factor", 1)
                     : ms && msad ? get_mscale(factor, ms) / get_mscale(factor, msad) : get_mscale(factor, 1);
        c->yarn_beta_fast = num(rp, "beta_fast", 0) ? num(rp, "beta_fast", 0) : 32;  // HF: `or 32`
        c->yarn_beta_slow = num(rp, "beta_slow", 0) ? num(rp, "beta_slow", 0) : 1;
        c->yarn_truncate = jget(rp, "truncate") ? num(rp, "truncate", 0) != 0 : 1;
        if (msad) c->softmax_scale *= get_mscale(factor, msad) * get_mscale(factor, msad);  // yarn_apply_mscale
    } else if (strcmp(type, "default"))
        die("config.json: rope type \"%s\" is not supported; convert knows default and yarn", shown(type));
    return a;
}

// ----------------------------------------------------------------------------
// tokenizer block, from HF tokenizer.json (and tokenizer_config.json's add_bos_token):
//   int32 n_tokens (= config vocab), int32 n_merges, int32 pretok (PRETOK_*, tpla.h), int32 add_bos
//   PRETOK_SPLITS only: int32 n_patterns, then each pattern: int32 n_elements, n_elements x { PatElem, ranges }
//   n_tokens x { int32 len, int32 flags, uint8 bytes[len] }   // flags: 1 special, 2 added token, 4 added token matched
//       after normalization (HF's normalized: true). Bytes: the byte-level alphabet (GPT-2's bytes_to_unicode) decoded
//       back to bytes; added tokens keep their text; ids missing from the json get len 0
//   n_merges x { int32 left, int32 right, int32 merged }   // token ids, in merge-rank order
// Only what run reproduces exactly is converted: a byte-level BPE with no normalizer, and the pre-tokenizer
// ByteLevel (use_regex: the GPT-2 split), DeepSeek-V3's Sequence of three Splits and a ByteLevel, or a Sequence of
// Splits in the grammar of tpla.h and Digits, then a ByteLevel (the DeepSeek-V2 family); anything else is refused.

typedef struct { uint8_t *p; size_t n, cap; } Buf;

static void buf_put(Buf *b, const void *p, size_t n) {
    if (!n) return;
    if (b->n + n > b->cap) b->p = xrealloc(b->p, b->cap = 2 * (b->n + n) + 4096);
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void buf_i32(Buf *b, int32_t v) { buf_put(b, &v, 4); }

static int byte_of[512];  // GPT-2's bytes_to_unicode inverted: code point -> byte, -1 outside the alphabet

static int unbyte(const char *s, int len, uint8_t *out) {  // the bytes a token stands for; -1 if not byte-level
    int n = 0;
    for (int i = 0; i < len;) {
        unsigned ch = (uint8_t)s[i], cp;
        if (ch < 0x80) cp = ch, i += 1;
        else if ((ch & 0xE0) == 0xC0 && i + 1 < len) cp = (ch & 0x1F) << 6 | ((uint8_t)s[i + 1] & 0x3F), i += 2;
        else return -1;  // the alphabet is U+0021..U+0143: one or two bytes of UTF-8
        if (cp >= 512 || byte_of[cp] < 0) return -1;
        out[n++] = byte_of[cp];
    }
    return n;
}

// A text for a message, quoted: at most 60 characters (240 bytes) of it, "..." if more, control bytes escaped
// (three buffers in turn, for one message)
static const char *show(const void *text, size_t n) {
    static char buf[3][320];
    static int k;
    const uint8_t *s = text;
    char *o = buf[k++ % 3], *p = o;
    *p++ = '"';
    for (size_t i = 0, chars = 0; i < n; i++) {
        if (p - o > 240 || ((s[i] & 0xC0) != 0x80 && ++chars > 60)) { p += sprintf(p, "..."); break; }
        if (s[i] >= 0x20 && s[i] != 0x7F) *p++ = s[i];
        else p += sprintf(p, s[i] == '\n' ? "\\n" : s[i] == '\r' ? "\\r" : s[i] == '\t' ? "\\t" : "\\x%02x", s[i]);
    }
    *p++ = '"', *p = 0;
    return o;
}
static const char *shows(const char *s) { return show(s, strlen(s)); }

static const char *tok_path;  // tokenizer.json, for the messages

static void refuse(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s: ", tok_path);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, ".\n  run reproduces HF's tokenization exactly for byte-level BPE with no normalizer and the pre-tokenizer "
                    "ByteLevel (use_regex: the GPT-2 split), DeepSeek-V3's (Split \\p{N}{1,3}, Split CJK, Split main pattern, "
                    "ByteLevel) or a Sequence of Splits (Isolated, in run's small pattern grammar) and Digits, then ByteLevel "
                    "(the DeepSeek-V2 family).\n  To convert the weights without a tokenizer, move %s away "
                    "(then run needs token ids: -m logits).\n", tok_path);
    va_end(ap);
    exit(1);
}

static int jbool(const Json *o, const char *k, int def) {  // true / false; def if absent or null
    const Json *v = jget(o, k);
    return !v || v->type == J_NULL ? def : v->type == J_TRUE ? 1 : v->type == J_FALSE ? 0 : (refuse("%s should be true or false", k), 0);
}

static const char *type_of(const Json *o) { return jstr(o, "type") ? jstr(o, "type") : "(no type)"; }

// A JSON file that may be absent (NULL); one that is there but cannot be read (no permission, a link loop, a
// link to nothing) is an error, not "absent"
static const Json *read_optional(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0 && errno == ENOENT) return NULL;
    const Json *v = read_json(path);
    if (!v) die("%s: cannot open (%s)", path, strerror(errno));
    return v;
}

// DeepSeek-V3/R1's pre_tokenizer: these three Splits (Isolated), then ByteLevel without its regex
static const char *DEEPSEEK_V3_SPLITS[3] = {
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
};

// ---- Split patterns in run's grammar (tpla.h): a sequence of elements, each a character, \s, \p{L}, \p{M},
// \p{N}, \p{P}, \p{S} or a class [...] of those and ranges a-b ([^...]: negated), taken once or with ?, *, +,
// {m}, {m,} or {m,n}; and $ at the end. Oniguruma reads these as run matches them; anything else is refused.

static int32_t utf8_char(const char **p) {  // the code point at *p, moved past it; -1 if it is not UTF-8
    const uint8_t *s = (const uint8_t *)*p;
    int n = s[0] < 0x80 ? 0 : s[0] >= 0xC2 && s[0] < 0xE0 ? 1 : s[0] >= 0xE0 && s[0] < 0xF0 ? 2 : s[0] >= 0xF0 && s[0] < 0xF5 ? 3 : -1;
    if (n < 0) return -1;
    int32_t cp = n ? s[0] & (0x3F >> n) : s[0];
    for (int i = 1; i <= n; i++) { if ((s[i] & 0xC0) != 0x80) return -1; cp = cp << 6 | (s[i] & 0x3F); }
    *p += n + 1;
    return cp > 0x10FFFF || (cp >= 0xD800 && cp < 0xE000) ? -1 : cp;
}

// One character of a pattern at *p, moved past it: its code point; -1 for \s or \p{X} (whose class bit goes to
// *bits); -2 for what the grammar does not know
static int32_t pattern_char(const char **p, int32_t *bits) {
    static const char names[] = "LMNPS", esc[] = "r\rn\nt\tf\fv\v";  // \p{X}: PAT_L.. in this order; \r, \n, ..
    const char *s = *p;
    if (*s != '\\') { int32_t c = utf8_char(p); return c < 0 ? -2 : c; }
    if (s[1] == 's') { *bits |= PAT_WS; *p = s + 2; return -1; }
    if (s[1] == 'p') {
        const char *k = s[2] == '{' && s[3] ? strchr(names, s[3]) : NULL;
        if (!k || s[4] != '}') return -2;
        *bits |= PAT_L << (k - names);
        *p = s + 5;
        return -1;
    }
    for (int i = 0; esc[i]; i += 2) if (s[1] == esc[i]) { *p = s + 2; return esc[i + 1]; }
    if (s[1] > 0 && s[1] < 0x7F && ispunct((unsigned char)s[1])) { *p = s + 2; return s[1]; }  // \\, \-, \[, ...
    return -2;
}

static int cmp_range(const void *a, const void *b) { return ((const int32_t *)a)[0] - ((const int32_t *)b)[0]; }

// Compiles a Split's regex and appends it to out (int32 elements, then each PatElem and its ranges); NULL, or why not
static const char *compile_pattern(const char *re, Buf *out) {
    PatElem e[PAT_MAX];
    Buf r[PAT_MAX] = {{0}};  // each element's ranges, int32 lo and hi, before sorting
    const char *p = re, *why = NULL;
    int n = 0;
    while (*p && !why) {
        if (n == PAT_MAX) { why = "more elements than run takes"; break; }
        PatElem *el = &e[n];
        Buf *rb = &r[n++];
        *el = (PatElem){ 1, 1, 0, 0 };
        if (*p == '$' && !p[1]) { *el = (PatElem){ 0, 0, PAT_END, 0 }; p++; break; }
        if (strchr(".^$|(){}*+?]", *p)) { why = "an operator outside the grammar (. ^ $ | ( ) { } alternatives, groups)"; break; }
        int cls = *p == '[';
        p += cls;
        if (cls && *p == '^') el->flags |= PAT_NOT, p++;
        if (cls && *p == ']') why = "an empty class";
        do {  // one character or \s, \p{X}; in a class, the next ones too, and ranges
            if (cls && (*p == '[' || (p[0] == '&' && p[1] == '&'))) { why = "a class within a class, or &&"; break; }
            int32_t lo = pattern_char(&p, &el->flags), hi = lo;
            if (lo == -2) { why = "an escape or a character outside the grammar"; break; }
            if (lo >= 0 && cls && p[0] == '-' && p[1] && p[1] != ']') {
                p++;
                if ((hi = pattern_char(&p, &el->flags)) < lo) { why = "a range outside the grammar (or backwards)"; break; }
            }
            if (lo >= 0) buf_i32(rb, lo), buf_i32(rb, hi);
        } while (cls && *p && *p != ']' && !why);
        if (why) break;
        if (cls && *p++ != ']') { why = "a class without its ]"; break; }
        if (*p == '?' || *p == '*' || *p == '+') el->min = *p == '+', el->max = *p == '?' ? 1 : -1, p++;
        else if (*p == '{') {  // {m}, {m,}, {m,n}
            char *q;
            long lo = strtol(p + 1, &q, 10), hi = lo;
            if (*q == ',' && q[1] == '}') hi = -1, q++;
            else if (*q == ',') hi = isdigit((unsigned char)q[1]) ? strtol(q + 1, &q, 10) : -2;
            if (!isdigit((unsigned char)p[1]) || *q != '}' || lo > 1024 || hi > 1024 || hi < -1) { why = "a {m,n} outside the grammar"; break; }
            el->min = (int)lo, el->max = (int)hi, p = q + 1;
        }
        if (*p == '?' || *p == '+') why = "a lazy or possessive repeat";
    }
    if (!why) why = pattern_error(e, n);
    if (!why) {
        buf_i32(out, n);
        for (int k = 0; k < n; k++) {  // the ranges sorted and merged: run looks them up by binary search
            int32_t *v = (int32_t *)r[k].p, m = 0;
            if (v) qsort(v, r[k].n / 8, 8, cmp_range);
            for (size_t i = 0; i < r[k].n / 8; i++)
                if (m && v[2 * i] <= v[2 * m - 1] + 1) v[2 * m - 1] = v[2 * i + 1] > v[2 * m - 1] ? v[2 * i + 1] : v[2 * m - 1];
                else v[2 * m] = v[2 * i], v[2 * m + 1] = v[2 * i + 1], m++;
            e[k].n_ranges = m;
            buf_put(out, &e[k], sizeof e[k]);
            buf_put(out, v, 8 * (size_t)m);
        }
    }
    for (int k = 0; k < n; k++) free(r[k].p);
    return why;
}

// The pre-tokenizer: PRETOK_GPT2, PRETOK_DEEPSEEK_V3, or PRETOK_SPLITS with its patterns appended to prog;
// refuses, naming what it found, anything else
static int pre_tokenizer(const Json *pre, Buf *prog) {
    const char *t = type_of(pre);
    const Json *l = jget(pre, "pretokenizers");
    if (!pre || pre->type == J_NULL) refuse("no pre_tokenizer");
    if (!strcmp(t, "ByteLevel")) {
        if (jbool(pre, "add_prefix_space", 1)) refuse("pre_tokenizer ByteLevel with add_prefix_space is not supported");
        if (!jbool(pre, "use_regex", 1)) refuse("pre_tokenizer ByteLevel without use_regex (no split at all) is not supported");
        return PRETOK_GPT2;
    }
    if (strcmp(t, "Sequence") || !l || l->type != J_ARR || !l->n) refuse("pre_tokenizer %s is not supported", shows(t));
    const Json *bl = &l->kid[l->n - 1];
    if (strcmp(type_of(bl), "ByteLevel") || jbool(bl, "add_prefix_space", 1) || jbool(bl, "use_regex", 1))
        refuse("pre_tokenizer Sequence of %d: the last is not ByteLevel without add_prefix_space and use_regex", l->n);
    int v3 = l->n == 4;
    for (int i = 0; i < 3 && v3; i++) {
        const Json *s = &l->kid[i];
        const char *re = jstr(jget(s, "pattern"), "Regex"), *beh = jstr(s, "behavior");
        v3 = !strcmp(type_of(s), "Split") && re && !strcmp(re, DEEPSEEK_V3_SPLITS[i]) && beh && !strcmp(beh, "Isolated") && !jbool(s, "invert", 0);
    }
    if (v3) return PRETOK_DEEPSEEK_V3;
    if (l->n - 1 > PAT_MAX) refuse("pre_tokenizer Sequence of %d: more than %d Splits and Digits", l->n, PAT_MAX);
    buf_i32(prog, l->n - 1);
    for (int i = 0; i < l->n - 1; i++) {
        const Json *s = &l->kid[i];
        const char *st = type_of(s), *re = jstr(jget(s, "pattern"), "Regex"), *beh = jstr(s, "behavior"), *why = NULL;
        if (!strcmp(st, "Digits")) {  // HF: each digit (Rust's char::is_numeric) a piece, or each run of them
            PatElem d = { 1, jbool(s, "individual_digits", 0) ? 1 : -1, PAT_N | PAT_N17, 0 };
            buf_i32(prog, 1), buf_put(prog, &d, sizeof d);
            continue;
        }
        if (strcmp(st, "Split")) why = "neither Split nor Digits";
        else if (!re) why = "not a Regex pattern";
        else if (!beh || strcmp(beh, "Isolated")) why = "a behavior other than Isolated";
        else if (jbool(s, "invert", 0)) why = "invert";
        else why = compile_pattern(re, prog);
        if (why) refuse("pre_tokenizer Sequence element %d of %d (%s, behavior %s, pattern %s): %s; not supported", i + 1, l->n,
                        shows(st), beh ? shows(beh) : "none", re ? shows(re) : "none", why);
    }
    return PRETOK_SPLITS;
}

// The BOS that the post_processor's template puts before the text (-1: none); refuses any other template.
static int template_bos(const Json *pp, Map *vocab) {
    const char *t = type_of(pp);
    if (!pp || pp->type == J_NULL || !strcmp(t, "ByteLevel")) return -1;
    if (!strcmp(t, "Sequence")) {
        const Json *l = jget(pp, "processors");
        int bos = -1;
        for (int i = 0; l && l->type == J_ARR && i < l->n; i++) { int b = template_bos(&l->kid[i], vocab); if (b >= 0) bos = b; }
        return bos;
    }
    const Json *single = jget(pp, "single");
    if (strcmp(t, "TemplateProcessing") || !single || single->type != J_ARR) refuse("post_processor %s is not supported", shows(t));
    // [$A] or [BOS, $A]
    const Json *first = single->n == 2 ? jget(&single->kid[0], "SpecialToken") : NULL;
    if (!(single->n == 1 || (single->n == 2 && first)) || !jget(&single->kid[single->n - 1], "Sequence"))
        refuse("post_processor TemplateProcessing adds more than one BOS before the text; not supported");
    if (!first) return -1;
    const char *name = jstr(first, "id") ? jstr(first, "id") : "";
    const Json *ids = jget(jget(jget(pp, "special_tokens"), name), "ids");
    if (ids && ids->type == J_ARR && ids->n == 1 && ids->kid[0].type == J_NUM) return (int)ids->kid[0].num;
    int64_t id = map_get(vocab, name);
    if (id < 0) refuse("post_processor TemplateProcessing: the token %s is unknown", shows(name));
    return (int)id;
}

// Reads DIR/tokenizer.json (an empty block if there is none); *summary says what was found.
static Buf build_tokenizer(const char *dir, const Config *c, char **summary) {
    Buf b = {0}, prog = {0};
    int vocab = c->vocab;
    tok_path = cat("%s/tokenizer.json", dir);
    const Json *root = read_optional(tok_path), *model = jget(root, "model");
    if (!root) return b;
    const Json *vj = jget(model, "vocab"), *mj = jget(model, "merges"), *norm = jget(root, "normalizer");
    if (strcmp(type_of(model), "BPE")) refuse("model %s is not supported (BPE only)", shows(type_of(model)));
    if (!vj || vj->type != J_OBJ || !mj || mj->type != J_ARR) refuse("model.vocab or model.merges is missing");
    if (has(model, "dropout") || jbool(model, "byte_fallback", 0) || jbool(model, "ignore_merges", 0)
        || (jstr(model, "continuing_subword_prefix") && *jstr(model, "continuing_subword_prefix"))
        || (jstr(model, "end_of_word_suffix") && *jstr(model, "end_of_word_suffix")))
        refuse("BPE options dropout, byte_fallback, ignore_merges, continuing_subword_prefix or end_of_word_suffix are not supported");
    if (norm && norm->type != J_NULL && !(!strcmp(type_of(norm), "Sequence") && jget(norm, "normalizers") && !jget(norm, "normalizers")->n))
        refuse("normalizer %s changes the text before it is split; not supported", shows(type_of(norm)));
    int pretok = pre_tokenizer(jget(root, "pre_tokenizer"), &prog);
    if (strcmp(type_of(jget(root, "decoder")), "ByteLevel")) refuse("decoder %s is not supported (ByteLevel only)", shows(type_of(jget(root, "decoder"))));

    int n = 0;
    for (int i = 0; i < 256; i++) byte_of[i + 256] = byte_of[i] = -1;
    for (int ch = 0; ch < 256; ch++) byte_of[(ch >= 33 && ch <= 126) || (ch >= 161 && ch <= 172) || ch >= 174 ? ch : 256 + n++] = ch;

    uint8_t **tok = calloc(vocab, sizeof *tok);
    const char **text = calloc(vocab, sizeof *text);  // model.vocab's text of each id (the tree's), for the messages
    int *tlen = calloc(vocab, sizeof(int)), *flags = calloc(vocab, sizeof(int)), raw = 0, n_added = 0, n_special = 0;
    Map ids = {0}, added_ids = {0};
    if (!tok || !text || !tlen || !flags) die("out of memory");
    for (int i = 0; i < vj->n; i++) {  // model.vocab: byte-level text -> a whole id, one text per id (as HF requires)
        const Json *e = &vj->kid[i];
        int k = (int)strlen(e->key);
        if (e->type != J_NUM || e->num != floor(e->num) || e->num < 0) refuse("model.vocab: the id of %s is not a whole number >= 0", shows(e->key));
        if (e->num >= vocab) refuse("model.vocab: %s has id %.0f, outside config.json's vocab_size %d", shows(e->key), e->num, vocab);
        int id = (int)e->num;
        if (text[id]) refuse("model.vocab gives id %d to both %s and %s", id, shows(text[id]), shows(e->key));
        text[id] = e->key;
        map_put(&ids, e->key, id);
        tok[id] = xmalloc(k + 1);
        if ((tlen[id] = unbyte(e->key, k, tok[id])) >= 0) continue;
        if (k == 1) refuse("model.vocab: %s (id %d) is one byte outside the byte-level alphabet; not supported", shows(e->key), id);
        memcpy(tok[id], e->key, tlen[id] = k), raw++;
    }
    // Added tokens take the ids HF gives them (its AddedVocabulary, in the order listed; it does not read the
    // json's "id"): a text that model.vocab has keeps that id; any other takes the next one past the vocab
    // (HF's size of it, the texts in model.vocab, or one past the largest added id once that is beyond it).
    const Json *added = jget(root, "added_tokens"), *moved = NULL;
    int max_added = -1, n_moved = 0, moved_to = 0;
    for (int i = 0; added && added->type == J_ARR && i < added->n; i++) {
        const Json *a = &added->kid[i], *content = jget(a, "content"), *jid = jget(a, "id");
        if (!content || content->type != J_STR) refuse("added_tokens[%d] has no \"content\" text", i);
        const char *cs = content->str;
        int cn = content->n, nv = (int)ids.n;
        if (!cn) continue;  // HF skips it
        if (jbool(a, "lstrip", 0) || jbool(a, "rstrip", 0) || jbool(a, "single_word", 0))
            refuse("added token %s has lstrip, rstrip or single_word; not supported", show(cs, cn));
        if (map_get(&added_ids, cs) >= 0) refuse("added token %s is listed twice", show(cs, cn));
        int64_t v = map_get(&ids, cs);
        int id = v >= 0 ? (int)v : max_added < 0 ? nv : max_added >= nv || !nv ? max_added + 1 : nv;
        if (id >= vocab) refuse("added token %s takes id %d in HF (after the %d texts of model.vocab), outside config.json's "
                                "vocab_size %d", show(cs, cn), id, nv, vocab);
        if (v >= 0 && (tlen[id] != cn || memcmp(tok[id], cs, cn)))  // a byte-level spelling such as "Ġthe"
            refuse("added token %s is model.vocab's text for the bytes %s (id %d); HF would read the text %s as that token, "
                   "which run cannot; not supported", show(cs, cn), show(tok[id], tlen[id]), id, show(cs, cn));
        if (v >= 0 && cn == 1) refuse("added token %s is model.vocab's token of one byte (id %d); not supported", show(cs, cn), id);
        if (v < 0 && text[id]) refuse("added token %s takes id %d in HF, which model.vocab gives to %s; not supported",
                                      show(cs, cn), id, shows(text[id]));
        if ((!jid || jid->type != J_NUM || jid->num != id) && !n_moved++) moved = a, moved_to = id;
        if (v < 0) tok[id] = xmalloc(cn), memcpy(tok[id], cs, tlen[id] = cn);
        flags[id] = (jbool(a, "special", 0) ? TOK_SPECIAL : 0) | (jbool(a, "normalized", 1) ? TOK_ADDED_NORMALIZED : TOK_ADDED);
        map_put(&added_ids, cs, id);
        max_added = id > max_added ? id : max_added;
        n_added++, n_special += jbool(a, "special", 0);
    }
    if (n_moved) note("%s: %d added tokens have a json \"id\" other than the one HF gives them (the first: %s, HF's id %d); "
                      "HF does not read it: converted with HF's ids", tok_path, n_moved, shows(jstr(moved, "content")), moved_to);
    int byte_id[256];
    for (int i = 0; i < 256; i++) byte_id[i] = -1;
    for (int id = 0; id < vocab; id++) if (!flags[id] && tlen[id] == 1) byte_id[tok[id][0]] = id;
    for (int i = 0; i < 256; i++) if (byte_id[i] < 0 && utf8_byte(i)) refuse("no token for byte 0x%02x: not a byte-level BPE", i);
    if (raw) note("%s: %d tokens are not in the byte-level alphabet: kept as text", tok_path, raw);
    Buf mb = {0};
    for (int i = 0; i < mj->n; i++) {  // "a b" or ["a", "b"]; HF refuses a file with a merge of unknown tokens
        const Json *m = &mj->kid[i];
        char *l = NULL, *r = NULL, *own = NULL, *lr = NULL;
        if (m->type == J_STR && strchr(m->str, ' ')) l = own = cat("%s", m->str), r = strchr(l, ' '), *r++ = 0;
        else if (m->type == J_ARR && m->n == 2 && m->kid[0].type == J_STR && m->kid[1].type == J_STR) l = m->kid[0].str, r = m->kid[1].str;
        if (!l) refuse("merges[%d] is not \"a b\" or [\"a\", \"b\"]", i);
        int64_t li = map_get(&ids, l), ri = map_get(&ids, r), mi = map_get(&ids, lr = cat("%s%s", l, r));
        const char *why = li < 0 ? "the first is not in model.vocab" : ri < 0 ? "the second is not in model.vocab"
                        : mi < 0 ? "the two joined are not in model.vocab"
                        : tlen[mi] != tlen[li] + tlen[ri] || memcmp(tok[mi], tok[li], tlen[li]) || memcmp(tok[mi] + tlen[li], tok[ri], tlen[ri])
                        ? "the bytes of the two do not join into the bytes of the result (text outside the byte-level alphabet)" : NULL;
        if (why) refuse("merges[%d] (%s %s): %s", i, shows(l), shows(r), why);
        buf_i32(&mb, li), buf_i32(&mb, ri), buf_i32(&mb, mi);
        free(own), free(lr);
    }

    // BOS: tokenizer_config.json's add_bos_token when it says (transformers 4's LlamaTokenizerFast, the class
    // DeepSeek's releases name, follows it); otherwise the post_processor's template (transformers 5 follows it always)
    char *cpath = cat("%s/tokenizer_config.json", dir);
    const Json *tc = read_optional(cpath), *ab = jget(tc, "add_bos_token");
    int tbos = template_bos(jget(root, "post_processor"), &ids), add_bos = tbos >= 0;
    const char *why = tbos >= 0 ? "the post_processor's template" : "neither tokenizer_config.json nor the template asks for it";
    if (ab && ab->type != J_NULL) {
        if (ab->type != J_TRUE && ab->type != J_FALSE) die("%s: add_bos_token should be true or false", cpath);
        add_bos = ab->type == J_TRUE, why = "tokenizer_config.json's add_bos_token";
        const Json *bt = jget(tc, "bos_token");
        const char *bs = bt && bt->type == J_STR ? bt->str : jstr(bt, "content");
        int64_t id = bs ? map_get(&added_ids, bs) : -1;
        if (bs && id < 0) id = map_get(&ids, bs);
        if (add_bos && bt && bt->type != J_NULL && (!bs || id < 0))
            die("%s: bos_token %s is not a token of %s", cpath, bs ? shows(bs) : "(neither a text nor {\"content\": text})", tok_path);
        if (add_bos && bs) tbos = (int)id;
    }
    if (add_bos && c->bos < 0) refuse("BOS is to be added (%s), but config.json has no bos_token_id", why);
    if (add_bos && tbos >= 0 && tbos != c->bos)
        refuse("BOS is to be added (%s) as token %d, but config.json's bos_token_id is %d; make them agree", why, tbos, c->bos);

    buf_i32(&b, vocab), buf_i32(&b, (int)(mb.n / 12)), buf_i32(&b, pretok), buf_i32(&b, add_bos);
    buf_put(&b, prog.p, prog.n);
    for (int id = 0; id < vocab; id++) {
        buf_i32(&b, tlen[id]), buf_i32(&b, flags[id]);
        buf_put(&b, tok[id], tlen[id]);
    }
    buf_put(&b, mb.p, mb.n);
    if (b.n > (size_t)1 << 30) die("%s: the tokenizer block would be %zu bytes; too large", tok_path, b.n);
    char split[64];
    if (pretok == PRETOK_SPLITS) snprintf(split, sizeof split, "%d Split and Digits patterns in sequence", *(int32_t *)prog.p);
    else snprintf(split, sizeof split, "%s", pretok == PRETOK_GPT2 ? "the GPT-2 split" : "DeepSeek-V3's split");
    *summary = cat("%d tokens, %d merges, %s, %d added tokens (%d special); BOS %s (%s)", vocab, (int)(mb.n / 12), split,
                   n_added, n_special, add_bos ? "added" : "not added", why);
    for (int id = 0; id < vocab; id++) free(tok[id]);
    free(tok), free(text), free(tlen), free(flags), free(ids.slot), free(added_ids.slot), free(mb.p), free(prog.p), free(cpath);
    json_free(tc), json_free(root);
    return b;
}

// ----------------------------------------------------------------------------
// main

int main(int argc, char **argv) {
    int help = 0;
    for (int i = 1; i < argc; i++) help |= !strcmp(argv[i], "-h") || !strcmp(argv[i], "--help");
    if (help || argc != 3) {   // asked for: on stdout, exit 0; a wrong call: on stderr, exit 1
        fprintf(help ? stdout : stderr, "usage: %s HF_DIR OUT.bin\n"
                "  HF_DIR: a Hugging Face DeepSeek-V2/V3 checkpoint (config.json, *.safetensors, tokenizer.json)\n", argv[0]);
        return help ? 0 : 1;
    }
    const char *dir = hf_dir = argv[1], *out = argv[2];
    atexit(stdout_check);
    if (!*out) die("OUT is an empty path; give a file name");
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        die("%s: no such directory; give the folder of a Hugging Face checkpoint (config.json + *.safetensors)", dir);
    char *cpath = cat("%s/config.json", dir);
    if (!(cfg = read_json(cpath))) die("%s: cannot open (%s); is %s a Hugging Face checkpoint?", cpath, strerror(errno), dir);

    // the whole config is checked first, by the rules run applies, before any large work
    Config c;
    const char *arch = parse_config(&c), *err = config_error(&c);
    if (err) die("%s: %s", cpath, err);
    FILE *f = out_open(out);   // its temporary: a path that cannot be written fails now
    char *tok_summary = NULL;
    Buf tok = build_tokenizer(dir, &c, &tok_summary);
    c.tok_bytes = (int)tok.n;
    if ((err = config_error(&c))) die("%s: %s", tok_path, err);
    open_weights(dir);

    uint64_t bytes;
    int nt = tensor_layout(&c, NULL, &bytes);
    Tensor *T = xmalloc(nt * sizeof *T);
    tensor_layout(&c, T, &bytes);
    for (int i = 0; i < nt; i++) write_tensor(NULL, &c, &T[i]);  // a dry run: every tensor present, every shape right

    uint8_t header[TPLA_HEADER] = {0};
    uint32_t magic = TPLA_MAGIC;
    int32_t version = TPLA_VERSION;
    memcpy(header, &magic, 4), memcpy(header + 4, &version, 4), memcpy(header + 8, &c, sizeof c);
    put(f, header, sizeof header);
    put(f, tok.p, tok.n);
    uint64_t w0 = weights_offset(&c);
    double t0 = now_s();
    char what[64];
    for (int i = 0; i < nt; i++) {
        snprintf(what, sizeof what, "convert: tensor %d of %d", i + 1, nt);
        progress(what, (long)(written >> 20), (long)((w0 + bytes) >> 20), "MB", t0);
        pad_to(f, w0 + T[i].off);
        write_tensor(f, &c, &T[i]);
    }
    pad_to(f, w0 + bytes);
    progress(what, (long)((w0 + bytes) >> 20), (long)((w0 + bytes) >> 20), "MB", t0);

    static const char *routes[] = { "softmax, greedy", "softmax, group-limited greedy", "sigmoid + bias, groups by top-2 sum" };
    int moe = c.first_dense < c.n_layers;
    printf("%s (%s) from %s\n", arch, jstr(cfg, "model_type") ? jstr(cfg, "model_type") : "?", dir);
    printf("  dim %d, layers %d (%d dense), heads %d, vocab %d, q_lora %d, kv_lora %d, dn %d dr %d dv %d, eps %g\n", c.dim,
           c.n_layers, moe ? c.first_dense : c.n_layers, c.n_heads, c.vocab, c.q_lora, c.dc, c.dn, c.dr, c.dv, c.eps);
    if (moe) {
        printf("  ffn %d; moe: %d experts of %d, %d shared, top-%d, %s", c.inter, c.n_experts, c.moe_inter, c.n_shared,
               c.topk, routes[c.routing]);
        if (c.routing != ROUTE_SOFTMAX_GREEDY) printf(" (top-%d of %d groups)", c.topk_group, c.n_group);
        printf(", norm_topk %d, scale %g\n", c.norm_topk, c.routed_scale);
    }
    printf("  rope %s, theta %g", c.rope_type == ROPE_YARN ? "yarn" : "default", c.rope_theta);
    if (c.rope_type == ROPE_YARN) printf(", factor %g, orig max %d, beta %g/%g, truncate %d, attn factor %.6f", c.yarn_factor,
                                         c.yarn_orig_max, c.yarn_beta_fast, c.yarn_beta_slow, c.yarn_truncate, c.rope_attn);
    printf("\n  interleave %d, softmax scale %.6f, max_seq %d, bos %d, eos %d%s\n", c.rope_interleave, c.softmax_scale,
           c.max_seq, c.bos, c.eos, tie_embed ? ", lm_head tied to the embedding" : "");
    printf("  tokenizer: %s\n", tok_summary ? tok_summary : "none");
    printf("wrote %s: %d tensors, %llu bytes\n", out, nt, (unsigned long long)(w0 + bytes));
    out_close(f, out);   // after the summary: if it cannot be written, OUT is not made

    for (int i = 0; i < nfiles; i++) munmap((void *)files[i].map, files[i].size), json_free(files[i].header), free(files[i].path);
    free(files), free(tens), free(tmap.slot), free(T), free(tok.p), free(cpath), free(tok_summary);
    json_free(cfg);
    return 0;
}
