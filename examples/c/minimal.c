/* The README's example: stream a completion, background engine. ./minimal MODEL.gguf */
#include <ember.h>
#include <stdio.h>

int main(int argc, char **argv) {
    ember_runtime *rt;
    if (argc < 2 || ember_runtime_new(argv[1], NULL, &rt) != EMBER_OK) {
        fprintf(stderr, "usage: %s MODEL.gguf (%s)\n", argv[0], ember_last_error());
        return 1;
    }
    ember_params params = ember_params_default(); /* greedy */
    params.max_tokens = 16;
    ember_request_id id;
    if (ember_submit(rt, "The capital of France is", &params, &id) == EMBER_OK) {
        ember_start(rt); /* one internal thread steps the engine */
        ember_event ev;
        while (ember_next(rt, id, EMBER_WAIT_FOREVER, &ev) == EMBER_OK &&
               ev.kind == EMBER_EVENT_TOKEN)
            fwrite(ev.text, 1, ev.text_len, stdout); /* text may hold U+0000: use text_len */
        putchar('\n');
        ember_release(rt, id);
    }
    ember_runtime_free(rt);
    return 0;
}
