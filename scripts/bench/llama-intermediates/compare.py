# Compare two directories of tensors written by dump.cpp (llama.cpp) and a patched Ember, in
# graph order: elements that differ, largest difference, relative to the largest magnitude.
import numpy as np, sys, os
A, B = sys.argv[1], sys.argv[2]
def load(p):
    b = open(p,'rb').read(); ne = np.frombuffer(b[:32], dtype=np.int64)
    return np.frombuffer(b[32:], dtype=np.float32).reshape(-1, ne[0])
names = ['inp_scaled']
for l in range(18):
    names += [f'{n}-{l}' for n in ['attn_norm','Qcur_normed','Kcur_normed','Vcur','kqv_out','attn_post_norm','sa_out','ffn_norm','ffn_gate','ffn_up','ffn_geglu','ffn_out','ffn_post_norm','l_out']]
names += ['result_norm','logits']
only = sys.argv[3] if len(sys.argv) > 3 else None
for n in names:
    pa, pb = f'{A}/{n}.bin', f'{B}/{n}.bin'
    if not (os.path.exists(pa) and os.path.exists(pb)): continue
    if only and not n.endswith(only): continue
    a, b = load(pa), load(pb)
    if a.size != b.size:
        # llama: last layer rows reduced to last token
        a = a[-b.shape[0]:] if a.shape[0] > b.shape[0] else a; b = b[-a.shape[0]:]
        a = a.reshape(-1); b = b.reshape(-1)[-a.size:]
    a = a.reshape(-1); b = b.reshape(-1)
    d = np.abs(a - b); ne = (a != b).sum()
    print(f'{n:22s} n={a.size:6d} neq={ne:6d} maxabs={d.max():.3g} rel={d.max()/max(np.abs(a).max(),1e-30):.3g} amax={np.abs(a).max():.3g}')
