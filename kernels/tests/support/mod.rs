//! What the kernel test files share: awkward lengths and a small seeded generator.
#![allow(dead_code)] // each test file uses part of it

pub const LENGTHS: [usize; 17] = [
    1, 2, 3, 5, 7, 8, 15, 16, 17, 31, 33, 63, 127, 129, 255, 1023, 1024,
];

pub struct Rng(pub u64);
impl Rng {
    pub fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
    }
    pub fn byte(&mut self) -> u8 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 32) as u8
    }
}
