/* matmul.h: weight matrices in tiles of 16 outputs and groups of 32 inputs (weights.py), and
 * y = x W^T + b over them.
 *
 * Every output is acc = fma(x[k], w[k], acc) for k = 0, 1, ... from zero, then + bias (then + y when
 * accumulating): whichever path, blocking or thread computes it, so the number of rows in a call
 * never changes a value. Weights are exactly the checkpoint's (Q4/Q8 levels times fp16 scales are
 * exact in fp32). */
enum { TW_F32 = 0, TW_BF16 = 1, TW_Q4 = 2, TW_Q8 = 3 };
enum { TW_KV_F32 = 0, TW_KV_BF16 = 1 };
#define TILE 16
#define GROUP 32

typedef struct {
    int32_t format, n, k, reserved;
    const uint8_t *data;
    const float *bias; /* [n] or NULL */
} tw_matrix;

/* The low-bit groups (weights.py): 16 fp16 scales; for Q4, 16 fp16 minimums and 16 int16 level
 * sums (for qmatmul.h's offset activations); then the levels in 4-input quads, a quad as 16 lanes of
 * 4 bytes (Q8: int8), two quads per 64 bytes as low and high nibbles (Q4). */
#define Q4_MINIMUMS (TILE * 2)
#define Q4_SUMS (TILE * 4)
#define Q4_LEVELS (TILE * 6)
#define Q8_LEVELS (TILE * 2)

static inline int64_t group_bytes(int format) {
    switch (format) {
    case TW_F32: return GROUP * TILE * 4;
    case TW_BF16: return GROUP * TILE * 2;
    case TW_Q4: return Q4_LEVELS + GROUP * TILE / 2;
    default: return Q8_LEVELS + GROUP * TILE; /* TW_Q8 */
    }
}

static inline int64_t tile_bytes(const tw_matrix *w) { return ((w->k + GROUP - 1) / GROUP) * group_bytes(w->format); }

static inline v16 group_scale(const int format, const uint8_t *group) {
    return format >= TW_Q4 ? v_load_f16((const uint16_t *)group) : v_zero();
}

static inline v16 group_minimum(const int format, const uint8_t *group) {
    return format == TW_Q4 ? v_load_f16((const uint16_t *)(group + Q4_MINIMUMS)) : v_zero();
}

/* Inputs k and k + 1 (k even) of a Q4 group's quads, as int32 lanes. */
static inline void q4_levels(const uint8_t *group, int k, v16i *l0, v16i *l1) {
    v16i raw = vi_load(group + Q4_LEVELS + 64 * (k / 8));
    if (k & 4) raw = vi_srl(raw, 4); /* the second quad of the pair: high nibbles */
    const v16i four_bits = vi_set1(0x0F);
    *l0 = vi_and(vi_srl(raw, 8 * (k & 3)), four_bits);
    *l1 = vi_and(vi_srl(raw, 8 * ((k & 3) + 1)), four_bits);
}

/* Inputs k and k + 1 (k even) of a Q8 group's quads, as int32 lanes (sign-extended bytes). */
static inline void q8_levels(const uint8_t *group, int k, v16i *l0, v16i *l1) {
    const v16i raw = vi_load(group + Q8_LEVELS + 64 * (k / 4));
    *l0 = vi_sra(vi_sll(raw, 24 - 8 * (k & 3)), 24);
    *l1 = vi_sra(vi_sll(raw, 16 - 8 * (k & 3)), 24);
}

/* Inputs k and k + 1 (k even) of a group: the tile's 16 weights at each, exactly as the checkpoint
 * holds them (level times scale is exact in fp32 for an fp16 scale; plus the minimum rounds once). */
static inline __attribute__((always_inline)) void load_pair(const int format, const uint8_t *group, int k, v16 scale,
                                                            v16 minimum, v16 *w0, v16 *w1) {
    switch (format) {
    case TW_F32:
        *w0 = v_load((const float *)group + k * TILE);
        *w1 = v_load((const float *)group + (k + 1) * TILE);
        break;
    case TW_BF16:
        *w0 = v_load_bf16((const uint16_t *)group + k * TILE);
        *w1 = v_load_bf16((const uint16_t *)group + (k + 1) * TILE);
        break;
    case TW_Q4: {
        v16i l0, l1;
        q4_levels(group, k, &l0, &l1);
        *w0 = v_fma(vi_float(l0), scale, minimum);
        *w1 = v_fma(vi_float(l1), scale, minimum);
        break;
    }
    default: {
        v16i l0, l1;
        q8_levels(group, k, &l0, &l1);
        *w0 = v_mul(vi_float(l0), scale);
        *w1 = v_mul(vi_float(l1), scale);
        break;
    }
    }
}

/* Input k alone: the odd last input of a partial group (dense formats only; Q4/Q8 take k % 32 == 0). */
static inline __attribute__((always_inline)) v16 load_one(const int format, const uint8_t *group, int k) {
    return format == TW_F32 ? v_load((const float *)group + k * TILE) : v_load_bf16((const uint16_t *)group + k * TILE);
}

/* y[row][tile's 16 outputs] (+)= acc + bias: the one way every path finishes an output. */
static inline void store_outputs(const tw_matrix *w, int tile, v16 acc, float *dst, int accumulate) {
    const int n0 = tile * TILE, lanes = w->n - n0 < TILE ? w->n - n0 : TILE;
    if (w->bias) acc = v_add(acc, v_load_partial(w->bias + n0, lanes));
    if (accumulate) acc = v_add(v_load_partial(dst + n0, lanes), acc);
    if (lanes == TILE) v_store(dst + n0, acc);
    else v_store_partial(dst + n0, acc, lanes);
}

/* Few rows: R rows by NT tiles straight from the packed tiles, the whole k reduction in registers.
 * Each output is acc = fma(x[k], w[k], acc) for k = 0, 1, ... from zero: the same in every path. */
static inline __attribute__((always_inline)) void direct_kernel(const int format, const int R, const int NT, const tw_matrix *w,
                                                                int t0, const float *x, int64_t ldx, float *y, int64_t ldy,
                                                                int accumulate) {
    v16 acc[4][4];
    const uint8_t *tiles[4];
    const int64_t gbytes = group_bytes(format), tbytes = tile_bytes(w);
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NT; j++) acc[r][j] = v_zero();
    for (int j = 0; j < NT; j++) tiles[j] = w->data + (int64_t)(t0 + j) * tbytes;
    const int groups = (w->k + GROUP - 1) / GROUP;
    for (int g = 0; g < groups; g++) {
        const int kk = w->k - g * GROUP < GROUP ? w->k - g * GROUP : GROUP;
        v16 scale[4], minimum[4];
        for (int j = 0; j < NT; j++) {
            scale[j] = group_scale(format, tiles[j] + g * gbytes);
            minimum[j] = group_minimum(format, tiles[j] + g * gbytes);
        }
        const float *xg = x + g * GROUP;
        int k = 0;
        for (; k + 2 <= kk; k += 2) {
            v16 w0[4], w1[4];
            for (int j = 0; j < NT; j++) load_pair(format, tiles[j] + g * gbytes, k, scale[j], minimum[j], &w0[j], &w1[j]);
            for (int r = 0; r < R; r++) {
                const v16 x0 = v_set1(xg[r * ldx + k]), x1 = v_set1(xg[r * ldx + k + 1]);
                for (int j = 0; j < NT; j++) acc[r][j] = v_fma(x1, w1[j], v_fma(x0, w0[j], acc[r][j]));
            }
        }
        if (k < kk) {
            for (int j = 0; j < NT; j++) {
                const v16 w0 = load_one(format, tiles[j] + g * gbytes, k);
                for (int r = 0; r < R; r++) acc[r][j] = v_fma(v_set1(xg[r * ldx + k]), w0, acc[r][j]);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NT; j++) store_outputs(w, t0 + j, acc[r][j], y + r * ldy, accumulate);
}

/* Tiles t0 .. t0 + nt - 1 unpacked to floats, buffer[k][j][16]: the same values load_pair gives. */
static inline __attribute__((always_inline)) void unpack_tiles(const int format, const tw_matrix *w, int t0, int nt, float *buffer) {
    const int64_t gbytes = group_bytes(format), tbytes = tile_bytes(w);
    for (int j = 0; j < nt; j++) {
        const uint8_t *tile = w->data + (int64_t)(t0 + j) * tbytes;
        for (int g = 0; g * GROUP < w->k; g++) {
            const uint8_t *group = tile + g * gbytes;
            const int kk = w->k - g * GROUP < GROUP ? w->k - g * GROUP : GROUP;
            const v16 scale = group_scale(format, group), minimum = group_minimum(format, group);
            float *out = buffer + ((int64_t)g * GROUP * nt + j) * TILE;
            int k = 0;
            for (; k + 2 <= kk; k += 2) {
                v16 w0, w1;
                load_pair(format, group, k, scale, minimum, &w0, &w1);
                v_store(out + (int64_t)k * nt * TILE, w0);
                v_store(out + (int64_t)(k + 1) * nt * TILE, w1);
            }
            if (k < kk) v_store(out + (int64_t)k * nt * TILE, load_one(format, group, k));
        }
    }
}

static void unpack(const tw_matrix *w, int t0, int nt, float *buffer) {
    switch (w->format) {
    case TW_F32: unpack_tiles(TW_F32, w, t0, nt, buffer); break;
    case TW_BF16: unpack_tiles(TW_BF16, w, t0, nt, buffer); break;
    case TW_Q4: unpack_tiles(TW_Q4, w, t0, nt, buffer); break;
    default: unpack_tiles(TW_Q8, w, t0, nt, buffer); break;
    }
}

/* Many rows: R rows by NT unpacked tiles (buffer[k][NT][16]); the same sequence of FMAs per output
 * as direct_kernel, so the two paths agree bit for bit. */
static inline __attribute__((always_inline)) void buffered_kernel(const int R, const int NT, const tw_matrix *w, int t0,
                                                                  const float *buffer, const float *x, int64_t ldx, float *y,
                                                                  int64_t ldy, int accumulate) {
    v16 acc[8][2];
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NT; j++) acc[r][j] = v_zero();
    for (int k = 0; k < w->k; k++) {
        v16 wk[2];
        for (int j = 0; j < NT; j++) wk[j] = v_load(buffer + ((int64_t)k * NT + j) * TILE);
        for (int r = 0; r < R; r++) {
            const v16 xb = v_set1(x[r * ldx + k]);
            for (int j = 0; j < NT; j++) acc[r][j] = v_fma(xb, wk[j], acc[r][j]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int j = 0; j < NT; j++) store_outputs(w, t0 + j, acc[r][j], y + r * ldy, accumulate);
}

#if defined(__AVX512F__)
#define DIRECT_NT(R) ((R) <= 2 ? 4 : 2)
#define BUFFERED_R 8
#define BUFFERED_NT 2
#elif defined(__AVX2__)
#define DIRECT_NT(R) ((R) <= 2 ? 2 : 1)
#define BUFFERED_R 6
#define BUFFERED_NT 1
#else
#define DIRECT_NT(R) 1
#define BUFFERED_R 4
#define BUFFERED_NT 1
#endif
#define DIRECT_MAX_ROWS 4 /* beyond this, unpacking a tile block once per panel pays */

#define DIRECT_NAME(F, R, NT) direct_##F##_##R##_##NT
#define DEFINE_DIRECT(F, R, NT)                                                                                 \
    static void DIRECT_NAME(F, R, NT)(const tw_matrix *w, int t0, const float *x, int64_t ldx, float *y,     \
                                      int64_t ldy, int accumulate) {                                           \
        direct_kernel(F, R, NT, w, t0, x, ldx, y, ldy, accumulate);                                           \
    }
#define DEFINE_DIRECT_FORMAT(F)                                                                                 \
    DEFINE_DIRECT(F, 1, 1) DEFINE_DIRECT(F, 2, 1) DEFINE_DIRECT(F, 3, 1) DEFINE_DIRECT(F, 4, 1)                \
    DEFINE_DIRECT(F, 1, 2) DEFINE_DIRECT(F, 2, 2) DEFINE_DIRECT(F, 3, 2) DEFINE_DIRECT(F, 4, 2)                \
    DEFINE_DIRECT(F, 1, 4) DEFINE_DIRECT(F, 2, 4)
DEFINE_DIRECT_FORMAT(0)
DEFINE_DIRECT_FORMAT(1)
DEFINE_DIRECT_FORMAT(2)
DEFINE_DIRECT_FORMAT(3)

typedef void (*direct_fn)(const tw_matrix *, int, const float *, int64_t, float *, int64_t, int);
#define DIRECT_TABLE(F)                                                                                         \
    {{DIRECT_NAME(F, 1, 1), DIRECT_NAME(F, 1, 2), 0, DIRECT_NAME(F, 1, 4)},                                   \
     {DIRECT_NAME(F, 2, 1), DIRECT_NAME(F, 2, 2), 0, DIRECT_NAME(F, 2, 4)},                                   \
     {DIRECT_NAME(F, 3, 1), DIRECT_NAME(F, 3, 2), 0, 0},                                                      \
     {DIRECT_NAME(F, 4, 1), DIRECT_NAME(F, 4, 2), 0, 0}}
static const direct_fn DIRECT[4][4][4] = {DIRECT_TABLE(0), DIRECT_TABLE(1), DIRECT_TABLE(2), DIRECT_TABLE(3)};

#define BUFFERED_NAME(R, NT) buffered_##R##_##NT
#define DEFINE_BUFFERED(R, NT)                                                                                  \
    static void BUFFERED_NAME(R, NT)(const tw_matrix *w, int t0, const float *buffer, const float *x,          \
                                     int64_t ldx, float *y, int64_t ldy, int accumulate) {                     \
        buffered_kernel(R, NT, w, t0, buffer, x, ldx, y, ldy, accumulate);                                    \
    }
#define DEFINE_BUFFERED_NT(NT)                                                                                  \
    DEFINE_BUFFERED(1, NT) DEFINE_BUFFERED(2, NT) DEFINE_BUFFERED(3, NT) DEFINE_BUFFERED(4, NT)                \
    DEFINE_BUFFERED(5, NT) DEFINE_BUFFERED(6, NT) DEFINE_BUFFERED(7, NT) DEFINE_BUFFERED(8, NT)
DEFINE_BUFFERED_NT(1)
DEFINE_BUFFERED_NT(2)

typedef void (*buffered_fn)(const tw_matrix *, int, const float *, const float *, int64_t, float *, int64_t, int);
#define BUFFERED_ROW(NT)                                                                                        \
    {BUFFERED_NAME(1, NT), BUFFERED_NAME(2, NT), BUFFERED_NAME(3, NT), BUFFERED_NAME(4, NT),                  \
     BUFFERED_NAME(5, NT), BUFFERED_NAME(6, NT), BUFFERED_NAME(7, NT), BUFFERED_NAME(8, NT)}
static const buffered_fn BUFFERED[2][8] = {BUFFERED_ROW(1), BUFFERED_ROW(2)};

#define PANEL 64 /* rows that share one unpacking of a tile block */

/* Each pool thread's unpacking buffer, kept between calls (grown, never shrunk). */
static float *thread_buffer(size_t floats) {
    static __thread float *buffer = NULL;
    static __thread size_t capacity = 0;
    if (floats > capacity) {
        free(buffer);
        buffer = malloc(floats * sizeof(float));
        capacity = buffer ? floats : 0;
    }
    return buffer;
}

static void matmul_direct(tw_ctx *ctx, const tw_matrix *w, const float *x, int64_t ldx, int m, float *y, int64_t ldy,
                          int accumulate) {
    const int n_tiles = (w->n + TILE - 1) / TILE, nt = DIRECT_NT(m);
    const int n_blocks = (n_tiles + nt - 1) / nt;
    for (int64_t first, end; next_run(ctx, n_blocks, 4, &first, &end);) {
      for (int block = (int)first; block < end; block++) {
        const int t0 = block * nt, tiles = n_tiles - t0 < nt ? n_tiles - t0 : nt;
        if (tiles == nt) {
            DIRECT[w->format][m - 1][nt - 1](w, t0, x, ldx, y, ldy, accumulate);
        } else {
            for (int t = t0; t < t0 + tiles; t++) DIRECT[w->format][m - 1][0](w, t, x, ldx, y, ldy, accumulate);
        }
      }
    }
}

static void matmul_buffered(tw_ctx *ctx, const tw_matrix *w, const float *x, int64_t ldx, int m, float *y, int64_t ldy,
                            int accumulate) {
    const int n_tiles = (w->n + TILE - 1) / TILE, nt = BUFFERED_NT;
    const int n_blocks = (n_tiles + nt - 1) / nt, n_panels = (m + PANEL - 1) / PANEL;
    for (int64_t first, end; next_run(ctx, (int64_t)n_panels * n_blocks, 4, &first, &end);) {
        for (int64_t item = first; item < end; item++) {
            const int panel = (int)(item / n_blocks), block = (int)(item % n_blocks);
            const int t0 = block * nt, tiles = n_tiles - t0 < nt ? n_tiles - t0 : nt;
            const int row_end = (panel + 1) * PANEL < m ? (panel + 1) * PANEL : m;
            float *buffer = thread_buffer((size_t)((w->k + GROUP - 1) / GROUP * GROUP) * tiles * TILE);
            if (!buffer) abort();
            unpack(w, t0, tiles, buffer);
            for (int r0 = panel * PANEL; r0 < row_end; r0 += BUFFERED_R) {
                const int rows = row_end - r0 < BUFFERED_R ? row_end - r0 : BUFFERED_R;
                BUFFERED[tiles - 1][rows - 1](w, t0, buffer, x + (int64_t)r0 * ldx, ldx, y + (int64_t)r0 * ldy, ldy, accumulate);
            }
        }
    }
}

/* y[m][n] (+)= x[m][:] . W[n][:] + bias[n], shared by the job's threads; returns after a barrier.
 * Both paths compute every output with the same operations, so the row count never changes a value. */
static void matmul(tw_ctx *ctx, const tw_matrix *w, const float *x, int64_t ldx, int m, float *y, int64_t ldy,
                   int accumulate) {
    if (m <= DIRECT_MAX_ROWS) matmul_direct(ctx, w, x, ldx, m, y, ldy, accumulate);
    else matmul_buffered(ctx, w, x, ldx, m, y, ldy, accumulate);
    pool_barrier(ctx);
}

/* One row (output n) of a matrix, as floats: an embedding lookup. */
static void matrix_row(const tw_matrix *w, int64_t n, float *out) {
    float *buffer = thread_buffer((size_t)((w->k + GROUP - 1) / GROUP * GROUP) * TILE);
    if (!buffer) abort();
    unpack(w, (int)(n / TILE), 1, buffer);
    for (int k = 0; k < w->k; k++) out[k] = buffer[(int64_t)k * TILE + n % TILE];
}

