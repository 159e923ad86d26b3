// Dump every f32 intermediate of one llama.cpp forward (prompt in one batch) to OUT/<name>.bin
#include "llama.h"
#include "ggml.h"
#include "ggml-backend.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
static const char * outdir;
static bool cb(struct ggml_tensor * t, bool ask, void *) {
    if (ask) return t->type == GGML_TYPE_F32;
    if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t)) return true;
    std::vector<float> buf(ggml_nelements(t));
    ggml_backend_tensor_get(t, buf.data(), 0, ggml_nbytes(t));
    std::string p = std::string(outdir) + "/" + t->name + ".bin";
    FILE * f = fopen(p.c_str(), "wb");
    int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
    fwrite(ne, 8, 4, f); fwrite(buf.data(), 4, buf.size(), f); fclose(f);
    return true;
}
int main(int argc, char ** argv) {
    // argv: model outdir id...
    outdir = argv[2];
    llama_backend_init();
    auto mp = llama_model_default_params(); if (getenv("NOREPACK")) mp.use_extra_bufts = false;
    llama_model * m = llama_model_load_from_file(argv[1], mp);
    auto cp = llama_context_default_params();
    cp.n_ctx = 512; cp.n_batch = 512; cp.n_threads = 2; cp.n_threads_batch = 2;
    cp.cb_eval = cb; cp.cb_eval_user_data = nullptr;
    if (getenv("NOFA")) cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    llama_context * ctx = llama_init_from_model(m, cp);
    std::vector<llama_token> ids;
    for (int i = 3; i < argc; i++) ids.push_back(atoi(argv[i]));
    llama_batch b = llama_batch_get_one(ids.data(), ids.size());
    if (llama_decode(ctx, b)) { fprintf(stderr, "decode failed\n"); return 1; }
    const float * lg = llama_get_logits_ith(ctx, -1);
    int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
    int best = 0; for (int i = 1; i < nv; i++) if (lg[i] > lg[best]) best = i;
    printf("top1 %d %f\n", best, lg[best]);
    FILE * f = fopen((std::string(outdir) + "/logits.bin").c_str(), "wb"); fwrite(lg, 4, nv, f); fclose(f);
    return 0;
}
