/*
 * harness.h: what the multi-threaded C API tests (stress.c, soak.c) share: a small seeded
 * generator, the failure counter macro, the synthetic vocabulary's end-of-generation ids, and
 * the end-of-run check that the arena is empty and every request released.
 */
#ifndef EMBER_TEST_HARNESS_H
#define EMBER_TEST_HARNESS_H

#include <ember.h>

#include <stdio.h>

/* xorshift64: the same sequence on every platform, so a failing run can be repeated. */
static inline uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Count a failure in `res->failures` and say why, with the thread's last API error. */
#define FAIL(res, ...)                                                  \
    do {                                                                \
        fprintf(stderr, __VA_ARGS__);                                   \
        fprintf(stderr, " (last error: %s)\n", ember_last_error());     \
        (res)->failures++;                                              \
    } while (0)

/* The ids of `<|endoftext|>` and `<|im_end|>` (the synthetic model's end-of-generation tokens)
 * into eog[0..2]; 0 when the model has no such pair. */
static inline int find_eog_ids(ember_runtime *rt, uint32_t eog[2]) {
    size_t n = 0;
    if (ember_tokenize(rt, "<|endoftext|><|im_end|>", false, true, eog, 2, &n) != EMBER_OK ||
        n != 2) {
        fprintf(stderr, "cannot find the end-of-generation ids: %s\n", ember_last_error());
        return 0;
    }
    return 1;
}

/* 1 when no block is held and no request is left, else 0 (and says what is left). */
static inline int arena_is_empty(const ember_stats *s) {
    if (s->blocks_used != 0 || s->blocks_free != s->blocks_total || s->requests != 0) {
        fprintf(stderr, "arena not empty: %llu used, %llu free of %llu, %llu requests\n",
                (unsigned long long)s->blocks_used, (unsigned long long)s->blocks_free,
                (unsigned long long)s->blocks_total, (unsigned long long)s->requests);
        return 0;
    }
    return 1;
}

#endif
