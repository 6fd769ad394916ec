/* v16.h: sixteen float lanes, the same operations on every build.
 *
 * One zmm on AVX-512, two ymm on AVX2, sixteen floats in plain C. Every operation but the
 * horizontal sums is lane by lane, and those reduce in one fixed tree, so the three builds compute
 * bit-identical numbers. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define TW_ISA "avx512"
typedef __m512 v16;
static inline v16 v_zero(void) { return _mm512_setzero_ps(); }
static inline v16 v_set1(float a) { return _mm512_set1_ps(a); }
static inline v16 v_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void v_store(float *p, v16 a) { _mm512_storeu_ps(p, a); }
static inline v16 v_add(v16 a, v16 b) { return _mm512_add_ps(a, b); }
static inline v16 v_sub(v16 a, v16 b) { return _mm512_sub_ps(a, b); }
static inline v16 v_mul(v16 a, v16 b) { return _mm512_mul_ps(a, b); }
static inline v16 v_div(v16 a, v16 b) { return _mm512_div_ps(a, b); }
static inline v16 v_max(v16 a, v16 b) { return _mm512_max_ps(a, b); }
static inline v16 v_min(v16 a, v16 b) { return _mm512_min_ps(a, b); }
static inline v16 v_fma(v16 a, v16 b, v16 c) { return _mm512_fmadd_ps(a, b, c); }
static inline v16 v_round(v16 a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
/* 2^n for integral n in [-126, 127], exactly. */
static inline v16 v_pow2(v16 n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
static inline v16 v_load_bf16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static inline v16 v_load_f16(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
/* The fixed reduction tree: halves of 8, 4, 2, 1 lanes. */
static inline float v_hsum(v16 a) {
    const __m256 eight = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    const __m128 four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
    const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}
#elif defined(__AVX2__)
#define TW_ISA "avx2"
typedef struct { __m256 lo, hi; } v16;
static inline v16 v_make(__m256 lo, __m256 hi) { v16 r = {lo, hi}; return r; }
static inline v16 v_zero(void) { return v_make(_mm256_setzero_ps(), _mm256_setzero_ps()); }
static inline v16 v_set1(float a) { return v_make(_mm256_set1_ps(a), _mm256_set1_ps(a)); }
static inline v16 v_load(const float *p) { return v_make(_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)); }
static inline void v_store(float *p, v16 a) { _mm256_storeu_ps(p, a.lo); _mm256_storeu_ps(p + 8, a.hi); }
#define V_BINARY(name, op) static inline v16 name(v16 a, v16 b) { return v_make(op(a.lo, b.lo), op(a.hi, b.hi)); }
V_BINARY(v_add, _mm256_add_ps)
V_BINARY(v_sub, _mm256_sub_ps)
V_BINARY(v_mul, _mm256_mul_ps)
V_BINARY(v_div, _mm256_div_ps)
V_BINARY(v_max, _mm256_max_ps)
V_BINARY(v_min, _mm256_min_ps)
static inline v16 v_fma(v16 a, v16 b, v16 c) {
    return v_make(_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi));
}
static inline v16 v_round(v16 a) {
    return v_make(_mm256_round_ps(a.lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                  _mm256_round_ps(a.hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
static inline __m256 pow2_8(__m256 n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
static inline v16 v_pow2(v16 n) { return v_make(pow2_8(n.lo), pow2_8(n.hi)); }
static inline __m256 bf16_8(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
static inline v16 v_load_bf16(const uint16_t *p) {
    return v_make(bf16_8(_mm_loadu_si128((const __m128i *)p)), bf16_8(_mm_loadu_si128((const __m128i *)(p + 8))));
}
static inline v16 v_load_f16(const uint16_t *p) {
    return v_make(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8))));
}
static inline float v_hsum(v16 a) {
    const __m256 eight = _mm256_add_ps(a.lo, a.hi);
    const __m128 four = _mm_add_ps(_mm256_castps256_ps128(eight), _mm256_extractf128_ps(eight, 1));
    const __m128 two = _mm_add_ps(four, _mm_movehl_ps(four, four));
    return _mm_cvtss_f32(_mm_add_ss(two, _mm_movehdup_ps(two)));
}
#else
#define TW_ISA "generic"
typedef struct { float v[16]; } v16;
#define V_LANES(expr) do { for (int i_ = 0; i_ < 16; i_++) { expr; } } while (0)
static inline v16 v_zero(void) { v16 r; V_LANES(r.v[i_] = 0.0f); return r; }
static inline v16 v_set1(float a) { v16 r; V_LANES(r.v[i_] = a); return r; }
static inline v16 v_load(const float *p) { v16 r; memcpy(r.v, p, sizeof r.v); return r; }
static inline void v_store(float *p, v16 a) { memcpy(p, a.v, sizeof a.v); }
static inline v16 v_add(v16 a, v16 b) { v16 r; V_LANES(r.v[i_] = a.v[i_] + b.v[i_]); return r; }
static inline v16 v_sub(v16 a, v16 b) { v16 r; V_LANES(r.v[i_] = a.v[i_] - b.v[i_]); return r; }
static inline v16 v_mul(v16 a, v16 b) { v16 r; V_LANES(r.v[i_] = a.v[i_] * b.v[i_]); return r; }
static inline v16 v_div(v16 a, v16 b) { v16 r; V_LANES(r.v[i_] = a.v[i_] / b.v[i_]); return r; }
/* The SIMD max/min return the second operand unless the first is strictly larger/smaller. */
static inline v16 v_max(v16 a, v16 b) { v16 r; V_LANES(r.v[i_] = a.v[i_] > b.v[i_] ? a.v[i_] : b.v[i_]); return r; }
static inline v16 v_min(v16 a, v16 b) { v16 r; V_LANES(r.v[i_] = a.v[i_] < b.v[i_] ? a.v[i_] : b.v[i_]); return r; }
static inline v16 v_fma(v16 a, v16 b, v16 c) { v16 r; V_LANES(r.v[i_] = fmaf(a.v[i_], b.v[i_], c.v[i_])); return r; }
static inline v16 v_round(v16 a) { v16 r; V_LANES(r.v[i_] = rintf(a.v[i_])); return r; }
static inline v16 v_pow2(v16 n) {
    v16 r;
    for (int i = 0; i < 16; i++) {
        const uint32_t bits = (uint32_t)((int32_t)n.v[i] + 127) << 23;
        memcpy(&r.v[i], &bits, 4);
    }
    return r;
}
static inline float bf16_to_f32(uint16_t h) { const uint32_t bits = (uint32_t)h << 16; float f; memcpy(&f, &bits, 4); return f; }
static inline float f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF;
    uint32_t bits;
    if (exponent == 0x1F) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {  /* subnormal: normalise */
        int shift = 0;
        uint32_t m = mantissa;
        while (!(m & 0x400)) { m <<= 1; shift++; }
        bits = sign | ((uint32_t)(113 - shift) << 23) | ((m & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline v16 v_load_bf16(const uint16_t *p) { v16 r; V_LANES(r.v[i_] = bf16_to_f32(p[i_])); return r; }
static inline v16 v_load_f16(const uint16_t *p) { v16 r; V_LANES(r.v[i_] = f16_to_f32(p[i_])); return r; }
static inline float v_hsum(v16 a) {
    float eight[8], four[4], two[2];
    for (int i = 0; i < 8; i++) eight[i] = a.v[i] + a.v[i + 8];
    for (int i = 0; i < 4; i++) four[i] = eight[i] + eight[i + 4];
    for (int i = 0; i < 2; i++) two[i] = four[i] + four[i + 2];
    return two[0] + two[1];
}
#endif

static inline v16 v_load_partial(const float *p, int n) {
    float tmp[16] = {0};
    memcpy(tmp, p, (size_t)n * sizeof(float));
    return v_load(tmp);
}

static inline void v_store_partial(float *p, v16 a, int n) {
    float tmp[16];
    v_store(tmp, a);
    memcpy(p, tmp, (size_t)n * sizeof(float));
}

/* v_hsum of sixteen vectors at once (the same tree per vector, so the same sums bit for bit). */
static inline void v_hsum16(const v16 *a, float *out) {
#if defined(__AVX512F__)
    __m512 halves[8], quarters[4], eighths[2];
    for (int p = 0; p < 8; p++)  /* lane i + lane i+8, two vectors per register */
        halves[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                  _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int p = 0; p < 4; p++)  /* + lane i+4: four vectors per register, one per 128-bit block */
        quarters[p] = _mm512_add_ps(_mm512_shuffle_f32x4(halves[2 * p], halves[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(halves[2 * p], halves[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int p = 0; p < 2; p++)  /* + lane i+2 */
        eighths[p] = _mm512_add_ps(_mm512_shuffle_ps(quarters[2 * p], quarters[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                   _mm512_shuffle_ps(quarters[2 * p], quarters[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* + lane 1: element 4L + m now holds vector 4m + L's sum */
    const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(eighths[0], eighths[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                      _mm512_shuffle_ps(eighths[0], eighths[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    _mm512_storeu_ps(out, _mm512_permutexvar_ps(order, sums));
#else
    for (int j = 0; j < 16; j++) out[j] = v_hsum(a[j]);
#endif
}

/* e^x for x <= 0 (and moderately above), Cephes' polynomial on the reduced argument; lane by lane. */
static inline v16 v_exp(v16 x) {
    x = v_max(v_min(x, v_set1(88.0f)), v_set1(-87.0f));
    const v16 n = v_round(v_mul(x, v_set1(1.44269504088896341f)));
    v16 r = v_fma(n, v_set1(-0.693359375f), x);
    r = v_fma(n, v_set1(2.12194440e-4f), r);
    v16 p = v_set1(1.9875691500e-4f);
    p = v_fma(p, r, v_set1(1.3981999507e-3f));
    p = v_fma(p, r, v_set1(8.3334519073e-3f));
    p = v_fma(p, r, v_set1(4.1665795894e-2f));
    p = v_fma(p, r, v_set1(1.6666665459e-1f));
    p = v_fma(p, r, v_set1(5.0000001201e-1f));
    p = v_fma(p, v_mul(r, r), v_add(r, v_set1(1.0f)));
    return v_mul(p, v_pow2(n));
}

/* tanh(x) = (1 - e^-2x) / (1 + e^-2x) through v_exp (whose clamps make it exactly -1 or 1 far out);
 * lane by lane, so every build computes it alike. Near 0 it is good to ~1e-7 absolute (not relative). */
static inline v16 v_tanh(v16 x) {
    const v16 one = v_set1(1.0f), t = v_exp(v_mul(x, v_set1(-2.0f)));
    return v_div(v_sub(one, t), v_add(one, t));
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu)) return (uint16_t)((bits >> 16) | 0x40);
    bits += 0x7FFFu + ((bits >> 16) & 1u);  /* round to nearest even, as torch does */
    return (uint16_t)(bits >> 16);
}

