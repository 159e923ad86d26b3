//! Tokenizer built in code from a GGUF file's `tokenizer.ggml.*` metadata, reproducing
//! llama.cpp's `llama_vocab` ids exactly.
//!
//! Two vocabulary types are supported:
//! - `gpt2`: byte-level BPE (`bpe.rs`), with the pre-tokenizer regexes chosen by
//!   `tokenizer.ggml.pre`;
//! - `llama`: SentencePiece BPE with byte fallback (`spm.rs`).
//!
//! Encoding first splits special tokens out of the text, then runs the model on each plain
//! fragment, as llama.cpp's `tokenizer_st_partition` does: control (type 3) and unknown (type 2)
//! tokens are recognised only with `parse_special`; user-defined tokens (type 4) always are.
//! Longer special tokens are split out first.
//!
//! Like llama.cpp, loading also applies its text-based fix-ups: tokens such as `<|im_end|>`,
//! `<|endoftext|>` or `<end_of_turn>` are forced to *control* and marked end-of-generation, and
//! FIM tokens (`<reponame>`, `<|fim_pad|>`, ...) are forced to control, the pad/repo/sep ones
//! being end-of-generation too. Warning: this changes how such text tokenizes with
//! `parse_special = false`, which is what llama.cpp does.
//!
//! Token pieces ([`Tokenizer::token_bytes`]) are rendered once at load into one byte blob.

mod bpe;
mod error;
mod spm;
mod stream;
mod vocab;

#[cfg(test)]
mod bpe_tests;
#[cfg(test)]
mod tests;

pub use error::TokenizerError;
pub use stream::StreamDecoder;

use bpe::{ByteLevelBpe, PreConfig};
use spm::Spm;
use vocab::VocabIndex;

/// What the GGUF says about the vocabulary (`tokenizer.ggml.*` keys).
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: `"smollm"`, `"llama-bpe"`, `"qwen2"`, `"default"`, ...
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, index = id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (may be empty: all normal). 1 normal, 2 unknown, 3 control,
    /// 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (may be empty: all 0). Used by SentencePiece.
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges` (`"a b"`), `gpt2` only.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unk: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
}

/// llama.cpp's token attribute, from `tokenizer.ggml.token_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl Attr {
    fn from_type(t: i32) -> Attr {
        match t {
            1 => Attr::Normal,
            2 => Attr::Unknown,
            3 => Attr::Control,
            4 => Attr::UserDefined,
            5 => Attr::Unused,
            6 => Attr::Byte,
            _ => Attr::Undefined,
        }
    }
}

/// End-of-generation texts llama.cpp recognises (forced to control).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];
/// Texts llama.cpp takes as the EOT token when `eot_token_id` is absent (forced to control).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
/// FIM token texts llama.cpp detects, by role; `true` marks roles that end generation.
const FIM_TEXTS: &[(&[&str], bool)] = &[
    (
        &[
            "<|fim_prefix|>",
            "<fim-prefix>",
            "<fim_prefix>",
            "<｜fim▁begin｜>",
            "<PRE>",
            "▁<PRE>",
            "<|code_prefix|>",
        ],
        false,
    ),
    (
        &[
            "<|fim_suffix|>",
            "<fim-suffix>",
            "<fim_suffix>",
            "<｜fim▁hole｜>",
            "<SUF>",
            "▁<SUF>",
            "<|code_suffix|>",
        ],
        false,
    ),
    (
        &[
            "<|fim_middle|>",
            "<fim-middle>",
            "<fim_middle>",
            "<｜fim▁end｜>",
            "<MID>",
            "▁<MID>",
            "<|code_middle|>",
        ],
        false,
    ),
    (&["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"], true),
    (
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
        true,
    ),
    (&["<|file_sep|>"], true),
];
/// gpt-oss tokens llama.cpp always renders (made user-defined).
const ALWAYS_RENDER: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

enum Model {
    Bpe(Box<ByteLevelBpe>),
    Spm(Box<Spm>),
}

/// A piece of the input after special-token splitting.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// A GGUF vocabulary ready to encode and decode. See the module docs.
pub struct Tokenizer {
    model: Model,
    texts: Vec<String>,
    /// Text → id over `texts`, for the models' lookups.
    index: VocabIndex,
    attrs: Vec<Attr>,
    /// Ids split out of the text before the model runs, longest text first.
    specials: Vec<u32>,
    /// Every token's piece rendered with `special = true`, concatenated.
    pieces: Vec<u8>,
    /// `pieces[offsets[id]..offsets[id + 1]]` is token `id`'s piece.
    offsets: Vec<u32>,
    max_piece: usize,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field(
                "model",
                &match self.model {
                    Model::Bpe(_) => "gpt2",
                    Model::Spm(_) => "llama",
                },
            )
            .field("vocab_size", &self.texts.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("eog", &self.eog)
            .finish()
    }
}

/// Whether `text` may be one of the texts above: each has a `<` among its first four bytes
/// (after an optional `▁` or `_`). Checked first, so the lookups below scan a few hundred
/// tokens rather than the whole vocabulary.
fn may_be_special(text: &str) -> bool {
    text.bytes().take(4).any(|b| b == b'<')
}

/// Ids found for `wanted` texts among `candidates` (the ids whose texts pass
/// [`may_be_special`]), lowest id first.
fn find_texts(texts: &[String], candidates: &[u32], wanted: &[&str]) -> Vec<u32> {
    candidates
        .iter()
        .copied()
        .filter(|&i| wanted.contains(&texts[i as usize].as_str()))
        .collect()
}

impl Tokenizer {
    /// Builds the tokenizer. Absent flags default as llama.cpp: SentencePiece adds BOS and a
    /// leading space; `gpt2` adds BOS only for Llama 3 style pre-tokenizers; nobody adds EOS.
    /// Special ids outside the vocabulary are ignored, as llama.cpp does.
    pub fn from_spec(mut spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        let merges = std::mem::take(&mut spec.merges);
        Self::from_spec_and_merges(spec, &merges)
    }

    /// [`Tokenizer::from_spec`] with the merges given apart (borrowed from the GGUF file);
    /// `spec.merges` is ignored.
    pub(crate) fn from_spec_and_merges(
        spec: TokenizerSpec,
        merges: &[impl AsRef<str>],
    ) -> Result<Tokenizer, TokenizerError> {
        let n = spec.tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if u32::try_from(n).is_err() {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        for (key, len) in [
            ("tokenizer.ggml.token_type", spec.token_types.len()),
            ("tokenizer.ggml.scores", spec.scores.len()),
        ] {
            if len != 0 && len != n {
                return Err(TokenizerError::LengthMismatch {
                    key,
                    len,
                    expected: n,
                });
            }
        }
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let is_spm = match spec.model.as_str() {
            "llama" => true,
            "gpt2" => false,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };

        // llama.cpp replaces empty token texts so every text maps to one id.
        let mut texts = spec.tokens;
        for (i, t) in texts.iter_mut().enumerate() {
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
        }
        let mut attrs: Vec<Attr> = if spec.token_types.is_empty() {
            vec![Attr::Normal; n]
        } else {
            spec.token_types
                .iter()
                .map(|&t| Attr::from_type(t))
                .collect()
        };

        let index = VocabIndex::new(&texts).ok_or(TokenizerError::VocabTooLarge(n))?;
        let vocab = &index;
        let (bos, eos, unk, add_bos_default, add_space_default);
        let model = if is_spm {
            bos = in_range(spec.bos).or(in_range(Some(1)));
            eos = in_range(spec.eos).or(in_range(Some(2)));
            unk = in_range(spec.unk).or(in_range(Some(0)));
            add_bos_default = true;
            add_space_default = true;
            Model::Spm(Box::new(Spm::new(vocab, n, &spec.scores, unk)))
        } else {
            let pre = PreConfig::from_name(spec.pre.as_deref())?;
            bos = in_range(spec.bos);
            eos = in_range(spec.eos);
            add_bos_default = pre.add_bos_default;
            add_space_default = false;
            Model::Bpe(Box::new(ByteLevelBpe::new(vocab, merges, pre)?))
        };
        let eog = Self::fix_special_attrs(
            &texts,
            &mut attrs,
            eos,
            in_range(spec.eot),
            in_range(spec.eom),
        );

        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    attrs[i as usize],
                    Attr::Control | Attr::UserDefined | Attr::Unknown
                )
            })
            .collect();
        specials.sort_by(|&a, &b| {
            texts[b as usize]
                .len()
                .cmp(&texts[a as usize].len())
                .then(a.cmp(&b))
        });

        let mut tok = Tokenizer {
            model,
            texts,
            index,
            attrs,
            specials,
            pieces: Vec::new(),
            offsets: Vec::new(),
            max_piece: 0,
            eog,
            bos,
            eos,
            add_bos: spec.add_bos.unwrap_or(add_bos_default),
            add_eos: spec.add_eos.unwrap_or(false),
            add_space_prefix: is_spm && spec.add_space_prefix.unwrap_or(add_space_default),
        };
        tok.render_pieces();
        Ok(tok)
    }

    /// llama.cpp's text-based fix-ups (see module docs). Returns the sorted EOG ids.
    fn fix_special_attrs(
        texts: &[String],
        attrs: &mut [Attr],
        eos: Option<u32>,
        eot: Option<u32>,
        eom: Option<u32>,
    ) -> Vec<u32> {
        let mut eog = Vec::new();
        let candidates: Vec<u32> = (0..texts.len() as u32)
            .filter(|&i| may_be_special(&texts[i as usize]))
            .collect();
        let find = |wanted: &[&str]| find_texts(texts, &candidates, wanted);
        let force_control = |id: u32, attrs: &mut [Attr]| attrs[id as usize] = Attr::Control;
        // Auto-detected EOT/EOM tokens are forced to control; ids given by the GGUF are not.
        let eot = eot.or_else(|| {
            let id = find(EOT_TEXTS).first().copied()?;
            force_control(id, attrs);
            Some(id)
        });
        let eom = eom.or_else(|| {
            let id = find(&["<|eom_id|>"]).first().copied()?;
            force_control(id, attrs);
            Some(id)
        });
        for (names, ends) in FIM_TEXTS {
            if let Some(&id) = find(names).first() {
                force_control(id, attrs);
                if *ends {
                    eog.push(id);
                }
            }
        }
        for id in find(EOG_TEXTS) {
            eog.push(id);
            force_control(id, attrs);
        }
        for id in find(ALWAYS_RENDER) {
            attrs[id as usize] = Attr::UserDefined;
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        // o200k_harmony: with <|return|> and <|call|> present, <|end|> does not end generation.
        let has = |t: &str| eog.iter().any(|&id| texts[id as usize] == t);
        if has("<|return|>") && has("<|call|>") {
            if let Some(pos) = eog.iter().position(|&id| texts[id as usize] == "<|end|>") {
                attrs[eog[pos] as usize] = Attr::UserDefined;
                eog.remove(pos);
            }
        }
        eog
    }

    /// Renders every token's piece as llama.cpp's `token_to_piece(.., special = true)`.
    fn render_pieces(&mut self) {
        let is_spm = matches!(self.model, Model::Spm(_));
        let mut char_to_byte = [0u8; 512];
        let mut mapped = [false; 512];
        for (b, c) in bpe::byte_to_char().iter().enumerate() {
            char_to_byte[*c as usize] = b as u8;
            mapped[*c as usize] = true;
        }
        let lookup = |c: char| {
            let i = c as usize;
            (i < 512 && mapped[i]).then(|| char_to_byte[i])
        };
        let total: usize = self.texts.iter().map(String::len).sum();
        let mut pieces = Vec::with_capacity(total);
        let mut offsets = Vec::with_capacity(self.texts.len() + 1);
        offsets.push(0u32);
        let mut max_piece = 0;
        for (text, attr) in self.texts.iter().zip(&self.attrs) {
            let start = pieces.len();
            match attr {
                Attr::Control | Attr::Unknown | Attr::UserDefined => {
                    pieces.extend_from_slice(text.as_bytes())
                }
                Attr::Normal if is_spm => {
                    pieces.extend_from_slice(text.replace('\u{2581}', " ").as_bytes())
                }
                Attr::Normal => bpe::decode_byte_level(text, &lookup, &mut pieces),
                Attr::Byte if is_spm => pieces.extend(spm::byte_token_value(text)),
                Attr::Byte | Attr::Unused | Attr::Undefined => {}
            }
            max_piece = max_piece.max(pieces.len() - start);
            offsets.push(u32::try_from(pieces.len()).unwrap_or(u32::MAX));
        }
        self.pieces = pieces;
        self.offsets = offsets;
        self.max_piece = max_piece;
    }

    /// Splits special tokens out of `text` (llama.cpp `tokenizer_st_partition`).
    fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(text));
        for &id in &self.specials {
            let attr = self.attrs[id as usize];
            if !parse_special && matches!(attr, Attr::Control | Attr::Unknown) {
                continue;
            }
            let needle = self.texts[id as usize].as_str();
            let present = frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(s) if s.contains(needle)));
            if !present {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                match f {
                    Fragment::Text(mut rest) => {
                        while let Some(pos) = rest.find(needle) {
                            if pos > 0 {
                                next.push(Fragment::Text(&rest[..pos]));
                            }
                            next.push(Fragment::Token(id));
                            rest = &rest[pos + needle.len()..];
                        }
                        if !rest.is_empty() {
                            next.push(Fragment::Text(rest));
                        }
                    }
                    tok => next.push(tok),
                }
            }
            frags = next;
        }
        frags
    }

    /// Encodes `text`. With `parse_special`, control tokens written in the text (e.g.
    /// `"<|im_start|>"`) become their ids; without it they are plain text. With `add_special`,
    /// BOS/EOS are added per the GGUF flags (see [`Tokenizer::from_spec`] for defaults).
    ///
    /// Errors: a BOS/EOS is required but the GGUF names none; a SentencePiece vocabulary lacks a
    /// byte token and an unknown token; the BPE implementation fails.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, TokenizerError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.push(self.bos.ok_or(TokenizerError::MissingSpecial("BOS"))?);
        }
        let frags = self.partition(text, parse_special);
        let vocab = &self.index;
        match &self.model {
            Model::Bpe(bpe) => {
                for f in frags {
                    match f {
                        Fragment::Text(s) => bpe.encode(vocab, s, &mut out)?,
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
            Model::Spm(spm) => {
                // A plain fragment at the start or after a special token gets a leading space.
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Fragment::Text(s) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in s.chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm.encode(vocab, &buf, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.push(self.eos.ok_or(TokenizerError::MissingSpecial("EOS"))?);
        }
        Ok(out)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.texts.len()
    }

    /// Raw bytes of a token as llama.cpp's `token_to_piece(.., special = false)` renders it:
    /// byte-level decoded for `gpt2`; `▁` → space and `<0xXX>` → that byte for SentencePiece;
    /// empty for control, unknown, unused tokens and ids out of range. No allocation.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_piece(id, false)
    }

    /// Like [`Tokenizer::token_bytes`], but with `special` control and unknown tokens render as
    /// their text (llama.cpp's `special = true`).
    pub fn token_piece(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        let Some(attr) = self.attrs.get(i) else {
            return &[];
        };
        if !special && matches!(attr, Attr::Control | Attr::Unknown) {
            return &[];
        }
        let (start, end) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        self.pieces.get(start..end).unwrap_or(&[])
    }

    /// Length in bytes of the longest token piece.
    pub fn max_piece_len(&self) -> usize {
        self.max_piece
    }

    /// Concatenation of [`Tokenizer::token_bytes`] as text; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend_from_slice(self.token_bytes(id));
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Whether `id` ends generation: EOS, EOT, EOM, and the tokens llama.cpp marks EOG by text
    /// (`<|im_end|>`, `<|endoftext|>`, `<end_of_turn>`, FIM pad/repo/sep, ...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The BOS id, if any.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The EOS id, if any.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The vocabulary text of a token (byte-level or `▁`-escaped form), `None` if out of range.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.texts.get(id as usize).map(String::as_str)
    }
}
