/* Fused CPU kernels for FastEngine's decode step (see kernels.py).

   A decode step of a small model on a CPU spends more time in ~45 small torch operator calls per
   layer (RMSNorm, RoPE, casts, the cache write, the SiLU gate, residual adds) and in the flash
   attention kernel's per-call set-up than in its matrix products. These functions do that work in
   five calls per layer, and the token sampling in one; the matrix products stay with torch/oneDNN.

   Arrays are contiguous. "T" is the compute dtype: float32 (suffix _f32) or bfloat16 (_bf16, held
   as uint16). Arithmetic is float32 throughout; bf16 results are rounded to nearest-even, as torch
   rounds. Built by kernels.py with the system C compiler (-O3 -march=native -fopenmp); OpenMP
   resolves to the libgomp torch already loaded, so both share one thread team. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint16_t bf16;

static inline float bf16_to_f32(bf16 v) {
    union { uint32_t u; float f; } c;
    c.u = (uint32_t)v << 16;
    return c.f;
}

static inline bf16 f32_to_bf16(float f) {
    union { uint32_t u; float f; } c;
    c.f = f;
    uint32_t u = c.u;
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16)((u >> 16) | 0x40u); /* NaN stays NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                          /* nearest, ties to even */
    return (bf16)(u >> 16);
}

/* exp(x) in float32, vectorisable (glibc's expf is not, without -ffast-math): Cephes' range
   reduction and degree-6 polynomial, relative error ~2e-7. Below -87 (true value < 2e-38) the result
   is 0, so masked (-inf) logits get no mass; above 88 it is exp(88) (a sigmoid's saturation). */
static inline float exp_f32(float in) {
    float x = in < -87.0f ? -87.0f : in; /* not fminf/fmaxf: those stay library calls (NaN rules) */
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest integer */
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    union { uint32_t u; float f; } s;
    s.u = (uint32_t)((int32_t)n + 127) << 23;
    return in < -87.0f ? 0.0f : p * s.f; /* exp(-inf) and masked logits: exactly 0 */
}

/* Rows i < g of sc [g, L] -> exp(sc - max) in place; inv[i] = 1 / the row's sum. */
static inline void softmax_rows(float *sc, int64_t g, int64_t L, float *inv) {
    for (int64_t i = 0; i < g; i++) {
        float *si = sc + i * L, m = -INFINITY, sum = 0.0f;
        _Pragma("omp simd reduction(max:m)")
        for (int64_t t = 0; t < L; t++) m = si[t] > m ? si[t] : m;
        for (int64_t t = 0; t < L; t++) si[t] = exp_f32(si[t] - m);
        _Pragma("omp simd reduction(+:sum)")
        for (int64_t t = 0; t < L; t++) sum += si[t];
        inv[i] = 1.0f / sum;
    }
}

#if defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_AVX512 1

/* r[t] = the sum of the 16 lanes of a[t], t < 16: a transpose-and-add tree (45 shuffles and adds
   for 16 dot products instead of 16 horizontal reductions). */
static inline __m512 sum16(__m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xDD));
    __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
    /* e[4k + m] holds the sum of a[k + 4m] */
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, e);
}

/* q . k for one query head and one cache row, as 16 float32 partial sums: bf16 pairs through the
   CPU's bf16 dot-product instruction, or float32 fused multiply-adds. */
static inline __attribute__((always_inline)) __m512 dot_partial(const void *q, const void *k, int64_t hd, int bf) {
    __m512 s = _mm512_setzero_ps();
#ifdef __AVX512BF16__
    if (bf) {
        for (int64_t c = 0; c < hd; c += 32)
            s = _mm512_dpbf16_ps(s, (__m512bh)_mm512_loadu_si512((const bf16 *)q + c),
                                 (__m512bh)_mm512_loadu_si512((const bf16 *)k + c));
        return s;
    }
#endif
    for (int64_t c = 0; c < hd; c += 16)
        s = _mm512_fmadd_ps(_mm512_loadu_ps((const float *)q + c), _mm512_loadu_ps((const float *)k + c), s);
    return s;
}

static inline __m512 load16(const void *p, int bf) {
#ifdef __AVX512BF16__
    if (bf) return _mm512_cvtpbh_ps((__m256bh)_mm256_loadu_si256((const __m256i *)p));
#endif
    return _mm512_loadu_ps((const float *)p);
}

/* One (row, kv head) of decode attention: scores sc [g, L] (float32), then out [g, hd] =
   softmax(sc) v, in bf16 (`bf`) or float32; hd a multiple of 32 (bf16) or 16 (float32). */
static inline __attribute__((always_inline)) void
attention_task_hd(const void *q, const void *kb, const void *vb, int64_t L, int64_t g, int64_t hd, float scale,
                  float *sc, void *out, int bf) {
    size_t es = bf ? sizeof(bf16) : sizeof(float);
    const char *qc = q, *kc = kb, *vc = vb;
    for (int64_t i = 0; i < g; i++) {
        const char *qi = qc + i * hd * es;
        float *si = sc + i * L;
        int64_t t = 0;
        for (; t + 16 <= L; t += 16) {
            __m512 a[16];
            for (int tt = 0; tt < 16; tt++) a[tt] = dot_partial(qi, kc + (t + tt) * hd * es, hd, bf);
            _mm512_storeu_ps(si + t, _mm512_mul_ps(sum16(a), _mm512_set1_ps(scale)));
        }
        for (; t < L; t++) si[t] = _mm512_reduce_add_ps(dot_partial(qi, kc + t * hd * es, hd, bf)) * scale;
    }
    float inv[g];
    softmax_rows(sc, g, L, inv);
    int64_t vecs = hd / 16;
    __m512 acc[g * vecs];
    for (int64_t k = 0; k < g * vecs; k++) acc[k] = _mm512_setzero_ps();
    for (int64_t t = 0; t < L; t++) {
        __m512 v[16];
        for (int64_t c = 0; c < vecs; c++) v[c] = load16(vc + (t * hd + c * 16) * es, bf);
        for (int64_t i = 0; i < g; i++) {
            __m512 p = _mm512_set1_ps(sc[i * L + t]);
            for (int64_t c = 0; c < vecs; c++) acc[i * vecs + c] = _mm512_fmadd_ps(p, v[c], acc[i * vecs + c]);
        }
    }
    for (int64_t i = 0; i < g; i++)
        for (int64_t c = 0; c < vecs; c++) {
            __m512 r = _mm512_mul_ps(acc[i * vecs + c], _mm512_set1_ps(inv[i]));
            if (bf) {
                float tmp[16];
                _mm512_storeu_ps(tmp, r);
                for (int k = 0; k < 16; k++) ((bf16 *)out)[i * hd + c * 16 + k] = f32_to_bf16(tmp[k]);
            } else {
                _mm512_storeu_ps((float *)out + i * hd + c * 16, r);
            }
        }
}

/* the common head sizes as compile-time constants (unrolled loops, the accumulators in registers) */
#define DEFINE_TASK(SUF, BF)                                                                           \
static void attention_task_##SUF(const void *q, const void *kb, const void *vb, int64_t L, int64_t g,  \
                                 int64_t hd, float scale, float *sc, void *out) {                      \
    if (hd == 64) attention_task_hd(q, kb, vb, L, g, 64, scale, sc, out, BF);                          \
    else if (hd == 128) attention_task_hd(q, kb, vb, L, g, 128, scale, sc, out, BF);                   \
    else if (hd == 32) attention_task_hd(q, kb, vb, L, g, 32, scale, sc, out, BF);                     \
    else attention_task_hd(q, kb, vb, L, g, hd, scale, sc, out, BF);                                   \
}
DEFINE_TASK(f32, 0)
#define FAST_TASK_f32(hd, g) ((hd) % 16 == 0 && (hd) <= 256 && (g) <= 16)
#ifdef __AVX512BF16__
DEFINE_TASK(bf16, 1)
#define FAST_TASK_bf16(hd, g) ((hd) % 32 == 0 && (hd) <= 256 && (g) <= 16)
#endif
#endif

/* which (dtype, head size, group) the vectorised attention task takes; the rest runs the portable loop */
#ifndef FAST_TASK_f32
#define FAST_TASK_f32(hd, g) 0
#define attention_task_f32(...) ((void)0)
#endif
#ifndef FAST_TASK_bf16
#define FAST_TASK_bf16(hd, g) 0
#define attention_task_bf16(...) ((void)0)
#endif

#define LOAD_f32(v) (v)
#define STORE_f32(v) (v)
#define LOAD_bf16(v) bf16_to_f32(v)
#define STORE_bf16(v) f32_to_bf16(v)
/* what torch gets when it stores an intermediate in the compute dtype and reads it back */
#define ROUND_f32(v) (v)
#define ROUND_bf16(v) bf16_to_f32(f32_to_bf16(v))

#define DEFINE_KERNELS(SUF, T)                                                                         \
                                                                                                       \
/* x[r] += add[r] (when add is not NULL), then out[r] = x[r] / rms(x[r]) * w, for rows r < n. */       \
void r1_add_rmsnorm_##SUF(float *x, const T *add, const float *w, T *out, int64_t n, int64_t D,       \
                          float eps) {                                                                 \
    for (int64_t r = 0; r < n; r++) {                                                                  \
        float *xr = x + r * D;                                                                         \
        if (add) {                                                                                     \
            const T *ar = add + r * D;                                                                 \
            for (int64_t d = 0; d < D; d++) xr[d] += LOAD_##SUF(ar[d]);                                \
        }                                                                                              \
        float ss = 0.0f;                                                                               \
        _Pragma("omp simd reduction(+:ss)")                                                            \
        for (int64_t d = 0; d < D; d++) ss += xr[d] * xr[d];                                           \
        float inv = 1.0f / sqrtf(ss / (float)D + eps);                                                 \
        T *orow = out + r * D;                                                                         \
        for (int64_t d = 0; d < D; d++) orow[d] = STORE_##SUF(xr[d] * inv * w[d]);                     \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* qkv [n, (H + 2 KV) * hd], the fused projection of row r at cache position pos[r]: RoPE (HF's      \
   rotate-half form, tables cos/sin [positions, hd]) on its q and k heads; q -> q_out [n, H, hd];       \
   k, v -> the layer's caches kc, vc [slots, KV, max_len, hd] at (r, head, pos[r]). */                 \
void r1_rope_kv_##SUF(const T *qkv, int64_t n, int64_t H, int64_t KV, int64_t hd,                      \
                      const float *cos_t, const float *sin_t, const int64_t *pos, T *q_out,            \
                      T *kc, T *vc, int64_t max_len) {                                                 \
    int64_t half = hd / 2, width = (H + 2 * KV) * hd;                                                  \
    for (int64_t r = 0; r < n; r++) {                                                                  \
        const T *row = qkv + r * width;                                                                \
        const float *c = cos_t + pos[r] * hd, *s = sin_t + pos[r] * hd;                                \
        for (int64_t h = 0; h < H + KV; h++) {                                                         \
            const T *src = row + h * hd;                                                               \
            T *dst = h < H ? q_out + (r * H + h) * hd                                                  \
                           : kc + ((r * KV + (h - H)) * max_len + pos[r]) * hd;                        \
            for (int64_t d = 0; d < half; d++) {                                                       \
                float a = LOAD_##SUF(src[d]), b = LOAD_##SUF(src[d + half]);                           \
                dst[d] = STORE_##SUF(a * c[d] - b * s[d]);                                             \
                dst[d + half] = STORE_##SUF(b * c[d + half] + a * s[d + half]);                        \
            }                                                                                          \
        }                                                                                              \
        for (int64_t j = 0; j < KV; j++)                                                               \
            memcpy(vc + ((r * KV + j) * max_len + pos[r]) * hd, row + (H + KV + j) * hd,               \
                   (size_t)hd * sizeof(T));                                                            \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* One query token per row attending to cache positions 0..pos[r] of its own slot: softmax(q k^T *    \
   scale) v with grouped-query heads (query head h reads kv head h / (H / KV), HF's order).            \
   q [n, H, hd]; kc, vc [slots, KV, max_len, hd]; out [n, H * hd]. Scores and sums in float32. */      \
void r1_decode_attention_##SUF(const T *q, const T *kc, const T *vc, const int64_t *pos, int64_t n,    \
                               int64_t H, int64_t KV, int64_t hd, int64_t max_len, float scale,        \
                               T *out) {                                                               \
    int64_t g = H / KV, span = 0;                                                                      \
    for (int64_t r = 0; r < n; r++) span = pos[r] + 1 > span ? pos[r] + 1 : span;                      \
    int64_t tasks = n * KV;                                                                            \
    /* threads pay only when there is work to split (a team wake-up costs microseconds) */             \
    int parallel = tasks > 1 && tasks * span * g * hd > 65536;                                         \
    _Pragma("omp parallel for schedule(static) if(parallel)")                                          \
    for (int64_t task = 0; task < tasks; task++) {                                                     \
        int64_t r = task / KV, j = task % KV, L = pos[r] + 1;                                          \
        float *qf = malloc(sizeof(float) * (size_t)(2 * g * hd + g * L)); /* q, acc, scores */         \
        float *acc = qf + g * hd, *sc = acc + g * hd;                                                  \
        if (FAST_TASK_##SUF(hd, g)) {                                                                  \
            attention_task_##SUF(q + (r * H + j * g) * hd, kc + (r * KV + j) * max_len * hd,           \
                                 vc + (r * KV + j) * max_len * hd, L, g, hd, scale, sc,                \
                                 out + (r * H + j * g) * hd);                                          \
            free(qf);                                                                                  \
            continue;                                                                                  \
        }                                                                                              \
        for (int64_t i = 0; i < g; i++)                                                                \
            for (int64_t d = 0; d < hd; d++) qf[i * hd + d] = LOAD_##SUF(q[(r * H + j * g + i) * hd + d]); \
        const T *kb = kc + (r * KV + j) * max_len * hd, *vb = vc + (r * KV + j) * max_len * hd;         \
        for (int64_t t = 0; t < L; t++) {                                                              \
            float kt[hd];                                                                              \
            for (int64_t d = 0; d < hd; d++) kt[d] = LOAD_##SUF(kb[t * hd + d]);                       \
            for (int64_t i = 0; i < g; i++) {                                                          \
                float dot = 0.0f;                                                                      \
                const float *qi = qf + i * hd;                                                         \
                _Pragma("omp simd reduction(+:dot)")                                                   \
                for (int64_t d = 0; d < hd; d++) dot += qi[d] * kt[d];                                 \
                sc[i * L + t] = dot * scale;                                                           \
            }                                                                                          \
        }                                                                                              \
        float inv[g];                                                                                  \
        softmax_rows(sc, g, L, inv);                                                                   \
        memset(acc, 0, sizeof(float) * (size_t)(g * hd));                                              \
        for (int64_t t = 0; t < L; t++) {                                                              \
            float vt[hd];                                                                              \
            for (int64_t d = 0; d < hd; d++) vt[d] = LOAD_##SUF(vb[t * hd + d]);                       \
            for (int64_t i = 0; i < g; i++) {                                                          \
                float p = sc[i * L + t];                                                               \
                float *ai = acc + i * hd;                                                              \
                for (int64_t d = 0; d < hd; d++) ai[d] += p * vt[d];                                   \
            }                                                                                          \
        }                                                                                              \
        for (int64_t i = 0; i < g; i++)                                                                \
            for (int64_t d = 0; d < hd; d++)                                                           \
                out[(r * H + j * g + i) * hd + d] = STORE_##SUF(acc[i * hd + d] * inv[i]);             \
        free(qf);                                                                                      \
    }                                                                                                  \
}                                                                                                      \
                                                                                                       \
/* gu [n, 2 I] (gate | up) -> out [n, I] = silu(gate) * up, each stored in the compute dtype as        \
   torch's F.silu(gate) * up stores them. */                                                           \
void r1_silu_mul_##SUF(const T *gu, int64_t n, int64_t I, T *out) {                                    \
    for (int64_t r = 0; r < n; r++) {                                                                  \
        const T *g = gu + r * 2 * I, *u = g + I;                                                       \
        T *o = out + r * I;                                                                            \
        for (int64_t d = 0; d < I; d++) {                                                              \
            float x = LOAD_##SUF(g[d]);                                                                \
            float act = ROUND_##SUF(x / (1.0f + exp_f32(-x)));                                         \
            o[d] = STORE_##SUF(act * LOAD_##SUF(u[d]));                                                \
        }                                                                                              \
    }                                                                                                  \
}

DEFINE_KERNELS(f32, float)
DEFINE_KERNELS(bf16, bf16)

/* the exp above, exposed for its test */
void r1_exp_f32(const float *x, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = exp_f32(x[i]);
}

/* Sampling at temperature T without top-k / top-p, the same computation as rollout.base's
   `_sample_untruncated` + `inverse_cdf_sample` in one pass per row: z = logits / T, e = exp(z - max),
   float64 sums of 1,024-entry chunks pick the chunk holding u * total, a float64 running sum inside
   it picks the entry (the first whose cumulative mass exceeds the target: never a zero-mass entry).
   logits [B, V]; u [B] uniforms in [0, 1) drawn by the caller (so seeded runs draw the same stream);
   out: tokens [B], logprobs [B] = z[token] - logsumexp(z). scratch: B * V floats. */
void r1_sample(const float *logits, int64_t B, int64_t V, float temperature, const double *u, int64_t *tokens,
               float *logprobs, float *scratch) {
    const int64_t C = 1024;
    _Pragma("omp parallel for schedule(static) if(B > 1 && B * V > 200000)")
    for (int64_t b = 0; b < B; b++) {
        const float *x = logits + b * V;
        float *e = scratch + b * V, m = -INFINITY;
        _Pragma("omp simd reduction(max:m)")
        for (int64_t i = 0; i < V; i++) {
            float z = x[i] / temperature;
            m = z > m ? z : m;
        }
        for (int64_t i = 0; i < V; i++) e[i] = exp_f32(x[i] / temperature - m);
        double total = 0.0;
        for (int64_t c0 = 0; c0 < V; c0 += C) {
            int64_t c1 = c0 + C < V ? c0 + C : V;
            double cs = 0.0;
            _Pragma("omp simd reduction(+:cs)")
            for (int64_t i = c0; i < c1; i++) cs += e[i];
            total += cs;
        }
        double target = u[b] * total, before = 0.0;
        int64_t c0 = 0;
        for (; c0 < V; c0 += C) { /* the chunk whose cumulative mass first exceeds the target */
            int64_t c1 = c0 + C < V ? c0 + C : V;
            double cs = 0.0;
            _Pragma("omp simd reduction(+:cs)")
            for (int64_t i = c0; i < c1; i++) cs += e[i];
            if (before + cs > target || c1 == V) break;
            before += cs;
        }
        int64_t c1 = c0 + C < V ? c0 + C : V, tok = -1, last_positive = c0;
        double run = 0.0, want = target - before;
        for (int64_t i = c0; i < c1; i++) {
            if (e[i] > 0.0f) last_positive = i;
            run += e[i];
            if (run > want && e[i] > 0.0f) { tok = i; break; }
        }
        if (tok < 0) tok = last_positive; /* rounding between the two levels: the chunk's last positive entry */
        tokens[b] = tok;
        logprobs[b] = x[tok] / temperature - (m + (float)log(total));
    }
}
