//! Context shift (llama.cpp's): a generation that reaches the end of the context drops a
//! window of its oldest tokens after the first ones and goes on, instead of stopping.
//!
//! With paged KV this is a matter of block tables: the first `keep` tokens' blocks stay; the
//! next half of the rest (whole blocks) leave the table and go back to the pool, where they
//! stay in the prefix cache under their old prefix (their contents did not change); the blocks
//! after them move down in the table, and their keys are rotated back by the number of
//! positions they moved (RoPE by `-delta`, [`Backend::shift_keys`]), which is what computing
//! them at their new positions would give, up to the f16 rounding of the rotation. Values are
//! position-free and stay as they are. Nothing is recomputed.
//!
//! A moved block that another sequence shares, or that the prefix cache indexes under its old
//! prefix, is copied first (its old contents stay valid for the others). After a shift the
//! sequence's KV no longer equals a fresh computation of its tokens bit for bit, so none of
//! its later blocks enter the prefix cache. A preempted shifted sequence is recomputed from its
//! tokens as they are after the shift.

use super::{Engine, FinishReason};
use crate::error::{Error, Result};
use crate::kv::BlockId;

/// What a generation does when it reaches the end of the context (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextShift {
    /// Tokens at the start that are never dropped (a system prompt), rounded up to whole KV
    /// blocks; the first block is always kept (it holds BOS, which models attend to heavily).
    pub keep: usize,
}

impl Engine {
    /// Blocks a shift keeps at the start, for `keep` tokens.
    pub(super) fn shift_keep_blocks(&self, keep: usize) -> usize {
        keep.div_ceil(self.cfg.block_size).max(1)
    }

    /// Check a context shift: at least two blocks of the context must be left to drop and move
    /// after the kept ones ([`Error::InvalidParam`] otherwise). [`Engine::submit`] checks every
    /// request's; a server checks its default once at start-up.
    pub fn check_shift(&self, s: &ContextShift) -> Result<()> {
        let bs = self.cfg.block_size;
        let keep_b = self.shift_keep_blocks(s.keep);
        if keep_b + 2 > self.n_ctx / bs {
            return Err(Error::InvalidParam {
                name: "context_shift.keep",
                what: format!(
                    "{} tokens ({keep_b} blocks of {bs}) leave nothing to shift in a context of \
                     {} tokens: keep at most {}",
                    s.keep,
                    self.n_ctx,
                    (self.n_ctx / bs).saturating_sub(2) * bs
                ),
            });
        }
        Ok(())
    }

    /// Shift sequence `slot`, whose newest token has no position left in the context. On
    /// failure the sequence ends (with [`FinishReason::Length`] when the arena has no block for
    /// a copy, changing nothing; with [`FinishReason::Error`] when the device failed).
    pub(super) fn shift_or_finish(&mut self, slot: u32) {
        match self.shift_context(slot) {
            Ok(true) => self.metrics.context_shifts += 1,
            Ok(false) => self.finish_seq(slot, FinishReason::Length),
            Err(e) => {
                self.finish_seq(slot, FinishReason::Error);
                self.seq_mut(slot).out.error = Some(e);
            }
        }
    }

    /// The shift itself; `Ok(false)` when the arena lacks the blocks its copies need (nothing
    /// changed). Every layer group shifts alike; blocks a sliding-window group released (out of
    /// its window, never the kept ones) are neither freed nor moved again.
    fn shift_context(&mut self, slot: u32) -> Result<bool> {
        let bs = self.cfg.block_size;
        let seq = self.seqs[slot as usize].as_ref().expect("live sequence");
        let shift = seq.shift.expect("a shifting sequence");
        debug_assert!(seq.draft == 0 && seq.pending() == 1);
        let keep_b = self.shift_keep_blocks(shift.keep);
        let (t, n_groups) = (&seq.table, seq.table.groups());
        let len_b = t.len();
        // Checked at submit: keep_b + 2 <= n_ctx / bs <= len_b.
        let drop_b = ((len_b - keep_b) / 2).max(1);
        let moved = keep_b + drop_b..len_b;
        let held = |g: usize, i: usize| Some(t.group(g)[i]).filter(|&b| b != BlockId::NULL);
        // A moved block is copied first when others hold it or the prefix cache indexes it.
        let copied = |g: usize, i: usize| {
            held(g, i).is_some_and(|b| i < seq.block_hashes.len() || self.pool.ref_count(b) > 1)
        };
        let mut freed = 0;
        let mut shared_copies = 0;
        let mut any_copy = false;
        for g in 0..n_groups {
            freed += (keep_b..keep_b + drop_b)
                .filter(|&i| held(g, i).is_some_and(|b| self.pool.ref_count(b) == 1))
                .count();
            shared_copies += moved
                .clone()
                .filter(|&i| copied(g, i) && self.pool.ref_count(t.group(g)[i]) > 1)
                .count();
            any_copy |= moved.clone().any(|i| copied(g, i));
        }
        if self.pool.num_free() + freed < shared_copies + usize::from(any_copy) {
            return Ok(false);
        }
        let cached_upto = seq.block_hashes.len();

        let (pool, backend) = (&mut self.pool, &mut self.backend);
        let pairing = self.model.config.rope_pairing;
        let seq = self.seqs[slot as usize].as_mut().expect("live sequence");
        let (keep_t, delta) = (keep_b * bs, drop_b * bs);
        // Tokens and bookkeeping: the dropped window leaves the token list.
        let from_prompt = seq.n_prompt.clamp(keep_t, keep_t + delta) - keep_t;
        seq.n_prompt -= from_prompt;
        seq.dropped_generated += delta - from_prompt;
        seq.tokens.drain(keep_t..keep_t + delta);
        seq.num_computed -= delta;
        seq.block_hashes.truncate(keep_b);
        seq.shifted = true;
        seq.out.shifted_tokens += delta;
        seq.table.remove(keep_b..keep_b + drop_b, pool);
        for g in 0..n_groups {
            for i in keep_b..seq.table.len() {
                let old = seq.table.group(g)[i];
                if old == BlockId::NULL {
                    continue;
                }
                // Its index before the shift was i + drop_b (see `copied` above).
                let copy = i + drop_b < cached_upto || pool.ref_count(old) > 1;
                let b = if copy {
                    let new = pool.allocate().expect("free blocks counted above");
                    if let Err(e) = backend.copy_slots(old.index(), new.index(), bs) {
                        pool.free(new);
                        return Err(e);
                    }
                    seq.table.replace(g, i, new);
                    pool.free(old);
                    new
                } else {
                    old
                };
                backend.shift_keys(b.index(), g, delta, pairing, &self.scratch)?;
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::run_to_end;
    use super::*;
    use crate::engine::{EngineConfig, KvBudget, RequestId, RequestParams, Speculative};
    use crate::gguf::GgufFile;
    use crate::model::Model;
    use crate::synth::{synth_gguf, SynthSpec};

    const N_CTX: usize = 32;
    const BS: usize = 4;

    fn model(arch: &str) -> Model {
        let spec = SynthSpec {
            arch: arch.into(),
            n_embd: 32,
            n_layer: 2,
            n_head: 4,
            n_head_kv: 2,
            n_ff: 64,
            n_ctx: 64,
            weight_type: ember_kernels::GgmlType::F32,
            embd_type: ember_kernels::GgmlType::F32,
            sliding_window: 16,
            ..SynthSpec::default()
        };
        let bytes = synth_gguf(&spec).unwrap().to_bytes().unwrap();
        Model::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap()
    }

    fn engine(arch: &str, prefix_caching: bool) -> Engine {
        let cfg = EngineConfig {
            n_ctx: N_CTX,
            kv_budget: KvBudget::Blocks(40),
            block_size: BS,
            max_seqs: 4,
            max_batch_tokens: 64,
            max_requests: 8,
            threads: 1,
            prefix_caching,
            ..EngineConfig::default()
        };
        Engine::new(model(arch), cfg).unwrap()
    }

    fn prompt(n: usize) -> Vec<u32> {
        (0..n as u32).map(|i| (i * 37 + 11) % 250 + 3).collect()
    }

    fn shifting(max_tokens: usize, keep: usize) -> RequestParams {
        RequestParams {
            max_tokens,
            ignore_eos: true,
            context_shift: Some(ContextShift { keep }),
            ..RequestParams::default()
        }
    }

    fn ids(e: &Engine, id: RequestId) -> Vec<u32> {
        e.output(id).unwrap().next().unwrap().ids.clone()
    }

    /// Layer 0's keys of `blocks` (they depend on the token and its position only, not on the
    /// context), and its values, as f32.
    fn layer0(e: &Engine, blocks: &[crate::kv::BlockId]) -> (Vec<f32>, Vec<f32>) {
        let l = e.backend.layout();
        let n = l.n_kv_head * l.tile_bytes();
        let (mut k, mut v) = (vec![0u8; l.keys_bytes()], vec![0u8; l.keys_bytes()]);
        let (mut ks, mut vs) = (Vec::new(), Vec::new());
        let mut row = vec![0f32; l.head_dim];
        for b in blocks {
            e.backend.read_block(b.index(), &mut k, &mut v).unwrap();
            for (src, dst) in [(&k, &mut ks), (&v, &mut vs)] {
                for r in src[..n].chunks_exact(l.row_bytes()) {
                    l.kv_type.load_row(r, &mut row);
                    dst.extend_from_slice(&row);
                }
            }
        }
        (ks, vs)
    }

    /// After a shift the sequence's tokens are the old ones less the dropped window, and the
    /// moved blocks' keys are the keys of those tokens at their new positions: layer 0's equal,
    /// to f16 rounding, a fresh computation of the shifted tokens (llama's and gemma3's pairing
    /// and RoPE tables, gemma3's sliding-window one included); its values are unchanged. The
    /// generation then runs to `max_tokens`, past the context, and every block comes back.
    #[test]
    fn shifted_keys_equal_keys_computed_at_the_new_positions() {
        for arch in ["llama", "qwen2", "gemma3"] {
            let mut e = engine(arch, false);
            let p = prompt(26);
            let id = e.submit(&p, &shifting(40, 0)).unwrap();
            while e.metrics().context_shifts == 0 {
                e.step().unwrap();
            }
            let s = e.request(id).unwrap().seqs[0];
            let seq = e.seqs[s as usize].as_ref().unwrap();
            // 8 blocks of 4: the first kept, (8 - 1) / 2 = 3 dropped (12 tokens).
            assert_eq!(seq.tokens.len(), N_CTX + 1 - 12, "{arch}");
            assert_eq!(&seq.tokens[..4], &p[..4]);
            assert_eq!(&seq.tokens[4..14], &p[16..26]);
            assert_eq!(seq.out.shifted_tokens, 12);
            let tokens = seq.tokens[..seq.num_computed].to_vec();
            let moved = seq.table.blocks()[1..].to_vec();
            let (k, v) = layer0(&e, &moved);

            let mut fresh = engine(arch, false);
            let f = fresh.submit_scoring(&tokens, 0..0).unwrap();
            run_to_end(&mut fresh);
            let fs = fresh.request(f).unwrap().seqs[0];
            let blocks = fresh.seqs[fs as usize].as_ref().unwrap().table.blocks()[1..].to_vec();
            let (fk, fv) = layer0(&fresh, &blocks);
            // Only the slots the moved tokens fill (the last block is partly empty).
            let n_kv = e.backend.layout().n_kv_head;
            let hd = e.backend.layout().head_dim;
            let filled = tokens.len() - BS;
            let tile = n_kv * BS * hd;
            for (bi, ((kb, fkb), (vb, fvb))) in k
                .chunks(tile)
                .zip(fk.chunks(tile))
                .zip(v.chunks(tile).zip(fv.chunks(tile)))
                .enumerate()
            {
                for h in 0..n_kv {
                    for slot in 0..BS.min(filled - bi * BS) {
                        let at = (h * BS + slot) * hd;
                        let what = format!("{arch}: block {bi} head {h} slot {slot}");
                        for (a, b) in kb[at..at + hd].iter().zip(&fkb[at..at + hd]) {
                            assert!((a - b).abs() <= 2e-3 + 2e-3 * b.abs(), "{what}: {a} vs {b}");
                        }
                        assert_eq!(
                            vb[at..at + hd],
                            fvb[at..at + hd],
                            "{what}: values move as is"
                        );
                    }
                }
            }
            run_to_end(&mut e);
            let out = e.output(id).unwrap().next().unwrap();
            assert_eq!(out.ids.len(), 40, "{arch}");
            assert_eq!(out.finish, Some(FinishReason::Length));
            assert!(
                out.shifted_tokens >= 24,
                "{arch}: 26 + 40 tokens in 32 need two shifts"
            );
            e.release(id).unwrap();
            assert_eq!(e.pool.num_used(), 0, "{arch}: every block back");
            e.pool.check_invariants().unwrap();
        }
    }

    /// A shift never changes what others see: blocks the prefix cache holds and blocks a
    /// sibling shares are copied before they are rotated. A later request with the same
    /// prompt, served from the cache, generates what a fresh engine generates; so does the
    /// sibling of a shifting `n = 2` request, whatever its own shifts.
    #[test]
    fn shifts_copy_cached_and_shared_blocks() {
        let p = prompt(26);
        let plain = RequestParams {
            max_tokens: 4,
            ignore_eos: true,
            ..RequestParams::default()
        };
        let mut fresh = engine("llama", false);
        let f = fresh.submit(&p, &plain).unwrap();
        run_to_end(&mut fresh);
        let want = ids(&fresh, f);

        let mut e = engine("llama", true);
        let a = e
            .submit(
                &p,
                &RequestParams {
                    n: 2,
                    ..shifting(30, 0)
                },
            )
            .unwrap();
        run_to_end(&mut e);
        let outs: Vec<_> = e
            .output(a)
            .unwrap()
            .map(|o| (o.ids.len(), o.shifted_tokens))
            .collect();
        assert_eq!(outs, [(30, 24), (30, 24)]);
        e.release(a).unwrap();
        let b = e.submit(&p, &plain).unwrap();
        run_to_end(&mut e);
        assert!(
            e.output(b).unwrap().next().unwrap().n_cached > 0,
            "served from the cache"
        );
        assert_eq!(ids(&e, b), want);
        e.release(b).unwrap();
        assert_eq!(e.pool.num_used(), 0);
        e.pool.check_invariants().unwrap();
    }

    /// Greedy, the same request shifts the same way twice (the shift is deterministic), and a
    /// shifting request whose tokens fit the context generates exactly what a plain one does.
    #[test]
    fn shift_is_deterministic_and_inert_when_the_context_suffices() {
        let p = prompt(10);
        let mut e = engine("llama", false);
        let a = e.submit(&p, &shifting(60, 4)).unwrap();
        let b = e.submit(&p, &shifting(60, 4)).unwrap();
        run_to_end(&mut e);
        assert_eq!(ids(&e, a), ids(&e, b));
        let c = e.submit(&p, &shifting(20, 4)).unwrap();
        let plain = RequestParams {
            max_tokens: 20,
            ignore_eos: true,
            ..RequestParams::default()
        };
        let d = e.submit(&p, &plain).unwrap();
        run_to_end(&mut e);
        assert_eq!(ids(&e, c), ids(&e, d));
        assert_eq!(e.output(c).unwrap().next().unwrap().shifted_tokens, 0);
    }

    #[test]
    fn bad_shift_requests_are_refused() {
        let mut e = engine("llama", false);
        let p = prompt(10);
        // 32 tokens are 8 blocks: keeping 7 leaves nothing to drop and move.
        let err = e.submit(&p, &shifting(40, 25)).unwrap_err().to_string();
        assert!(err.contains("keep at most 24"), "{err}");
        let spec = RequestParams {
            speculative: Some(Speculative::lookup(4)),
            ..shifting(40, 0)
        };
        let err = e.submit(&p, &spec).unwrap_err().to_string();
        assert!(err.contains("do not go together"), "{err}");
        // Without a shift, prompt + max_tokens must fit; with one, only the prompt.
        let plain = RequestParams {
            max_tokens: 40,
            ..RequestParams::default()
        };
        assert!(matches!(
            e.submit(&p, &plain),
            Err(Error::ContextFull { .. })
        ));
        assert!(matches!(
            e.submit(&prompt(32), &shifting(4, 0)),
            Err(Error::PromptTooLong { .. })
        ));
        assert!(e.submit(&p, &shifting(1000, 0)).is_ok());
    }
}
