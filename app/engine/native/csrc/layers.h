/* layers.h: a decoder layer's parts besides the matmuls: RMSNorm, RoPE, the KV cache's formats,
 * SiLU and GELU (tanh) gating, soft-caps and attention. Each computes a row (a token, a head) on its own, in a fixed order. */

/* Sum of a[0..n) in the fixed tree: 16 lanes in order, the tail zero-padded, then v_hsum. */
static inline float fixed_sum_of_squares(const float *a, int n) {
    v16 acc = v_zero();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        const v16 v = v_load(a + i);
        acc = v_fma(v, v, acc);
    }
    if (i < n) {
        const v16 v = v_load_partial(a + i, n - i);
        acc = v_fma(v, v, acc);
    }
    return v_hsum(acc);
}

/* out = x * rsqrt(mean(x^2) + eps) * weight, as transformers' RMSNorm (in fp32). */
static void rms_norm(const float *x, const float *weight, int n, float eps, float *out) {
    const float inverse = 1.0f / sqrtf(fixed_sum_of_squares(x, n) / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inverse);
}

/* RoPE as transformers applies it: x * cos + rotate_half(x) * sin (two products, then the sum). */
static void rotate(float *x, const float *cos_row, const float *sin_row, int half) {
    for (int i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos_row[i] + (-b) * sin_row[i];
        x[i + half] = b * cos_row[i] + a * sin_row[i];
    }
}

static inline void store_kv(void *dst, const float *src, int n, int kv_format) {
    if (kv_format == TW_KV_F32) {
        memcpy(dst, src, (size_t)n * sizeof(float));
    } else {
        uint16_t *out = (uint16_t *)dst;
        for (int i = 0; i < n; i++) out[i] = f32_to_bf16(src[i]);
    }
}

static inline v16 load_kv(const void *base, int64_t index, int kv_format) {
    if (kv_format == TW_KV_F32) return v_load((const float *)base + index);
    return v_load_bf16((const uint16_t *)base + index);
}

/* silu(gate) * up = gate / (1 + e^-gate) * up, sixteen at a time (the tail through a padded copy). */
static void silu_and_multiply(const float *gate, const float *up, int n, float *out) {
    int i = 0;
    const v16 one = v_set1(1.0f);
    for (; i + 16 <= n; i += 16) {
        const v16 g = v_load(gate + i);
        v_store(out + i, v_mul(v_div(g, v_add(one, v_exp(v_sub(v_zero(), g)))), v_load(up + i)));
    }
    if (i < n) {
        const v16 g = v_load_partial(gate + i, n - i);
        v_store_partial(out + i, v_mul(v_div(g, v_add(one, v_exp(v_sub(v_zero(), g)))), v_load_partial(up + i, n - i)), n - i);
    }
}

/* gelu_tanh(gate) * up, gelu_tanh(x) = 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))) in
 * torch's order of operations, tanh being v_tanh. */
static inline v16 gelu_tanh_times(v16 g, v16 up) {
    const v16 inner = v_mul(v_set1(0.7978845608028654f), v_add(g, v_mul(v_set1(0.044715f), v_mul(v_mul(g, g), g))));
    return v_mul(v_mul(v_mul(v_set1(0.5f), g), v_add(v_set1(1.0f), v_tanh(inner))), up);
}

static void gelu_tanh_and_multiply(const float *gate, const float *up, int n, float *out) {
    int i = 0;
    for (; i + 16 <= n; i += 16) v_store(out + i, gelu_tanh_times(v_load(gate + i), v_load(up + i)));
    if (i < n) v_store_partial(out + i, gelu_tanh_times(v_load_partial(gate + i, n - i), v_load_partial(up + i, n - i)), n - i);
}

/* x = tanh(x / cap) * cap, in place (Gemma 2's soft-caps). */
static void soft_cap(float *x, int n, float cap) {
    const v16 c = v_set1(cap);
    int i = 0;
    for (; i + 16 <= n; i += 16) v_store(x + i, v_mul(v_tanh(v_div(v_load(x + i), c)), c));
    if (i < n) v_store_partial(x + i, v_mul(v_tanh(v_div(v_load_partial(x + i, n - i), c)), c), n - i);
}

/* G query heads that share one KV head, over keys [0, n_keys) of their sequence: scores, softmax,
 * weighted values. Each head's arithmetic is its own (sharing only saves loads): the same FMA chains
 * per score, the same v_hsum tree, the same order of the softmax sum and of the weighted sum. */
static inline __attribute__((always_inline)) void attend_with(const int CHUNKS, const int KV, const int G, const float *q,
                                                              const void *keys, const void *values, int n_keys,
                                                              float scale, float cap, float *scores, int64_t score_stride,
                                                              float *out) {
    const int head_dim = CHUNKS * 16;
    float best[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    for (int j0 = 0; j0 < n_keys; j0 += 16) {
        const int block = n_keys - j0 < 16 ? n_keys - j0 : 16;
        v16 partial[4][16];
        for (int j = 0; j < 16; j++) {
            if (j < block) {
                v16 key[16];
                for (int c = 0; c < CHUNKS; c++) key[c] = load_kv(keys, (int64_t)(j0 + j) * head_dim + 16 * c, KV);
                for (int g = 0; g < G; g++) {
                    v16 acc = v_zero();
                    for (int c = 0; c < CHUNKS; c++) acc = v_fma(v_load(q + g * head_dim + 16 * c), key[c], acc);
                    partial[g][j] = acc;
                }
            } else {
                for (int g = 0; g < G; g++) partial[g][j] = v_zero();
            }
        }
        for (int g = 0; g < G; g++) {
            float sums[16];
            v_hsum16(partial[g], sums);
            float *row = scores + g * score_stride;
            if (cap > 0.0f) { /* scaled, then capped, then the softmax's maximum */
                for (int j = 0; j < block; j++) row[j0 + j] = sums[j] * scale;
                soft_cap(row + j0, block, cap);
                for (int j = 0; j < block; j++)
                    if (row[j0 + j] > best[g]) best[g] = row[j0 + j];
            } else {
                for (int j = 0; j < block; j++) {
                    row[j0 + j] = sums[j] * scale;
                    if (row[j0 + j] > best[g]) best[g] = row[j0 + j];
                }
            }
        }
    }
    v16 denominator[4];
    for (int g = 0; g < G; g++) {
        float *row = scores + g * score_stride;
        const v16 top = v_set1(best[g]);
        v16 total = v_zero();
        int j = 0;
        for (; j + 16 <= n_keys; j += 16) {
            const v16 e = v_exp(v_sub(v_load(row + j), top));
            v_store(row + j, e);
            total = v_add(total, e);
        }
        if (j < n_keys) {
            float tail[16] = {0};
            v_store(tail, v_exp(v_sub(v_load_partial(row + j, n_keys - j), top)));
            memset(tail + (n_keys - j), 0, (size_t)(16 - (n_keys - j)) * sizeof(float));
            memcpy(row + j, tail, (size_t)(n_keys - j) * sizeof(float));
            total = v_add(total, v_load(tail));
        }
        denominator[g] = v_set1(v_hsum(total));
    }
    v16 acc[4][16];
    for (int g = 0; g < G; g++)
        for (int c = 0; c < CHUNKS; c++) acc[g][c] = v_zero();
    for (int k = 0; k < n_keys; k++) {
        v16 value[16];
        for (int c = 0; c < CHUNKS; c++) value[c] = load_kv(values, (int64_t)k * head_dim + 16 * c, KV);
        for (int g = 0; g < G; g++) {
            const v16 p = v_set1(scores[g * score_stride + k]);
            for (int c = 0; c < CHUNKS; c++) acc[g][c] = v_fma(p, value[c], acc[g][c]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int c = 0; c < CHUNKS; c++) v_store(out + g * head_dim + 16 * c, v_div(acc[g][c], denominator[g]));
}

/* attend_with for this head size, KV format and group: constants, so the vectors stay in registers. */
#define ATTEND_G(CHUNKS, KV)                                                                                    \
    switch (group) {                                                                                            \
    case 1: attend_with(CHUNKS, KV, 1, q, keys, values, n_keys, scale, cap, scores, score_stride, out); break;       \
    case 2: attend_with(CHUNKS, KV, 2, q, keys, values, n_keys, scale, cap, scores, score_stride, out); break;       \
    case 3: attend_with(CHUNKS, KV, 3, q, keys, values, n_keys, scale, cap, scores, score_stride, out); break;       \
    default: attend_with(CHUNKS, KV, 4, q, keys, values, n_keys, scale, cap, scores, score_stride, out); break;      \
    }
#define ATTEND_CASE(CHUNKS)                                                                                     \
    case CHUNKS:                                                                                                \
        if (kv_format == TW_KV_F32) { ATTEND_G(CHUNKS, TW_KV_F32) } else { ATTEND_G(CHUNKS, TW_KV_BF16) }      \
        break;
/* Head sizes the kernels take (in 16s); app/engine/native/model.py refuses the others. */
static void attend(const float *q, int group, const void *keys, const void *values, int n_keys, int head_dim,
                   float scale, float cap, int kv_format, float *scores, int64_t score_stride, float *out) {
    switch (head_dim / 16) {
        ATTEND_CASE(1) ATTEND_CASE(2) ATTEND_CASE(3) ATTEND_CASE(4) ATTEND_CASE(5) ATTEND_CASE(6) ATTEND_CASE(7)
        ATTEND_CASE(8) ATTEND_CASE(16)
    }
}

