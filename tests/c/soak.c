/*
 * soak.c: many requests through the background engine from several client threads, with
 * random prompts (text, token ids, and chat messages when the model has a template), random
 * sampling parameters, stop strings and stop ids, and cancellations at random points (before
 * the first token, mid-stream, or by releasing an unfinished request). Checks, per request,
 * that it ends with a finish reason its history allows and delivers consecutive tokens; at the
 * end, that the arena is empty and the request table released; along the way it samples the
 * process's resident set size (RSS), which must not grow after warm-up.
 *
 *   soak MODEL.gguf [REQUESTS [CLIENT_THREADS [RSS_CSV]]]   (defaults 10000, 8, none)
 *
 * Prints the RSS curve (requests completed, KiB); exits non-zero on any failure. Built with
 * -fsanitize=leak by scripts/ci/test-ffi.sh, so a leak anywhere in the process (the Rust library
 * allocates with the same malloc) fails the run at exit.
 */
#include "harness.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 64
#define RSS_POINTS 20
/* Allowed RSS growth between the end of warm-up (first RSS point past 10% of the requests)
 * and the end of the run. Allocator caches settle during warm-up; a per-request leak of even
 * 400 bytes over 9000 requests would exceed this. */
#define RSS_SLACK_KIB 3072

static ember_runtime *rt;
static uint32_t eog_ids[2];
static int total_requests;
static int have_chat;
static atomic_int next_request;
static atomic_int completed;
static long rss_kib[RSS_POINTS + 1];
static int rss_at[RSS_POINTS + 1];

struct result {
    int index, failures;
    int by_reason[8];
    int abandoned, text_pulls, chats, refused;
};

static long rss_now_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, resident = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static const char *const WORDS[] = {
    "the", "cat", "sat", "on", "a", "mat", "héllo", "日本", "🙂", "\n", "  ", "<|im_end|>",
    "x", "def f(n):", "1+1=", "Ünïcödé", "\t", "stop", "end", "!",
};
static const char *const STOPS[] = {"a", "the", "\n", "e", "日", "zz"};
static const float TEMPS[] = {0.0f, 0.3f, 0.8f, 1.5f};
static const uint32_t TOP_K[] = {0, 1, 5, 40};
static const float TOP_P[] = {1.0f, 0.9f, 0.5f};
static const float MIN_P[] = {0.0f, 0.05f, 0.2f};
static const float PENALTY[] = {1.0f, 1.1f, 1.3f};
static const uint32_t LAST_N[] = {0, 16, 64};
#define PICK(arr, s) (arr[next_rand(s) % (sizeof(arr) / sizeof(arr[0]))])

static void random_text(uint64_t *s, char *out, size_t cap) {
    size_t len = 0, words = 1 + next_rand(s) % 12;
    out[0] = 0;
    for (size_t w = 0; w < words; w++) {
        const char *word = PICK(WORDS, s);
        size_t n = strlen(word);
        if (len + n + 2 >= cap) break;
        memcpy(out + len, word, n);
        len += n;
        if (next_rand(s) % 2) out[len++] = ' ';
        out[len] = 0;
    }
}

/* Submit one random request (its id through `id`, what the checks need through `p` and
 * `has_stops`). Returns 1 if queued, -1 if refused as too long for the context, 0 on failure. */
static int submit_random(struct result *res, uint64_t *s, ember_params *p, int *has_stops,
                         ember_request_id *id) {
    static const char *const *stops_none = NULL;
    const char *stops[2];
    uint32_t stop_ids[2];
    *p = ember_params_default();
    p->max_tokens = 1 + next_rand(s) % 24;
    p->temperature = PICK(TEMPS, s);
    p->top_k = PICK(TOP_K, s);
    p->top_p = PICK(TOP_P, s);
    p->min_p = PICK(MIN_P, s);
    p->repeat_penalty = PICK(PENALTY, s);
    p->repeat_last_n = PICK(LAST_N, s);
    p->seed = next_rand(s);
    p->ignore_eos = next_rand(s) % 2;
    p->stop = stops_none;
    *has_stops = 0;
    if (next_rand(s) % 4 == 0) {
        p->n_stop = 1 + next_rand(s) % 2;
        for (size_t i = 0; i < p->n_stop; i++) stops[i] = PICK(STOPS, s);
        p->stop = stops;
        *has_stops = 1;
    }
    if (next_rand(s) % 6 == 0) {
        p->n_stop_ids = 1 + next_rand(s) % 2;
        for (size_t i = 0; i < p->n_stop_ids; i++) stop_ids[i] = 3 + next_rand(s) % 260;
        p->stop_ids = stop_ids;
        *has_stops = 1;
    }
    ember_result r;
    unsigned kind = next_rand(s) % (have_chat ? 3 : 2);
    if (kind == 0) {
        uint32_t prompt[40];
        size_t n = 1 + next_rand(s) % 40;
        for (size_t k = 0; k < n; k++) prompt[k] = 3 + next_rand(s) % 260;
        r = ember_submit_tokens(rt, prompt, n, p, id);
    } else if (kind == 1) {
        char text[256];
        random_text(s, text, sizeof text);
        r = ember_submit(rt, text, p, id);
    } else {
        char a[256], b[256];
        random_text(s, a, sizeof a);
        random_text(s, b, sizeof b);
        ember_chat_message m[2] = {{"system", a}, {"user", b}};
        r = ember_submit_chat(rt, m, 1 + next_rand(s) % 2, p, id);
        res->chats++;
    }
    /* The stop arrays were read during the call; do not keep pointers to them. */
    p->stop = NULL;
    p->stop_ids = NULL;
    if (r == EMBER_ERR_TOO_LARGE) {
        /* A prompt longer than the context: a clean refusal is the right answer. */
        res->refused++;
        return -1;
    }
    if (r != EMBER_OK) {
        FAIL(res, "submit: %s", ember_result_str(r));
        return 0;
    }
    return 1;
}

static void record_completion(void) {
    int done = atomic_fetch_add(&completed, 1) + 1;
    int every = total_requests / RSS_POINTS > 0 ? total_requests / RSS_POINTS : 1;
    if (done % every == 0 && done / every <= RSS_POINTS) {
        rss_kib[done / every] = rss_now_kib();
        rss_at[done / every] = done;
    }
}

static void *worker(void *arg) {
    struct result *res = arg;
    uint64_t seed = 0x243f6a8885a308d3ULL + 104729u * (uint64_t)(res->index + 1);
    char buf[64];
    while (atomic_fetch_add(&next_request, 1) < total_requests) {
        ember_params p;
        int has_stops;
        ember_request_id id;
        int submitted = submit_random(res, &seed, &p, &has_stops, &id);
        if (submitted == 0) break;
        if (submitted < 0) {
            record_completion();
            continue;
        }
        /* -1: never cancel; 0: cancel at once; k > 0: cancel after k tokens. */
        int cancel_at = next_rand(&seed) % 4 == 0 ? (int)(next_rand(&seed) % 8) : -1;
        /* Abandon: release unfinished after `abandon_at` tokens (the release cancels it). */
        int abandon_at = next_rand(&seed) % 10 == 0 ? (int)(next_rand(&seed) % 4) : -1;
        int use_text = next_rand(&seed) % 5 == 0;
        int cancelled = 0;
        if (cancel_at == 0) {
            if (ember_cancel(rt, id) != EMBER_OK) FAIL(res, "cancel at submit");
            cancelled = 1;
        }
        /* n: tokens pulled so far; `last` is the last token pulled by ember_next, unknown
         * (last_known = 0) when a text pull consumed the final tokens. */
        uint32_t n = 0, last = 0;
        int last_known = 0;
        ember_finish_reason reason = EMBER_FINISH_NONE;
        int abandoned = 0, synced = 1; /* synced: n is exact (not after a text pull) */
        for (;;) {
            if (synced && (int)n == abandon_at) {
                abandoned = 1;
                break;
            }
            ember_event ev;
            if (use_text) {
                /* One text pull (taking every token generated so far), then ember_next. */
                use_text = 0;
                size_t len = 0;
                ember_finish_reason fin = EMBER_FINISH_NONE;
                ember_result r = ember_next_text(rt, id, 60000, buf, sizeof buf, &len, &fin);
                if (r == EMBER_ERR_BUFFER_TOO_SMALL) {
                    char *big = malloc(len + 1);
                    r = ember_next_text(rt, id, 60000, big, len + 1, &len, &fin);
                    /* The text may hold U+0000: check the terminator, not strlen. */
                    if (r == EMBER_OK && big[len] != 0) FAIL(res, "text not NUL-terminated");
                    free(big);
                } else if (r == EMBER_OK && buf[len] != 0) {
                    FAIL(res, "text not NUL-terminated");
                }
                if (r != EMBER_OK) {
                    FAIL(res, "next_text: %s", ember_result_str(r));
                    break;
                }
                res->text_pulls++;
                last_known = 0;
                if (fin == EMBER_FINISH_NONE) {
                    /* How many tokens it took shows in the next event's index. */
                    synced = 0;
                    continue;
                }
                /* Finished: ember_next must report the same reason and the token count. */
                r = ember_next(rt, id, 0, &ev);
                if (r != EMBER_OK || ev.kind != EMBER_EVENT_FINISHED || ev.finish_reason != fin)
                    FAIL(res, "finished text pull disagrees with ember_next");
                reason = fin;
                n = ev.index;
                break;
            }
            ember_result r = ember_next(rt, id, 60000, &ev);
            if (r != EMBER_OK) {
                FAIL(res, "next: %s", ember_result_str(r));
                break;
            }
            if (synced && ev.index != n)
                FAIL(res, "event index %u, expected %u", ev.index, n);
            if (ev.kind == EMBER_EVENT_FINISHED) {
                reason = ev.finish_reason;
                n = ev.index;
                break;
            }
            last = ev.token;
            last_known = 1;
            n = ev.index + 1;
            synced = 1;
            if ((int)n == cancel_at) {
                if (ember_cancel(rt, id) != EMBER_OK) FAIL(res, "cancel");
                cancelled = 1;
            }
        }
        if (abandoned) {
            res->abandoned++;
        } else {
            res->by_reason[reason < 8 ? reason : 0]++;
            switch (reason) {
            case EMBER_FINISH_CANCELLED:
                if (!cancelled || n >= p.max_tokens) FAIL(res, "cancelled without cancel");
                break;
            case EMBER_FINISH_LENGTH:
                if (n != p.max_tokens) FAIL(res, "length with %u of %u", n, p.max_tokens);
                break;
            case EMBER_FINISH_EOS:
                if (p.ignore_eos || n > p.max_tokens ||
                    (last_known && last != eog_ids[0] && last != eog_ids[1]))
                    FAIL(res, "eos: ignore_eos=%d last=%u n=%u", p.ignore_eos, last, n);
                break;
            case EMBER_FINISH_STOP:
                if (!has_stops || n > p.max_tokens) FAIL(res, "stop without stops (n=%u)", n);
                break;
            default:
                FAIL(res, "unexpected finish reason %u", (unsigned)reason);
            }
        }
        if (ember_release(rt, id) != EMBER_OK) FAIL(res, "release");
        if (ember_release(rt, id) != EMBER_ERR_UNKNOWN_REQUEST) FAIL(res, "double release");
        record_completion();
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.gguf [REQUESTS [CLIENT_THREADS [RSS_CSV]]]\n",
                argv[0]);
        return 2;
    }
    total_requests = argc > 2 ? atoi(argv[2]) : 10000;
    int threads = argc > 3 ? atoi(argv[3]) : 8;
    if (total_requests < 1 || threads < 1 || threads > MAX_THREADS) {
        fprintf(stderr, "REQUESTS >= 1 and 1 <= CLIENT_THREADS <= %d\n", MAX_THREADS);
        return 2;
    }
    ember_config c = ember_config_default();
    c.threads = 1;
    c.block_size = 4;
    c.kv_blocks = 48; /* a small arena: sequences are preempted and recomputed */
    c.max_seqs = 16;
    c.max_batch_tokens = 64;
    c.max_requests = (uint32_t)threads;
    c.n_ctx = 96;
    if (ember_runtime_new(argv[1], &c, &rt) != EMBER_OK) {
        fprintf(stderr, "create: %s\n", ember_last_error());
        return 1;
    }
    if (!find_eog_ids(rt, eog_ids)) return 1;
    {
        /* Chat submissions only where the model has a template. */
        ember_chat_message m = {"user", "hi"};
        ember_params p = ember_params_default();
        p.max_tokens = 1;
        ember_request_id id;
        ember_result r = ember_submit_chat(rt, &m, 1, &p, &id);
        have_chat = r == EMBER_OK;
        if (have_chat) ember_release(rt, id);
        else if (r != EMBER_ERR_NO_CHAT_TEMPLATE) {
            fprintf(stderr, "chat probe: %s\n", ember_result_str(r));
            return 1;
        }
    }
    if (ember_start(rt) != EMBER_OK) return 1;
    rss_kib[0] = rss_now_kib();
    rss_at[0] = 0;

    pthread_t th[MAX_THREADS];
    struct result res[MAX_THREADS];
    memset(res, 0, sizeof res);
    for (int t = 0; t < threads; t++) {
        res[t].index = t;
        pthread_create(&th[t], NULL, worker, &res[t]);
    }
    struct result total = {0};
    for (int t = 0; t < threads; t++) {
        pthread_join(th[t], NULL);
        total.failures += res[t].failures;
        total.abandoned += res[t].abandoned;
        total.text_pulls += res[t].text_pulls;
        total.chats += res[t].chats;
        total.refused += res[t].refused;
        for (int k = 0; k < 8; k++) total.by_reason[k] += res[t].by_reason[k];
    }
    ember_stats s;
    if (ember_get_stats(rt, &s) != EMBER_OK) return 1;
    int ended = total.abandoned + total.refused;
    for (int k = 0; k < 8; k++) ended += total.by_reason[k];
    printf("soak: %d requests (%d client threads): %d length, %d eos, %d stop, %d cancelled, "
           "%d released unfinished, %d refused (too long); %d text pulls, %d chats; %llu steps, "
           "%llu preemptions, "
           "%llu tokens generated\n",
           total_requests, threads, total.by_reason[EMBER_FINISH_LENGTH],
           total.by_reason[EMBER_FINISH_EOS], total.by_reason[EMBER_FINISH_STOP],
           total.by_reason[EMBER_FINISH_CANCELLED], total.abandoned, total.refused, total.text_pulls,
           total.chats, (unsigned long long)s.steps, (unsigned long long)s.preemptions,
           (unsigned long long)s.tokens_generated);
    if (ended != total_requests) {
        fprintf(stderr, "%d of %d requests accounted for\n", ended, total_requests);
        total.failures++;
    }
    if (!arena_is_empty(&s)) total.failures++;
    if (total.by_reason[EMBER_FINISH_CANCELLED] == 0 || total.by_reason[EMBER_FINISH_LENGTH] == 0 ||
        (total_requests >= 200 && (total.abandoned == 0 || s.preemptions == 0))) {
        fprintf(stderr, "the mix was not exercised\n");
        total.failures++;
    }
    FILE *csv = argc > 4 ? fopen(argv[4], "w") : NULL;
    if (csv) fprintf(csv, "requests,rss_kib\n");
    printf("soak: RSS (requests completed: KiB):");
    int warm = -1, last = -1;
    for (int i = 0; i <= RSS_POINTS; i++) {
        if (rss_kib[i] <= 0) continue;
        printf(" %d:%ld", rss_at[i], rss_kib[i]);
        if (csv) fprintf(csv, "%d,%ld\n", rss_at[i], rss_kib[i]);
        if (warm < 0 && rss_at[i] * 10 >= total_requests) warm = i;
        last = i;
    }
    printf("\n");
    if (csv) fclose(csv);
    if (warm >= 0 && last > warm && rss_kib[last] - rss_kib[warm] > RSS_SLACK_KIB) {
        fprintf(stderr, "RSS grew by %ld KiB after warm-up (allowed %d)\n",
                rss_kib[last] - rss_kib[warm], RSS_SLACK_KIB);
        total.failures++;
    }
    if (ember_stop(rt) != EMBER_OK) total.failures++;
    ember_runtime_free(rt);
    if (total.failures) {
        fprintf(stderr, "soak: %d failure(s)\n", total.failures);
        return 1;
    }
    printf("soak: ok\n");
    return 0;
}
