/*
 * Host test harness for kernels/sampling_common.h: runs the per-row algorithms on the CPU with
 * a thread block emulated by POSIX threads (one OS thread per block thread, a pthread barrier
 * for the block barrier, static arrays for the block's shared memory). Built by
 * tests/host_harness.rs, which drives it, as C (warp width 1) and as C++ with -DSK_HOST_WARP=4
 * (the warp-level paths of the block reductions; thread counts must then be multiples of 4).
 *
 * Protocol (native-endian binary on stdin / stdout), one command per run:
 *   u32 command, then
 *   1 filter:    u32 rows, vocab, threads; f32 logits[rows*vocab]; f32 params[rows*8]
 *                -> f32 out[rows*vocab]
 *   2 sample:    u32 rows, vocab, threads, seed_lo, seed_hi, step_lo, step_hi;
 *                f32 logits[rows*vocab]; f32 params[rows*8]; u32 row_ids[rows]
 *                -> f32 out[rows*2]
 *   3 penalties: u32 rows, vocab, width, threads, has_bias; f32 logits[rows*vocab];
 *                u32 tokens[rows*width]; u32 lens[rows]; f32 params[rows*8];
 *                f32 bias[vocab] when has_bias -> f32 out[rows*vocab]
 *   4 philox:    u32 counter[4], key[2] -> u32 out[4]
 *   5 uniform:   u32 n; n x u32 (seed_lo, seed_hi, step_lo, step_hi, row_id) -> f32 u[n]
 * Exit status 0 on success; a message on stderr and status 2 on bad input.
 */
#if !defined(__cplusplus) && !defined(_POSIX_C_SOURCE)
#define _POSIX_C_SOURCE 200809L
#endif
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define SK_MAX_THREADS 64u
static pthread_barrier_t g_barrier;
static void sk_host_barrier(void) { pthread_barrier_wait(&g_barrier); }

/* Built with -DSK_HOST_WARP=N (N > 1): warps of N threads, emulated through these. */
#if defined(SK_HOST_WARP) && SK_HOST_WARP > 1
#ifdef __cplusplus
static thread_local unsigned g_tid;
#else
static _Thread_local unsigned g_tid;
#endif
static unsigned sk_host_tid(void) { return g_tid; }
static float sk_host_lane_f[SK_MAX_THREADS];
static unsigned sk_host_lane_u[SK_MAX_THREADS];
#define SET_TID(t) (g_tid = (t))
#else
#define SET_TID(t) ((void)(t))
#endif

#include "sampling_common.h"

static float g_fred[SK_FRED_LEN];
static unsigned g_ured[SK_URED_LEN];

enum { CMD_FILTER = 1, CMD_SAMPLE = 2, CMD_PENALTIES = 3, CMD_PHILOX = 4, CMD_UNIFORM = 5 };

typedef struct {
    int cmd;
    unsigned rows, vocab, width, threads, has_bias;
    unsigned seed_lo, seed_hi, step_lo, step_hi;
    const float* logits;
    const float* params;
    const unsigned* row_ids;
    const unsigned* tokens;
    const unsigned* lens;
    const float* bias;
    float* out;
} job_t;

typedef struct {
    const job_t* job;
    unsigned tid;
} worker_t;

static void die(const char* msg) {
    fprintf(stderr, "harness: %s\n", msg);
    exit(2);
}

static void read_exact(void* dst, size_t n) {
    if (n && fread(dst, 1, n, stdin) != n) die("short input");
}

static unsigned read_u32(void) {
    unsigned v;
    read_exact(&v, sizeof v);
    return v;
}

static void* read_array(size_t count, size_t elem) {
    void* p = malloc(count * elem + 1);
    if (!p) die("out of memory");
    read_exact(p, count * elem);
    return p;
}

static void write_exact(const void* src, size_t n) {
    if (n && fwrite(src, 1, n, stdout) != n) die("short output");
}

static void* worker(void* arg) {
    const worker_t* w = (const worker_t*)arg;
    const job_t* j = w->job;
    SET_TID(w->tid);
    for (unsigned row = 0; row < j->rows; ++row) {
        const float* x = j->logits + (size_t)row * j->vocab;
        const float* prm = j->params + (size_t)row * 8u;
        if (j->cmd == CMD_FILTER) {
            sk_filter_row(x, prm, j->out + (size_t)row * j->vocab, j->vocab, g_fred, g_ured,
                          w->tid, j->threads);
        } else if (j->cmd == CMD_SAMPLE) {
            sk_sample_row(x, prm, j->row_ids[row], j->seed_lo, j->seed_hi, j->step_lo, j->step_hi,
                          j->out + (size_t)row * 2u, j->vocab, g_fred, g_ured, w->tid, j->threads);
        } else {
            unsigned len = j->lens[row] < j->width ? j->lens[row] : j->width;
            sk_penalties_row(x, j->tokens + (size_t)row * j->width, len, prm, j->bias,
                             j->has_bias ? 1 : 0, j->out + (size_t)row * j->vocab, j->vocab,
                             w->tid, j->threads);
        }
        /* the next row reuses the shared scratch */
        sk_host_barrier();
    }
    return NULL;
}

static void run_block(const job_t* job) {
    if (job->threads == 0 || job->threads > SK_MAX_THREADS) die("threads must be in 1..=64");
    if (job->threads % SK_WARP != 0) die("threads must be a multiple of the warp width");
    pthread_t th[SK_MAX_THREADS];
    worker_t ws[SK_MAX_THREADS];
    if (pthread_barrier_init(&g_barrier, NULL, job->threads) != 0) die("barrier init");
    for (unsigned t = 0; t < job->threads; ++t) {
        ws[t].job = job;
        ws[t].tid = t;
        if (pthread_create(&th[t], NULL, worker, &ws[t]) != 0) die("thread create");
    }
    for (unsigned t = 0; t < job->threads; ++t) pthread_join(th[t], NULL);
    pthread_barrier_destroy(&g_barrier);
}

int main(void) {
    job_t job;
    memset(&job, 0, sizeof job);
    job.cmd = (int)read_u32();
    switch (job.cmd) {
    case CMD_FILTER:
    case CMD_SAMPLE: {
        job.rows = read_u32();
        job.vocab = read_u32();
        job.threads = read_u32();
        if (job.cmd == CMD_SAMPLE) {
            job.seed_lo = read_u32();
            job.seed_hi = read_u32();
            job.step_lo = read_u32();
            job.step_hi = read_u32();
        }
        size_t n = (size_t)job.rows * job.vocab;
        job.logits = (const float*)read_array(n, sizeof(float));
        job.params = (const float*)read_array((size_t)job.rows * 8u, sizeof(float));
        size_t out_n = job.cmd == CMD_FILTER ? n : (size_t)job.rows * 2u;
        if (job.cmd == CMD_SAMPLE) job.row_ids = (const unsigned*)read_array(job.rows, sizeof(unsigned));
        job.out = (float*)calloc(out_n + 1, sizeof(float));
        if (!job.out) die("out of memory");
        run_block(&job);
        write_exact(job.out, out_n * sizeof(float));
        break;
    }
    case CMD_PENALTIES: {
        job.rows = read_u32();
        job.vocab = read_u32();
        job.width = read_u32();
        job.threads = read_u32();
        job.has_bias = read_u32();
        size_t n = (size_t)job.rows * job.vocab;
        job.logits = (const float*)read_array(n, sizeof(float));
        job.tokens = (const unsigned*)read_array((size_t)job.rows * job.width, sizeof(unsigned));
        job.lens = (const unsigned*)read_array(job.rows, sizeof(unsigned));
        job.params = (const float*)read_array((size_t)job.rows * 8u, sizeof(float));
        job.bias = job.has_bias ? (const float*)read_array(job.vocab, sizeof(float)) : job.logits;
        job.out = (float*)calloc(n + 1, sizeof(float));
        if (!job.out) die("out of memory");
        run_block(&job);
        write_exact(job.out, n * sizeof(float));
        break;
    }
    case CMD_PHILOX: {
        unsigned c[4], k[2];
        for (int i = 0; i < 4; ++i) c[i] = read_u32();
        for (int i = 0; i < 2; ++i) k[i] = read_u32();
        sk_u32x4 r = sk_philox4x32_10(c[0], c[1], c[2], c[3], k[0], k[1]);
        write_exact(r.v, sizeof r.v);
        break;
    }
    case CMD_UNIFORM: {
        unsigned n = read_u32();
        for (unsigned i = 0; i < n; ++i) {
            unsigned a[5];
            for (int j = 0; j < 5; ++j) a[j] = read_u32();
            float u = sk_uniform(a[0], a[1], a[2], a[3], a[4]);
            write_exact(&u, sizeof u);
        }
        break;
    }
    default:
        die("unknown command");
    }
    fflush(stdout);
    return 0;
}
