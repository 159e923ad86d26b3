/*
 * greedy.c: greedy completions of several prompts through the C API, all submitted at once and
 * batched by the engine in caller-driven mode. Prints one line per prompt: the generated ids,
 * space-separated. scripts/ci/test-ffi.sh compares them with `ember generate --temp 0 --json`.
 *
 *   greedy MODEL.gguf N_TOKENS PROMPT...
 *
 * EMBER_BACKEND=cpu|cuda|auto and EMBER_CUDA_WEIGHTS=upload|mapped choose the backend (default
 * auto, upload): scripts/device/device-ffi.sh compares the GPU's ids with the CPU's.
 */
#include <ember.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL.gguf N_TOKENS PROMPT...\n", argv[0]);
        return 2;
    }
    int n_prompts = argc - 3;
    ember_config c = ember_config_default();
    c.kv_bytes = 64u << 20;
    const char *backend = getenv("EMBER_BACKEND");
    if (backend && strcmp(backend, "cpu") == 0) c.backend = EMBER_BACKEND_CPU;
    if (backend && strcmp(backend, "cuda") == 0) c.backend = EMBER_BACKEND_CUDA;
    const char *weights = getenv("EMBER_CUDA_WEIGHTS");
    if (weights && strcmp(weights, "mapped") == 0) c.cuda_weights = EMBER_CUDA_WEIGHTS_MAPPED;
    ember_runtime *rt = NULL;
    if (ember_runtime_new(argv[1], &c, &rt) != EMBER_OK) {
        fprintf(stderr, "create: %s\n", ember_last_error());
        return 1;
    }
    ember_params p = ember_params_default(); /* greedy */
    p.max_tokens = (uint32_t)atoi(argv[2]);
    ember_request_id *ids = calloc((size_t)n_prompts, sizeof *ids);
    for (int i = 0; i < n_prompts; i++) {
        if (ember_submit(rt, argv[3 + i], &p, &ids[i]) != EMBER_OK) {
            fprintf(stderr, "submit: %s\n", ember_last_error());
            return 1;
        }
    }
    bool more = true;
    while (more) {
        if (ember_step(rt, &more) != EMBER_OK) {
            fprintf(stderr, "step: %s\n", ember_last_error());
            return 1;
        }
    }
    for (int i = 0; i < n_prompts; i++) {
        ember_event ev;
        const char *sep = "";
        while (ember_next(rt, ids[i], 0, &ev) == EMBER_OK && ev.kind == EMBER_EVENT_TOKEN) {
            printf("%s%u", sep, ev.token);
            sep = " ";
        }
        printf("\n");
        ember_release(rt, ids[i]);
    }
    free(ids);
    ember_runtime_free(rt);
    return 0;
}
