/*
 * generate.c: stream one completion to stdout, caller-driven (the program's own loop steps the
 * engine; Ember creates no thread besides the compute workers of `threads`).
 *
 *   cc generate.c $(pkg-config --cflags --libs ember) -o generate
 *   ./generate MODEL.gguf "The capital of France is" [MAX_TOKENS]
 *
 * EMBER_THREADS=N sets the compute threads (default: one per physical core; 1: none extra).
 */
#include <ember.h>

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT [MAX_TOKENS]\n", argv[0]);
        return 2;
    }
    ember_config config = ember_config_default();
    config.kv_bytes = 32u << 20; /* one short completion needs little KV memory */
    const char *threads = getenv("EMBER_THREADS");
    if (threads) config.threads = (uint32_t)atoi(threads);

    ember_runtime *rt = NULL;
    if (ember_runtime_new(argv[1], &config, &rt) != EMBER_OK) {
        fprintf(stderr, "error: %s\n", ember_last_error());
        return 1;
    }
    ember_params params = ember_params_default(); /* greedy */
    params.max_tokens = argc > 3 ? (uint32_t)atoi(argv[3]) : 32;
    ember_request_id id;
    if (ember_submit(rt, argv[2], &params, &id) != EMBER_OK) {
        fprintf(stderr, "error: %s\n", ember_last_error());
        ember_runtime_free(rt);
        return 1;
    }
    ember_finish_reason reason = EMBER_FINISH_NONE;
    int status = 0;
    while (reason == EMBER_FINISH_NONE) {
        if (ember_step(rt, NULL) != EMBER_OK) {
            fprintf(stderr, "\nerror: %s\n", ember_last_error());
            status = 1;
            break;
        }
        ember_event ev;
        while (ember_next(rt, id, 0, &ev) == EMBER_OK) { /* 0: do not wait */
            if (ev.kind == EMBER_EVENT_FINISHED) {
                reason = ev.finish_reason;
                break;
            }
            fwrite(ev.text, 1, ev.text_len, stdout);
            fflush(stdout);
        }
    }
    static const char *names[] = {"none", "eos", "length", "stop", "cancelled", "error"};
    ember_stats stats;
    if (ember_get_stats(rt, &stats) == EMBER_OK)
        fprintf(stderr, "\n[finish: %s, %llu tokens, %.1f tok/s]\n",
                reason <= EMBER_FINISH_ERROR ? names[reason] : "?",
                (unsigned long long)stats.tokens_generated, stats.generated_tok_s);
    ember_release(rt, id);
    ember_runtime_free(rt);
    return status;
}
