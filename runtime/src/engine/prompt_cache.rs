//! Prompt cache files: the prefix cache saved to disk and loaded back, so that a restarted app
//! does not compute its long system prompt again (format: [`crate::kv::cache_file`]).
//!
//! Saving writes the blocks the prefix cache holds for a prompt's leading full blocks, found by
//! their chained hashes exactly as a new request would find them. Loading writes a file's
//! blocks into free blocks of the arena and enters them in the prefix cache, as if a request
//! had just computed that prompt and finished: the next request whose prompt starts with those
//! tokens takes them like any cached prefix and computes only the rest. The scheduler and the
//! forward pass know nothing of files.
//!
//! Loading is all or nothing: the blocks are written while held outside the cache and entered
//! into it only after the whole file — geometry, model fingerprint, length, checksum, token ids,
//! finite values — has been checked. On any error they go back to the pool unhashed and the
//! cache is as it was.

use std::fs::File;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use super::{invalid, Engine};
use crate::error::{Error, Result};
use crate::kv::cache_file::{
    kv_type_code, kv_type_name, CacheHeader, Checksum, CHECKSUM_LEN, HEADER_LEN,
};
use crate::kv::{group_hash, hash_block, BlockHash, BlockId, KvLayout, KvType};

/// What [`Engine::load_prompt_cache`] found in a file and put into the prefix cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptCacheLoad {
    /// The token ids the file's blocks hold: the prompt prefix it was saved for.
    pub tokens: Vec<u32>,
    /// How many leading tokens of `tokens` are now in the prefix cache (fewer than all when the
    /// context or the free blocks of the arena do not hold every block of the file).
    pub loaded_tokens: usize,
}

impl Engine {
    /// Save the KV blocks of `prompt`'s leading full blocks that the prefix cache holds (all of
    /// them right after the prompt was computed) to `path`, replacing it atomically (written
    /// beside it, then renamed). Returns the tokens saved: 0 (and no file written) when the
    /// prompt has no full block in the cache.
    ///
    /// Needs prefix caching ([`EngineConfig::prefix_caching`](super::EngineConfig)).
    pub fn save_prompt_cache(&self, path: &Path, prompt: &[u32]) -> Result<usize> {
        let blocks = self.cached_prefix_blocks(prompt)?;
        if blocks.is_empty() {
            return Ok(0);
        }
        let tmp = sibling_tmp(path);
        let io = |source| Error::Io {
            path: tmp.clone(),
            source,
        };
        let written = (|| {
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp).map_err(io)?);
            let n = self.write_prompt_cache(&mut w, prompt, &blocks, &tmp)?;
            let f = w.into_inner().map_err(|e| io(e.into_error()))?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(n)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Load the prompt cache file at `path` into the prefix cache (see the module docs); the
    /// next request whose prompt starts with [`PromptCacheLoad::tokens`] computes only the rest.
    ///
    /// [`Error::PromptCache`] (nothing loaded) for a file of another model, KV type or block
    /// geometry, or a damaged or truncated one; [`Error::Io`] when it cannot be read. Needs
    /// prefix caching. Blocks are taken from the free list (evicting the least recently used
    /// cached ones): load before submitting, not while the arena is under pressure.
    pub fn load_prompt_cache(&mut self, path: &Path) -> Result<PromptCacheLoad> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let f = File::open(path).map_err(io)?;
        let len = f.metadata().map_err(io)?.len();
        self.read_prompt_cache(&mut BufReader::with_capacity(1 << 20, f), len, path)
    }

    /// The blocks the prefix cache holds for `prompt`'s leading full blocks: per logical block,
    /// one per layer group (`[n][groups]`), up to the first block a group lacks.
    pub(crate) fn cached_prefix_blocks(&self, prompt: &[u32]) -> Result<Vec<BlockId>> {
        if !self.cfg.prefix_caching {
            return Err(invalid(
                "prompt_cache",
                "prompt cache files need prefix caching, which is off",
            ));
        }
        let n_groups = self.backend.kv_groups().len();
        let mut parent = None;
        let mut blocks = Vec::new();
        'blocks: for chunk in prompt.chunks_exact(self.cfg.block_size) {
            let h = hash_block(parent, chunk);
            for g in 0..n_groups {
                let Some(b) = self.pool.lookup(group_hash(h, g)) else {
                    blocks.truncate(blocks.len() - g);
                    break 'blocks;
                };
                blocks.push(b);
            }
            parent = Some(h);
        }
        Ok(blocks)
    }

    /// The layout of a block in a file: every layer of the model, in order.
    fn file_layout(&self) -> KvLayout {
        KvLayout {
            block_layers: self.model.config.n_layer,
            ..self.backend.layout()
        }
    }

    /// Write a prompt cache of `blocks` (the cached blocks of `prompt`'s leading full blocks,
    /// `[n][groups]`) to `w`; `path` names it in errors. Returns the tokens saved.
    pub(crate) fn write_prompt_cache(
        &self,
        w: &mut impl Write,
        prompt: &[u32],
        blocks: &[BlockId],
        path: &Path,
    ) -> Result<usize> {
        let layout = self.file_layout();
        let groups = self.backend.kv_groups();
        let n_blocks = blocks.len() / groups.len();
        let header = CacheHeader {
            kv_type: kv_type_code(layout.kv_type),
            model: self.model.fingerprint(),
            layout,
            n_blocks,
        };
        let n_tokens = n_blocks * layout.block_size;
        let mut sum = Checksum::new();
        let mut put = |bytes: &[u8], last: bool| {
            sum.update(bytes);
            w.write_all(bytes)?;
            if last {
                w.write_all(&sum.finish().to_le_bytes())?;
            }
            Ok(())
        };
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        put(&header.encode(), false).map_err(io)?;
        let ids: Vec<u8> = prompt[..n_tokens]
            .iter()
            .flat_map(|t| t.to_le_bytes())
            .collect();
        put(&ids, false).map_err(io)?;
        let n = layout.keys_bytes();
        let layer = n / layout.block_layers; // one layer's tiles
        let gn = self.backend.layout().keys_bytes();
        let (mut bytes, mut kg, mut vg) = (vec![0u8; 2 * n], vec![0u8; gn], vec![0u8; gn]);
        for (i, group_blocks) in blocks.chunks_exact(groups.len()).enumerate() {
            let (k, v) = bytes.split_at_mut(n);
            for (g, b) in group_blocks.iter().enumerate() {
                self.backend.read_block(b.index(), &mut kg, &mut vg)?;
                for (slot, &l) in groups.layers(g).iter().enumerate() {
                    let (from, to) = (slot * layer..(slot + 1) * layer, l * layer..(l + 1) * layer);
                    k[to.clone()].copy_from_slice(&kg[from.clone()]);
                    v[to].copy_from_slice(&vg[from]);
                }
            }
            put(&bytes, i + 1 == n_blocks).map_err(io)?;
        }
        Ok(n_tokens)
    }

    /// Read a prompt cache of `len` bytes from `r` into the prefix cache; `path` names it in
    /// errors.
    pub(crate) fn read_prompt_cache(
        &mut self,
        r: &mut impl Read,
        len: u64,
        path: &Path,
    ) -> Result<PromptCacheLoad> {
        if !self.cfg.prefix_caching {
            return Err(invalid(
                "prompt_cache",
                "prompt cache files need prefix caching, which is off",
            ));
        }
        let bad = |what: String| Error::PromptCache {
            path: path.to_path_buf(),
            what,
        };
        let mut sum = Checksum::new();
        let mut head = [0u8; HEADER_LEN];
        read(r, &mut head, path)?;
        sum.update(&head);
        let h = CacheHeader::decode(&head).map_err(bad)?;
        self.check_header(&h, len).map_err(bad)?;
        let n_tokens = h.n_tokens().expect("file_len checked it");
        let mut raw = vec![0u8; 4 * n_tokens];
        read(r, &mut raw, path)?;
        sum.update(&raw);
        let tokens: Vec<u32> = raw
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect();
        // Blocks are held here (ref count 1, no hash) until everything is checked.
        let mut held: Vec<(BlockId, Option<BlockHash>)> = Vec::new();
        let loaded = self.read_blocks(r, &h, &tokens, &mut sum, &mut held, path);
        let checked = loaded.and_then(|()| {
            let mut tail = [0u8; CHECKSUM_LEN];
            read(r, &mut tail, path)?;
            if u64::from_le_bytes(tail) != sum.finish() {
                return Err(bad("damaged (checksum mismatch)".into()));
            }
            let n_vocab = self.model.config.n_vocab;
            match tokens.iter().find(|&&t| t as usize >= n_vocab) {
                Some(t) => Err(bad(format!(
                    "token id {t} is outside the vocabulary ({n_vocab})"
                ))),
                None => Ok(()),
            }
        });
        // Last block first, like a finished sequence: the LRU free list then evicts a prefix's
        // tail before its head.
        for &(b, hash) in held.iter().rev() {
            if let (Ok(()), Some(hash)) = (&checked, hash) {
                self.pool.set_hash(b, hash);
            }
            self.pool.free(b);
        }
        checked?;
        let loaded_tokens = held.len() / self.backend.kv_groups().len() * h.layout.block_size;
        Ok(PromptCacheLoad {
            tokens,
            loaded_tokens,
        })
    }

    /// The header's model, KV type and geometry must be this engine's, and `len` the length
    /// it gives.
    fn check_header(&self, h: &CacheHeader, len: u64) -> std::result::Result<(), String> {
        let layout = self.file_layout();
        if h.kv_type != kv_type_code(layout.kv_type) {
            return Err(format!(
                "KV type {}, this engine stores {}",
                kv_type_name(h.kv_type),
                layout.kv_type
            ));
        }
        let ours = self.model.fingerprint();
        if h.model != ours {
            return Err(format!(
                "written for another model (fingerprint {:#018x}, this model's is {ours:#018x})",
                h.model
            ));
        }
        if h.layout != layout {
            let g = |l: &KvLayout| {
                format!(
                    "blocks of {} tokens, {} layers × {} KV heads × {} dims",
                    l.block_size, l.block_layers, l.n_kv_head, l.head_dim
                )
            };
            return Err(format!(
                "written for {}, this engine has {}",
                g(&h.layout),
                g(&layout)
            ));
        }
        let want = h.file_len().ok_or("damaged header (impossible sizes)")?;
        if len != want {
            return Err(if len < want {
                format!("truncated ({len} bytes, its header promises {want})")
            } else {
                format!(
                    "damaged ({len} bytes, {} more than its header promises)",
                    len - want
                )
            });
        }
        Ok(())
    }

    /// Read the file's blocks, writing into the arena every block the context and the free
    /// list have room for (stopping at the first that does not fit: a prefix must be whole);
    /// blocks already in the prefix cache are held, not written again. Each logical block is
    /// one block per layer group, its layers gathered from the file's.
    fn read_blocks(
        &mut self,
        r: &mut impl Read,
        h: &CacheHeader,
        tokens: &[u32],
        sum: &mut Checksum,
        held: &mut Vec<(BlockId, Option<BlockHash>)>,
        path: &Path,
    ) -> Result<()> {
        let bs = h.layout.block_size;
        let n = h.layout.keys_bytes();
        let layer = n / h.layout.block_layers.max(1);
        let n_groups = self.backend.kv_groups().len();
        let gn = self.backend.layout().keys_bytes();
        let usable = h.n_blocks.min(self.n_ctx / bs);
        let (mut bytes, mut kg, mut vg) = (vec![0u8; 2 * n], vec![0u8; gn], vec![0u8; gn]);
        let mut parent = None;
        let mut room = true;
        for i in 0..h.n_blocks {
            read(r, &mut bytes, path)?;
            sum.update(&bytes);
            if !room || i >= usable {
                continue;
            }
            let hash = hash_block(parent, &tokens[i * bs..(i + 1) * bs]);
            parent = Some(hash);
            if !all_finite(h.layout.kv_type, &bytes) {
                return Err(Error::PromptCache {
                    path: path.to_path_buf(),
                    what: format!("damaged (block {i} holds a non-finite key or value)"),
                });
            }
            let held_before = held.len();
            for g in 0..n_groups {
                let gh = group_hash(hash, g);
                if let Some(b) = self.pool.lookup(gh) {
                    // Already cached (loaded before, or computed): keep it from eviction
                    // meanwhile.
                    self.pool.retain(b);
                    held.push((b, None));
                    continue;
                }
                let Some(b) = self.pool.allocate() else {
                    // Not this logical block after all: give back what it took.
                    for (b, _) in held.drain(held_before..) {
                        self.pool.free(b);
                    }
                    room = false;
                    break;
                };
                held.push((b, Some(gh)));
                let (k, v) = bytes.split_at(n);
                let groups = self.backend.kv_groups();
                for (slot, &l) in groups.layers(g).iter().enumerate() {
                    let (to, from) = (slot * layer..(slot + 1) * layer, l * layer..(l + 1) * layer);
                    kg[to.clone()].copy_from_slice(&k[from.clone()]);
                    vg[to].copy_from_slice(&v[from]);
                }
                self.backend.write_block(b.index(), &kg, &vg)?;
            }
        }
        Ok(())
    }
}

/// Whether every f16 of the rows in `src` (every element for f16 rows, every block scale of
/// quantized ones) is finite: ±inf and NaN (every exponent bit set) are stored by no forward
/// pass. A plain fold, so that it vectorizes: this runs over every byte of a cache.
fn all_finite(ty: KvType, src: &[u8]) -> bool {
    let bad = |b: &[u8]| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00;
    match ty {
        KvType::F16 => !src.chunks_exact(2).fold(false, |acc, b| acc | bad(b)),
        KvType::Q8_0 => !src.chunks_exact(34).any(bad),
        KvType::Q4_0 => !src.chunks_exact(18).any(bad),
    }
}

/// Fill `buf` from `r`; the end of the file is a truncated cache.
fn read(r: &mut impl Read, buf: &mut [u8], path: &Path) -> Result<()> {
    r.read_exact(buf).map_err(|source| {
        if source.kind() == ErrorKind::UnexpectedEof {
            Error::PromptCache {
                path: path.to_path_buf(),
                what: "truncated (the file ends early)".into(),
            }
        } else {
            Error::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// `path` with `.tmp.PID` appended: written, then renamed over `path`.
fn sibling_tmp(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".tmp.{}", std::process::id()));
    PathBuf::from(s)
}
