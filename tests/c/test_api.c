/*
 * test_api.c: every function of include/ember.h and every misuse the header documents, each
 * return code checked, out-parameters checked untouched on failure. Run by scripts/ci/test-ffi.sh
 * under valgrind.
 *
 *   test_api SYNTH.gguf [CHAT_MODEL.gguf]
 *
 * SYNTH.gguf is a tiny synthetic model (`ember synth`: no chat template); CHAT_MODEL.gguf, if
 * given, is a model with a chat template for the ember_submit_chat success path.
 */
#include <ember.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                                     \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "%s:%d: CHECK failed: %s (last error: %s)\n", __FILE__,     \
                    __LINE__, #cond, ember_last_error());                               \
            failures++;                                                                 \
        }                                                                               \
    } while (0)

#define EXPECT(call, code)                                                              \
    do {                                                                                \
        ember_result r_ = (call);                                                       \
        if (r_ != (code)) {                                                             \
            fprintf(stderr, "%s:%d: %s returned %s, expected %s (last error: %s)\n",    \
                    __FILE__, __LINE__, #call, ember_result_str(r_),                    \
                    ember_result_str(code), ember_last_error());                        \
            failures++;                                                                 \
        }                                                                               \
    } while (0)

static const ember_request_id SENTINEL = 0xdeadbeefULL;

static ember_config small_config(void) {
    ember_config c = ember_config_default();
    c.threads = 1;
    c.kv_blocks = 64;
    c.block_size = 16;
    c.max_seqs = 4;
    c.max_batch_tokens = 64;
    c.max_requests = 4;
    c.n_ctx = 256;
    return c;
}

static ember_params params_n(uint32_t n) {
    ember_params p = ember_params_default();
    p.max_tokens = n;
    p.ignore_eos = true;
    return p;
}

/* Drive caller-driven mode until idle. */
static void run_to_idle(ember_runtime *rt) {
    bool more = true;
    int guard = 0;
    while (more && guard++ < 10000) EXPECT(ember_step(rt, &more), EMBER_OK);
    CHECK(!more);
}

static void test_static_functions(void) {
    const char *v = ember_version();
    int a, b, c;
    CHECK(v != NULL && sscanf(v, "%d.%d.%d", &a, &b, &c) == 3);
    CHECK(strcmp(ember_result_str(EMBER_OK), "EMBER_OK") == 0);
    CHECK(strcmp(ember_result_str(EMBER_ERR_POISONED), "EMBER_ERR_POISONED") == 0);
    CHECK(strcmp(ember_result_str(12345), "unknown ember_result code") == 0);
    CHECK(EMBER_OK == 0 && EMBER_ERR_INTERNAL == 19); /* stable values */
    CHECK(EMBER_ERR_PROMPT_CACHE == 20);

    ember_config c0 = ember_config_default();
    CHECK(c0.backend == EMBER_BACKEND_AUTO && c0.block_size == 16 && c0.max_seqs == 32);
    CHECK(c0.cuda_weights == EMBER_CUDA_WEIGHTS_UPLOAD);
    CHECK(c0.kv_blocks == 0 && c0.kv_bytes == 256u << 20 && c0.prefix_caching);
    ember_params p0 = ember_params_default();
    CHECK(p0.max_tokens == 128 && p0.temperature == 0.0f && p0.n_stop == 0 && !p0.ignore_eos);
    CHECK(p0.stop == NULL && p0.stop_ids == NULL);
}

static void test_create_misuse(const char *synth, const char *not_gguf) {
    ember_runtime *rt = (ember_runtime *)&failures; /* sentinel: must stay untouched */
    ember_runtime *const sentinel = rt;
    ember_config c = small_config();

    EXPECT(ember_runtime_new(NULL, &c, &rt), EMBER_ERR_NULL_POINTER);
    CHECK(strstr(ember_last_error(), "model_path") != NULL);
    EXPECT(ember_runtime_new(synth, &c, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_runtime_new("/nonexistent/model.gguf", &c, &rt), EMBER_ERR_IO);
    EXPECT(ember_runtime_new(not_gguf, &c, &rt), EMBER_ERR_MODEL); /* this executable */

    c.backend = EMBER_BACKEND_CUDA;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_UNSUPPORTED);
    CHECK(strstr(ember_last_error(), "CUDA") != NULL);
    c.backend = 77;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    c = small_config();
    c.cuda_weights = 5;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "cuda_weights") != NULL);
    c = small_config();
    c.block_size = 0;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    c = small_config();
    c.max_seqs = 0;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    c = small_config();
    c.max_batch_tokens = 2; /* below max_seqs */
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    /* Sizes at their type's maximum: refused with the bound, never an abort in an allocation. */
    c = small_config();
    c.max_batch_tokens = UINT32_MAX;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "max_batch_tokens") != NULL);
    CHECK(strstr(ember_last_error(), "1048576") != NULL);
    c = small_config();
    c.max_requests = UINT32_MAX;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "max_requests") != NULL);
    CHECK(strstr(ember_last_error(), "1048576") != NULL);
    c = small_config();
    c.max_seqs = UINT32_MAX;
    c.max_batch_tokens = UINT32_MAX;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "max_seqs") != NULL);
    CHECK(strstr(ember_last_error(), "65536") != NULL);
    c = small_config();
    c.max_seqs = UINT32_MAX; /* max_batch_tokens stays below it */
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    c = small_config();
    c.kv_blocks = UINT32_MAX;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "kv_blocks") != NULL);
    c = small_config();
    c.kv_blocks = 0;
    c.kv_bytes = 1ull << 50; /* 1 PiB */
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(rt == sentinel);

    /* AUTO and CPU both work. */
    c = small_config();
    c.backend = EMBER_BACKEND_CPU;
    rt = NULL;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_OK);
    CHECK(rt != NULL);
    ember_runtime_free(rt);
    ember_runtime_free(NULL); /* ignored */
}

static void test_submit_misuse(ember_runtime *rt) {
    ember_request_id id = SENTINEL;
    ember_params p = params_n(4);

    EXPECT(ember_submit(NULL, "ab", &p, &id), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit(rt, NULL, &p, &id), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit(rt, "ab", &p, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit(rt, "a\xff\xfe", &p, &id), EMBER_ERR_INVALID_UTF8);
    EXPECT(ember_submit(rt, "", &p, &id), EMBER_ERR_INVALID_ARGUMENT); /* no tokens */

    ember_params bad = p;
    bad.temperature = -1.0f;
    EXPECT(ember_submit(rt, "ab", &bad, &id), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "temperature") != NULL);
    bad = p;
    bad.max_tokens = 0;
    EXPECT(ember_submit(rt, "ab", &bad, &id), EMBER_ERR_INVALID_ARGUMENT);
    bad = p;
    bad.max_tokens = 100000; /* beyond the context */
    EXPECT(ember_submit(rt, "ab", &bad, &id), EMBER_ERR_TOO_LARGE);
    CHECK(strstr(ember_last_error(), "context") != NULL);
    bad = p;
    bad.n_stop = 1; /* stop == NULL */
    EXPECT(ember_submit(rt, "ab", &bad, &id), EMBER_ERR_NULL_POINTER);
    const char *bad_stop[] = {"ok", "\xc3"};
    bad.stop = bad_stop;
    bad.n_stop = 2;
    EXPECT(ember_submit(rt, "ab", &bad, &id), EMBER_ERR_INVALID_UTF8);
    const char *null_stop[] = {NULL};
    bad.stop = null_stop;
    bad.n_stop = 1;
    EXPECT(ember_submit(rt, "ab", &bad, &id), EMBER_ERR_NULL_POINTER);
    bad = p;
    bad.n_stop_ids = 3; /* stop_ids == NULL */
    EXPECT(ember_submit(rt, "ab", &bad, &id), EMBER_ERR_NULL_POINTER);

    uint32_t toks[] = {10, 20, 30};
    uint32_t oov[] = {10, 99999};
    EXPECT(ember_submit_tokens(NULL, toks, 3, &p, &id), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit_tokens(rt, NULL, 3, &p, &id), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit_tokens(rt, toks, 3, &p, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit_tokens(rt, toks, 0, &p, &id), EMBER_ERR_INVALID_ARGUMENT);
    EXPECT(ember_submit_tokens(rt, oov, 2, &p, &id), EMBER_ERR_INVALID_ARGUMENT);

    ember_chat_message msgs[] = {{"user", "hi"}};
    ember_chat_message null_role[] = {{NULL, "hi"}};
    EXPECT(ember_submit_chat(NULL, msgs, 1, &p, &id), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit_chat(rt, NULL, 1, &p, &id), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit_chat(rt, msgs, 1, &p, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit_chat(rt, null_role, 1, &p, &id), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit_chat(rt, msgs, 1, &p, &id), EMBER_ERR_NO_CHAT_TEMPLATE);
    CHECK(id == SENTINEL);

    ember_stats s;
    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(s.requests == 0); /* nothing was queued by the failures */
}

/* ember_get_model_info: the facts agree with what the runtime does with them. */
static void test_model_info(ember_runtime *rt) {
    ember_model_info info, untouched;
    memset(&info, 0x5a, sizeof info);
    memcpy(&untouched, &info, sizeof info);
    EXPECT(ember_get_model_info(NULL, &info), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_get_model_info(rt, NULL), EMBER_ERR_NULL_POINTER);
    CHECK(memcmp(&info, &untouched, sizeof info) == 0);

    EXPECT(ember_get_model_info(rt, &info), EMBER_OK);
    CHECK(info.architecture && strcmp(info.architecture, "llama") == 0);
    CHECK(info.name && strncmp(info.name, "ember-synth", 11) == 0);
    CHECK(info.n_ctx == 256); /* small_config's */
    CHECK(info.block_size == 16);
    CHECK(info.n_layer >= 1 && info.n_ctx_train >= 1 && info.kv_bytes > 0);
    CHECK(info.kv_capacity_tokens == info.kv_blocks * info.block_size);
    ember_stats s;
    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(info.kv_blocks == s.blocks_total);
    /* End-of-generation ids: at least EOS, ascending, all in the vocabulary. */
    CHECK(info.n_eog >= 1 && info.eog_ids != NULL);
    for (size_t i = 0; info.eog_ids && i < info.n_eog; i++) {
        CHECK(info.eog_ids[i] < info.n_vocab);
        if (i > 0) CHECK(info.eog_ids[i - 1] < info.eog_ids[i]);
    }
    /* n_vocab is the bound the engine checks token ids against. */
    ember_params p = params_n(1);
    ember_request_id id = SENTINEL;
    uint32_t last = info.n_vocab - 1, past = info.n_vocab;
    EXPECT(ember_submit_tokens(rt, &past, 1, &p, &id), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(id == SENTINEL);
    EXPECT(ember_submit_tokens(rt, &last, 1, &p, &id), EMBER_OK);
    EXPECT(ember_release(rt, id), EMBER_OK);
    /* The strings and ids are the runtime's: the same pointers every time. */
    ember_model_info again;
    EXPECT(ember_get_model_info(rt, &again), EMBER_OK);
    CHECK(again.name == info.name && again.eog_ids == info.eog_ids);
}

static void test_caller_driven(ember_runtime *rt) {
    ember_params p = params_n(6);
    ember_request_id id = 0, id2 = 0;
    bool more = true;

    EXPECT(ember_step(NULL, &more), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_step(rt, &more), EMBER_OK); /* nothing to do */
    CHECK(!more);
    EXPECT(ember_step(rt, NULL), EMBER_OK);

    EXPECT(ember_submit(rt, "hello", &p, &id), EMBER_OK);
    CHECK(id != 0);
    uint32_t prompt[] = {104, 105, 106};
    EXPECT(ember_submit_tokens(rt, prompt, 3, NULL, &id2), EMBER_OK); /* default params */
    CHECK(id2 != 0 && id2 != id);

    ember_event ev;
    memset(&ev, 0xab, sizeof ev);
    ember_event untouched = ev;
    EXPECT(ember_next(rt, id, 0, &ev), EMBER_ERR_TIMEOUT); /* nothing computed yet */
    EXPECT(ember_next(rt, id, 20, &ev), EMBER_ERR_TIMEOUT);
    EXPECT(ember_next(rt, id, 0, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_next(NULL, id, 0, &ev), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_next(rt, 12345, 0, &ev), EMBER_ERR_UNKNOWN_REQUEST);
    CHECK(memcmp(&ev, &untouched, sizeof ev) == 0);

    EXPECT(ember_step(rt, &more), EMBER_OK);
    CHECK(more);
    ember_stats s;
    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(s.blocks_used > 0 && s.requests == 2 && s.steps == 1 && s.tokens_generated == 2);
    CHECK(s.blocks_used + s.blocks_free == s.blocks_total && s.blocks_total == 64);
    CHECK(s.utilization > 0.0 && s.utilization <= 1.0);
    run_to_idle(rt);

    /* Events: exactly max_tokens tokens, then FINISHED(length), repeated. */
    char text[1024] = "";
    size_t text_len = 0;
    uint32_t n = 0;
    for (;;) {
        EXPECT(ember_next(rt, id, 0, &ev), EMBER_OK);
        if (ev.kind == EMBER_EVENT_FINISHED) break;
        CHECK(ev.kind == EMBER_EVENT_TOKEN && ev.index == n && ev.finish_reason == EMBER_FINISH_NONE);
        CHECK(ev.text[ev.text_len] == 0); /* NUL-terminated; text_len is the length */
        memcpy(text + text_len, ev.text, ev.text_len);
        text_len += ev.text_len;
        n++;
    }
    text[text_len] = 0;
    CHECK(n == 6 && ev.index == 6 && ev.finish_reason == EMBER_FINISH_LENGTH && ev.text_len == 0);
    EXPECT(ember_next(rt, id, 0, &ev), EMBER_OK);
    CHECK(ev.kind == EMBER_EVENT_FINISHED && ev.finish_reason == EMBER_FINISH_LENGTH);

    /* ember_next_text on the second request: too small first, nothing consumed. */
    char small[2];
    size_t len = 999;
    ember_finish_reason fin = EMBER_FINISH_ERROR;
    EXPECT(ember_next_text(rt, id2, 0, small, sizeof small, NULL, &fin), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_next_text(rt, id2, 0, small, sizeof small, &len, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_next_text(rt, id2, 0, NULL, 5, &len, &fin), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_next_text(rt, 4242, 0, small, sizeof small, &len, &fin),
           EMBER_ERR_UNKNOWN_REQUEST);
    len = 999;
    ember_result r = ember_next_text(rt, id2, 0, NULL, 0, &len, &fin);
    CHECK(r == EMBER_ERR_BUFFER_TOO_SMALL && len != 999 && fin == EMBER_FINISH_ERROR);
    char *big = malloc(len + 1);
    size_t need = len;
    EXPECT(ember_next_text(rt, id2, 0, big, need + 1, &len, &fin), EMBER_OK);
    CHECK(len == need && strlen(big) == len);
    CHECK(fin == EMBER_FINISH_EOS || fin == EMBER_FINISH_LENGTH); /* default params honour EOS */
    free(big);
    EXPECT(ember_next_text(rt, id2, 0, small, sizeof small, &len, &fin), EMBER_OK);
    CHECK(len == 0 && small[0] == 0 && (fin == EMBER_FINISH_EOS || fin == EMBER_FINISH_LENGTH));

    EXPECT(ember_release(rt, id), EMBER_OK);
    EXPECT(ember_release(rt, id), EMBER_ERR_UNKNOWN_REQUEST); /* double release */
    EXPECT(ember_next(rt, id, 0, &ev), EMBER_ERR_UNKNOWN_REQUEST);
    EXPECT(ember_cancel(rt, id), EMBER_ERR_UNKNOWN_REQUEST);
    EXPECT(ember_release(NULL, id2), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_cancel(NULL, id2), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_cancel(rt, id2), EMBER_OK); /* finished: no change */
    EXPECT(ember_next(rt, id2, 0, &ev), EMBER_OK);
    CHECK(ev.kind == EMBER_EVENT_FINISHED && ev.finish_reason != EMBER_FINISH_CANCELLED);
    EXPECT(ember_release(rt, id2), EMBER_OK);

    /* A stale id: its slot is reused by a new request, the old id stays invalid. */
    ember_request_id id3 = 0;
    EXPECT(ember_submit(rt, "xy", &p, &id3), EMBER_OK);
    CHECK(id3 != id && id3 != id2);
    EXPECT(ember_next(rt, id2, 0, &ev), EMBER_ERR_UNKNOWN_REQUEST);
    /* Cancel before it runs: finished, cancelled, no tokens, blocks back. */
    EXPECT(ember_cancel(rt, id3), EMBER_OK);
    EXPECT(ember_next(rt, id3, 0, &ev), EMBER_OK);
    CHECK(ev.kind == EMBER_EVENT_FINISHED && ev.finish_reason == EMBER_FINISH_CANCELLED &&
          ev.index == 0);
    EXPECT(ember_release(rt, id3), EMBER_OK);

    /* Cancel mid-way: the tokens already generated are still delivered, then CANCELLED. */
    EXPECT(ember_submit(rt, "mid", &p, &id3), EMBER_OK);
    EXPECT(ember_step(rt, &more), EMBER_OK);
    EXPECT(ember_step(rt, &more), EMBER_OK);
    EXPECT(ember_cancel(rt, id3), EMBER_OK);
    n = 0;
    for (;;) {
        EXPECT(ember_next(rt, id3, 0, &ev), EMBER_OK);
        if (ev.kind == EMBER_EVENT_FINISHED) break;
        n++;
    }
    CHECK(n == 2 && ev.finish_reason == EMBER_FINISH_CANCELLED);
    EXPECT(ember_release(rt, id3), EMBER_OK);

    /* Stop strings and stop ids. */
    uint32_t stop_tok = 0;
    {
        ember_request_id probe;
        EXPECT(ember_submit(rt, "stop", &p, &probe), EMBER_OK);
        run_to_idle(rt);
        EXPECT(ember_next(rt, probe, 0, &ev), EMBER_OK);
        EXPECT(ember_next(rt, probe, 0, &ev), EMBER_OK); /* second token */
        stop_tok = ev.token;
        EXPECT(ember_release(rt, probe), EMBER_OK);
        ember_params ps = p;
        ps.stop_ids = &stop_tok;
        ps.n_stop_ids = 1;
        EXPECT(ember_submit(rt, "stop", &ps, &probe), EMBER_OK);
        run_to_idle(rt);
        n = 0;
        do {
            EXPECT(ember_next(rt, probe, 0, &ev), EMBER_OK);
            if (ev.kind == EMBER_EVENT_TOKEN) n++;
        } while (ev.kind == EMBER_EVENT_TOKEN);
        /* Greedy is deterministic: it stops at (or before) the second token. */
        CHECK(ev.finish_reason == EMBER_FINISH_STOP && n <= 2);
        EXPECT(ember_release(rt, probe), EMBER_OK);
    }

    /* The request table is full at max_requests (4). */
    ember_request_id held[4];
    for (int i = 0; i < 4; i++) EXPECT(ember_submit(rt, "f", &p, &held[i]), EMBER_OK);
    ember_request_id extra = SENTINEL;
    EXPECT(ember_submit(rt, "f", &p, &extra), EMBER_ERR_FULL);
    CHECK(extra == SENTINEL);
    for (int i = 0; i < 4; i++) EXPECT(ember_release(rt, held[i]), EMBER_OK);

    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(s.blocks_used == 0 && s.blocks_free == s.blocks_total && s.requests == 0);
    CHECK(s.tokens_generated > 0 && s.busy_s > 0.0 && s.generated_tok_s > 0.0);
    EXPECT(ember_get_stats(rt, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_get_stats(NULL, &s), EMBER_ERR_NULL_POINTER);
}

/* Pull every token of sequence `seq` of `id` (already computed); returns the count. */
static uint32_t pull_seq(ember_runtime *rt, ember_request_id id, uint32_t seq, uint32_t *ids,
                         uint32_t cap, ember_finish_reason *finish) {
    ember_event ev;
    uint32_t n = 0;
    for (;;) {
        EXPECT(ember_next_seq(rt, id, seq, 0, &ev), EMBER_OK);
        if (ev.kind == EMBER_EVENT_FINISHED) break;
        CHECK(ev.index == n);
        if (n < cap) ids[n] = ev.token;
        n++;
    }
    *finish = ev.finish_reason;
    return n;
}

/* params.n: n sampled sequences of one prompt, each pulled on its own; sequence i equals a
 * lone request with seed + i. */
static void test_parallel_samples(ember_runtime *rt) {
    ember_params p = params_n(6);
    p.temperature = 0.9f;
    p.top_k = 0;
    p.seed = 11;
    p.n = 5; /* above max_seqs (4) */
    ember_request_id id = 0, solo = 0;
    EXPECT(ember_submit(rt, "hello", &p, &id), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(id == 0);
    p.n = 3;
    EXPECT(ember_submit(rt, "hello", &p, &id), EMBER_OK);
    run_to_idle(rt);
    uint32_t got[3][8];
    ember_finish_reason f;
    for (uint32_t i = 0; i < 3; i++) {
        CHECK(pull_seq(rt, id, i, got[i], 8, &f) == 6);
        CHECK(f == EMBER_FINISH_LENGTH);
    }
    ember_event ev;
    EXPECT(ember_next_seq(rt, id, 3, 0, &ev), EMBER_ERR_INVALID_ARGUMENT);
    EXPECT(ember_next(rt, id, 0, &ev), EMBER_OK); /* sequence 0, already pulled */
    CHECK(ev.kind == EMBER_EVENT_FINISHED);
    char buf[16];
    size_t len = 99;
    EXPECT(ember_next_text_seq(rt, id, 7, 0, buf, sizeof buf, &len, &f), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(len == 99);
    EXPECT(ember_next_text_seq(rt, id, 2, 0, buf, sizeof buf, &len, &f), EMBER_OK);
    CHECK(len == 0 && f == EMBER_FINISH_LENGTH);
    EXPECT(ember_release(rt, id), EMBER_OK);

    p.n = 1;
    p.seed = 12; /* sequence 1 of the request above */
    EXPECT(ember_submit(rt, "hello", &p, &solo), EMBER_OK);
    run_to_idle(rt);
    uint32_t alone[8];
    CHECK(pull_seq(rt, solo, 0, alone, 8, &f) == 6);
    CHECK(memcmp(alone, got[1], 6 * sizeof alone[0]) == 0);
    EXPECT(ember_release(rt, solo), EMBER_OK);

    p.n = 0; /* a zeroed field: one sequence */
    EXPECT(ember_submit(rt, "hello", &p, &solo), EMBER_OK);
    run_to_idle(rt);
    EXPECT(ember_next_seq(rt, solo, 1, 0, &ev), EMBER_ERR_INVALID_ARGUMENT);
    EXPECT(ember_release(rt, solo), EMBER_OK);
}

static void test_tokenizer(ember_runtime *rt) {
    size_t n = 999;
    uint32_t ids[64];
    EXPECT(ember_tokenize(NULL, "ab", true, true, ids, 64, &n), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_tokenize(rt, NULL, true, true, ids, 64, &n), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_tokenize(rt, "ab", true, true, ids, 64, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_tokenize(rt, "\xff", true, true, ids, 64, &n), EMBER_ERR_INVALID_UTF8);
    CHECK(n == 999);
    const char *text = "hello, world";
    EXPECT(ember_tokenize(rt, text, true, true, NULL, 0, &n), EMBER_ERR_BUFFER_TOO_SMALL);
    size_t need = n;
    CHECK(need > 0 && need <= 64);
    EXPECT(ember_tokenize(rt, text, true, true, ids, need - 1, &n), EMBER_ERR_BUFFER_TOO_SMALL);
    CHECK(n == need);
    EXPECT(ember_tokenize(rt, text, true, true, ids, 64, &n), EMBER_OK);
    CHECK(n == need);
    /* NULL with a capacity is a NULL pointer, whatever the size: checked first, as in
     * ember_detokenize and ember_next_text. */
    n = 999;
    EXPECT(ember_tokenize(rt, text, true, true, NULL, 1, &n), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_tokenize(rt, text, true, true, NULL, 64, &n), EMBER_ERR_NULL_POINTER);
    CHECK(n == 999);
    n = need;

    char buf[64];
    size_t len = 999;
    EXPECT(ember_detokenize(NULL, ids, n, buf, sizeof buf, &len), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_detokenize(rt, NULL, n, buf, sizeof buf, &len), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_detokenize(rt, ids, n, buf, sizeof buf, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_detokenize(rt, ids, n, NULL, 0, &len), EMBER_ERR_BUFFER_TOO_SMALL);
    CHECK(len == strlen(text));
    EXPECT(ember_detokenize(rt, ids, n, buf, len, &len), EMBER_ERR_BUFFER_TOO_SMALL); /* NUL */
    size_t len_before = len;
    EXPECT(ember_detokenize(rt, ids, n, NULL, 1, &len), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_detokenize(rt, ids, n, NULL, sizeof buf, &len), EMBER_ERR_NULL_POINTER);
    CHECK(len == len_before);
    EXPECT(ember_detokenize(rt, ids, n, buf, sizeof buf, &len), EMBER_OK);
    CHECK(len == strlen(text) && strcmp(buf, text) == 0);
    uint32_t oov = 1u << 30;
    EXPECT(ember_detokenize(rt, &oov, 1, buf, sizeof buf, &len), EMBER_ERR_INVALID_ARGUMENT);
    EXPECT(ember_detokenize(rt, NULL, 0, buf, sizeof buf, &len), EMBER_OK);
    CHECK(len == 0 && buf[0] == 0);
}

struct waiter {
    ember_runtime *rt;
    ember_request_id id;
    ember_result result;
    ember_event ev;
};

static void *wait_forever(void *arg) {
    struct waiter *w = arg;
    for (;;) {
        w->result = ember_next(w->rt, w->id, EMBER_WAIT_FOREVER, &w->ev);
        if (w->result != EMBER_OK || w->ev.kind == EMBER_EVENT_FINISHED) return NULL;
    }
}

static void test_background_and_stop(ember_runtime *rt) {
    ember_params p = params_n(5);
    ember_request_id id;
    EXPECT(ember_start(NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_start(rt), EMBER_OK);
    EXPECT(ember_start(rt), EMBER_ERR_WRONG_MODE);
    bool more;
    EXPECT(ember_step(rt, &more), EMBER_ERR_WRONG_MODE);

    EXPECT(ember_submit(rt, "bg", &p, &id), EMBER_OK);
    ember_event ev;
    uint32_t n = 0;
    for (;;) {
        EXPECT(ember_next(rt, id, 10000, &ev), EMBER_OK);
        if (ev.kind == EMBER_EVENT_FINISHED) break;
        n++;
    }
    CHECK(n == 5 && ev.finish_reason == EMBER_FINISH_LENGTH);
    EXPECT(ember_release(rt, id), EMBER_OK);

    /* A waiter blocked on a request that a release removes wakes with UNKNOWN_REQUEST. */
    EXPECT(ember_stop(rt), EMBER_OK);
    EXPECT(ember_stop(rt), EMBER_ERR_STOPPED);
    EXPECT(ember_stop(NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_submit(rt, "x", &p, &id), EMBER_ERR_STOPPED);
    uint32_t t = 5;
    EXPECT(ember_submit_tokens(rt, &t, 1, &p, &id), EMBER_ERR_STOPPED);
    EXPECT(ember_step(rt, &more), EMBER_ERR_STOPPED);
    EXPECT(ember_start(rt), EMBER_ERR_STOPPED);
    ember_stats s;
    EXPECT(ember_get_stats(rt, &s), EMBER_OK); /* still works */
    size_t n_ids;
    uint32_t ids[8];
    EXPECT(ember_tokenize(rt, "ok", true, true, ids, 8, &n_ids), EMBER_OK);
}

/* ember_stop (caller-driven) cancels unfinished requests and wakes a thread blocked on one;
 * ember_release wakes a blocked thread with UNKNOWN_REQUEST. */
static void test_stop_wakes_waiters(const char *synth) {
    ember_config c = small_config();
    ember_runtime *rt = NULL;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_OK);
    if (!rt) return;
    ember_params p = params_n(8);
    ember_request_id a, b;
    EXPECT(ember_submit(rt, "one", &p, &a), EMBER_OK);
    EXPECT(ember_submit(rt, "two", &p, &b), EMBER_OK);
    bool more;
    EXPECT(ember_step(rt, &more), EMBER_OK);

    struct waiter wa = {rt, a, EMBER_ERR_INTERNAL, {0}}, wb = {rt, b, EMBER_ERR_INTERNAL, {0}};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, wait_forever, &wa);
    pthread_create(&tb, NULL, wait_forever, &wb);
    EXPECT(ember_release(rt, b), EMBER_OK);
    pthread_join(tb, NULL);
    CHECK(wb.result == EMBER_ERR_UNKNOWN_REQUEST);
    EXPECT(ember_stop(rt), EMBER_OK);
    pthread_join(ta, NULL);
    CHECK(wa.result == EMBER_OK && wa.ev.kind == EMBER_EVENT_FINISHED &&
          wa.ev.finish_reason == EMBER_FINISH_CANCELLED && wa.ev.index == 1);
    EXPECT(ember_release(rt, a), EMBER_OK);
    ember_stats s;
    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(s.blocks_used == 0 && s.requests == 0);
    ember_runtime_free(rt);
}

/* Freeing a runtime with the background engine running and requests unreleased. */
static void test_free_while_running(const char *synth) {
    ember_config c = small_config();
    ember_runtime *rt = NULL;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_OK);
    if (!rt) return;
    ember_params p = params_n(50);
    ember_request_id id;
    EXPECT(ember_start(rt), EMBER_OK);
    EXPECT(ember_submit(rt, "long", &p, &id), EMBER_OK);
    ember_event ev;
    EXPECT(ember_next(rt, id, 10000, &ev), EMBER_OK);
    ember_runtime_free(rt);
}

/* max_tokens = UINT32_MAX is EMBER_ERR_TOO_LARGE (taken literally, nothing wraps) and the room
 * the prompt leaves runs to the end of the context; a prompt longer than the context and a
 * request larger than the whole arena are refused with messages that say so. */
static void test_request_limits(const char *synth) {
    ember_config c = small_config();
    c.n_ctx = 32;
    c.block_size = 4;
    c.kv_blocks = 8; /* exactly one full context */
    c.max_seqs = 2;
    c.max_batch_tokens = 100000; /* lowered to n_ctx x max_seqs, not refused */
    ember_runtime *rt = NULL;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_OK);
    if (!rt) return;
    size_t n_prompt = 0;
    uint32_t ids[8];
    EXPECT(ember_tokenize(rt, "ab", true, true, ids, 8, &n_prompt), EMBER_OK);

    ember_params p = params_n(UINT32_MAX);
    ember_request_id id = SENTINEL;
    EXPECT(ember_submit(rt, "ab", &p, &id), EMBER_ERR_TOO_LARGE);
    CHECK(id == SENTINEL);
    CHECK(strstr(ember_last_error(), "context full") != NULL);
    p = params_n((uint32_t)(32 - n_prompt));
    EXPECT(ember_submit(rt, "ab", &p, &id), EMBER_OK);
    run_to_idle(rt);
    ember_event ev;
    uint32_t tokens = 0;
    for (;;) {
        EXPECT(ember_next(rt, id, 0, &ev), EMBER_OK);
        if (ev.kind != EMBER_EVENT_TOKEN) break;
        tokens++;
    }
    CHECK(ev.kind == EMBER_EVENT_FINISHED && ev.finish_reason == EMBER_FINISH_LENGTH);
    CHECK(tokens == 32 - n_prompt && ev.index == tokens);
    EXPECT(ember_release(rt, id), EMBER_OK);

    char long_prompt[512] = "";
    for (int i = 0; i < 40; i++) strcat(long_prompt, "ab cd ");
    id = SENTINEL;
    EXPECT(ember_submit(rt, long_prompt, &p, &id), EMBER_ERR_TOO_LARGE);
    CHECK(strstr(ember_last_error(), "does not fit the context of 32") != NULL);
    CHECK(id == SENTINEL);
    ember_runtime_free(rt);

    c.kv_blocks = 2; /* 8 tokens: a 20-token answer can never fit */
    rt = NULL;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_OK);
    if (!rt) return;
    p = params_n(20);
    EXPECT(ember_submit(rt, "ab", &p, &id), EMBER_ERR_TOO_LARGE);
    CHECK(strstr(ember_last_error(), "can never fit this arena") != NULL);
    CHECK(strstr(ember_last_error(), "none is free") == NULL);
    CHECK(id == SENTINEL);
    ember_stats s;
    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(s.blocks_used == 0 && s.requests == 0);
    ember_runtime_free(rt);
}

static void test_chat(const char *chat_model) {
    ember_config c = small_config();
    c.n_ctx = 512;
    c.max_batch_tokens = 256;
    ember_runtime *rt = NULL;
    EXPECT(ember_runtime_new(chat_model, &c, &rt), EMBER_OK);
    if (!rt) return;
    /* SmolLM2: its vocabulary, and <|im_end|> (which ends a chat turn) among the EOG ids. */
    ember_model_info info;
    EXPECT(ember_get_model_info(rt, &info), EMBER_OK);
    CHECK(strcmp(info.architecture, "llama") == 0 && info.n_vocab == 49152);
    uint32_t im_end[4];
    size_t n = 0;
    EXPECT(ember_tokenize(rt, "<|im_end|>", false, true, im_end, 4, &n), EMBER_OK);
    bool found = false;
    for (size_t i = 0; n == 1 && i < info.n_eog; i++) found |= info.eog_ids[i] == im_end[0];
    CHECK(n == 1 && found);
    printf("model: %s (%s), n_ctx %u, vocabulary %u, %zu EOG ids, KV arena %llu tokens\n",
           info.name, info.architecture, info.n_ctx, info.n_vocab, info.n_eog,
           (unsigned long long)info.kv_capacity_tokens);
    ember_params p = ember_params_default();
    p.max_tokens = 4;
    ember_chat_message msgs[] = {{"system", "You are brief."}, {"user", "Say hi."}};
    ember_request_id id = SENTINEL;
    EXPECT(ember_submit_chat(rt, msgs, 0, &p, &id), EMBER_ERR_INVALID_ARGUMENT);
    ember_chat_message bad[] = {{"user", "\xff"}};
    EXPECT(ember_submit_chat(rt, bad, 1, &p, &id), EMBER_ERR_INVALID_UTF8);
    CHECK(id == SENTINEL);
    EXPECT(ember_submit_chat(rt, msgs, 2, &p, &id), EMBER_OK);
    run_to_idle(rt);
    char buf[256];
    size_t len;
    ember_finish_reason fin;
    EXPECT(ember_next_text(rt, id, 0, buf, sizeof buf, &len, &fin), EMBER_OK);
    CHECK(fin == EMBER_FINISH_LENGTH || fin == EMBER_FINISH_EOS);
    printf("chat answer (4 tokens): \"%s\"\n", buf);
    EXPECT(ember_release(rt, id), EMBER_OK);
    ember_runtime_free(rt);
}

/* Tokens generated by finished request `id` (the count its FINISHED event reports, checked
 * against the TOKEN events), then released. */
static size_t drain(ember_runtime *rt, ember_request_id id) {
    ember_event ev;
    size_t n = 0;
    do {
        EXPECT(ember_next(rt, id, 0, &ev), EMBER_OK);
        if (ev.kind == EMBER_EVENT_TOKEN) n++;
    } while (ev.kind == EMBER_EVENT_TOKEN);
    CHECK(ev.kind == EMBER_EVENT_FINISHED && ev.index == n);
    CHECK(ev.finish_reason == EMBER_FINISH_LENGTH);
    EXPECT(ember_release(rt, id), EMBER_OK);
    return n;
}

/* A conversation resubmitted turn by turn reuses the earlier turns' KV through the prefix
 * cache; past the context, EMBER_CONTEXT_ERROR refuses it and EMBER_CONTEXT_TRUNCATE leaves
 * the oldest turns out, or lowers max_tokens to the room left. */
static void test_chat_context_policy(const char *chat_model) {
    ember_config c = small_config();
    c.n_ctx = 96;
    c.prefix_caching = true;
    ember_runtime *rt = NULL;
    EXPECT(ember_runtime_new(chat_model, &c, &rt), EMBER_OK);
    if (!rt) return;
    ember_params p = params_n(8);
    ember_chat_message chat[] = {
        {"system", "Be brief."},
        {"user", "Name a color."},
        {"assistant", "Blue, the color of a clear sky at noon, of deep oceans, of sapphires, "
                      "of the evening sea and of cornflowers in a summer field."},
        {"user", "Name a fruit."},
        {"assistant", "An apple, red and crisp, picked in autumn from an old tree in an "
                      "orchard on a hill, sweet and a little sour."},
        {"user", "Name a city."},
    };
    ember_request_id id = SENTINEL;
    ember_stats before, after;
    /* Turn 1, then turn 2 with turn 1 in front: its full blocks come from the cache. */
    EXPECT(ember_submit_chat(rt, chat, 2, &p, &id), EMBER_OK);
    run_to_idle(rt);
    CHECK(drain(rt, id) == 8);
    EXPECT(ember_get_stats(rt, &before), EMBER_OK);
    EXPECT(ember_submit_chat(rt, chat, 4, &p, &id), EMBER_OK);
    run_to_idle(rt);
    CHECK(drain(rt, id) == 8);
    EXPECT(ember_get_stats(rt, &after), EMBER_OK);
    CHECK(after.prefix_hit_tokens - before.prefix_hit_tokens >= 16);
    printf("chat turn 2: %llu prompt tokens from the prefix cache\n",
           (unsigned long long)(after.prefix_hit_tokens - before.prefix_hit_tokens));

    /* All six messages and 8 tokens do not fit 96. */
    id = SENTINEL;
    p.context_policy = 7;
    EXPECT(ember_submit_chat(rt, chat, 6, &p, &id), EMBER_ERR_INVALID_ARGUMENT);
    p.context_policy = EMBER_CONTEXT_ERROR;
    EXPECT(ember_submit_chat(rt, chat, 6, &p, &id), EMBER_ERR_TOO_LARGE);
    CHECK(strstr(ember_last_error(), "context full") != NULL);
    CHECK(id == SENTINEL);
    p.context_policy = EMBER_CONTEXT_TRUNCATE;
    EXPECT(ember_submit_chat(rt, chat, 6, &p, &id), EMBER_OK);
    run_to_idle(rt);
    CHECK(drain(rt, id) == 8);
    CHECK(strcmp(chat[1].content, "Name a color.") == 0); /* the caller's array is untouched */

    /* One message that leaves less than max_tokens: the reply gets the room left. */
    static char longer[400];
    memset(longer, 0, sizeof longer);
    for (int i = 0; i < 60; i++) strcat(longer, "go ");
    ember_chat_message one[] = {{"user", longer}};
    p.max_tokens = 64;
    p.context_policy = EMBER_CONTEXT_ERROR;
    EXPECT(ember_submit_chat(rt, one, 1, &p, &id), EMBER_ERR_TOO_LARGE);
    p.context_policy = EMBER_CONTEXT_TRUNCATE;
    EXPECT(ember_submit_chat(rt, one, 1, &p, &id), EMBER_OK);
    run_to_idle(rt);
    size_t room = drain(rt, id);
    CHECK(room > 0 && room < 64);
    printf("chat over the context: the reply got the %zu tokens left\n", room);
    /* A message longer than the context: refused under either policy. */
    for (int i = 0; i < 60; i++) strcat(longer, "go ");
    EXPECT(ember_submit_chat(rt, one, 1, &p, &id), EMBER_ERR_TOO_LARGE);
    EXPECT(ember_get_stats(rt, &after), EMBER_OK);
    CHECK(after.requests == 0 && after.blocks_used == 0);
    ember_runtime_free(rt);
}

/* Pull every token of sequence 0 of `id` (already computed) into `ids`; returns the count. */
static size_t pull_ids(ember_runtime *rt, ember_request_id id, uint32_t *ids, size_t cap) {
    ember_event ev;
    size_t n = 0;
    for (;;) {
        EXPECT(ember_next(rt, id, 0, &ev), EMBER_OK);
        if (ev.kind != EMBER_EVENT_TOKEN) break;
        if (n < cap) ids[n] = ev.token;
        n++;
    }
    return n;
}

/* A prompt cache saved by one runtime and loaded by a fresh one gives the same tokens with the
 * prompt's full blocks taken from the cache; a damaged file and misuse are refused with the
 * out-parameter untouched. */
static void test_prompt_cache(const char *synth) {
    char path[256], damaged[300];
    snprintf(path, sizeof path, "/tmp/ember-test-api-%d.kvc", (int)getpid());
    snprintf(damaged, sizeof damaged, "%s.damaged", path);
    remove(path);
    uint32_t prompt[40];
    for (int i = 0; i < 40; i++) prompt[i] = (uint32_t)(10 + (i * 7) % 90);
    ember_params p = params_n(5);
    ember_config c = small_config();

    ember_runtime *rt = NULL;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_OK);
    if (!rt) return;
    size_t n = 777;
    EXPECT(ember_prompt_cache_load(rt, path, &n), EMBER_ERR_IO); /* not written yet */
    CHECK(n == 777);
    ember_request_id id = 0;
    EXPECT(ember_submit_tokens(rt, prompt, 40, &p, &id), EMBER_OK);
    EXPECT(ember_prompt_cache_save(rt, id, path, &n), EMBER_OK); /* nothing computed yet */
    CHECK(n == 0 && access(path, F_OK) != 0);
    run_to_idle(rt);
    uint32_t want[8];
    CHECK(pull_ids(rt, id, want, 8) == 5);
    n = 777;
    EXPECT(ember_prompt_cache_save(rt, id, NULL, &n), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_prompt_cache_save(NULL, id, path, &n), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_prompt_cache_save(rt, 12345, path, &n), EMBER_ERR_UNKNOWN_REQUEST);
    EXPECT(ember_prompt_cache_save(rt, id, "/nonexistent-dir/x.kvc", &n), EMBER_ERR_IO);
    CHECK(n == 777);
    EXPECT(ember_prompt_cache_save(rt, id, path, &n), EMBER_OK);
    CHECK(n == 32); /* two full blocks of 16 */
    EXPECT(ember_release(rt, id), EMBER_OK);
    EXPECT(ember_prompt_cache_save(rt, id, path, NULL), EMBER_ERR_UNKNOWN_REQUEST);
    ember_runtime_free(rt);

    /* A damaged copy: one byte flipped in the middle. */
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL);
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *bytes = malloc((size_t)len);
    CHECK(bytes && fread(bytes, 1, (size_t)len, f) == (size_t)len);
    fclose(f);
    bytes[len / 2] ^= 0x20;
    f = fopen(damaged, "wb");
    CHECK(f && fwrite(bytes, 1, (size_t)len, f) == (size_t)len);
    if (f) fclose(f);
    free(bytes);

    rt = NULL;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_OK);
    if (!rt) return;
    n = 777;
    EXPECT(ember_prompt_cache_load(rt, damaged, &n), EMBER_ERR_PROMPT_CACHE);
    CHECK(n == 777 && strstr(ember_last_error(), "damaged") != NULL);
    EXPECT(ember_prompt_cache_load(rt, NULL, &n), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_prompt_cache_load(NULL, path, &n), EMBER_ERR_NULL_POINTER);
    ember_stats s;
    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(s.blocks_cached == 0 && s.blocks_used == 0);
    EXPECT(ember_prompt_cache_load(rt, path, &n), EMBER_OK);
    CHECK(n == 32);
    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(s.blocks_cached == 2);
    EXPECT(ember_submit_tokens(rt, prompt, 40, &p, &id), EMBER_OK);
    run_to_idle(rt);
    uint32_t got[8];
    CHECK(pull_ids(rt, id, got, 8) == 5 && memcmp(got, want, sizeof(uint32_t) * 5) == 0);
    EXPECT(ember_get_stats(rt, &s), EMBER_OK);
    CHECK(s.prefix_hit_tokens == 32);
    EXPECT(ember_release(rt, id), EMBER_OK);
    ember_runtime_free(rt);
    remove(path);
    remove(damaged);
}

/* Grammar- and schema-constrained requests: every sampled output follows the grammar (the
 * synthetic model's weights are random), and a bad grammar or schema is refused with where and
 * why in ember_last_error. Speculative decoding (draft_k) gives the ids plain decoding gives. */
static void test_grammar_and_speculation(const char *synth) {
    ember_config c = small_config();
    ember_runtime *rt = NULL;
    EXPECT(ember_runtime_new(synth, &c, &rt), EMBER_OK);
    if (!rt) return;
    uint32_t prompt[3] = {10, 20, 30};
    ember_request_id id = 0;
    ember_params p = ember_params_default();
    p.max_tokens = 40;
    p.temperature = 1.0f;
    p.n = 2;
    p.grammar = "root ::= \"{\\\"n\\\": \" [0-9]{1,3} \"}\"";
    EXPECT(ember_submit_tokens(rt, prompt, 3, &p, &id), EMBER_OK);
    run_to_idle(rt);
    for (uint32_t seq = 0; seq < 2; seq++) {
        char text[256] = {0};
        size_t len = 0;
        ember_finish_reason fin = EMBER_FINISH_NONE;
        ember_event ev;
        /* Pull sequence `seq` event by event, gathering its text. */
        for (;;) {
            ember_result r = ember_next_seq(rt, id, seq, 0, &ev);
            EXPECT(r, EMBER_OK);
            if (r != EMBER_OK) break;
            if (ev.text_len && len + ev.text_len < sizeof text) {
                memcpy(text + len, ev.text, ev.text_len);
                len += ev.text_len;
            }
            if (ev.kind == EMBER_EVENT_FINISHED) {
                fin = ev.finish_reason;
                break;
            }
        }
        int v = -1;
        char close = 0;
        CHECK(fin == EMBER_FINISH_EOS);
        CHECK(sscanf(text, "{\"n\": %d%c", &v, &close) == 2 && close == '}' && v >= 0 && v < 1000);
    }
    EXPECT(ember_release(rt, id), EMBER_OK);

    p.n = 1;
    p.grammar = "root ::= \"a\"\nroot ::= [z-a]";
    EXPECT(ember_submit_tokens(rt, prompt, 3, &p, &id), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "line 2") != NULL);
    p.grammar = NULL;
    p.json_schema = "{\"allOf\": []}";
    EXPECT(ember_submit_tokens(rt, prompt, 3, &p, &id), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "allOf") != NULL);
    p.grammar = "root ::= \"a\"";
    EXPECT(ember_submit_tokens(rt, prompt, 3, &p, &id), EMBER_ERR_INVALID_ARGUMENT);
    p.grammar = NULL;
    p.json_schema = "{\"type\": \"integer\", \"minimum\": 5, \"maximum\": 9}";
    EXPECT(ember_submit_tokens(rt, prompt, 3, &p, &id), EMBER_OK);
    run_to_idle(rt);
    char buf[64];
    size_t len = 0;
    ember_finish_reason fin = EMBER_FINISH_NONE;
    EXPECT(ember_next_text(rt, id, 0, buf, sizeof buf, &len, &fin), EMBER_OK);
    CHECK(fin == EMBER_FINISH_EOS && len >= 1 && buf[0] >= '5' && buf[0] <= '9');
    EXPECT(ember_release(rt, id), EMBER_OK);

    /* Speculative decoding by prompt lookup: the same ids as plain decoding. */
    uint32_t rep[24];
    for (int i = 0; i < 24; i++) rep[i] = (uint32_t)(40 + (i % 4) * 3);
    uint32_t plain[32], spec[32];
    ember_params q = ember_params_default();
    q.max_tokens = 32;
    q.ignore_eos = true;
    EXPECT(ember_submit_tokens(rt, rep, 24, &q, &id), EMBER_OK);
    run_to_idle(rt);
    CHECK(pull_ids(rt, id, plain, 32) == 32);
    EXPECT(ember_release(rt, id), EMBER_OK);
    q.draft_k = 4;
    EXPECT(ember_submit_tokens(rt, rep, 24, &q, &id), EMBER_OK);
    run_to_idle(rt);
    CHECK(pull_ids(rt, id, spec, 32) == 32);
    CHECK(memcmp(plain, spec, sizeof plain) == 0);
    EXPECT(ember_release(rt, id), EMBER_OK);
    q.draft_k = 17;
    EXPECT(ember_submit_tokens(rt, rep, 24, &q, &id), EMBER_ERR_INVALID_ARGUMENT);

    /* A draft model (the synthetic model itself, so every greedy guess is right): draft_k now
     * drafts with it, and the ids are again those of plain decoding. */
    EXPECT(ember_runtime_set_draft_model(NULL, synth), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_runtime_set_draft_model(rt, NULL), EMBER_ERR_NULL_POINTER);
    EXPECT(ember_runtime_set_draft_model(rt, "/nonexistent/draft.gguf"), EMBER_ERR_IO);
    q.draft_k = 0;
    EXPECT(ember_submit_tokens(rt, rep, 24, &q, &id), EMBER_OK);
    EXPECT(ember_runtime_set_draft_model(rt, synth), EMBER_ERR_INVALID_ARGUMENT);
    CHECK(strstr(ember_last_error(), "requests are held") != NULL);
    EXPECT(ember_release(rt, id), EMBER_OK);
    EXPECT(ember_runtime_set_draft_model(rt, synth), EMBER_OK);
    q.draft_k = 4;
    EXPECT(ember_submit_tokens(rt, rep, 24, &q, &id), EMBER_OK);
    run_to_idle(rt);
    memset(spec, 0, sizeof spec);
    CHECK(pull_ids(rt, id, spec, 32) == 32);
    CHECK(memcmp(plain, spec, sizeof plain) == 0);
    EXPECT(ember_release(rt, id), EMBER_OK);
    ember_runtime_free(rt);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SYNTH.gguf [CHAT_MODEL.gguf]\n", argv[0]);
        return 2;
    }
    test_static_functions();
    test_create_misuse(argv[1], argv[0]);

    ember_config c = small_config();
    ember_runtime *rt = NULL;
    EXPECT(ember_runtime_new(argv[1], &c, &rt), EMBER_OK);
    if (!rt) return 1;
    test_submit_misuse(rt);
    test_model_info(rt);
    test_caller_driven(rt);
    test_parallel_samples(rt);
    test_tokenizer(rt);
    test_background_and_stop(rt);
    ember_runtime_free(rt);

    test_stop_wakes_waiters(argv[1]);
    test_free_while_running(argv[1]);
    test_request_limits(argv[1]);
    test_prompt_cache(argv[1]);
    test_grammar_and_speculation(argv[1]);
    if (argc > 2) test_chat(argv[2]);
    if (argc > 2) test_chat_context_policy(argv[2]);

    if (failures) {
        fprintf(stderr, "test_api: %d check(s) failed\n", failures);
        return 1;
    }
    printf("test_api: all checks passed\n");
    return 0;
}
