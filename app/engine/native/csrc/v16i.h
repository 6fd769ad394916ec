/* v16i.h: sixteen int32 lanes, and the 8-bit dot products the low-bit matmuls are made of.
 *
 * A lane holds four bytes (byte e at bit 8e, as x86 loads them). The dot products are exact integer
 * sums, so every build (AVX-512 VNNI, AVX2's maddubs/madd, plain C) gives the same numbers as long as
 * nothing saturates: the callers keep |u8 x s8| pair sums of maddubs under 2^15 (see qmatmul.h). */

#if defined(__AVX512F__)
typedef __m512i v16i;
static inline v16i vi_load(const void *p) { return _mm512_loadu_si512(p); }
static inline v16i vi_set1(int32_t a) { return _mm512_set1_epi32(a); }
static inline v16i vi_zero(void) { return _mm512_setzero_si512(); }
static inline v16i vi_and(v16i a, v16i b) { return _mm512_and_si512(a, b); }
static inline v16i vi_sub(v16i a, v16i b) { return _mm512_sub_epi32(a, b); }
static inline v16i vi_add(v16i a, v16i b) { return _mm512_add_epi32(a, b); }
static inline v16i vi_srl(v16i a, int n) { return _mm512_srlv_epi32(a, _mm512_set1_epi32(n)); }
static inline v16i vi_sll(v16i a, int n) { return _mm512_sllv_epi32(a, _mm512_set1_epi32(n)); }
static inline v16i vi_sra(v16i a, int n) { return _mm512_srav_epi32(a, _mm512_set1_epi32(n)); }
static inline v16 vi_float(v16i a) { return _mm512_cvtepi32_ps(a); }
static inline v16i vi_load_i16(const int16_t *p) { return _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)p)); }
/* acc + per lane the sum of its four u8(a) x s8(b) products. */
static inline v16i vi_dot_u8s8(v16i acc, v16i a, v16i b) { return _mm512_dpbusd_epi32(acc, a, b); }
/* acc + per lane the sum of its four s8(a) x s8(b) products (|a| <= 127). */
static inline v16i vi_dot_s8s8(v16i acc, v16i a, v16i b) {
    const __mmask64 negative = _mm512_movepi8_mask(a);
    return _mm512_dpbusd_epi32(acc, _mm512_abs_epi8(a), _mm512_mask_sub_epi8(b, negative, _mm512_setzero_si512(), b));
}
#elif defined(__AVX2__)
typedef struct { __m256i lo, hi; } v16i;
static inline v16i vi_make(__m256i lo, __m256i hi) { v16i r = {lo, hi}; return r; }
static inline v16i vi_load(const void *p) {
    return vi_make(_mm256_loadu_si256((const __m256i *)p), _mm256_loadu_si256((const __m256i *)p + 1));
}
static inline v16i vi_set1(int32_t a) { return vi_make(_mm256_set1_epi32(a), _mm256_set1_epi32(a)); }
static inline v16i vi_zero(void) { return vi_make(_mm256_setzero_si256(), _mm256_setzero_si256()); }
static inline v16i vi_and(v16i a, v16i b) { return vi_make(_mm256_and_si256(a.lo, b.lo), _mm256_and_si256(a.hi, b.hi)); }
static inline v16i vi_sub(v16i a, v16i b) { return vi_make(_mm256_sub_epi32(a.lo, b.lo), _mm256_sub_epi32(a.hi, b.hi)); }
static inline v16i vi_add(v16i a, v16i b) { return vi_make(_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi)); }
static inline v16i vi_srl(v16i a, int n) {
    const __m256i c = _mm256_set1_epi32(n);
    return vi_make(_mm256_srlv_epi32(a.lo, c), _mm256_srlv_epi32(a.hi, c));
}
static inline v16i vi_sll(v16i a, int n) {
    const __m256i c = _mm256_set1_epi32(n);
    return vi_make(_mm256_sllv_epi32(a.lo, c), _mm256_sllv_epi32(a.hi, c));
}
static inline v16i vi_sra(v16i a, int n) {
    const __m256i c = _mm256_set1_epi32(n);
    return vi_make(_mm256_srav_epi32(a.lo, c), _mm256_srav_epi32(a.hi, c));
}
static inline v16 vi_float(v16i a) { return v_make(_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)); }
static inline v16i vi_load_i16(const int16_t *p) {
    return vi_make(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)p)),
                   _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(p + 8))));
}
static inline __m256i dot4(__m256i acc, __m256i a_u8, __m256i b_s8) {
    /* pairs of products as int16 (saturating: callers keep each pair sum under 2^15), then int32 */
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a_u8, b_s8), _mm256_set1_epi16(1)));
}
static inline v16i vi_dot_u8s8(v16i acc, v16i a, v16i b) { return vi_make(dot4(acc.lo, a.lo, b.lo), dot4(acc.hi, a.hi, b.hi)); }
static inline v16i vi_dot_s8s8(v16i acc, v16i a, v16i b) {
    return vi_make(dot4(acc.lo, _mm256_abs_epi8(a.lo), _mm256_sign_epi8(b.lo, a.lo)),
                   dot4(acc.hi, _mm256_abs_epi8(a.hi), _mm256_sign_epi8(b.hi, a.hi)));
}
#else
typedef struct { int32_t v[16]; } v16i;
static inline v16i vi_load(const void *p) { v16i r; memcpy(r.v, p, sizeof r.v); return r; }
static inline v16i vi_set1(int32_t a) { v16i r; V_LANES(r.v[i_] = a); return r; }
static inline v16i vi_zero(void) { return vi_set1(0); }
static inline v16i vi_and(v16i a, v16i b) { v16i r; V_LANES(r.v[i_] = a.v[i_] & b.v[i_]); return r; }
static inline v16i vi_sub(v16i a, v16i b) { v16i r; V_LANES(r.v[i_] = a.v[i_] - b.v[i_]); return r; }
static inline v16i vi_add(v16i a, v16i b) { v16i r; V_LANES(r.v[i_] = a.v[i_] + b.v[i_]); return r; }
static inline v16i vi_srl(v16i a, int n) { v16i r; V_LANES(r.v[i_] = (int32_t)((uint32_t)a.v[i_] >> n)); return r; }
static inline v16i vi_sll(v16i a, int n) { v16i r; V_LANES(r.v[i_] = (int32_t)((uint32_t)a.v[i_] << n)); return r; }
static inline v16i vi_sra(v16i a, int n) { v16i r; V_LANES(r.v[i_] = a.v[i_] >> n); return r; }
static inline v16 vi_float(v16i a) { v16 r; V_LANES(r.v[i_] = (float)a.v[i_]); return r; }
static inline v16i vi_load_i16(const int16_t *p) { v16i r; V_LANES(r.v[i_] = p[i_]); return r; }
static inline v16i vi_dot_u8s8(v16i acc, v16i a, v16i b) {
    for (int i = 0; i < 16; i++)
        for (int e = 0; e < 4; e++)
            acc.v[i] += (int32_t)(uint8_t)(a.v[i] >> (8 * e)) * (int32_t)(int8_t)(b.v[i] >> (8 * e));
    return acc;
}
static inline v16i vi_dot_s8s8(v16i acc, v16i a, v16i b) {
    for (int i = 0; i < 16; i++)
        for (int e = 0; e < 4; e++)
            acc.v[i] += (int32_t)(int8_t)(a.v[i] >> (8 * e)) * (int32_t)(int8_t)(b.v[i] >> (8 * e));
    return acc;
}
#endif
