/* One decode forward of a Llama-family model on the CPU, fp32 activations and KV cache, fp32 or bf16 weights.

   Why one call: eager torch spends a decode step in ~600 small ops, each a parallel region whose idle OpenMP
   worker must be woken (OMP_WAIT_POLICY=PASSIVE, which the server needs), and its fp32 GEMV (MKL on this
   EPYC) streams the weights at a third of the memory bandwidth. Here the whole step is one parallel region,
   its stages separated by a spinning barrier, and each weight matrix is read once per step for all rows.

   Batch invariance: every output element is computed by the same sequence of operations whatever the other
   rows are (a dot product sums lane j = k mod 16 in k order, then a fixed tree; rows are never mixed), so a
   row's logits are bit for bit the same alone or in any batch, and greedy decoding is batch-independent. */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef float v16 __attribute__((vector_size(64)));
typedef uint16_t h16 __attribute__((vector_size(32)));
typedef uint32_t u16x __attribute__((vector_size(64)));

static inline v16 load_f32(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline v16 load_bf16(const uint16_t *p) {
    h16 h; memcpy(&h, p, sizeof h);
    u16x bits = __builtin_convertvector(h, u16x) << 16;
    v16 v; memcpy(&v, &bits, sizeof v); return v;
}
/* The sum of the 16 lanes as a fixed tree: lane j += lane j + 8, then j + 4, j + 2, j + 1. */
static inline float hsum(v16 v) {
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    v += __builtin_shufflevector(v, v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    return v[0];
}
static inline float wscalar_f32(const float *w, int64_t k) { return w[k]; }
static inline float wscalar_bf16(const uint16_t *w, int64_t k) { uint32_t b = (uint32_t)w[k] << 16; float f; memcpy(&f, &b, 4); return f; }

/* MB x NB outputs at once: independent chains hide the FMA latency and one weight load feeds MB rows. The
   tail (K % 16) is added after the tree, in k order, the same way in every tile shape. */
#define TILE(NAME, WT, LOAD, SCALAR, MB, NB)                                                                   \
static inline void NAME(const float *x, int64_t K, const WT *w, int64_t ldw, float *out, int64_t ldo) {     \
    v16 acc[MB][NB];                                                                                         \
    for (int i = 0; i < MB; ++i) for (int j = 0; j < NB; ++j) acc[i][j] = (v16){0};                          \
    int64_t k = 0;                                                                                           \
    for (; k + 16 <= K; k += 16) {                                                                           \
        v16 wv[NB];                                                                                          \
        for (int j = 0; j < NB; ++j) wv[j] = LOAD(w + j * ldw + k);                                          \
        for (int i = 0; i < MB; ++i) {                                                                       \
            v16 xv = load_f32(x + i * K + k);                                                                \
            for (int j = 0; j < NB; ++j) acc[i][j] += xv * wv[j];                                            \
        }                                                                                                    \
    }                                                                                                        \
    for (int i = 0; i < MB; ++i) for (int j = 0; j < NB; ++j) {                                              \
        float s = hsum(acc[i][j]);                                                                           \
        for (int64_t t = k; t < K; ++t) s += x[i * K + t] * SCALAR(w + j * ldw, t);                          \
        out[i * ldo + j] = s;                                                                                \
    }                                                                                                        \
}
TILE(tile14_f32, float, load_f32, wscalar_f32, 1, 4)
TILE(tile11_f32, float, load_f32, wscalar_f32, 1, 1)
TILE(tile14_bf16, uint16_t, load_bf16, wscalar_bf16, 1, 4)
TILE(tile11_bf16, uint16_t, load_bf16, wscalar_bf16, 1, 1)

/* The 4 x 4 tile written out, so that the 4 weight and 4 input vectors are each loaded once per k step (from
   the loops above GCC reloads a weight vector for every FMA, and the loads, not the FMAs, bound the tile). The
   same FMAs in the same order per output as TILE's. */
/* Keeps a vector in a register: without it GCC reloads the weights for every FMA. */
#if defined(__GNUC__) && (defined(__AVX512F__) || defined(__AVX2__))
#define KEEP(v) __asm__("" : "+v"(v))
#else
#define KEEP(v) (void)0
#endif
#define TILE44(NAME, WT, LOAD, SCALAR)                                                                         \
static inline void NAME(const float *x, int64_t K, const WT *w, int64_t ldw, float *out, int64_t ldo) {     \
    v16 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};              \
    v16 a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};              \
    int64_t k = 0;                                                                                           \
    for (; k + 16 <= K; k += 16) {                                                                           \
        v16 w0 = LOAD(w + k), w1 = LOAD(w + ldw + k), w2 = LOAD(w + 2 * ldw + k), w3 = LOAD(w + 3 * ldw + k); \
        KEEP(w0); KEEP(w1); KEEP(w2); KEEP(w3);                                                              \
        v16 x0 = load_f32(x + k);                                                                            \
        a00 += x0 * w0; a01 += x0 * w1; a02 += x0 * w2; a03 += x0 * w3;                                      \
        v16 x1 = load_f32(x + K + k);                                                                        \
        a10 += x1 * w0; a11 += x1 * w1; a12 += x1 * w2; a13 += x1 * w3;                                      \
        v16 x2 = load_f32(x + 2 * K + k);                                                                    \
        a20 += x2 * w0; a21 += x2 * w1; a22 += x2 * w2; a23 += x2 * w3;                                      \
        v16 x3 = load_f32(x + 3 * K + k);                                                                    \
        a30 += x3 * w0; a31 += x3 * w1; a32 += x3 * w2; a33 += x3 * w3;                                      \
    }                                                                                                        \
    v16 acc[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}}; \
    for (int i = 0; i < 4; ++i) for (int j = 0; j < 4; ++j) {                                                \
        float s = hsum(acc[i][j]);                                                                           \
        for (int64_t t = k; t < K; ++t) s += x[i * K + t] * SCALAR(w + j * ldw, t);                          \
        out[i * ldo + j] = s;                                                                                \
    }                                                                                                        \
}
TILE44(tile44_f32, float, load_f32, wscalar_f32)
TILE44(tile44_bf16, uint16_t, load_bf16, wscalar_bf16)

/* out[m, n0:n1] (= or +=) x[m, :] . W[n, :] + bias[n], for this thread's columns n0..n1. */
static void linear_cols(const float *x, int64_t M, int64_t K, const void *W, int bf16, const float *bias, int64_t N,
                        int64_t n0, int64_t n1, float *out, int accumulate, float *tmp /* M x 16 */) {
    for (int64_t n = n0; n < n1; n += 16) {
        int64_t nb = n1 - n < 16 ? n1 - n : 16;
        for (int64_t m = 0; m < M; m += (M - m >= 4 ? 4 : 1)) {
            int64_t mb = M - m >= 4 ? 4 : 1;
            for (int64_t j = 0; j < nb; j += (nb - j >= 4 ? 4 : 1)) {
                int64_t jb = nb - j >= 4 ? 4 : 1;
                for (int64_t i = 0; i < mb; i += (mb == 4 && jb == 4 ? 4 : 1)) {
                    const float *xr = x + (m + i) * K;
                    float *dst = tmp + (m + i) * 16 + j;
                    if (bf16) {
                        const uint16_t *w = (const uint16_t *)W + (n + j) * K;
                        if (mb == 4 && jb == 4) tile44_bf16(xr, K, w, K, dst, 16);
                        else if (jb == 4) tile14_bf16(xr, K, w, K, dst, 16);
                        else tile11_bf16(xr, K, w, K, dst, 16);
                    } else {
                        const float *w = (const float *)W + (n + j) * K;
                        if (mb == 4 && jb == 4) tile44_f32(xr, K, w, K, dst, 16);
                        else if (jb == 4) tile14_f32(xr, K, w, K, dst, 16);
                        else tile11_f32(xr, K, w, K, dst, 16);
                    }
                }
            }
        }
        for (int64_t m = 0; m < M; ++m) for (int64_t j = 0; j < nb; ++j) {
            float v = tmp[m * 16 + j] + (bias ? bias[n + j] : 0.0f);
            float *o = out + m * N + n + j;
            *o = accumulate ? *o + v : v;
        }
    }
}

/* A barrier that spins: the stages of one step are microseconds apart, so waking a sleeping thread would cost
   more than the stage. It yields the core after a while, in case the machine is oversubscribed. */
typedef struct { atomic_int count; atomic_int phase; } barrier_t;
static void barrier_wait(barrier_t *b, int num_threads) {
    if (num_threads == 1) return;
    int phase = atomic_load_explicit(&b->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == num_threads - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->phase, 1, memory_order_release);
        return;
    }
    for (int spins = 0; atomic_load_explicit(&b->phase, memory_order_acquire) == phase; ++spins)
        if (spins > 2000) sched_yield();
}

static inline void span(int64_t total, int64_t align, int tid, int num_threads, int64_t *lo, int64_t *hi) {
    int64_t blocks = (total + align - 1) / align;
    int64_t b0 = blocks * tid / num_threads, b1 = blocks * (tid + 1) / num_threads;
    *lo = b0 * align < total ? b0 * align : total;
    *hi = b1 * align < total ? b1 * align : total;
}

static void rms_norm_rows(const float *x, int64_t M, int64_t H, const float *weight, float eps, float *out, int tid, int nt) {
    for (int64_t m = tid; m < M; m += nt) {
        const float *row = x + m * H;
        v16 acc = {0};
        int64_t k = 0;
        for (; k + 16 <= H; k += 16) { v16 v = load_f32(row + k); acc += v * v; }
        float sum = hsum(acc);
        for (; k < H; ++k) sum += row[k] * row[k];
        float scale = 1.0f / sqrtf(sum / (float)H + eps);
        for (int64_t i = 0; i < H; ++i) out[m * H + i] = weight[i] * (row[i] * scale);
    }
}

/* The layer's weights, as addresses (0 where a bias is absent), in this order. */
enum { LN1, WQKV, BQKV, WO, BO, LN2, WGU, BGU, WDOWN, BDOWN, LAYER_FIELDS };

typedef struct {
    int64_t num_layers, hidden, num_heads, num_kv_heads, head_dim, intermediate, vocab;
    float eps, scale;
    int bf16;
    int64_t cache_layer_stride, cache_slot_stride, cache_head_stride;  /* in floats; a position is head_dim floats */
} config_t;

/* tokens: M new tokens (the rows' tokens, each row's in order), each with its slot and position; hidden: their
   embeddings (M x H, overwritten); cos/sin: M x head_dim; last: the R tokens whose logits are returned. */
void strictcall_decode(const config_t *c, const int64_t *layers, const float *final_norm, const void *lm_head, const float *lm_head_bias,
                       float *keys, float *values, int64_t M, const int64_t *slots, const int64_t *positions,
                       const float *cos, const float *sin, float *hidden, int64_t R, const int64_t *last,
                       float *logits, float *work, int64_t max_keys, int num_threads) {
    const int64_t H = c->hidden, D = c->head_dim, NH = c->num_heads, NKV = c->num_kv_heads, I = c->intermediate;
    const int64_t QKV = (NH + 2 * NKV) * D, group = NH / NKV;
    /* work: normed M*H | qkv M*QKV | attn M*NH*D | gu M*2I | act M*I | final R*H | per thread: scores max_keys, tmp M*16 */
    float *normed = work, *qkv = normed + M * H, *attn = qkv + M * QKV, *gu = attn + M * NH * D, *act = gu + M * 2 * I;
    float *final = act + M * I, *per_thread = final + R * H;
    barrier_t barrier = {0, 0};
    #pragma omp parallel num_threads(num_threads)
    {
        int tid = 0, nt = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num(); nt = omp_get_num_threads();
#endif
        float *scores = per_thread + tid * (max_keys + M * 16), *tmp = scores + max_keys;
        int64_t lo, hi;
        for (int64_t l = 0; l < c->num_layers; ++l) {
            const int64_t *w = layers + l * LAYER_FIELDS;
            float *layer_keys = keys + l * c->cache_layer_stride, *layer_values = values + l * c->cache_layer_stride;
            rms_norm_rows(hidden, M, H, (const float *)w[LN1], c->eps, normed, tid, nt);
            barrier_wait(&barrier, nt);
            span(QKV, 16, tid, nt, &lo, &hi);
            linear_cols(normed, M, H, (const void *)w[WQKV], c->bf16, (const float *)w[BQKV], QKV, lo, hi, qkv, 0, tmp);
            barrier_wait(&barrier, nt);
            /* rotary on q and k (x * cos + rotate_half(x) * sin), then k and v into the cache */
            for (int64_t m = tid; m < M; m += nt) {
                const float *cm = cos + m * D, *sm = sin + m * D;
                for (int64_t h = 0; h < NH + NKV; ++h) {
                    float *x = qkv + m * QKV + h * D, rotated[512];
                    for (int64_t i = 0; i < D; ++i) {
                        float partner = i < D / 2 ? -x[i + D / 2] : x[i - D / 2];
                        rotated[i] = x[i] * cm[i] + partner * sm[i];
                    }
                    memcpy(x, rotated, D * sizeof(float));
                }
                for (int64_t h = 0; h < NKV; ++h) {
                    int64_t at = slots[m] * c->cache_slot_stride + h * c->cache_head_stride + positions[m] * D;
                    memcpy(layer_keys + at, qkv + m * QKV + (NH + h) * D, D * sizeof(float));
                    memcpy(layer_values + at, qkv + m * QKV + (NH + NKV + h) * D, D * sizeof(float));
                }
            }
            barrier_wait(&barrier, nt);
            /* attention: token m, head h over its slot's keys 0..positions[m] */
            for (int64_t item = tid; item < M * NH; item += nt) {
                int64_t m = item / NH, h = item % NH, kvh = h / group, n = positions[m] + 1;
                const float *q = qkv + m * QKV + h * D;
                const float *k0 = layer_keys + slots[m] * c->cache_slot_stride + kvh * c->cache_head_stride;
                const float *v0 = layer_values + slots[m] * c->cache_slot_stride + kvh * c->cache_head_stride;
                float best = -INFINITY;
                int64_t j = 0;
                for (; j + 4 <= n; j += 4) { /* four keys at once: independent chains, the same sums per key */
                    v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
                    const float *kj = k0 + j * D;
                    int64_t i = 0;
                    for (; i + 16 <= D; i += 16) {
                        v16 qv = load_f32(q + i);
                        a0 += qv * load_f32(kj + i); a1 += qv * load_f32(kj + D + i);
                        a2 += qv * load_f32(kj + 2 * D + i); a3 += qv * load_f32(kj + 3 * D + i);
                    }
                    float s4[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
                    for (int u = 0; u < 4; ++u) {
                        for (int64_t t = i; t < D; ++t) s4[u] += q[t] * kj[u * D + t];
                        scores[j + u] = s4[u] * c->scale;
                    }
                }
                for (; j < n; ++j) {
                    const float *kj = k0 + j * D;
                    v16 acc = {0};
                    int64_t i = 0;
                    for (; i + 16 <= D; i += 16) acc += load_f32(q + i) * load_f32(kj + i);
                    float s = hsum(acc);
                    for (int64_t t = i; t < D; ++t) s += q[t] * kj[t];
                    scores[j] = s * c->scale;
                }
                for (j = 0; j < n; ++j) best = scores[j] > best ? scores[j] : best;
                float total = 0.f;
                for (j = 0; j < n; ++j) { scores[j] = expf(scores[j] - best); total += scores[j]; }
                for (j = 0; j < n; ++j) scores[j] /= total;
                float *o = attn + m * NH * D + h * D;
                int64_t i = 0;
                for (; i + 64 <= D; i += 64) { /* each output lane sums over the keys in order, in registers */
                    v16 o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
                    for (j = 0; j < n; ++j) {
                        const float *vj = v0 + j * D + i;
                        float p = scores[j];
                        o0 += p * load_f32(vj); o1 += p * load_f32(vj + 16); o2 += p * load_f32(vj + 32); o3 += p * load_f32(vj + 48);
                    }
                    memcpy(o + i, &o0, 64); memcpy(o + i + 16, &o1, 64); memcpy(o + i + 32, &o2, 64); memcpy(o + i + 48, &o3, 64);
                }
                for (; i < D; ++i) {
                    float acc = 0.f;
                    for (j = 0; j < n; ++j) acc += scores[j] * v0[j * D + i];
                    o[i] = acc;
                }
            }
            barrier_wait(&barrier, nt);
            span(H, 16, tid, nt, &lo, &hi);
            linear_cols(attn, M, NH * D, (const void *)w[WO], c->bf16, (const float *)w[BO], H, lo, hi, hidden, 1, tmp);
            barrier_wait(&barrier, nt);
            rms_norm_rows(hidden, M, H, (const float *)w[LN2], c->eps, normed, tid, nt);
            barrier_wait(&barrier, nt);
            span(2 * I, 16, tid, nt, &lo, &hi);
            linear_cols(normed, M, H, (const void *)w[WGU], c->bf16, (const float *)w[BGU], 2 * I, lo, hi, gu, 0, tmp);
            barrier_wait(&barrier, nt);
            span(M * I, 16, tid, nt, &lo, &hi);
            for (int64_t e = lo; e < hi; ++e) {
                int64_t m = e / I, i = e % I;
                float g = gu[m * 2 * I + i], u = gu[m * 2 * I + I + i];
                act[e] = g / (1.0f + expf(-g)) * u;
            }
            barrier_wait(&barrier, nt);
            span(H, 16, tid, nt, &lo, &hi);
            linear_cols(act, M, I, (const void *)w[WDOWN], c->bf16, (const float *)w[BDOWN], H, lo, hi, hidden, 1, tmp);
            barrier_wait(&barrier, nt);
        }
        for (int64_t r = tid; r < R; r += nt) memcpy(normed + r * H, hidden + last[r] * H, H * sizeof(float));
        barrier_wait(&barrier, nt);
        rms_norm_rows(normed, R, H, final_norm, c->eps, final, tid, nt);
        barrier_wait(&barrier, nt);
        span(c->vocab, 16, tid, nt, &lo, &hi);
        linear_cols(final, R, H, lm_head, c->bf16, lm_head_bias, c->vocab, lo, hi, logits, 0, tmp);
    }
}
