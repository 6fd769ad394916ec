/* pool.h: the kernels' own threads. A job runs on all of them at once; its stages meet at barriers.
 *
 * Not OpenMP: libgomp cuts its spin-before-sleep to 100 turns whenever it manages more threads than
 * there are CPUs, which a server reaches as soon as a second Python thread (the loader, the model
 * thread) has called into it; a forward pass's ~300 barriers then each cost a futex sleep and
 * wake-up (9 ms per token instead of 5.5 on 2 cores, measured). These threads spin for a bounded
 * while (tens of microseconds: enough for a stage's imbalance, short enough to give the core back to
 * the event loop), then sleep. Which thread computes what never changes a value (forward.c). */
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#endif

#define TW_MAX_THREADS 256
#define TW_MAX_STAGES 4096 /* shared loops per job (about eight per layer in a forward pass) */
/* How long a waiting thread spins before it sleeps: at a barrier, longer than a stage's usual
 * imbalance; between jobs, shorter (the caller's Python work between forward passes takes longer,
 * and the core is better left to the event loop). */
#define TW_BARRIER_SPIN_NS 100000
#define TW_IDLE_SPIN_NS 20000

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static void futex_wait(_Atomic uint32_t *word, uint32_t value) {
#if defined(__linux__)
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_PRIVATE, value, NULL, NULL, 0);
#else
    (void)word; (void)value;
    sched_yield();
#endif
}

static void futex_wake(_Atomic uint32_t *word) {
#if defined(__linux__)
    syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

typedef struct tw_pool tw_pool;
typedef struct {
    tw_pool *pool;
    int index, count; /* this thread's place in the job, and how many share it */
    int stage;        /* the next dynamically shared loop's counter */
} tw_ctx;
typedef void (*tw_job)(tw_ctx *ctx, void *arg);

struct tw_pool {
    int count;
    pthread_t threads[TW_MAX_THREADS];
    _Atomic uint32_t generation; /* bumped to start a job; workers sleep on it */
    _Atomic uint32_t finished;   /* workers done with the current job; the caller sleeps on it */
    _Atomic uint32_t arrived, phase; /* the barrier */
    _Atomic int sleepers;        /* threads inside futex_wait: wakers skip the syscall when none */
    tw_job job;
    void *arg;
    int stop;
    _Atomic int64_t next[TW_MAX_STAGES];
};

static inline int64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Until *word != value: spin for up to spin_ns, then sleep on it. */
static void wait_for_change(tw_pool *p, _Atomic uint32_t *word, uint32_t value, int64_t spin_ns) {
    const int64_t deadline = monotonic_ns() + spin_ns;
    for (int turn = 1;; turn++) {
        if (atomic_load_explicit(word, memory_order_acquire) != value) return;
        cpu_relax();
        if (turn % 64 == 0 && monotonic_ns() > deadline) break;
    }
    /* seq_cst here and in the wakers' store-then-check: one of the two always sees the other. */
    atomic_fetch_add(&p->sleepers, 1);
    while (atomic_load(word) == value) futex_wait(word, value);
    atomic_fetch_sub(&p->sleepers, 1);
}

static void wake_sleepers(tw_pool *p, _Atomic uint32_t *word) {
    if (atomic_load(&p->sleepers)) futex_wake(word);
}

/* Every thread of the job waits here until all have arrived. */
static void pool_barrier(tw_ctx *ctx) {
    tw_pool *p = ctx->pool;
    if (ctx->count == 1) return;
    const uint32_t phase = atomic_load_explicit(&p->phase, memory_order_acquire);
    if (atomic_fetch_add_explicit(&p->arrived, 1, memory_order_acq_rel) == (uint32_t)ctx->count - 1) {
        atomic_store_explicit(&p->arrived, 0, memory_order_relaxed);
        atomic_store(&p->phase, phase + 1);
        wake_sleepers(p, &p->phase);
    } else {
        wait_for_change(p, &p->phase, phase, TW_BARRIER_SPIN_NS);
    }
}

/* The next run of items [begin, end) of a loop over [0, total) that the job's threads share: a few
 * runs per thread (`runs_per_thread`; more for items of uneven cost), handed out in order to whichever
 * thread asks first, so a thread the OS pauses (for the event loop, another process) leaves the rest
 * of its share to the others instead of holding up the barrier. 0 once the loop is done. Every
 * thread runs the same loops in the same order: ctx->stage numbers them. */
static inline int next_run(tw_ctx *ctx, int64_t total, int runs_per_thread, int64_t *begin, int64_t *end) {
    const int64_t runs = (int64_t)ctx->count * runs_per_thread, size = (total + runs - 1) / runs;
    const int64_t first = size ? atomic_fetch_add_explicit(&ctx->pool->next[ctx->stage], size, memory_order_relaxed) : 0;
    if (first >= total) {
        ctx->stage++;
        return 0;
    }
    *begin = first;
    *end = first + size < total ? first + size : total;
    return 1;
}

/* Every thread computes in one floating-point mode (round to nearest, denormals kept, exceptions
 * masked), whatever its creator or caller set: a flush-to-zero flag inherited by some threads only
 * (torch.set_flush_denormal, a fast-math library) would make a value depend on who computed it. */
#if defined(__x86_64__) || defined(__i386__)
typedef unsigned int fp_mode;
static inline fp_mode fp_mode_enter(void) {
    const fp_mode saved = _mm_getcsr();
    _mm_setcsr(0x1F80);
    return saved;
}
static inline void fp_mode_leave(fp_mode saved) { _mm_setcsr(saved); }
#else
typedef int fp_mode; /* other CPUs: their default mode is assumed (no build for them sets another) */
static inline fp_mode fp_mode_enter(void) { return 0; }
static inline void fp_mode_leave(fp_mode saved) { (void)saved; }
#endif

static void run_job(tw_ctx *ctx, tw_job job, void *arg) {
    const fp_mode saved = fp_mode_enter();
    job(ctx, arg);
    fp_mode_leave(saved);
}

static void *worker_main(void *arg) {
    tw_ctx ctx = *(tw_ctx *)arg;
    free(arg);
    tw_pool *p = ctx.pool;
    uint32_t seen = 0;
    for (;;) {
        wait_for_change(p, &p->generation, seen, TW_IDLE_SPIN_NS);
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        if (p->stop) return NULL;
        ctx.stage = 0;
        run_job(&ctx, p->job, p->arg);
        atomic_fetch_add(&p->finished, 1);
        wake_sleepers(p, &p->finished);
    }
}

static void pool_free(tw_pool *p) {
    p->stop = 1;
    atomic_fetch_add(&p->generation, 1);
    futex_wake(&p->generation);
    for (int i = 1; i < p->count; i++) pthread_join(p->threads[i], NULL);
    free(p);
}

static tw_pool *pool_new(int count) {
    tw_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->count = count;
    for (int i = 1; i < count; i++) {
        tw_ctx *ctx = malloc(sizeof *ctx);
        if (ctx) *ctx = (tw_ctx){p, i, count, 0};
        if (!ctx || pthread_create(&p->threads[i], NULL, worker_main, ctx) != 0) {
            free(ctx);
            p->count = i; /* the ones started so far: stop them and give up */
            pool_free(p);
            return NULL;
        }
    }
    return p;
}

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static tw_pool *the_pool;

/* Run `job` on `threads` threads (the caller is one of them); one job at a time per process. */
static int pool_run(int threads, tw_job job, void *arg) {
    threads = threads < 1 ? 1 : threads > TW_MAX_THREADS ? TW_MAX_THREADS : threads;
    pthread_mutex_lock(&pool_lock);
    if (the_pool && the_pool->count != threads) {
        pool_free(the_pool);
        the_pool = NULL;
    }
    if (!the_pool) the_pool = pool_new(threads);
    tw_pool *p = the_pool;
    if (!p) {
        pthread_mutex_unlock(&pool_lock);
        return 0;
    }
    p->job = job;
    p->arg = arg;
    for (int i = 0; i < TW_MAX_STAGES; i++) atomic_store_explicit(&p->next[i], 0, memory_order_relaxed);
    atomic_store(&p->finished, 0);
    atomic_fetch_add(&p->generation, 1);
    wake_sleepers(p, &p->generation);
    tw_ctx ctx = {p, 0, p->count, 0};
    run_job(&ctx, job, arg);
    for (uint32_t done; (done = atomic_load_explicit(&p->finished, memory_order_acquire)) != (uint32_t)p->count - 1;)
        wait_for_change(p, &p->finished, done, TW_BARRIER_SPIN_NS);
    pthread_mutex_unlock(&pool_lock);
    return 1;
}
