//! The paged KV cache: per-layer K and V pools of fixed-size blocks, allocated up front
//! (never grown), and the free list that hands blocks to sequences.

use candle_core::{DType, Device, Tensor};

use crate::config::ModelConfig;
use crate::error::{EngineError, Result};

/// How big the pool is: a block count, or a byte budget converted to whole blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheSize {
    Blocks(usize),
    Bytes(u64),
}

impl KvCacheSize {
    /// Parses `512` (blocks), or a byte size such as `2GiB`, `512MiB`, `1.5GB`, `1000000B`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let bad = || {
            EngineError::InvalidRequest(format!(
                "bad KV cache size `{s}` (examples: 2GiB, 512MiB, 4096 blocks as `4096`)"
            ))
        };
        if let Ok(n) = s.parse::<usize>() {
            return Ok(Self::Blocks(n));
        }
        let split = s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?;
        let (num, unit) = s.split_at(split);
        let num: f64 = num.trim().parse().map_err(|_| bad())?;
        let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
            "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "kib" | "k" => 1024.0,
            "mib" | "m" => 1024.0 * 1024.0,
            "gib" | "g" => 1024.0 * 1024.0 * 1024.0,
            "blocks" => return Ok(Self::Blocks(num as usize)),
            _ => return Err(bad()),
        };
        if !(num.is_finite() && num > 0.0) {
            return Err(bad());
        }
        Ok(Self::Bytes((num * mult) as u64))
    }
}

/// Geometry of the pool, shared with anything that reads or ships its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub dtype: DType,
}

impl KvLayout {
    pub fn new(
        cfg: &ModelConfig,
        block_size: usize,
        size: KvCacheSize,
        dtype: DType,
    ) -> Result<Self> {
        if block_size == 0 {
            return Err(EngineError::InvalidRequest(
                "block size must be at least 1".into(),
            ));
        }
        let per_block = (cfg.kv_bytes_per_token(dtype.size_in_bytes()) * block_size) as u64;
        let num_blocks = match size {
            KvCacheSize::Blocks(n) => n,
            KvCacheSize::Bytes(b) => (b / per_block.max(1)) as usize,
        };
        if num_blocks == 0 {
            return Err(EngineError::InvalidRequest(format!(
                "KV cache too small: one block of {block_size} tokens needs {per_block} bytes"
            )));
        }
        Ok(Self {
            num_layers: cfg.num_layers,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            block_size,
            num_blocks,
            dtype,
        })
    }

    pub fn bytes_per_block(&self) -> usize {
        2 * self.num_layers
            * self.num_kv_heads
            * self.head_dim
            * self.block_size
            * self.dtype.size_in_bytes()
    }

    pub fn total_bytes(&self) -> usize {
        self.bytes_per_block() * self.num_blocks
    }
}

/// K and V storage for every layer, `[num_blocks * block_size, kv_heads, head_dim]` each.
pub struct KvCache {
    pub layout: KvLayout,
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
}

impl KvCache {
    pub fn new(layout: KvLayout, device: &Device) -> Result<Self> {
        let shape = (
            layout.num_blocks * layout.block_size,
            layout.num_kv_heads,
            layout.head_dim,
        );
        let mut k = Vec::with_capacity(layout.num_layers);
        let mut v = Vec::with_capacity(layout.num_layers);
        for _ in 0..layout.num_layers {
            k.push(Tensor::zeros(shape, layout.dtype, device)?);
            v.push(Tensor::zeros(shape, layout.dtype, device)?);
        }
        Ok(Self { layout, k, v })
    }

    /// Writes `k`/`v` (`[n, kv_heads, head_dim]`, rows for positions `start_pos..`) of one
    /// layer into the slots the block table gives them.
    pub(crate) fn write(
        &self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
        start_pos: usize,
        block_table: &[u32],
    ) -> Result<()> {
        let bs = self.layout.block_size;
        let n = k.dim(0)?;
        let mut i = 0;
        while i < n {
            let pos = start_pos + i;
            let block = *block_table.get(pos / bs).ok_or_else(|| {
                EngineError::KvCacheFull("block table shorter than the sequence".into())
            })? as usize;
            if block >= self.layout.num_blocks {
                return Err(EngineError::KvCacheFull(format!(
                    "block {block} is outside the pool"
                )));
            }
            // Contiguous run of positions inside this block.
            let run = (bs - pos % bs).min(n - i);
            let slot = block * bs + pos % bs;
            self.k[layer].slice_set(&k.narrow(0, i, run)?, 0, slot)?;
            self.v[layer].slice_set(&v.narrow(0, i, run)?, 0, slot)?;
            i += run;
        }
        Ok(())
    }
}

impl KvCache {
    /// The pool slots of `blocks`, in order, as an index tensor on the pool's device.
    fn slot_index(&self, blocks: &[u32]) -> Result<Tensor> {
        let bs = self.layout.block_size;
        let mut slots = Vec::with_capacity(blocks.len() * bs);
        for &b in blocks {
            self.check_block(b)?;
            slots.extend((0..bs as u32).map(|i| b * bs as u32 + i));
        }
        let device = self
            .k
            .first()
            .map(|t| t.device().clone())
            .unwrap_or(Device::Cpu);
        Ok(Tensor::from_vec(slots, blocks.len() * bs, &device)?)
    }

    /// The K/V of `blocks` as bytes, block-major: for each block, for each layer, K then V
    /// (`[block_size, kv_heads, head_dim]` little-endian values of the pool's dtype).
    /// The blocks are gathered on the pool's device, so a GPU pool is copied to the host
    /// once per call, not once per block and layer.
    pub fn read_blocks(&self, blocks: &[u32]) -> Result<Vec<u8>> {
        if self.layout.dtype != DType::F32 {
            return Err(EngineError::InvalidRequest(format!(
                "KV export of {:?} pools",
                self.layout.dtype
            )));
        }
        if blocks.is_empty() || self.layout.num_layers == 0 {
            return Ok(Vec::new());
        }
        let idx = self.slot_index(blocks)?;
        let (n, part) = (blocks.len(), self.part_len());
        let mut parts = Vec::with_capacity(2 * self.layout.num_layers);
        for l in 0..self.layout.num_layers {
            for pool in [&self.k[l], &self.v[l]] {
                parts.push(pool.index_select(&idx, 0)?.reshape((n, 1, part))?);
            }
        }
        // [blocks, 2 * layers, part]: block-major, then layer, then K before V.
        let all = Tensor::cat(&parts, 1)?.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(all.len() * 4);
        for x in all {
            out.extend_from_slice(&x.to_le_bytes());
        }
        Ok(out)
    }

    /// Values per block per layer per K or V.
    fn part_len(&self) -> usize {
        self.layout.block_size * self.layout.num_kv_heads * self.layout.head_dim
    }

    /// Writes bytes laid out as [`read_blocks`](Self::read_blocks) gives them into `blocks`,
    /// copying them to the pool's device once.
    pub fn write_blocks(&self, blocks: &[u32], data: &[u8]) -> Result<()> {
        let per = self.layout.bytes_per_block();
        if data.len() != per * blocks.len() {
            return Err(EngineError::InvalidRequest(format!(
                "KV import: {} bytes for {} blocks of {per}",
                data.len(),
                blocks.len()
            )));
        }
        if self.layout.dtype != DType::F32 {
            return Err(EngineError::InvalidRequest(
                "KV import into a non-f32 pool".into(),
            ));
        }
        for &b in blocks {
            self.check_block(b)?;
        }
        if blocks.is_empty() || self.layout.num_layers == 0 {
            return Ok(());
        }
        let (bs, kvh, d) = (
            self.layout.block_size,
            self.layout.num_kv_heads,
            self.layout.head_dim,
        );
        let vals: Vec<f32> = data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let device = self.k[0].device();
        let all = Tensor::from_vec(
            vals,
            (blocks.len(), 2 * self.layout.num_layers, bs, kvh, d),
            device,
        )?;
        for (i, &b) in blocks.iter().enumerate() {
            for l in 0..self.layout.num_layers {
                for (j, pool) in [&self.k[l], &self.v[l]].into_iter().enumerate() {
                    let t = all.get(i)?.get(2 * l + j)?;
                    pool.slice_set(&t, 0, b as usize * bs)?;
                }
            }
        }
        Ok(())
    }

    fn check_block(&self, b: u32) -> Result<()> {
        if b as usize >= self.layout.num_blocks {
            return Err(EngineError::InvalidRequest(format!(
                "block {b} is outside the pool"
            )));
        }
        Ok(())
    }
}

/// Free-list allocator over the pool's block ids. The pool size is fixed, so the cache can
/// never grow past it: allocation fails instead.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    pub fn new(num_blocks: usize) -> Self {
        // Reversed so that blocks are handed out from id 0 up.
        Self {
            free: (0..num_blocks as u32).rev().collect(),
            total: num_blocks,
        }
    }

    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.free.len() {
            return None;
        }
        let at = self.free.len() - n;
        let mut got = self.free.split_off(at);
        got.reverse();
        Some(got)
    }

    pub fn release(&mut self, blocks: &[u32]) {
        self.free.extend(blocks.iter().rev());
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn num_total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(
            KvCacheSize::parse("2GiB").unwrap(),
            KvCacheSize::Bytes(2 << 30)
        );
        assert_eq!(KvCacheSize::parse("512").unwrap(), KvCacheSize::Blocks(512));
        assert_eq!(
            KvCacheSize::parse("1.5 GB").unwrap(),
            KvCacheSize::Bytes(1_500_000_000)
        );
        assert!(KvCacheSize::parse("lots").is_err());
        assert!(KvCacheSize::parse("-1GiB").is_err());
    }

    #[test]
    fn allocator_never_exceeds_pool() {
        let mut a = BlockAllocator::new(8);
        let x = a.allocate(5).unwrap();
        assert_eq!(x, vec![0, 1, 2, 3, 4]);
        assert!(a.allocate(4).is_none());
        let y = a.allocate(3).unwrap();
        assert_eq!(a.num_free(), 0);
        a.release(&x);
        a.release(&y);
        assert_eq!(a.num_free(), 8);
        let mut all = a.allocate(8).unwrap();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }
}
