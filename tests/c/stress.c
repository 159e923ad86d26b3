/*
 * stress.c: 8 threads x 50 requests through the background engine, random prompt lengths,
 * token budgets and cancellations, on a small KV arena (so sequences are preempted). Every
 * request must end with the finish reason its history allows, deliver consecutive tokens, and
 * at the end the arena must be empty and the request table released.
 *
 *   stress MODEL.gguf [COMPUTE_THREADS]   (default 1: no worker threads besides the engine's)
 */
#include "harness.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 8
#define PER_THREAD 50
#define BATCH 5

static ember_runtime *rt;
static uint32_t eog_ids[2]; /* the synthetic vocabulary's end-of-generation tokens */

struct result {
    int index, failures, cancelled, length, eos, stop;
};

static void *worker(void *arg) {
    struct result *res = arg;
    uint64_t seed = 0x9e3779b97f4a7c15ULL + 7919u * (uint64_t)res->index;
    for (int done = 0; done < PER_THREAD; done += BATCH) {
        ember_request_id ids[BATCH];
        ember_params ps[BATCH];
        int cancel_at[BATCH];
        for (int i = 0; i < BATCH; i++) {
            uint32_t prompt[24];
            size_t n = 1 + next_rand(&seed) % 24;
            for (size_t k = 0; k < n; k++) prompt[k] = 3 + next_rand(&seed) % 260;
            ps[i] = ember_params_default();
            ps[i].max_tokens = 1 + next_rand(&seed) % 16;
            ps[i].ignore_eos = next_rand(&seed) % 2;
            ps[i].temperature = (next_rand(&seed) % 2) ? 0.8f : 0.0f;
            ps[i].seed = next_rand(&seed);
            /* -1: never cancel; k >= 0: cancel after pulling k tokens. */
            cancel_at[i] = (next_rand(&seed) % 3 == 0) ? (int)(next_rand(&seed) % 8) : -1;
            ember_result r = ember_submit_tokens(rt, prompt, n, &ps[i], &ids[i]);
            if (r != EMBER_OK) {
                FAIL(res, "submit: %s", ember_result_str(r));
                return NULL;
            }
            if (cancel_at[i] == 0 && ember_cancel(rt, ids[i]) != EMBER_OK)
                FAIL(res, "cancel at submit");
        }
        for (int i = 0; i < BATCH; i++) {
            ember_event ev;
            uint32_t n = 0, last = 0;
            int cancelled = cancel_at[i] == 0;
            for (;;) {
                ember_result r = ember_next(rt, ids[i], 60000, &ev);
                if (r != EMBER_OK) {
                    FAIL(res, "next: %s", ember_result_str(r));
                    break;
                }
                if (ev.kind == EMBER_EVENT_FINISHED) break;
                if (ev.index != n) FAIL(res, "token index %u, expected %u", ev.index, n);
                last = ev.token;
                n++;
                if ((int)n == cancel_at[i]) {
                    if (ember_cancel(rt, ids[i]) != EMBER_OK) FAIL(res, "cancel");
                    cancelled = 1;
                }
            }
            uint32_t max = ps[i].max_tokens;
            switch (ev.finish_reason) {
            case EMBER_FINISH_CANCELLED:
                res->cancelled++;
                if (!cancelled || n >= max) FAIL(res, "cancelled without cancel (n=%u)", n);
                break;
            case EMBER_FINISH_LENGTH:
                res->length++;
                if (n != max) FAIL(res, "length with %u of %u tokens", n, max);
                break;
            case EMBER_FINISH_EOS:
                res->eos++;
                if (ps[i].ignore_eos || (last != eog_ids[0] && last != eog_ids[1]) || n > max)
                    FAIL(res, "eos: ignore_eos=%d last=%u n=%u", ps[i].ignore_eos, last, n);
                break;
            default:
                FAIL(res, "unexpected finish reason %u", (unsigned)ev.finish_reason);
            }
            if (ev.index != n) FAIL(res, "finished index %u != %u tokens", ev.index, n);
            if (ember_release(rt, ids[i]) != EMBER_OK) FAIL(res, "release");
            if (ember_release(rt, ids[i]) != EMBER_ERR_UNKNOWN_REQUEST) FAIL(res, "double release");
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [COMPUTE_THREADS]\n", argv[0]);
        return 2;
    }
    ember_config c = ember_config_default();
    c.threads = argc > 2 ? (uint32_t)atoi(argv[2]) : 1;
    c.block_size = 4;
    c.kv_blocks = 40; /* ~6 full sequences: forces preemption with 16 running */
    c.max_seqs = 16;
    c.max_batch_tokens = 64;
    c.max_requests = THREADS * BATCH;
    c.n_ctx = 64;
    if (ember_runtime_new(argv[1], &c, &rt) != EMBER_OK) {
        fprintf(stderr, "create: %s\n", ember_last_error());
        return 1;
    }
    if (!find_eog_ids(rt, eog_ids)) return 1;
    if (ember_start(rt) != EMBER_OK) return 1;

    pthread_t th[THREADS];
    struct result res[THREADS] = {{0}};
    for (int t = 0; t < THREADS; t++) {
        res[t].index = t;
        pthread_create(&th[t], NULL, worker, &res[t]);
    }
    struct result total = {0};
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        total.failures += res[t].failures;
        total.cancelled += res[t].cancelled;
        total.length += res[t].length;
        total.eos += res[t].eos;
    }
    ember_stats s;
    if (ember_get_stats(rt, &s) != EMBER_OK) return 1;
    printf("stress: %d requests: %d length, %d eos, %d cancelled; %llu steps, %llu preemptions, "
           "%llu tokens\n",
           THREADS * PER_THREAD, total.length, total.eos, total.cancelled,
           (unsigned long long)s.steps, (unsigned long long)s.preemptions,
           (unsigned long long)s.tokens_generated);
    if (total.length + total.eos + total.cancelled != THREADS * PER_THREAD) total.failures++;
    if (!arena_is_empty(&s)) total.failures++;
    if (total.cancelled == 0 || total.length == 0) total.failures++; /* the mix was exercised */
    if (ember_stop(rt) != EMBER_OK) total.failures++;
    ember_runtime_free(rt);
    if (total.failures) {
        fprintf(stderr, "stress: %d failure(s)\n", total.failures);
        return 1;
    }
    printf("stress: ok\n");
    return 0;
}
