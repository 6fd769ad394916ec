/* pack.h: GGUF's Q4_1 and Q8_0 grids, found exactly (or made, when asked) in fp32 weights, packed in
 * matmul.h's layout. */
static inline uint16_t f32_to_f16(float f) {
    _Float16 h = (_Float16)f; /* round to nearest even, as torch's .half() */
    uint16_t bits;
    memcpy(&bits, &h, 2);
    return bits;
}

static inline float f16_bits_to_f32(uint16_t bits) {
    _Float16 h;
    memcpy(&h, &bits, 2);
    return (float)h;
}

/* One group of 32 inputs of one output: its scale (and minimum) and levels. Returns 0 when `exact`
 * is asked and some weight is not level * scale (+ minimum) bit for bit. */
static int grid_group(const float *x, int format, int exact, uint16_t *scale, uint16_t *minimum, int8_t *levels) {
    float low = x[0], high = x[0], largest = fabsf(x[0]);
    for (int i = 1; i < GROUP; i++) {
        low = x[i] < low ? x[i] : low;
        high = x[i] > high ? x[i] : high;
        largest = fabsf(x[i]) > largest ? fabsf(x[i]) : largest;
    }
    *scale = f32_to_f16(format == TW_Q4 ? (high - low) / 15.0f : largest / 127.0f);
    *minimum = format == TW_Q4 ? f32_to_f16(low) : 0;
    const float step = f16_bits_to_f32(*scale), base = f16_bits_to_f32(*minimum);
    if (!isfinite(step) || !isfinite(base)) return 0;
    const float inverse = step > 0 ? 1.0f / step : 0.0f, top = format == TW_Q4 ? 15.0f : 127.0f;
    const float bottom = format == TW_Q4 ? 0.0f : -127.0f;
    int off_grid = 0;
    for (int i = 0; i < GROUP; i++) { /* branch-free, so it vectorizes */
        const float rounded = rintf((x[i] - base) * inverse);
        const float level = rounded < bottom ? bottom : rounded > top ? top : rounded;
        off_grid |= fmaf(level, step, base) != x[i];
        levels[i] = (int8_t)level;
    }
    return !(exact && off_grid);
}

typedef struct {
    const float *w;
    int n, k, format, exact;
    uint8_t *out;
    _Atomic int ok;
} pack_job;

static void pack_tiles(tw_ctx *ctx, void *arg) {
    pack_job *job = arg;
    const float *w = job->w;
    const int n = job->n, k = job->k, format = job->format, exact = job->exact;
    const int tiles = (n + TILE - 1) / TILE, groups = k / GROUP;
    const int64_t gbytes = group_bytes(format);
    for (int64_t first, end; next_run(ctx, tiles, 4, &first, &end);) {
      for (int t = (int)first; t < end; t++) {
        for (int g = 0; g < groups; g++) {
            if (!atomic_load_explicit(&job->ok, memory_order_relaxed)) continue;
            uint8_t *group = job->out + ((int64_t)t * groups + g) * gbytes;
            uint16_t scales[TILE] = {0}, minimums[TILE] = {0};
            int8_t levels[TILE][GROUP];
            memset(levels, 0, sizeof levels);
            for (int lane = 0; lane < TILE && t * TILE + lane < n; lane++) {
                const float *x = w + (int64_t)(t * TILE + lane) * k + g * GROUP;
                if (!grid_group(x, format, exact, &scales[lane], &minimums[lane], levels[lane]))
                    atomic_store_explicit(&job->ok, 0, memory_order_relaxed);
            }
            memcpy(group, scales, sizeof scales);
            if (format == TW_Q4) {
                int16_t sums[TILE] = {0};
                for (int lane = 0; lane < TILE; lane++)
                    for (int i = 0; i < GROUP; i++) sums[lane] += levels[lane][i];
                memcpy(group + Q4_MINIMUMS, minimums, sizeof minimums);
                memcpy(group + Q4_SUMS, sums, sizeof sums);
                for (int block = 0; block < GROUP / 8; block++)
                    for (int lane = 0; lane < TILE; lane++)
                        for (int e = 0; e < 4; e++)
                            group[Q4_LEVELS + 64 * block + 4 * lane + e] =
                                (uint8_t)(levels[lane][8 * block + e] | (levels[lane][8 * block + 4 + e] << 4));
            } else {
                for (int quad = 0; quad < GROUP / 4; quad++)
                    for (int lane = 0; lane < TILE; lane++)
                        for (int e = 0; e < 4; e++)
                            group[Q8_LEVELS + 64 * quad + 4 * lane + e] = (uint8_t)levels[lane][4 * quad + e];
            }
        }
      }
    }
}

/* w [n][k] fp32 (k % 32 == 0) packed as Q4 or Q8 into out, on `threads` threads. Returns 1, or 0 when
 * `exact` is asked and the weights do not lie on that grid (out is then incomplete); -1 without threads. */
int tw_pack_grid(const float *w, int n, int k, int format, int exact, uint8_t *out, int threads) {
    pack_job job = {w, n, k, format, exact, out, 1};
    if (!pool_run(threads, pack_tiles, &job)) return -1;
    return atomic_load(&job.ok);
}
