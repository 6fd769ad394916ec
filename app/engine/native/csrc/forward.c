/* tokenwire native kernels: the CPU forward pass of Llama-family and Gemma 2/3 models, row-invariant by construction.
 *
 * Every value is computed by one fixed sequence of float operations that depends only on its own
 * inputs: a matmul output accumulates over k in order with FMA (matmul.h), an attention output reads
 * exactly its own sequence's keys, norms and softmax sums reduce in one fixed tree (layers.h). Batch
 * size, padding, prompt chunking, thread count and vector width (AVX-512, AVX2 or none: v16.h)
 * change where and when a value is computed, never how, so a request's numbers do not depend on what
 * else the server is doing.
 *
 * A layer is Llama's (RMSNorm, attention, o accumulated into the fp32 residual stream, RMSNorm, gated
 * MLP, down accumulated) or, where it has pre_mlp_norm, Gemma's sandwich (the attention's and the MLP's
 * outputs each RMS-normed before they are added, the MLP's input normed by pre_mlp_norm). A layer with
 * a `window` lets a query at position p see positions max(0, p - window + 1) .. p of its row only (the
 * mask fused_llama.attention_mask builds); each layer reads its own RoPE table (Gemma 3's local and
 * global layers differ). The model sets the MLP's activation (SiLU or GELU's tanh form), a scale on
 * the embeddings, the scores' scale, and optional tanh soft-caps on the scores and the final logits
 * (Gemma 2): tanh is v_tanh (v16.h), one lane-wise routine for every build.
 *
 * Built by app/engine/native/build.py (plain C and pthreads: pool.h), called through ctypes by
 * app/engine/native/library.py; weight layouts in app/engine/native/weights.py.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "v16.h"
#include "v16i.h"
#include "pool.h"
#include "matmul.h"
#include "qmatmul.h"
#include "pack.h"
#include "layers.h"

#define TW_ABI_VERSION 6
enum { TW_FLOAT_ARITHMETIC = 0, TW_INT8_ACTIVATIONS = 1 };
enum { TW_SILU = 0, TW_GELU_TANH = 1 };

typedef struct {
    const float *input_norm, *post_norm; /* post_norm: before the MLP (Llama), after attention (Gemma) */
    const float *q_norm, *k_norm; /* [head_dim] each, or NULL: an RMSNorm over each head of q and k before RoPE (Qwen3, Gemma 3) */
    /* Gemma's: the MLP's input norm and its output's norm; NULL for Llama's layer (then post_norm is
     * the MLP's input norm and the attention's and MLP's outputs go into the residual unnormed). */
    const float *pre_mlp_norm, *post_mlp_norm;
    const float *rope_cos, *rope_sin; /* this layer's RoPE table [rope_positions][head_dim / 2] */
    int32_t window, reserved; /* window: a sliding layer's (positions), 0 = full attention */
    tw_matrix qkv, o, gate_up, down;
} tw_layer;

typedef struct {
    int32_t n_layers, hidden, n_heads, n_kv_heads, head_dim, intermediate, vocab, kv_format;
    float eps, attention_scale;
    int32_t rope_positions, arithmetic; /* TW_INT8_ACTIVATIONS: Q4/Q8 matrices take 8-bit activations */
    int32_t activation, reserved;      /* TW_SILU or TW_GELU_TANH: the MLP's gate */
    float embed_scale;                 /* the embeddings times this (0 or 1: as they are) */
    float attention_cap, final_cap;    /* > 0: tanh(x / cap) * cap on the scores (after the scale) / the logits */
    const float *final_norm;
    tw_matrix embed, lm_head;
    const tw_layer *layers;
} tw_model;

typedef struct {
    int32_t n_tokens, n_rows, n_logits, n_threads;
    const int64_t *token_ids;     /* [n_tokens] */
    const int64_t *positions;     /* [n_tokens]: each token's position in its sequence */
    const int64_t *token_rows;    /* [n_tokens]: each token's KV row */
    const int64_t *first_columns; /* [n_rows]: the KV column holding a row's position 0 */
    const int64_t *logit_tokens;  /* [n_logits]: the tokens whose logits are wanted, ascending */
    const int64_t *layer_offsets; /* [n_layers]: the logical KV column held in each layer's buffer column 0
                                     (a token's K/V sits at column first_columns[row] + position - offset) */
    void *const *keys;            /* [n_layers] buffers [rows][kv_heads][columns][head_dim] */
    void *const *values;
    const int64_t *kv_row_strides, *kv_head_strides; /* [n_layers], in elements: a layer keeping fewer
                                                        columns (a sliding one) has buffers of its own width */
    float *logits;                /* [n_logits][vocab] */
} tw_batch;

typedef struct {
    const tw_model *m;
    const tw_batch *b;
    float *hidden, *normed, *qkv, *attended, *gate_up, *activated, *scores;
    int64_t scores_per_thread;
    quantized_rows quantized; /* room for any matmul's input, 8-bit */
} forward_job;

/* y (+)= x W^T + b through the path the model's arithmetic and W's format call for. */
static void project(tw_ctx *ctx, const forward_job *s, const tw_matrix *w, const float *x, int64_t ldx, int m, float *y,
                    int64_t ldy, int accumulate) {
    if (s->m->arithmetic == TW_INT8_ACTIVATIONS && w->format >= TW_Q4) {
        quantized_rows q = s->quantized;
        q.k = w->k;
        q.groups = w->k / GROUP;
        quantize_rows(ctx, x, ldx, m, &q);
        qmatmul(ctx, w, &q, m, y, ldy, accumulate);
    } else {
        matmul(ctx, w, x, ldx, m, y, ldy, accumulate);
    }
}

/* The per-head q/k norms (where the model has them) and RoPE on q and k, k and v into the cache at
 * each token's column, then attention. */
static void attention_layer(tw_ctx *ctx, const forward_job *s, int layer) {
    const tw_model *m = s->m;
    const tw_batch *b = s->b;
    const tw_layer *l = &m->layers[layer];
    const float *q_norm = l->q_norm, *k_norm = l->k_norm;
    const int64_t offset = b->layer_offsets[layer];
    const int64_t row_stride = b->kv_row_strides[layer], head_stride = b->kv_head_strides[layer];
    const int window = l->window;
    const int n_tokens = b->n_tokens, heads = m->n_heads, kv_heads = m->n_kv_heads, dim = m->head_dim, half = dim / 2;
    const int qkv_width = (heads + 2 * kv_heads) * dim, group = heads / kv_heads;
    const int kv_bytes = m->kv_format == TW_KV_F32 ? 4 : 2;
    char *keys = (char *)b->keys[layer], *values = (char *)b->values[layer];
    for (int64_t first, end; next_run(ctx, n_tokens, 4, &first, &end);)
      for (int64_t i = first; i < end; i++) {
        float *row = s->qkv + i * qkv_width;
        const int64_t position = b->positions[i], kv_row = b->token_rows[i];
        const float *cos_row = l->rope_cos + position * half, *sin_row = l->rope_sin + position * half;
        for (int h = 0; h < heads + kv_heads; h++) {
            const float *head_norm = h < heads ? q_norm : k_norm;
            if (head_norm) rms_norm(row + h * dim, head_norm, dim, m->eps, row + h * dim); /* in place: reads x[i] before writing it */
            rotate(row + h * dim, cos_row, sin_row, half);
        }
        const int64_t column = b->first_columns[kv_row] + position - offset;
        for (int h = 0; h < kv_heads; h++) {
            const int64_t at = (kv_row * row_stride + h * head_stride + column * dim) * kv_bytes;
            store_kv(keys + at, row + (heads + h) * dim, dim, m->kv_format);
            store_kv(values + at, row + (heads + kv_heads + h) * dim, dim, m->kv_format);
        }
      }
    pool_barrier(ctx);
    /* Work items: (token, KV head, a run of at most 4 of its query heads), handed out one at a time:
     * their cost grows with the position. */
    const int runs = (group + 3) / 4;
    const int64_t items = (int64_t)n_tokens * kv_heads * runs;
    float *scores = s->scores + (int64_t)ctx->index * s->scores_per_thread * 4;
    for (int64_t item, last; next_run(ctx, items, (int)((items + ctx->count - 1) / ctx->count), &item, &last);) {
        const int64_t i = item / (kv_heads * runs);
        const int kv_head = (int)(item / runs % kv_heads), run = (int)(item % runs);
        const int firsth = run * 4, count = group - firsth < 4 ? group - firsth : 4, h = kv_head * group + firsth;
        const int64_t kv_row = b->token_rows[i], position = b->positions[i];
        /* A window starts the keys later; nothing else changes. */
        const int64_t first = window && position - window + 1 > 0 ? position - window + 1 : 0;
        const int64_t column = b->first_columns[kv_row] + first - offset;
        const int64_t start = (kv_row * row_stride + kv_head * head_stride + column * dim) * kv_bytes;
        attend(s->qkv + i * qkv_width + h * dim, count, keys + start, values + start, (int)(position - first + 1), dim,
               m->attention_scale, m->attention_cap, m->kv_format, scores, s->scores_per_thread,
               s->attended + (i * heads + h) * dim);
    }
    pool_barrier(ctx);
}

static void norm_rows(tw_ctx *ctx, const float *x, const float *weight, int n_rows, int width, float eps, float *out) {
    for (int64_t first, end; next_run(ctx, n_rows, 4, &first, &end);)
        for (int64_t i = first; i < end; i++) rms_norm(x + i * width, weight, width, eps, out + i * width);
    pool_barrier(ctx);
}

/* Keep only the rows `keep` of x (in place, in order; `keep` ascending): past the last layer's KV
 * write, only the tokens whose logits are wanted go on. */
static void compact_rows(tw_ctx *ctx, float *x, int width, const int64_t *keep, int n_keep) {
    if (ctx->index == 0)
        for (int i = 0; i < n_keep; i++)
            if (keep[i] != i) memmove(x + (int64_t)i * width, x + keep[i] * width, (size_t)width * sizeof(float));
    pool_barrier(ctx);
}

/* Gemma's sandwich: x = rms_norm(x) in place, then hidden += x, row by row. */
static void add_norm_rows(tw_ctx *ctx, float *x, const float *weight, int n_rows, int width, float eps, float *hidden) {
    for (int64_t first, end; next_run(ctx, n_rows, 4, &first, &end);)
        for (int64_t i = first; i < end; i++) {
            float *row = x + i * width, *into = hidden + i * width;
            rms_norm(row, weight, width, eps, row);
            for (int j = 0; j < width; j++) into[j] = into[j] + row[j];
        }
    pool_barrier(ctx);
}

static void gate_rows(tw_ctx *ctx, const float *gate_up, int n_rows, int inter, int activation, float *out) {
    for (int64_t first, end; next_run(ctx, n_rows, 4, &first, &end);)
        for (int64_t i = first; i < end; i++) {
            if (activation == TW_GELU_TANH)
                gelu_tanh_and_multiply(gate_up + i * 2 * inter, gate_up + i * 2 * inter + inter, inter, out + i * inter);
            else
                silu_and_multiply(gate_up + i * 2 * inter, gate_up + i * 2 * inter + inter, inter, out + i * inter);
        }
    pool_barrier(ctx);
}

/* x = tanh(x / cap) * cap over rows of width n (Gemma 2's final logits). */
static void cap_rows(tw_ctx *ctx, float *x, int n_rows, int width, float cap) {
    for (int64_t first, end; next_run(ctx, n_rows, 4, &first, &end);)
        for (int64_t i = first; i < end; i++) soft_cap(x + i * width, width, cap);
    pool_barrier(ctx);
}

static void run_layers(tw_ctx *ctx, const forward_job *s) {
    const tw_model *m = s->m;
    const tw_batch *b = s->b;
    const int hidden = m->hidden, inter = m->intermediate, attended = m->n_heads * m->head_dim;
    int n = b->n_tokens;
    for (int layer = 0; layer < m->n_layers; layer++) {
        const tw_layer *l = &m->layers[layer];
        norm_rows(ctx, s->hidden, l->input_norm, n, hidden, m->eps, s->normed);
        project(ctx, s, &l->qkv, s->normed, hidden, n, s->qkv, l->qkv.n, 0);
        attention_layer(ctx, s, layer);
        if (layer == m->n_layers - 1) {
            compact_rows(ctx, s->hidden, hidden, b->logit_tokens, b->n_logits);
            compact_rows(ctx, s->attended, attended, b->logit_tokens, b->n_logits);
            n = b->n_logits;
        }
        if (!l->pre_mlp_norm) { /* Llama's layer */
            project(ctx, s, &l->o, s->attended, attended, n, s->hidden, hidden, 1);
            norm_rows(ctx, s->hidden, l->post_norm, n, hidden, m->eps, s->normed);
            project(ctx, s, &l->gate_up, s->normed, hidden, n, s->gate_up, 2 * inter, 0);
            gate_rows(ctx, s->gate_up, n, inter, m->activation, s->activated);
            project(ctx, s, &l->down, s->activated, inter, n, s->hidden, hidden, 1);
        } else { /* Gemma's: each output normed (in `normed`, free until the MLP's input norm) before it is added */
            project(ctx, s, &l->o, s->attended, attended, n, s->normed, hidden, 0);
            add_norm_rows(ctx, s->normed, l->post_norm, n, hidden, m->eps, s->hidden);
            norm_rows(ctx, s->hidden, l->pre_mlp_norm, n, hidden, m->eps, s->normed);
            project(ctx, s, &l->gate_up, s->normed, hidden, n, s->gate_up, 2 * inter, 0);
            gate_rows(ctx, s->gate_up, n, inter, m->activation, s->activated);
            if (l->post_mlp_norm) {
                project(ctx, s, &l->down, s->activated, inter, n, s->normed, hidden, 0);
                add_norm_rows(ctx, s->normed, l->post_mlp_norm, n, hidden, m->eps, s->hidden);
            } else {
                project(ctx, s, &l->down, s->activated, inter, n, s->hidden, hidden, 1);
            }
        }
    }
}

static void forward_all(tw_ctx *ctx, void *arg) {
    const forward_job *s = arg;
    const tw_model *m = s->m;
    const tw_batch *b = s->b;
    for (int64_t first, end; next_run(ctx, b->n_tokens, 4, &first, &end);)
        for (int64_t i = first; i < end; i++) {
            float *row = s->hidden + i * m->hidden;
            matrix_row(&m->embed, b->token_ids[i], row);
            if (m->embed_scale != 0.0f && m->embed_scale != 1.0f)
                for (int j = 0; j < m->hidden; j++) row[j] = row[j] * m->embed_scale;
        }
    pool_barrier(ctx);
    run_layers(ctx, s);
    norm_rows(ctx, s->hidden, m->final_norm, b->n_logits, m->hidden, m->eps, s->normed);
    project(ctx, s, &m->lm_head, s->normed, m->hidden, b->n_logits, b->logits, m->vocab, 0);
    if (m->final_cap > 0.0f) cap_rows(ctx, b->logits, b->n_logits, m->vocab, m->final_cap);
}

const char *tw_isa(void) { return TW_ISA; }

int tw_abi_version(void) { return TW_ABI_VERSION; }

/* The forward pass over a batch of tokens; logits of b->logit_tokens into b->logits.
 * 0 on success; 1 a malformed batch, 2 a token or position out of range, 3 out of memory. */
int tw_forward(const tw_model *m, const tw_batch *b) {
    const int n = b->n_tokens, width = (m->n_heads + 2 * m->n_kv_heads) * m->head_dim;
    /* A layer takes at most 16 shared loops (13, Gemma's 15, with 8-bit activations), the head a few more. */
    if (n <= 0 || b->n_logits <= 0 || b->n_logits > n || m->n_layers > (TW_MAX_STAGES - 8) / 16) return 1;
    if (m->head_dim % 16 || !(m->head_dim <= 128 || m->head_dim == 256)) return 1; /* attend()'s sizes */
    if (m->activation != TW_SILU && m->activation != TW_GELU_TANH) return 1;
    for (int i = 0; i < m->n_layers; i++)
        if (m->layers[i].window < 0 || !m->layers[i].rope_cos || !m->layers[i].rope_sin) return 1;
    int64_t longest = 1;
    for (int i = 0; i < n; i++) {
        if (b->positions[i] < 0 || b->positions[i] >= m->rope_positions || b->token_ids[i] < 0 || b->token_ids[i] >= m->embed.n)
            return 2;
        if (b->positions[i] + 1 > longest) longest = b->positions[i] + 1;
    }
    for (int i = 0; i < b->n_logits; i++)
        if (b->logit_tokens[i] < 0 || b->logit_tokens[i] >= n || (i && b->logit_tokens[i] <= b->logit_tokens[i - 1])) return 1;
    const int threads = b->n_threads < 1 ? 1 : b->n_threads > TW_MAX_THREADS ? TW_MAX_THREADS : b->n_threads;
    forward_job s = {m, b, NULL, NULL, NULL, NULL, NULL, NULL, NULL, (longest + 15) / 16 * 16, {0}};
    int64_t widest = m->hidden > m->intermediate ? m->hidden : m->intermediate;
    widest = widest > (int64_t)m->n_heads * m->head_dim ? widest : (int64_t)m->n_heads * m->head_dim;
    s.hidden = malloc(sizeof(float) * (size_t)n * m->hidden);
    s.normed = malloc(sizeof(float) * (size_t)n * m->hidden);
    s.qkv = malloc(sizeof(float) * (size_t)n * width);
    s.attended = malloc(sizeof(float) * (size_t)n * m->n_heads * m->head_dim);
    s.gate_up = malloc(sizeof(float) * (size_t)n * 2 * m->intermediate);
    s.activated = malloc(sizeof(float) * (size_t)n * m->intermediate);
    s.scores = malloc(sizeof(float) * (size_t)threads * s.scores_per_thread * 4);
    s.quantized.levels = malloc((size_t)n * widest);
    s.quantized.scales = malloc(sizeof(float) * (size_t)n * (widest / GROUP + 1));
    s.quantized.offsets = malloc(sizeof(float) * (size_t)n * (widest / GROUP + 1));
    int status = 3;
    if (s.hidden && s.normed && s.qkv && s.attended && s.gate_up && s.activated && s.scores && s.quantized.levels &&
        s.quantized.scales && s.quantized.offsets)
        status = pool_run(threads, forward_all, &s) ? 0 : 3;
    free(s.hidden); free(s.normed); free(s.qkv); free(s.attended); free(s.gate_up); free(s.activated); free(s.scores);
    free(s.quantized.levels); free(s.quantized.scales); free(s.quantized.offsets);
    return status;
}

typedef struct {
    const tw_matrix *w;
    const float *x;
    int m, arithmetic;
    float *y;
    quantized_rows quantized;
} matmul_job;

static void matmul_all(tw_ctx *ctx, void *arg) {
    matmul_job *job = arg;
    if (job->arithmetic == TW_INT8_ACTIVATIONS) {
        quantize_rows(ctx, job->x, job->w->k, job->m, &job->quantized);
        qmatmul(ctx, job->w, &job->quantized, job->m, job->y, job->w->n, 0);
    } else {
        matmul(ctx, job->w, job->x, job->w->k, job->m, job->y, job->w->n, 0);
    }
}

/* y[m][n] = x[m][:] . W[n][:] (+ bias): one matrix alone, for tests and checks; `arithmetic` as a
 * model's (8-bit activations for Q4/Q8 only). 0 on success. */
int tw_matmul(const tw_matrix *w, const float *x, int m, float *y, int threads, int arithmetic) {
    const int quantize = arithmetic == TW_INT8_ACTIVATIONS && w->format >= TW_Q4 && w->k % GROUP == 0;
    matmul_job job = {w, x, m, quantize ? TW_INT8_ACTIVATIONS : TW_FLOAT_ARITHMETIC, y,
                      {NULL, NULL, NULL, w->k, w->k / GROUP}};
    if (quantize) {
        job.quantized.levels = malloc((size_t)m * w->k);
        job.quantized.scales = malloc(sizeof(float) * (size_t)m * job.quantized.groups);
        job.quantized.offsets = malloc(sizeof(float) * (size_t)m * job.quantized.groups);
    }
    const int ok = (!quantize || (job.quantized.levels && job.quantized.scales && job.quantized.offsets)) &&
                   pool_run(threads, matmul_all, &job);
    free(job.quantized.levels); free(job.quantized.scales); free(job.quantized.offsets);
    return ok ? 0 : 3;
}

/* Row n of a matrix as floats (embedding lookups; tests). */
void tw_matrix_row(const tw_matrix *w, int64_t n, float *out) { matrix_row(w, n, out); }
