/* qmatmul.h: y = x W^T + b for Q4/Q8 weights with 8-bit activations (the bfloat16 dtype's arithmetic).
 *
 * Each row of x is quantized on its own, per group of 32 inputs: scale = max|x| / 127, level =
 * rint(x / scale) (as GGUF's Q8_0). A group's contribution to an output is then an exact integer dot
 * product of levels, scaled once in fp32: for Q4 (w = level * scale_w + minimum)
 *     (scale_w * scale_x) * sum(l_x * l_w) + minimum * (scale_x * sum(l_x)),
 * for Q8 (scale_w * scale_x) * sum(l_x * l_w), accumulated over the groups in order. Integer sums
 * are exact and the float steps fixed, so, as on the float path, a row's outputs never depend on the
 * other rows, and every build (VNNI's dpbusd, AVX2's maddubs, plain C) agrees bit for bit.
 *
 * The instructions multiply unsigned by signed bytes: Q4 levels (0..15) are the signed side and the
 * activation levels go in shifted by 128 (u8 1..255), the shift taken back through the stored level
 * sums (maddubs' int16 pair sums stay under 2 x 255 x 15); Q8 multiplies |x| by w carrying x's sign
 * (pair sums under 2 x 127 x 127). Both are exact. */

typedef struct {
    int8_t *levels;  /* [rows][k] */
    float *scales;   /* [rows][groups] */
    float *offsets;  /* [rows][groups]: scale * sum(levels), what a Q4 minimum multiplies */
    int64_t k, groups;
} quantized_rows;

static void quantize_row(const float *x, int64_t k, int8_t *levels, float *scales, float *offsets) {
    for (int64_t g = 0; g < k / GROUP; g++) {
        const float *xg = x + g * GROUP;
        float largest = 0.0f;
        for (int i = 0; i < GROUP; i++) largest = fabsf(xg[i]) > largest ? fabsf(xg[i]) : largest;
        const float inverse = largest > 0.0f ? 127.0f / largest : 0.0f;
        int32_t sum = 0;
        for (int i = 0; i < GROUP; i++) {
            float level = rintf(xg[i] * inverse);
            level = level > 127.0f ? 127.0f : level < -127.0f ? -127.0f : level;
            levels[g * GROUP + i] = (int8_t)level;
            sum += (int32_t)level;
        }
        scales[g] = largest / 127.0f;
        offsets[g] = scales[g] * (float)sum;
    }
}

static inline int32_t load_quad(const int8_t *p) {
    int32_t quad;
    memcpy(&quad, p, 4);
    return quad;
}

/* R rows from r0 by NT tiles from t0, integer dot products per group, fp32 across groups. */
static inline __attribute__((always_inline)) void int_kernel(const int format, const int R, const int NT, const tw_matrix *w,
                                                             int t0, const quantized_rows *x, int r0, float *y, int64_t ldy,
                                                             int accumulate) {
    v16 acc[4][4];
    const uint8_t *tiles[4];
    const int64_t gbytes = group_bytes(format), tbytes = tile_bytes(w);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NT; j++) acc[r][j] = v_zero();
    for (int j = 0; j < NT; j++) tiles[j] = w->data + (int64_t)(t0 + j) * tbytes;
    const v16i four_bits = vi_set1(0x0F0F0F0F);
    for (int64_t g = 0; g < x->groups; g++) {
        /* One row: two partial sums per output (even and odd quads), so the dot products form
         * independent chains; more rows have chains enough (and need the registers). */
        v16i sums[4][4], other[4][4];
        for (int r = 0; r < R; r++)
            for (int j = 0; j < NT; j++) sums[r][j] = other[r][j] = vi_zero();
        if (format == TW_Q4) {
            for (int block = 0; block < GROUP / 8; block++) {
                v16i low[4], high[4];
                for (int j = 0; j < NT; j++) {
                    const v16i raw = vi_load(tiles[j] + g * gbytes + Q4_LEVELS + 64 * block);
                    low[j] = vi_and(raw, four_bits);
                    high[j] = vi_and(vi_srl(raw, 4), four_bits);
                }
                for (int r = 0; r < R; r++) {
                    const int8_t *levels = x->levels + (r0 + r) * x->k + g * GROUP + 8 * block;
                    const v16i first = vi_set1(load_quad(levels) ^ (int32_t)0x80808080);
                    const v16i second = vi_set1(load_quad(levels + 4) ^ (int32_t)0x80808080);
                    for (int j = 0; j < NT; j++) {
                        sums[r][j] = vi_dot_u8s8(sums[r][j], first, low[j]);
                        if (R == 1) other[r][j] = vi_dot_u8s8(other[r][j], second, high[j]);
                        else sums[r][j] = vi_dot_u8s8(sums[r][j], second, high[j]);
                    }
                }
            }
        } else {
            for (int quad = 0; quad < GROUP / 4; quad += 2) {
                v16i even[4], odd[4];
                for (int j = 0; j < NT; j++) {
                    even[j] = vi_load(tiles[j] + g * gbytes + Q8_LEVELS + 64 * quad);
                    odd[j] = vi_load(tiles[j] + g * gbytes + Q8_LEVELS + 64 * (quad + 1));
                }
                for (int r = 0; r < R; r++) {
                    const int8_t *levels = x->levels + (r0 + r) * x->k + g * GROUP + 4 * quad;
                    const v16i first = vi_set1(load_quad(levels)), second = vi_set1(load_quad(levels + 4));
                    for (int j = 0; j < NT; j++) {
                        sums[r][j] = vi_dot_s8s8(sums[r][j], first, even[j]);
                        if (R == 1) other[r][j] = vi_dot_s8s8(other[r][j], second, odd[j]);
                        else sums[r][j] = vi_dot_s8s8(sums[r][j], second, odd[j]);
                    }
                }
            }
        }
        for (int j = 0; j < NT; j++) {
            const uint8_t *group = tiles[j] + g * gbytes;
            const v16 scale = v_load_f16((const uint16_t *)group);
            const v16 minimum = format == TW_Q4 ? v_load_f16((const uint16_t *)(group + Q4_MINIMUMS)) : v_zero();
            const v16i shift = format == TW_Q4 ? vi_sll(vi_load_i16((const int16_t *)(group + Q4_SUMS)), 7) : vi_zero();
            for (int r = 0; r < R; r++) {
                const int64_t at = (r0 + r) * x->groups + g;
                const v16i total = vi_add(sums[r][j], other[r][j]);
                const v16 exact = vi_float(format == TW_Q4 ? vi_sub(total, shift) : total);
                acc[r][j] = v_fma(exact, v_mul(scale, v_set1(x->scales[at])), acc[r][j]);
                if (format == TW_Q4) acc[r][j] = v_fma(minimum, v_set1(x->offsets[at]), acc[r][j]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NT; j++) store_outputs(w, t0 + j, acc[r][j], y + (r0 + r) * ldy, accumulate);
}

#if defined(__AVX512F__)
#define INT_R 4
#define INT_NT(R) ((R) <= 1 ? 4 : 2)
#elif defined(__AVX2__)
#define INT_R 2
#define INT_NT(R) 1
#else
#define INT_R 1
#define INT_NT(R) 1
#endif

#define INT_NAME(F, R, NT) int_##F##_##R##_##NT
#define DEFINE_INT(F, R, NT)                                                                                    \
    static void INT_NAME(F, R, NT)(const tw_matrix *w, int t0, const quantized_rows *x, int r0, float *y,     \
                                   int64_t ldy, int accumulate) {                                              \
        int_kernel(F, R, NT, w, t0, x, r0, y, ldy, accumulate);                                               \
    }
#define DEFINE_INT_FORMAT(F)                                                                                    \
    DEFINE_INT(F, 1, 1) DEFINE_INT(F, 2, 1) DEFINE_INT(F, 3, 1) DEFINE_INT(F, 4, 1)                            \
    DEFINE_INT(F, 1, 2) DEFINE_INT(F, 2, 2) DEFINE_INT(F, 3, 2) DEFINE_INT(F, 4, 2) DEFINE_INT(F, 1, 4)
DEFINE_INT_FORMAT(2)
DEFINE_INT_FORMAT(3)

typedef void (*int_fn)(const tw_matrix *, int, const quantized_rows *, int, float *, int64_t, int);
#define INT_TABLE(F)                                                                                            \
    {{INT_NAME(F, 1, 1), INT_NAME(F, 1, 2), 0, INT_NAME(F, 1, 4)}, {INT_NAME(F, 2, 1), INT_NAME(F, 2, 2), 0, 0},  \
     {INT_NAME(F, 3, 1), INT_NAME(F, 3, 2), 0, 0}, {INT_NAME(F, 4, 1), INT_NAME(F, 4, 2), 0, 0}}
static const int_fn INT_KERNELS[2][4][4] = {INT_TABLE(2), INT_TABLE(3)};

/* Every row of x [m][ldx] quantized into q (shared by the job's threads); returns after a barrier. */
static void quantize_rows(tw_ctx *ctx, const float *x, int64_t ldx, int m, quantized_rows *q) {
    for (int64_t first, end; next_run(ctx, m, 4, &first, &end);)
        for (int64_t r = first; r < end; r++)
            quantize_row(x + r * ldx, q->k, q->levels + r * q->k, q->scales + r * q->groups, q->offsets + r * q->groups);
    pool_barrier(ctx);
}

/* y[m][n] (+)= x . W^T + bias for Q4/Q8 W over quantized rows; shared, and returns after a barrier. */
static void qmatmul(tw_ctx *ctx, const tw_matrix *w, const quantized_rows *x, int m, float *y, int64_t ldy, int accumulate) {
    const int n_tiles = (w->n + TILE - 1) / TILE, nt = INT_NT(m < INT_R ? m : INT_R);
    const int n_blocks = (n_tiles + nt - 1) / nt, n_row_blocks = (m + INT_R - 1) / INT_R;
    const int f = w->format - TW_Q4;
    /* Items run a tile block's row blocks in a row, so its weights stay in cache across them. */
    for (int64_t first, end; next_run(ctx, (int64_t)n_blocks * n_row_blocks, 4, &first, &end);) {
        for (int64_t item = first; item < end; item++) {
            const int block = (int)(item / n_row_blocks), r0 = (int)(item % n_row_blocks) * INT_R;
            const int t0 = block * nt, tiles = n_tiles - t0 < nt ? n_tiles - t0 : nt;
            const int rows = m - r0 < INT_R ? m - r0 : INT_R;
            if (tiles == nt && INT_KERNELS[f][rows - 1][nt - 1]) {
                INT_KERNELS[f][rows - 1][nt - 1](w, t0, x, r0, y, ldy, accumulate);
            } else {
                for (int t = t0; t < t0 + tiles; t++) INT_KERNELS[f][rows - 1][0](w, t, x, r0, y, ldy, accumulate);
            }
        }
    }
    pool_barrier(ctx);
}
