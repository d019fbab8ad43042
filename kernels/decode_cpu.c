/* One forward (prompt chunks and decode rows, any number of new tokens per row) of a Llama-family model on the
   CPU: fp32 weights, activations and KV cache, or (a bf16 model) bf16 weights and KV cache with fp32 activations
   that are rounded to bf16 as each matmul reads them, as a bf16 GEMM does; on CPUs with AVX512-BF16 those
   matmuls run on vdpbf16ps (32 products per instruction).

   Why one call: eager torch spends a decode step in ~600 small ops, each a parallel region whose idle OpenMP
   worker must be woken (OMP_WAIT_POLICY=PASSIVE, which the server needs), and its fp32 GEMV (MKL on this
   EPYC) streams the weights at a third of the memory bandwidth. Here the whole step is one parallel region,
   its stages separated by a spinning barrier, and each weight matrix is read once per step for all rows.

   Batch invariance: every output element is computed by the same sequence of operations whatever the other
   rows are (a dot product sums lane j = k mod 16 in k order, then a fixed tree; rows are never mixed), so a
   row's logits are bit for bit the same alone or in any batch, and (each token attending to the cached keys
   0..its position, written before any is read) however its prompt was chunked. */
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define PREFETCH 2048
#ifdef __AVX512BF16__
#include <immintrin.h>
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
/* fp32 -> bf16, rounded to nearest even (NaN stays NaN). */
static inline uint16_t to_bf16(float f) {
    uint32_t b; memcpy(&b, &f, 4);
    if ((b & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((b >> 16) | 0x40);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}
static void round_bf16(const float *x, int64_t n, uint16_t *out) { for (int64_t i = 0; i < n; ++i) out[i] = to_bf16(x[i]); }
static inline float wscalar_bf16(const uint16_t *w, int64_t k) { uint32_t b = (uint32_t)w[k] << 16; float f; memcpy(&f, &b, 4); return f; }

/* MB x NB outputs at once: independent chains hide the FMA latency and one weight load feeds MB rows. The
   tail (K % 16) is added after the tree, in k order, the same way in every tile shape. */
#define TILE(NAME, T, LOAD, SCALAR, MB, NB)                                                                    \
static inline void NAME(const T *x, int64_t K, const T *w, int64_t ldw, float *out, int64_t ldo) {           \
    v16 acc[MB][NB];                                                                                         \
    for (int i = 0; i < MB; ++i) for (int j = 0; j < NB; ++j) acc[i][j] = (v16){0};                          \
    int64_t k = 0;                                                                                           \
    for (; k + 16 <= K; k += 16) {                                                                           \
        v16 wv[NB];                                                                                          \
        for (int j = 0; j < NB; ++j) wv[j] = LOAD(w + j * ldw + k);                                          \
        for (int i = 0; i < MB; ++i) {                                                                       \
            v16 xv = LOAD(x + i * K + k);                                                                    \
            for (int j = 0; j < NB; ++j) acc[i][j] += xv * wv[j];                                            \
        }                                                                                                    \
    }                                                                                                        \
    for (int i = 0; i < MB; ++i) for (int j = 0; j < NB; ++j) {                                              \
        float s = hsum(acc[i][j]);                                                                           \
        for (int64_t t = k; t < K; ++t) s += SCALAR(x + i * K, t) * SCALAR(w + j * ldw, t);                  \
        out[i * ldo + j] = s;                                                                                \
    }                                                                                                        \
}
TILE(tile14_f32, float, load_f32, wscalar_f32, 1, 4)
TILE(tile11_f32, float, load_f32, wscalar_f32, 1, 1)

/* The 4 x 4 tile written out, so that the 4 weight and 4 input vectors are each loaded once per k step (from
   the loops above GCC reloads a weight vector for every FMA, and the loads, not the FMAs, bound the tile). The
   same FMAs in the same order per output as TILE's. */
/* Keeps a vector in a register: without it GCC reloads the weights for every FMA. */
#if defined(__GNUC__) && (defined(__AVX512F__) || defined(__AVX2__))
#define KEEP(v) __asm__("" : "+v"(v))
#else
#define KEEP(v) (void)0
#endif
#define TILE44(NAME, T, LOAD, SCALAR)                                                                          \
static inline void NAME(const T *x, int64_t K, const T *w, int64_t ldw, float *out, int64_t ldo) {           \
    v16 a00 = {0}, a01 = {0}, a02 = {0}, a03 = {0}, a10 = {0}, a11 = {0}, a12 = {0}, a13 = {0};              \
    v16 a20 = {0}, a21 = {0}, a22 = {0}, a23 = {0}, a30 = {0}, a31 = {0}, a32 = {0}, a33 = {0};              \
    int64_t k = 0;                                                                                           \
    for (; k + 16 <= K; k += 16) {                                                                           \
        v16 w0 = LOAD(w + k), w1 = LOAD(w + ldw + k), w2 = LOAD(w + 2 * ldw + k), w3 = LOAD(w + 3 * ldw + k); \
        KEEP(w0); KEEP(w1); KEEP(w2); KEEP(w3);                                                              \
        v16 x0 = LOAD(x + k);                                                                            \
        a00 += x0 * w0; a01 += x0 * w1; a02 += x0 * w2; a03 += x0 * w3;                                      \
        v16 x1 = LOAD(x + K + k);                                                                        \
        a10 += x1 * w0; a11 += x1 * w1; a12 += x1 * w2; a13 += x1 * w3;                                      \
        v16 x2 = LOAD(x + 2 * K + k);                                                                    \
        a20 += x2 * w0; a21 += x2 * w1; a22 += x2 * w2; a23 += x2 * w3;                                      \
        v16 x3 = LOAD(x + 3 * K + k);                                                                    \
        a30 += x3 * w0; a31 += x3 * w1; a32 += x3 * w2; a33 += x3 * w3;                                      \
    }                                                                                                        \
    v16 acc[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}}; \
    for (int i = 0; i < 4; ++i) for (int j = 0; j < 4; ++j) {                                                \
        float s = hsum(acc[i][j]);                                                                           \
        for (int64_t t = k; t < K; ++t) s += SCALAR(x + i * K, t) * SCALAR(w + j * ldw, t);                  \
        out[i * ldo + j] = s;                                                                                \
    }                                                                                                        \
}
TILE44(tile44_f32, float, load_f32, wscalar_f32)

#ifdef __AVX512BF16__
/* bf16 x bf16 -> fp32 on vdpbf16ps: lane j sums the pairs k = 32i + 2j, 2j + 1 in i order; the tail (K % 32) is
   added after the tree in k order. The products of two bf16 values are exact in fp32. */
static inline __m512bh load_pairs(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512(p); }
static inline float dp_finish(__m512 acc, const uint16_t *x, const uint16_t *w, int64_t k, int64_t K) {
    v16 a; memcpy(&a, &acc, sizeof a);
    float s = hsum(a);
    for (; k < K; ++k) s += wscalar_bf16(x, k) * wscalar_bf16(w, k);
    return s;
}
static inline void tile11_bf16(const uint16_t *x, int64_t K, const uint16_t *w, int64_t ldw, float *out, int64_t ldo) {
    (void)ldw; (void)ldo;
    __m512 a = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) a = _mm512_dpbf16_ps(a, load_pairs(x + k), load_pairs(w + k));
    out[0] = dp_finish(a, x, w, k, K);
}
static inline void tile14_bf16(const uint16_t *x, int64_t K, const uint16_t *w, int64_t ldw, float *out, int64_t ldo) {
    (void)ldo;
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        for (int j = 0; j < 4; ++j) __builtin_prefetch(w + j * ldw + k + PREFETCH, 0, 0);
        __m512bh xv = load_pairs(x + k);
        a0 = _mm512_dpbf16_ps(a0, xv, load_pairs(w + k)); a1 = _mm512_dpbf16_ps(a1, xv, load_pairs(w + ldw + k));
        a2 = _mm512_dpbf16_ps(a2, xv, load_pairs(w + 2 * ldw + k)); a3 = _mm512_dpbf16_ps(a3, xv, load_pairs(w + 3 * ldw + k));
    }
    out[0] = dp_finish(a0, x, w, k, K); out[1] = dp_finish(a1, x, w + ldw, k, K);
    out[2] = dp_finish(a2, x, w + 2 * ldw, k, K); out[3] = dp_finish(a3, x, w + 3 * ldw, k, K);
}
/* MB rows x 4 columns: 4 rows for decode batches, 6 (24 accumulators) for prompt chunks, where 10 loads feed 24
   instructions against 8 for 16. Always inlined with a constant MB, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void dp_tile(int MB, const uint16_t *x, int64_t K, const uint16_t *w, int64_t ldw, float *out,
                                                          int64_t ldo) {
    __m512 a[6][4];
    for (int i = 0; i < MB; ++i) for (int j = 0; j < 4; ++j) a[i][j] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        for (int j = 0; j < 4; ++j) __builtin_prefetch(w + j * ldw + k + PREFETCH, 0, 0);
        __m512bh w0 = load_pairs(w + k), w1 = load_pairs(w + ldw + k), w2 = load_pairs(w + 2 * ldw + k), w3 = load_pairs(w + 3 * ldw + k);
        KEEP(w0); KEEP(w1); KEEP(w2); KEEP(w3);
        for (int i = 0; i < MB; ++i) {
            __m512bh xv = load_pairs(x + i * K + k);
            a[i][0] = _mm512_dpbf16_ps(a[i][0], xv, w0); a[i][1] = _mm512_dpbf16_ps(a[i][1], xv, w1);
            a[i][2] = _mm512_dpbf16_ps(a[i][2], xv, w2); a[i][3] = _mm512_dpbf16_ps(a[i][3], xv, w3);
        }
    }
    for (int i = 0; i < MB; ++i) for (int j = 0; j < 4; ++j) out[i * ldo + j] = dp_finish(a[i][j], x + i * K, w + j * ldw, k, K);
}
static inline void tile44_bf16(const uint16_t *x, int64_t K, const uint16_t *w, int64_t ldw, float *out, int64_t ldo) {
    dp_tile(4, x, K, w, ldw, out, ldo);
}
#define TILE64_BF16 1
static inline void tile64_bf16(const uint16_t *x, int64_t K, const uint16_t *w, int64_t ldw, float *out, int64_t ldo) {
    dp_tile(6, x, K, w, ldw, out, ldo);
}
#else
TILE(tile14_bf16, uint16_t, load_bf16, wscalar_bf16, 1, 4)
TILE(tile11_bf16, uint16_t, load_bf16, wscalar_bf16, 1, 1)
TILE44(tile44_bf16, uint16_t, load_bf16, wscalar_bf16)
#endif

/* out[m, n0:n1] (= or +=) x[m, :] . W[n, :] + bias[n], for this thread's columns n0..n1. */
static void linear_cols(const void *x, int64_t M, int64_t K, const void *W, int bf16, const float *bias, int64_t N,
                        int64_t n0, int64_t n1, float *out, int accumulate, float *tmp /* M x 16 */) {
    for (int64_t n = n0; n < n1; n += 16) {
        int64_t nb = n1 - n < 16 ? n1 - n : 16;
        /* a group of 4 weight rows stays in L1 while every row of x passes over it */
        for (int64_t j = 0; j < nb; j += (nb - j >= 4 ? 4 : 1)) {
            int64_t jb = nb - j >= 4 ? 4 : 1;
            for (int64_t m = 0; m < M;) {
#ifdef TILE64_BF16
                if (bf16 && jb == 4 && M - m >= 8) {
                    tile64_bf16((const uint16_t *)x + m * K, K, (const uint16_t *)W + (n + j) * K, K, tmp + m * 16 + j, 16);
                    m += 6;
                    continue;
                }
#endif
                int64_t mb = M - m >= 4 ? 4 : 1;
                for (int64_t i = 0; i < mb; i += (mb == 4 && jb == 4 ? 4 : 1)) {
                    float *dst = tmp + (m + i) * 16 + j;
                    if (bf16) {
                        const uint16_t *xr = (const uint16_t *)x + (m + i) * K, *w = (const uint16_t *)W + (n + j) * K;
                        if (mb == 4 && jb == 4) tile44_bf16(xr, K, w, K, dst, 16);
                        else if (jb == 4) tile14_bf16(xr, K, w, K, dst, 16);
                        else tile11_bf16(xr, K, w, K, dst, 16);
                    } else {
                        const float *xr = (const float *)x + (m + i) * K, *w = (const float *)W + (n + j) * K;
                        if (mb == 4 && jb == 4) tile44_f32(xr, K, w, K, dst, 16);
                        else if (jb == 4) tile14_f32(xr, K, w, K, dst, 16);
                        else tile11_f32(xr, K, w, K, dst, 16);
                    }
                }
                m += mb;
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

/* A matmul's columns in blocks of 32 taken from a shared counter: a thread that the OS preempts (the cores are
   shared with the server's event loop) leaves its blocks to the others instead of holding up the barrier. Which
   thread computes a block does not change its numbers. */
static void linear_shared(atomic_llong *next, const void *x, int64_t M, int64_t K, const void *W, int bf16, const float *bias, int64_t N,
                          float *out, int accumulate, float *tmp) {
    for (int64_t n0; (n0 = 32 * atomic_fetch_add_explicit(next, 1, memory_order_relaxed)) < N;)
        linear_cols(x, M, K, W, bf16, bias, N, n0, n0 + 32 < N ? n0 + 32 : N, out, accumulate, tmp);
}

static inline void span(int64_t total, int64_t align, int tid, int num_threads, int64_t *lo, int64_t *hi) {
    int64_t blocks = (total + align - 1) / align;
    int64_t b0 = blocks * tid / num_threads, b1 = blocks * (tid + 1) / num_threads;
    *lo = b0 * align < total ? b0 * align : total;
    *hi = b1 * align < total ? b1 * align : total;
}

/* Rows tid, tid + nt, ... of x normalized into out (and, for a bf16 model, rounded into out_h for the matmul). */
static void rms_norm_rows(const float *x, int64_t M, int64_t H, const float *weight, float eps, float *out, uint16_t *out_h, int tid, int nt) {
    for (int64_t m = tid; m < M; m += nt) {
        const float *row = x + m * H;
        v16 acc = {0};
        int64_t k = 0;
        for (; k + 16 <= H; k += 16) { v16 v = load_f32(row + k); acc += v * v; }
        float sum = hsum(acc);
        for (; k < H; ++k) sum += row[k] * row[k];
        float scale = 1.0f / sqrtf(sum / (float)H + eps);
        for (int64_t i = 0; i < H; ++i) out[m * H + i] = weight[i] * (row[i] * scale);
        if (out_h) round_bf16(out + m * H, H, out_h + m * H);
    }
}

/* Attention of one query (head_dim D, fp32) over n cached keys and values of one head (element type T):
   softmax(q . k * scale) . v into o. Four keys at a time (independent chains, the same sums per key); each
   output lane sums over the keys in order, in registers. scores: n floats of scratch. */
#define ATTEND(NAME, T, LOAD, SCALAR)                                                                          \
static void NAME(const float *q, const T *k0, const T *v0, int64_t n, int64_t D, float scale, float *scores, float *o) { \
    int64_t j = 0;                                                                                           \
    for (; j + 4 <= n; j += 4) {                                                                             \
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};                                                          \
        const T *kj = k0 + j * D;                                                                            \
        int64_t i = 0;                                                                                       \
        for (; i + 16 <= D; i += 16) {                                                                       \
            v16 qv = load_f32(q + i);                                                                        \
            a0 += qv * LOAD(kj + i); a1 += qv * LOAD(kj + D + i);                                            \
            a2 += qv * LOAD(kj + 2 * D + i); a3 += qv * LOAD(kj + 3 * D + i);                                \
        }                                                                                                    \
        float s4[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};                                              \
        for (int u = 0; u < 4; ++u) {                                                                        \
            for (int64_t t = i; t < D; ++t) s4[u] += q[t] * SCALAR(kj + u * D, t);                           \
            scores[j + u] = s4[u] * scale;                                                                   \
        }                                                                                                    \
    }                                                                                                        \
    for (; j < n; ++j) {                                                                                     \
        const T *kj = k0 + j * D;                                                                            \
        v16 acc = {0};                                                                                       \
        int64_t i = 0;                                                                                       \
        for (; i + 16 <= D; i += 16) acc += load_f32(q + i) * LOAD(kj + i);                                  \
        float s = hsum(acc);                                                                                 \
        for (int64_t t = i; t < D; ++t) s += q[t] * SCALAR(kj, t);                                           \
        scores[j] = s * scale;                                                                               \
    }                                                                                                        \
    float best = -INFINITY, total = 0.f;                                                                     \
    for (j = 0; j < n; ++j) best = scores[j] > best ? scores[j] : best;                                      \
    for (j = 0; j < n; ++j) { scores[j] = expf(scores[j] - best); total += scores[j]; }                      \
    for (j = 0; j < n; ++j) scores[j] /= total;                                                              \
    int64_t i = 0;                                                                                           \
    for (; i + 64 <= D; i += 64) {                                                                           \
        v16 o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};                                                          \
        for (j = 0; j < n; ++j) {                                                                            \
            const T *vj = v0 + j * D + i;                                                                    \
            float p = scores[j];                                                                             \
            o0 += p * LOAD(vj); o1 += p * LOAD(vj + 16); o2 += p * LOAD(vj + 32); o3 += p * LOAD(vj + 48);   \
        }                                                                                                    \
        memcpy(o + i, &o0, 64); memcpy(o + i + 16, &o1, 64); memcpy(o + i + 32, &o2, 64); memcpy(o + i + 48, &o3, 64); \
    }                                                                                                        \
    for (; i < D; ++i) {                                                                                     \
        float acc = 0.f;                                                                                     \
        for (j = 0; j < n; ++j) acc += scores[j] * SCALAR(v0 + j * D, i);                                    \
        o[i] = acc;                                                                                          \
    }                                                                                                        \
}
ATTEND(attend_f32, float, load_f32, wscalar_f32)
ATTEND(attend_bf16, uint16_t, load_bf16, wscalar_bf16)

/* The layer's weights, as addresses (0 where a bias is absent), in this order; norms and biases are fp32. */
enum { LN1, WQKV, BQKV, WO, BO, LN2, WGU, BGU, WDOWN, BDOWN, LAYER_FIELDS };

typedef struct {
    int64_t num_layers, hidden, num_heads, num_kv_heads, head_dim, intermediate, vocab;
    float eps, scale;
    int bf16;  /* weights and KV cache in bf16 (else fp32) */
    int64_t cache_layer_stride, cache_slot_stride, cache_head_stride;  /* in elements; a position is head_dim elements */
} config_t;

/* tokens: M new tokens (the rows' tokens, each row's in order), each with its slot and position; hidden: their
   embeddings (M x H fp32, overwritten); cos/sin: M x head_dim; last: the R tokens whose logits are returned. */
void strictcall_decode(const config_t *c, const int64_t *layers, const float *final_norm, const void *lm_head, const float *lm_head_bias,
                       void *keys, void *values, int64_t M, const int64_t *slots, const int64_t *positions,
                       const float *cos, const float *sin, float *hidden, int64_t R, const int64_t *last,
                       float *logits, float *work, int64_t max_keys, int num_threads) {
    const int64_t H = c->hidden, D = c->head_dim, NH = c->num_heads, NKV = c->num_kv_heads, I = c->intermediate;
    const int64_t QKV = (NH + 2 * NKV) * D, group = NH / NKV, element = c->bf16 ? 2 : 4;
    /* work (floats): normed M*H | qkv M*QKV | attn M*NH*D | gu M*2I | act M*I | final R*H | per thread: scores
       max_keys, tmp M*16 | then, for a bf16 model, the matmul inputs in bf16: normed, attn, act, final */
    float *normed = work, *qkv = normed + M * H, *attn = qkv + M * QKV, *gu = attn + M * NH * D, *act = gu + M * 2 * I;
    float *final = act + M * I, *per_thread = final + R * H;
    uint16_t *normed_h = NULL, *attn_h = NULL, *act_h = NULL, *final_h = NULL;
    if (c->bf16) {
        normed_h = (uint16_t *)(per_thread + num_threads * (max_keys + M * 16));
        attn_h = normed_h + M * H; act_h = attn_h + M * NH * D; final_h = act_h + M * I;
    }
    const void *normed_in = c->bf16 ? (const void *)normed_h : normed, *attn_in = c->bf16 ? (const void *)attn_h : attn;
    const void *act_in = c->bf16 ? (const void *)act_h : act, *final_in = c->bf16 ? (const void *)final_h : final;
    barrier_t barrier = {0, 0};
    enum { STAGES_PER_LAYER = 5 };  /* qkv, attention, o, gate/up, down; then the lm_head */
    atomic_llong counters[STAGES_PER_LAYER * c->num_layers + 1];
    for (int64_t i = 0; i < STAGES_PER_LAYER * c->num_layers + 1; ++i) atomic_init(&counters[i], 0);
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
            atomic_llong *stage = counters + l * STAGES_PER_LAYER;
            char *layer_keys = (char *)keys + l * c->cache_layer_stride * element;
            char *layer_values = (char *)values + l * c->cache_layer_stride * element;
            rms_norm_rows(hidden, M, H, (const float *)w[LN1], c->eps, normed, normed_h, tid, nt);
            barrier_wait(&barrier, nt);
            linear_shared(&stage[0], normed_in, M, H, (const void *)w[WQKV], c->bf16, (const float *)w[BQKV], QKV, qkv, 0, tmp);
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
                    int64_t at = (slots[m] * c->cache_slot_stride + h * c->cache_head_stride + positions[m] * D) * element;
                    const float *k = qkv + m * QKV + (NH + h) * D, *v = qkv + m * QKV + (NH + NKV + h) * D;
                    if (c->bf16) {
                        round_bf16(k, D, (uint16_t *)(layer_keys + at));
                        round_bf16(v, D, (uint16_t *)(layer_values + at));
                    } else {
                        memcpy(layer_keys + at, k, D * sizeof(float));
                        memcpy(layer_values + at, v, D * sizeof(float));
                    }
                }
            }
            barrier_wait(&barrier, nt);
            /* attention: token m, head h over its slot's keys 0..positions[m] */
            for (int64_t item; (item = atomic_fetch_add_explicit(&stage[1], 1, memory_order_relaxed)) < M * NH;) {
                int64_t m = item / NH, h = item % NH, n = positions[m] + 1;
                int64_t base = (slots[m] * c->cache_slot_stride + (h / group) * c->cache_head_stride) * element;
                float *o = attn + m * NH * D + h * D;
                if (c->bf16) {
                    attend_bf16(qkv + m * QKV + h * D, (const uint16_t *)(layer_keys + base), (const uint16_t *)(layer_values + base), n, D, c->scale, scores, o);
                    round_bf16(o, D, attn_h + m * NH * D + h * D);
                } else {
                    attend_f32(qkv + m * QKV + h * D, (const float *)(layer_keys + base), (const float *)(layer_values + base), n, D, c->scale, scores, o);
                }
            }
            barrier_wait(&barrier, nt);
            linear_shared(&stage[2], attn_in, M, NH * D, (const void *)w[WO], c->bf16, (const float *)w[BO], H, hidden, 1, tmp);
            barrier_wait(&barrier, nt);
            rms_norm_rows(hidden, M, H, (const float *)w[LN2], c->eps, normed, normed_h, tid, nt);
            barrier_wait(&barrier, nt);
            linear_shared(&stage[3], normed_in, M, H, (const void *)w[WGU], c->bf16, (const float *)w[BGU], 2 * I, gu, 0, tmp);
            barrier_wait(&barrier, nt);
            span(M * I, 16, tid, nt, &lo, &hi);
            for (int64_t e = lo; e < hi; ++e) {
                int64_t m = e / I, i = e % I;
                float g = gu[m * 2 * I + i], u = gu[m * 2 * I + I + i];
                act[e] = g / (1.0f + expf(-g)) * u;
                if (act_h) act_h[e] = to_bf16(act[e]);
            }
            barrier_wait(&barrier, nt);
            linear_shared(&stage[4], act_in, M, I, (const void *)w[WDOWN], c->bf16, (const float *)w[BDOWN], H, hidden, 1, tmp);
            barrier_wait(&barrier, nt);
        }
        for (int64_t r = tid; r < R; r += nt) memcpy(normed + r * H, hidden + last[r] * H, H * sizeof(float));
        barrier_wait(&barrier, nt);
        rms_norm_rows(normed, R, H, final_norm, c->eps, final, final_h, tid, nt);
        barrier_wait(&barrier, nt);
        linear_shared(&counters[STAGES_PER_LAYER * c->num_layers], final_in, R, H, lm_head, c->bf16, lm_head_bias, c->vocab, logits, 0, tmp);
    }
}
